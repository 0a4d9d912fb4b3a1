//! Feeds: OCS's message structure, recorded-feed blocks and their checks (spec §7), and the
//! bounded queue of messages waiting for the router.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};
use tokio::sync::Notify;

/// Options of a feed, as OCS's `register_feed` takes them.
///
/// ```
/// use ocs_feed::FeedOptions;
/// let opts = FeedOptions::recorded(serde_json::json!({"frame_length": 60}), 1.0);
/// assert!(opts.record);
/// ```
#[derive(Debug, Clone, Default)]
pub struct FeedOptions {
    /// Whether the aggregator and the influx publisher record it; messages must then be
    /// blocks (see [`crate::Agent::publish_to_feed`]).
    pub record: bool,
    /// Parameters for the aggregator and influx publisher, e.g. `{"frame_length": 600}`.
    pub agg_params: Map<String, Value>,
    /// Seconds to buffer recorded samples before publishing (0 = publish each message).
    pub buffer_time: f64,
    /// Accepted for OCS compatibility; ignored, as in ocs 0.12.1.
    pub max_messages: Option<usize>,
}

impl FeedOptions {
    /// A recorded feed with these aggregator parameters (an object; anything else is `{}`)
    /// and buffer time in seconds.
    pub fn recorded(agg_params: Value, buffer_time: f64) -> FeedOptions {
        FeedOptions {
            record: true,
            agg_params: match agg_params {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            buffer_time,
            max_messages: None,
        }
    }
}

/// A feed message that OCS would refuse, or an unknown feed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedError {
    /// No feed of this name is registered.
    #[error("no feed {feed:?} is registered")]
    UnknownFeed {
        /// The feed.
        feed: String,
    },
    /// The feed name is not a single URI component, or is taken.
    #[error("cannot register feed {feed:?}: {reason}")]
    BadName {
        /// The feed.
        feed: String,
        /// Why.
        reason: String,
    },
    /// A recorded feed's message is malformed (OCS would raise and publish nothing).
    #[error("invalid message for recorded feed {feed:?}: {reason}")]
    InvalidMessage {
        /// The feed.
        feed: String,
        /// What is wrong, in OCS's words where it has some.
        reason: String,
    },
}

/// Whether `field` is a valid data field name of a recorded feed (OCS's
/// `Feed.verify_data_field_string`): only `[A-Za-z0-9_]`, a letter first after any leading
/// underscores, 1 to 255 characters. On failure, the reason OCS gives.
///
/// ```
/// assert!(ocs_feed::check_field_name("__abc_1").is_ok());
/// assert!(ocs_feed::check_field_name("1abc").is_err());
/// assert!(ocs_feed::check_field_name("a.b").is_err());
/// ```
pub fn check_field_name(field: &str) -> Result<(), String> {
    if field.is_empty() {
        return Err("Empty field name encountered, please enter a valid field name.".into());
    }
    if let Some(c) = field
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "message 'data' block contains the key {field} with the invalid character '{c}'. \
             Valid characters are a-z, A-Z, 0-9, and underscore."
        ));
    }
    // Python strips underscores at both ends before looking at the first character.
    let stripped = field.trim_matches('_');
    if stripped
        .chars()
        .next()
        .is_some_and(|c| !c.is_ascii_alphabetic())
    {
        return Err(format!(
            "message 'data' block contains the key {field}, which does not start with a letter \
             (after any number of leading underscores.)"
        ));
    }
    if field.chars().count() > 255 {
        return Err(format!(
            "message 'data' block contains key {field} which exceeds the valid length of 255 \
             characters."
        ));
    }
    Ok(())
}

