//! Payloads of the message kinds the monitor reads field by field.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::field;
use crate::ParseError;

/// Payload of a `data_file` or `g3_file` message: a file a publisher asks to be recorded.
///
/// Only `path` is required. pysmurf's `register_file` sends every other field, but older
/// pysmurf omits `action`, `action_ts` and `pysmurf_version`, and the smurf-streamer's
/// `g3_file` sends only `path` and `archive_name`. An absent field and a JSON `null` both
/// read as `None`; nothing is filled in.
///
/// [`FilePayload::new`] builds one for publishing, with pysmurf's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePayload {
    /// Path of the file on the publishing host (wire name `path`).
    pub path: String,
    /// What the file holds, as `"tuning"` or `"config_snapshot"` (wire name `type`).
    pub file_type: Option<String>,
    /// File extension, as `"npy"` or `"txt"`; pysmurf sends `""` when it has none.
    pub format: Option<String>,
    /// When the file was written, in Unix seconds. Sent as an integer, a float or a decimal
    /// string.
    pub timestamp: Option<f64>,
    /// The pysmurf action the file belongs to; files of one action are archived together.
    pub action: Option<String>,
    /// Start of the pysmurf action, in whole Unix seconds (wire name `action_ts`).
    ///
    /// pysmurf sends a decimal string; integers, floats and strings are all read, and a
    /// fraction is rounded down (towards negative infinity), so `1584401673.9` reads as
    /// `1584401673`.
    pub action_ts: Option<i64>,
    /// Whether the file is a plot. Sent as a boolean or as 0/1.
    pub plot: Option<bool>,
    /// Version of pysmurf that wrote the file.
    pub pysmurf_version: Option<String>,
    /// Archive the file belongs to; the smurf-streamer sends `"timestreams"`, pysmurf sends
    /// nothing (which socs reads as `"smurf"`).
    pub archive_name: Option<String>,
}

impl FilePayload {
    /// A payload for publishing `path`, with pysmurf's defaults: timestamp now, format `""`,
    /// not a plot, and no action, action timestamp, version or archive name.
    ///
    /// ```
    /// use smurf_protocol::FilePayload;
    ///
    /// let file = FilePayload {
    ///     format: Some("npy".to_owned()),
    ///     ..FilePayload::new("/data/smurf_data/tune.npy", "tuning")
    /// };
    /// assert_eq!(file.plot, Some(false));
    /// ```
    pub fn new(path: impl Into<String>, file_type: impl Into<String>) -> FilePayload {
        FilePayload {
            path: path.into(),
            file_type: Some(file_type.into()),
            format: Some(String::new()),
            timestamp: Some(unix_now()),
            action: None,
            action_ts: None,
            plot: Some(false),
            pysmurf_version: None,
            archive_name: None,
        }
    }

    /// The payload as pysmurf sends it: every field, `null` where `None`, except
    /// `archive_name`, which is left out when `None`.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("path".to_owned(), Value::from(self.path.as_str()));
        map.insert("type".to_owned(), Value::from(self.file_type.as_deref()));
        map.insert("format".to_owned(), Value::from(self.format.as_deref()));
        map.insert("timestamp".to_owned(), Value::from(self.timestamp));
        map.insert("action".to_owned(), Value::from(self.action.as_deref()));
        map.insert("action_ts".to_owned(), Value::from(self.action_ts));
        map.insert("plot".to_owned(), Value::from(self.plot));
        map.insert(
            "pysmurf_version".to_owned(),
            Value::from(self.pysmurf_version.as_deref()),
        );
        if let Some(archive_name) = &self.archive_name {
            map.insert(
                "archive_name".to_owned(),
                Value::from(archive_name.as_str()),
            );
        }
        Value::Object(map)
    }

    pub(crate) fn from_json(payload: &Value) -> Result<FilePayload, ParseError> {
        let map = field::as_object(payload, "payload")?;
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Ok(FilePayload {
            path: field::required_str(map, "payload.path")?.to_owned(),
            file_type: owned(field::optional_str(map, "payload.type")?),
            format: owned(field::optional_str(map, "payload.format")?),
            timestamp: field::optional_seconds(map, "payload.timestamp")?,
            action: owned(field::optional_str(map, "payload.action")?),
            action_ts: field::optional_whole_seconds(map, "payload.action_ts")?,
            plot: field::optional_flag(map, "payload.plot")?,
            pysmurf_version: owned(field::optional_str(map, "payload.pysmurf_version")?),
            archive_name: owned(field::optional_str(map, "payload.archive_name")?),
        })
    }
}

/// Payload of a `metadata` message: one register value the smurf-streamer publishes.
///
/// All three fields are required (socs reads all three); `value` may be any JSON, `null`
/// included. The stream the value belongs to is named by the publisher id, see
/// [`Envelope::stream_id`](crate::Envelope::stream_id).
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataPayload {
    /// Register path, as `"AMCc.FpgaTopLevel.AppTop.AppCore.enableStreaming"`.
    pub path: String,
    /// Type of the value as the streamer names it (wire name `type`).
    pub value_type: String,
    /// The value.
    pub value: Value,
}

impl MetadataPayload {
    /// The payload as the streamer sends it.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("path".to_owned(), Value::from(self.path.as_str()));
        map.insert("type".to_owned(), Value::from(self.value_type.as_str()));
        map.insert("value".to_owned(), self.value.clone());
        Value::Object(map)
    }

    pub(crate) fn from_json(payload: &Value) -> Result<MetadataPayload, ParseError> {
        let map = field::as_object(payload, "payload")?;
        Ok(MetadataPayload {
            path: field::required_str(map, "payload.path")?.to_owned(),
            value_type: field::required_str(map, "payload.type")?.to_owned(),
            value: field::required(map, "payload.value")?.clone(),
        })
    }
}

/// Payload of a `log` or `backend_error` message: one line of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPayload {
    /// The text (wire name `message`); required.
    pub message: String,
}

impl LogPayload {
    /// The payload as pysmurf sends it.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("message".to_owned(), Value::from(self.message.as_str()));
        Value::Object(map)
    }

    pub(crate) fn from_json(payload: &Value) -> Result<LogPayload, ParseError> {
        let map = field::as_object(payload, "payload")?;
        Ok(LogPayload {
            message: field::required_str(map, "payload.message")?.to_owned(),
        })
    }
}

/// Unix time in seconds, as Python's `time.time()`.
pub(crate) fn unix_now() -> f64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        // A clock set before 1970 gives a negative time rather than a made-up one.
        Err(err) => -err.duration().as_secs_f64(),
    }
}