/// Turns any string into a field name the way OCS's `Feed.enforce_field_name_rules` does:
/// spaces become `_`, other invalid characters are removed, leading non-letters after the
/// leading underscores are removed, the result is cut to 255 characters; `""` becomes
/// `"invalid_field"`. As in OCS, the result can still be empty (e.g. for `"123"`) and distinct
/// inputs can collide.
///
/// ```
/// use ocs_feed::enforce_field_name_rules;
/// assert_eq!(enforce_field_name_rules("AMCc.FpgaTopLevel.AppTop"), "AMCcFpgaTopLevelAppTop");
/// assert_eq!(enforce_field_name_rules("__1a b"), "__a_b");
/// assert_eq!(enforce_field_name_rules(""), "invalid_field");
/// ```
pub fn enforce_field_name_rules(name: &str) -> String {
    let name = if name.is_empty() {
        "invalid_field"
    } else {
        name
    };
    let cleaned: String = name
        .replace(' ', "_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let underscores = cleaned.len() - cleaned.trim_start_matches('_').len();
    let rest = cleaned[underscores..].trim_start_matches(|c: char| !c.is_ascii_alphabetic());
    let mut out = String::with_capacity(cleaned.len());
    out.push_str(&cleaned[..underscores]);
    out.push_str(rest);
    out.truncate(255);
    out
}

/// Samples of one block waiting to be flushed (OCS's `Block`).
#[derive(Debug)]
struct Block {
    name: String,
    fields: Vec<String>,
    data: Vec<Vec<Value>>,
    timestamps: Vec<Value>,
    tags: Value,
}

impl Block {
    fn encoded(&self) -> Value {
        let data: Map<String, Value> = self
            .fields
            .iter()
            .zip(&self.data)
            .map(|(f, v)| (f.clone(), Value::Array(v.clone())))
            .collect();
        json!({
            "block_name": self.name,
            "data": data,
            "influxdb_tags": self.tags,
            "timestamps": self.timestamps,
        })
    }

    fn clear(&mut self) {
        self.timestamps.clear();
        self.data.iter_mut().for_each(Vec::clear);
    }
}

/// One registered feed: its descriptor and, if recorded, its buffered blocks.
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) descriptor: Value,
    options: FeedOptions,
    blocks: Vec<Block>,
    buffer_start: Option<f64>,
}

impl Feed {
    pub(crate) fn new(
        name: &str,
        agent_address: &str,
        agent_class: &str,
        process_session_id: &str,
        options: FeedOptions,
    ) -> Result<Feed, FeedError> {
        if name.is_empty() || name.contains('.') || name.contains(char::is_whitespace) {
            return Err(FeedError::BadName {
                feed: name.to_owned(),
                reason: "a feed name is one WAMP URI component: not empty, no '.' or spaces".into(),
            });
        }
        let address = format!("{agent_address}.feeds.{name}");
        let descriptor = json!({
            "agent_address": agent_address,
            "agg_params": options.agg_params,
            "feed_name": name,
            "address": address,
            "record": options.record,
            "session_id": process_session_id,
            "agent_class": agent_class,
        });
        Ok(Feed {
            name: name.to_owned(),
            address,
            descriptor,
            options,
            blocks: Vec::new(),
            buffer_start: None,
        })
    }

    fn invalid(&self, reason: impl Into<String>) -> FeedError {
        FeedError::InvalidMessage {
            feed: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Takes one message; returns the payloads (`[[payload, descriptor]]` arguments) to publish
    /// now, in order.
    pub(crate) fn accept(&mut self, message: Value, now: f64) -> Result<Vec<Value>, FeedError> {
        if !self.options.record {
            return Ok(vec![json!([message, self.descriptor])]);
        }
        let msg = message
            .as_object()
            .ok_or_else(|| self.invalid("a recorded feed's message must be an object"))?;
        let data = msg
            .get("data")
            .and_then(Value::as_object)
            .ok_or_else(|| self.invalid("'data' must be an object"))?;
        let multi = msg.contains_key("timestamps");
        for (field, value) in data {
            check_field_name(field).map_err(|r| self.invalid(r))?;
            let ok_scalar = |v: &Value| v.is_number() || v.is_string() || v.is_boolean();
            let ok = match value {
                Value::Array(items) => items.iter().all(ok_scalar),
                v => ok_scalar(v),
            };
            if !ok {
                return Err(self.invalid(format!(
                    "message 'data' block contains invalid data type in {field:?}: \
                     only float, int, str, bool or lists of them"
                )));
            }
        }
        let tags = msg.get("influxdb_tags").cloned().unwrap_or(Value::Null);
        check_influxdb_tags(&tags, data).map_err(|r| self.invalid(r))?;
        let block_name = match msg.get("block_name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Err(self.invalid("'block_name' is missing")),
        };
        let (timestamps, columns): (Vec<Value>, Vec<(&String, Vec<Value>)>) = if multi {
            let ts = msg["timestamps"]
                .as_array()
                .ok_or_else(|| self.invalid("'timestamps' must be a list"))?
                .clone();
            let mut cols = Vec::new();
            for (f, v) in data {
                let v = v.as_array().ok_or_else(|| {
                    self.invalid(format!("field {f:?} must be a list with 'timestamps'"))
                })?;
                if v.len() != ts.len() {
                    return Err(self.invalid(format!(
                        "field {f:?} has {} values for {} timestamps",
                        v.len(),
                        ts.len()
                    )));
                }
                cols.push((f, v.clone()));
            }
            (ts, cols)
        } else if let Some(t) = msg.get("timestamp") {
            (
                vec![t.clone()],
                data.iter().map(|(f, v)| (f, vec![v.clone()])).collect(),
            )
        } else {
            let mut keys: Vec<&String> = msg.keys().collect();
            keys.sort();
            return Err(self.invalid(format!("Invalid message when record=True. keys={keys:?}")));
        };

        let index = match self.blocks.iter().position(|b| b.name == block_name) {
            Some(i) => i,
            None => {
                let fields: Vec<String> = data.keys().cloned().collect();
                self.blocks.push(Block {
                    name: block_name.clone(),
                    data: vec![Vec::new(); fields.len()],
                    fields,
                    timestamps: Vec::new(),
                    tags: Value::Null,
                });
                self.blocks.len() - 1
            }
        };
        let block = &mut self.blocks[index];
        let same_fields = block.fields.len() == columns.len()
            && columns.iter().all(|(f, _)| block.fields.contains(f));
        if !same_fields {
            return Err(FeedError::InvalidMessage {
                feed: self.name.clone(),
                reason: format!("Block structure does not match: {block_name}"),
            });
        }
        block.timestamps.extend(timestamps);
        for (f, values) in columns {
            let i = block.fields.iter().position(|x| x == f).unwrap_or(0);
            block.data[i].extend(values);
        }
        if !tags.is_null() {
            block.tags = tags;
        }
        let start = *self.buffer_start.get_or_insert(now);
        if now - start >= self.options.buffer_time {
            self.buffer_start = None;
            return Ok(self.flush());
        }
        Ok(Vec::new())
    }

    /// Publishes what the blocks hold (OCS's `flush_buffer`).
    pub(crate) fn flush(&mut self) -> Vec<Value> {
        let payload: Map<String, Value> = self
            .blocks
            .iter()
            .filter(|b| !b.timestamps.is_empty())
            .map(|b| (b.name.clone(), b.encoded()))
            .collect();
        self.blocks.iter_mut().for_each(Block::clear);
        if payload.is_empty() {
            return Vec::new();
        }
        vec![json!([payload, self.descriptor])]
    }
}

fn check_influxdb_tags(tags: &Value, data: &Map<String, Value>) -> Result<(), String> {
    let tags = match tags {
        Value::Null => return Ok(()),
        Value::Object(t) => t,
        _ => return Err("'influxdb_tags' must be an object".into()),
    };
    for v in tags.values() {
        if v.get("_field").is_none() {
            return Err(format!(
                "'_field' not supplied with 'influxdb_tags' for tag set {v}"
            ));
        }
    }
    if let Some(k) = data.keys().find(|k| !tags.contains_key(*k)) {
        return Err(format!("'influxdb_tags' does not contain tags for '{k}'"));
    }
    if let Some(k) = tags.keys().find(|k| !data.contains_key(*k)) {
        return Err(format!("'influxdb_tags' contains extra tag '{k}'"));
    }
    Ok(())
}

/// A message waiting for the router: topic and the single PUBLISH argument.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) arg: Value,
}

/// The bounded queue between `publish_to_feed` (any task, never waits) and the session task.
/// When it is full the oldest message is dropped and counted.
#[derive(Debug)]
pub(crate) struct FeedQueue {
    items: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    dropped: AtomicU64,
    pub(crate) ready: Notify,
}

impl FeedQueue {
    pub(crate) fn new(capacity: usize) -> FeedQueue {
        FeedQueue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends at the back, dropping the oldest when full.
    pub(crate) fn push(&self, item: Outgoing) {
        {
            let mut q = self.lock();
            while q.len() >= self.capacity {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(item);
        }
        self.ready.notify_one();
    }

    /// Puts messages that were sent but not acknowledged back at the front, in their order,
    /// so they go out first after a reconnect. Overflow drops the oldest, as in `push`.
    pub(crate) fn requeue_front(&self, items: Vec<Outgoing>) {
        let mut q = self.lock();
        for item in items.into_iter().rev() {
            q.push_front(item);
        }
        while q.len() > self.capacity {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn pop(&self) -> Option<Outgoing> {
        self.lock().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Value {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The PUBLISH of `topic` in vector 91.
    fn published(topic: &str) -> Value {
        vector("91-feed-publish-forms.json")["wamp"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["msg"].clone())
            .find(|m| m[0] == 16 && m[3] == topic)
            .unwrap_or_else(|| panic!("no publish to {topic}"))
    }

    fn probe_feed(name: &str, options: FeedOptions) -> Feed {
        Feed::new(
            name,
            "observatory.probe1",
            "ProbeAgent",
            "1795563482.4762201",
            options,
        )
        .unwrap()
    }

    #[test]
    fn plain_feed_matches_vector() {
        let reference = published("observatory.probe1.feeds.plain");
        let mut feed = probe_feed("plain", FeedOptions::default());
        let out = feed
            .accept(json!({"anything": [1, "two", {"three": 3.0}], "x": 5}), 0.0)
            .unwrap();
        assert_eq!(out, vec![reference[4][0].clone()]);
        assert_eq!(feed.address, "observatory.probe1.feeds.plain");
    }

    #[test]
    fn recorded_single_sample_becomes_a_block_as_in_vector() {
        let reference = published("observatory.probe1.feeds.recorded");
        let mut feed = probe_feed(
            "recorded",
            FeedOptions::recorded(json!({"frame_length": 10, "exclude_influx": true}), 0.0),
        );
        let out = feed
            .accept(
                json!({"block_name": "probe", "timestamp": 1700000000.25,
                       "data": {"x": 5, "label": "abc", "flag": true, "val": 2.5}}),
                1.0,
            )
            .unwrap();
        assert_eq!(out, vec![reference[4][0].clone()]);
    }

    #[test]
    fn recorded_multi_sample_with_tags_matches_vector() {
        let reference = published("observatory.fake-data1.feeds.false_temperatures");
        let payload = &reference[4][0][0]["temps"];
        let descriptor = &reference[4][0][1];
        let mut feed = Feed::new(
            "false_temperatures",
            "observatory.fake-data1",
            "FakeDataAgent",
            descriptor["session_id"].as_str().unwrap(),
            FeedOptions::recorded(descriptor["agg_params"].clone(), 0.0),
        )
        .unwrap();
        let out = feed
            .accept(
                json!({"block_name": "temps", "timestamps": payload["timestamps"],
                       "data": payload["data"], "influxdb_tags": payload["influxdb_tags"]}),
                1.0,
            )
            .unwrap();
        assert_eq!(out, vec![reference[4][0].clone()]);
    }

    #[test]
    fn buffered_feed_flushes_on_the_next_publish_after_buffer_time() {
        let mut feed = probe_feed("count", FeedOptions::recorded(json!({}), 2.0));
        let sample =
            |v: i64, t: f64| json!({"block_name": "count", "timestamp": t, "data": {"value": v}});
        assert!(feed.accept(sample(1, 10.0), 100.0).unwrap().is_empty());
        assert!(feed.accept(sample(2, 11.0), 101.0).unwrap().is_empty());
        let out = feed.accept(sample(3, 12.0), 102.0).unwrap();
        assert_eq!(out[0][0]["count"]["data"]["value"], json!([1, 2, 3]));
        assert_eq!(out[0][0]["count"]["timestamps"], json!([10.0, 11.0, 12.0]));
        assert!(feed.flush().is_empty());
    }

    #[test]
    fn recorded_feed_enforces_ocs_rules() {
        let mut feed = probe_feed("r", FeedOptions::recorded(json!({}), 0.0));
        let bad = |feed: &mut Feed, m: Value| feed.accept(m, 0.0).unwrap_err().to_string();
        assert!(bad(
            &mut feed,
            json!({"block_name": "b", "timestamp": 1, "data": {"a.b": 1}})
        )
        .contains("invalid character '.'"));
        assert!(bad(
            &mut feed,
            json!({"block_name": "b", "timestamp": 1, "data": {"1a": 1}})
        )
        .contains("does not start with a letter"));
        assert!(bad(
            &mut feed,
            json!({"block_name": "b", "timestamp": 1, "data": {"a": [[1]]}})
        )
        .contains("invalid data type"));
        assert!(bad(
            &mut feed,
            json!({"block_name": "b", "timestamp": 1, "data": {"a": null}})
        )
        .contains("invalid data type"));
        assert!(bad(&mut feed, json!({"block_name": "b", "data": {"a": 1}}))
            .contains("Invalid message when record=True"));
        assert!(bad(
            &mut feed,
            json!({"block_name": "b", "timestamp": 1, "data": {"a": 1},
                   "influxdb_tags": {"a": {"x": 1}}})
        )
        .contains("'_field' not supplied"));
        assert!(bad(
            &mut feed,
            json!({"block_name": "b", "timestamp": 1, "data": {"a": 1, "b": 2},
                   "influxdb_tags": {"a": {"_field": "t"}}})
        )
        .contains("does not contain tags for 'b'"));
        feed.accept(
            json!({"block_name": "b", "timestamp": 1, "data": {"a": 1}}),
            0.0,
        )
        .unwrap();
        assert!(bad(
            &mut feed,
            json!({"block_name": "b", "timestamp": 2, "data": {"c": 1}})
        )
        .contains("Block structure does not match: b"));
    }

    #[test]
    fn feed_names_are_one_uri_component() {
        for name in ["", "a.b", "a b"] {
            assert!(Feed::new(name, "o.a", "A", "1", FeedOptions::default()).is_err());
        }
    }

    #[test]
    fn field_name_helper_matches_ocs() {
        // Expected values computed with ocs 0.12.1's Feed.enforce_field_name_rules.
        for (input, expected) in [
            ("", "invalid_field"),
            ("abc", "abc"),
            ("a b c", "a_b_c"),
            ("1abc", "abc"),
            ("__1abc", "__abc"),
            ("123", ""),
            ("AMCc[0].FpgaTopLevel", "AMCc0FpgaTopLevel"),
            ("_-x", "_x"),
            ("é1a", "a"),
        ] {
            assert_eq!(enforce_field_name_rules(input), expected, "{input:?}");
        }
        assert_eq!(enforce_field_name_rules(&"a".repeat(300)).len(), 255);
        for ok in ["a", "_a", "a_1", "___"] {
            assert!(check_field_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1", "_1", "a-b", &"a".repeat(256)] {
            assert!(check_field_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queue_drops_oldest_and_counts() {
        let q = FeedQueue::new(3);
        let item = |i: i64| Outgoing {
            topic: "t".into(),
            arg: json!(i),
        };
        for i in 0..5 {
            q.push(item(i));
        }
        assert_eq!(q.dropped(), 2);
        let a = q.pop().unwrap();
        assert_eq!(a.arg, json!(2));
        q.requeue_front(vec![a, item(10)]);
        assert_eq!(q.dropped(), 3, "requeue overflow drops the oldest");
        let rest: Vec<Value> = std::iter::from_fn(|| q.pop()).map(|o| o.arg).collect();
        assert_eq!(rest, vec![json!(10), json!(3), json!(4)]);
    }
}
