//! The datagram: envelope, typed message, and the JSON object it was read from.

use serde_json::{Map, Value};

use crate::field;
use crate::{FilePayload, LogPayload, MetadataPayload, ParseError};

/// Largest datagram a publisher sends, in bytes; pysmurf drops anything longer.
pub const MAX_DATAGRAM_LEN: usize = 64_000;

/// The fields every publisher puts around a payload.
///
/// `id` and `type` are required: without them a datagram cannot be attributed or
/// dispatched. pysmurf always sends `host`, `script`, `time` and `seq_no` too, but the monitor
/// needs none of them to record a file, so they are optional rather than guessed; when
/// present they must have the right kind (`script` may also be `null`, which some publishers
/// send).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Host name of the publisher (wire name `host`).
    pub host: Option<String>,
    /// Publisher id, set by `SMURFPUB_ID` (wire name `id`); the streamer uses
    /// `STREAMER:<stream-id>`.
    pub pub_id: String,
    /// Name of the script that publishes (wire name `script`).
    pub script_id: Option<String>,
    /// When the datagram was published, in Unix seconds (wire name `time`).
    pub time: Option<f64>,
    /// Count of datagrams this publisher sent before this one (wire name `seq_no`).
    pub seq_no: Option<u64>,
    /// Message type as sent (wire name `type`), as `"data_file"`.
    pub kind: String,
}

impl Envelope {
    /// The stream a `metadata` value belongs to: what follows the first `:` of the publisher
    /// id (the streamer's ids read `STREAMER:<stream-id>`), or the whole id when it has no
    /// `:`, as from streamers older than that convention.
    ///
    /// ```
    /// # let envelope = |pub_id: &str| smurf_protocol::Envelope {
    /// #     host: None, pub_id: pub_id.to_owned(), script_id: None, time: None, seq_no: None,
    /// #     kind: "metadata".to_owned(),
    /// # };
    /// assert_eq!(envelope("STREAMER:crate1slot2").stream_id(), "crate1slot2");
    /// assert_eq!(envelope("unidentified").stream_id(), "unidentified");
    /// ```
    pub fn stream_id(&self) -> &str {
        match self.pub_id.split_once(':') {
            Some((_, stream_id)) => stream_id,
            None => &self.pub_id,
        }
    }

    fn from_json(json: &Map<String, Value>) -> Result<Envelope, ParseError> {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Ok(Envelope {
            host: owned(field::optional_str(json, "host")?),
            pub_id: field::required_str(json, "id")?.to_owned(),
            script_id: owned(field::optional_str(json, "script")?),
            time: field::optional_number(json, "time")?,
            seq_no: field::optional_u64(json, "seq_no")?,
            kind: field::required_str(json, "type")?.to_owned(),
        })
    }
}

/// What a datagram says, by its `type`.
///
/// Payloads the monitor reads are parsed into structs. `session_data` and `session_log` are
/// forwarded unchanged, so their payloads (any JSON; pysmurf-controller expects an object and
/// a string) are not copied here: read them with [`Datagram::payload`].
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `data_file`: pysmurf registers a file.
    DataFile(FilePayload),
    /// `g3_file`: the smurf-streamer registers a timestream file.
    G3File(FilePayload),
    /// `session_data`: data for the pysmurf-controller's session.
    SessionData,
    /// `session_log`: a log line for the pysmurf-controller's session.
    SessionLog,
    /// `metadata`: a register value from the smurf-streamer.
    Metadata(MetadataPayload),
    /// `log`: a line of text.
    Log(LogPayload),
    /// `start`: a publisher was created. The payload (`{}`) is not read.
    Start,
    /// `stop`: a publisher was destroyed. The payload (`{}`) is not read.
    Stop,
    /// `backend_error`: the publisher dropped a datagram it could not send.
    BackendError(LogPayload),
    /// Any other type, such as pysmurf's default `general`, with its payload as sent.
    Other {
        /// The `type` string.
        kind: String,
        /// The payload.
        payload: Value,
    },
}

impl Message {
    /// The `type` string this message is sent with.
    pub fn kind(&self) -> &str {
        match self {
            Message::DataFile(_) => "data_file",
            Message::G3File(_) => "g3_file",
            Message::SessionData => "session_data",
            Message::SessionLog => "session_log",
            Message::Metadata(_) => "metadata",
            Message::Log(_) => "log",
            Message::Start => "start",
            Message::Stop => "stop",
            Message::BackendError(_) => "backend_error",
            Message::Other { kind, .. } => kind,
        }
    }

    fn from_json(kind: &str, payload: &Value) -> Result<Message, ParseError> {
        Ok(match kind {
            "data_file" => Message::DataFile(FilePayload::from_json(payload)?),
            "g3_file" => Message::G3File(FilePayload::from_json(payload)?),
            "session_data" => Message::SessionData,
            "session_log" => Message::SessionLog,
            "metadata" => Message::Metadata(MetadataPayload::from_json(payload)?),
            "log" => Message::Log(LogPayload::from_json(payload)?),
            "start" => Message::Start,
            "stop" => Message::Stop,
            "backend_error" => Message::BackendError(LogPayload::from_json(payload)?),
            other => Message::Other {
                kind: other.to_owned(),
                payload: payload.clone(),
            },
        })
    }
}

/// One datagram from a publisher: its envelope, its message, and the JSON object it was read
/// from, kept whole so it can be forwarded unchanged without parsing twice.
///
/// Unknown fields are not an error; they stay in [`Datagram::json`].
#[derive(Debug, Clone, PartialEq)]
pub struct Datagram {
    envelope: Envelope,
    message: Message,
    json: Map<String, Value>,
}

impl Datagram {
    /// Reads a datagram as received from the socket.
    ///
    /// Checks, in order: length (at most [`MAX_DATAGRAM_LEN`]), UTF-8, JSON, that it is an
    /// object, the envelope, then the payload of the known message types. Never panics.
    ///
    /// ```
    /// use smurf_protocol::{Datagram, Message, ParseError};
    ///
    /// let datagram = Datagram::parse(
    ///     br#"{"id": "crate1slot2", "type": "log", "payload": {"message": "tuning"}}"#,
    /// )?;
    /// assert_eq!(datagram.envelope().pub_id, "crate1slot2");
    /// assert!(matches!(datagram.message(), Message::Log(log) if log.message == "tuning"));
    ///
    /// let err = Datagram::parse(br#"{"id": "crate1slot2", "type": "data_file", "payload": {}}"#);
    /// assert!(matches!(err, Err(ParseError::MissingField { field: "payload.path" })));
    /// # Ok::<(), ParseError>(())
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Datagram, ParseError> {
        if bytes.len() > MAX_DATAGRAM_LEN {
            return Err(ParseError::TooLarge { len: bytes.len() });
        }
        // Checking UTF-8 first gives a byte offset; `from_str` then does not check it again.
        let text = std::str::from_utf8(bytes).map_err(|source| ParseError::NotUtf8 {
            offset: source.valid_up_to(),
            source,
        })?;
        let value: Value = serde_json::from_str(text).map_err(|source| ParseError::NotJson {
            line: source.line(),
            column: source.column(),
            source,
        })?;
        match value {
            Value::Object(json) => Datagram::from_json(json),
            other => Err(ParseError::NotObject {
                found: field::kind_of(&other),
            }),
        }
    }

    /// Reads a datagram from a JSON object that is already parsed, as one received from an
    /// OCS feed.
    pub fn from_json(json: Map<String, Value>) -> Result<Datagram, ParseError> {
        let envelope = Envelope::from_json(&json)?;
        let payload = field::required(&json, "payload")?;
        let message = Message::from_json(&envelope.kind, payload)?;
        Ok(Datagram {
            envelope,
            message,
            json,
        })
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The message, typed by the envelope's `type`.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The payload as sent; `null` if it was `null`.
    pub fn payload(&self) -> &Value {
        static NULL: Value = Value::Null;
        // `from_json` checked that the key is present, so `NULL` is never used.
        self.json.get("payload").unwrap_or(&NULL)
    }

    /// The whole datagram as the JSON object it was read from, unknown fields included.
    pub fn json(&self) -> &Map<String, Value> {
        &self.json
    }

    /// The JSON object, for forwarding without a copy.
    pub fn into_json(self) -> Map<String, Value> {
        self.json
    }

    /// The message, dropping the rest.
    pub fn into_message(self) -> Message {
        self.message
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Summarises a result without error sources, so tests compare exact variants and fields.
    fn summary(result: &Result<Datagram, ParseError>) -> String {
        match result {
            Ok(datagram) => format!("Ok({})", datagram.message().kind()),
            Err(ParseError::NotUtf8 { offset, .. }) => format!("NotUtf8 {{ offset: {offset} }}"),
            Err(ParseError::NotJson { line, column, .. }) => {
                format!("NotJson {{ line: {line}, column: {column} }}")
            }
            Err(err) => format!("{err:?}"),
        }
    }

    #[track_caller]
    fn check(input: &[u8], expected: &str) {
        let result = Datagram::parse(input);
        assert_eq!(
            summary(&result),
            expected,
            "input: {}",
            String::from_utf8_lossy(&input[..input.len().min(200)])
        );
    }

    /// A pysmurf `data_file` datagram with `payload` replaced.
    fn data_file(payload: Value) -> Vec<u8> {
        datagram_with("data_file", payload)
    }

    fn datagram_with(kind: &str, payload: Value) -> Vec<u8> {
        json!({
            "host": "smurf-srv", "id": "crate1slot2", "script": "pysmurf", "time": 1_700_000_000.25,
            "seq_no": 3, "type": kind, "payload": payload,
        })
        .to_string()
        .into_bytes()
    }

    fn pysmurf_file_payload() -> Value {
        json!({
            "path": "/data/smurf_data/20231114/1700000000/outputs/1700000000_tune.npy",
            "type": "tuning", "format": "npy", "timestamp": 1_700_000_000.5, "action": "tune",
            "action_ts": "1700000000", "plot": false, "pysmurf_version": "7.3.0",
        })
    }

    fn parsed_file(payload: Value) -> FilePayload {
        match Datagram::parse(&data_file(payload)).map(Datagram::into_message) {
            Ok(Message::DataFile(file)) => file,
            other => panic!("not a data_file: {other:?}"),
        }
    }

    #[test]
    fn too_large() {
        let mut big = data_file(pysmurf_file_payload());
        big.resize(MAX_DATAGRAM_LEN + 1, b' ');
        check(&big, "TooLarge { len: 64001 }");
    }

    #[test]
    fn exactly_max_len_is_accepted() {
        let mut max = data_file(pysmurf_file_payload());
        max.resize(MAX_DATAGRAM_LEN, b' ');
        check(&max, "Ok(data_file)");
    }

    #[test]
    fn not_utf8() {
        check(b"{\"id\": \"a\xff\"}", "NotUtf8 { offset: 9 }");
    }

    #[test]
    fn not_json() {
        check(
            b"{\"id\": \"a\",\n \"type\": }",
            "NotJson { line: 2, column: 10 }",
        );
        check(b"", "NotJson { line: 1, column: 0 }");
        check(b"{} trailing", "NotJson { line: 1, column: 4 }");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut deep = "[".repeat(20_000);
        deep.push_str(&"]".repeat(20_000));
        check(deep.as_bytes(), "NotJson { line: 1, column: 128 }");
    }

    #[test]
    fn not_an_object() {
        check(b"[1, 2]", r#"NotObject { found: "array" }"#);
        check(b"\"data_file\"", r#"NotObject { found: "string" }"#);
        check(b"null", r#"NotObject { found: "null" }"#);
    }

    #[test]
    fn missing_envelope_field() {
        check(
            br#"{"type": "start", "payload": {}}"#,
            r#"MissingField { field: "id" }"#,
        );
        check(
            br#"{"id": "a", "payload": {}}"#,
            r#"MissingField { field: "type" }"#,
        );
        check(
            br#"{"id": "a", "type": "start"}"#,
            r#"MissingField { field: "payload" }"#,
        );
    }

    #[test]
    fn missing_payload_field() {
        check(
            &data_file(json!({"type": "tuning"})),
            r#"MissingField { field: "payload.path" }"#,
        );
        check(
            &datagram_with("metadata", json!({"path": "AMCc.x", "type": "int"})),
            r#"MissingField { field: "payload.value" }"#,
        );
        check(
            &datagram_with("log", json!({})),
            r#"MissingField { field: "payload.message" }"#,
        );
    }

    #[test]
    fn mistyped_envelope_field() {
        check(
            br#"{"id": 7, "type": "start", "payload": {}}"#,
            r#"MistypedField { field: "id", expected: "string", found: "integer" }"#,
        );
        check(
            br#"{"id": "a", "type": "start", "payload": {}, "time": "now"}"#,
            r#"MistypedField { field: "time", expected: "number or null", found: "string" }"#,
        );
        check(
            br#"{"id": "a", "type": "start", "payload": {}, "seq_no": -1}"#,
            r#"MistypedField { field: "seq_no", expected: "non-negative integer or null", found: "integer" }"#,
        );
        check(
            br#"{"id": "a", "type": null, "payload": {}}"#,
            r#"MistypedField { field: "type", expected: "string", found: "null" }"#,
        );
    }

    #[test]
    fn mistyped_payload_field() {
        check(
            &data_file(json!("/data/file.npy")),
            r#"MistypedField { field: "payload", expected: "object", found: "string" }"#,
        );
        check(
            &data_file(json!({"path": null})),
            r#"MistypedField { field: "payload.path", expected: "string", found: "null" }"#,
        );
        check(
            &data_file(json!({"path": "/f", "plot": 2})),
            r#"MistypedField { field: "payload.plot", expected: "boolean, 0, 1 or null", found: "integer" }"#,
        );
        check(
            &data_file(json!({"path": "/f", "action_ts": "yesterday"})),
            r#"MistypedField { field: "payload.action_ts", expected: "integer, float, numeric string or null", found: "non-numeric string" }"#,
        );
        check(
            &data_file(json!({"path": "/f", "timestamp": [1]})),
            r#"MistypedField { field: "payload.timestamp", expected: "number, numeric string or null", found: "array" }"#,
        );
        check(
            &datagram_with("backend_error", json!({"message": 5})),
            r#"MistypedField { field: "payload.message", expected: "string", found: "integer" }"#,
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        let err = |input: &[u8]| match Datagram::parse(input) {
            Err(err) => err.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            err(&data_file(json!({"path": "/f", "plot": "yes"}))),
            "field `payload.plot` is string, expected boolean, 0, 1 or null"
        );
        assert_eq!(
            err(&data_file(json!({}))),
            "datagram has no field `payload.path`"
        );
        assert_eq!(
            err(&[b' '; MAX_DATAGRAM_LEN + 5]),
            "datagram is 64005 bytes, over the limit of 64000"
        );
        assert_eq!(
            err(b"\xc3"),
            "datagram is not UTF-8: invalid byte at offset 0"
        );
    }

    #[test]
    fn pysmurf_data_file() {
        let datagram = Datagram::parse(&data_file(pysmurf_file_payload())).expect("parses");
        assert_eq!(
            datagram.envelope(),
            &Envelope {
                host: Some("smurf-srv".to_owned()),
                pub_id: "crate1slot2".to_owned(),
                script_id: Some("pysmurf".to_owned()),
                time: Some(1_700_000_000.25),
                seq_no: Some(3),
                kind: "data_file".to_owned(),
            }
        );
        assert_eq!(
            datagram.message(),
            &Message::DataFile(FilePayload {
                path: "/data/smurf_data/20231114/1700000000/outputs/1700000000_tune.npy".to_owned(),
                file_type: Some("tuning".to_owned()),
                format: Some("npy".to_owned()),
                timestamp: Some(1_700_000_000.5),
                action: Some("tune".to_owned()),
                action_ts: Some(1_700_000_000),
                plot: Some(false),
                pysmurf_version: Some("7.3.0".to_owned()),
                archive_name: None,
            })
        );
    }

    #[test]
    fn file_fields_publishers_vary_on() {
        let file = parsed_file(json!({
            "path": "/f", "type": "tuning", "format": "", "timestamp": 1_700_000_000,
            "action": null, "action_ts": null, "plot": 1,
        }));
        assert_eq!(file.format.as_deref(), Some(""));
        assert_eq!(file.timestamp, Some(1_700_000_000.0));
        assert_eq!((file.action, file.action_ts), (None, None));
        assert_eq!(file.plot, Some(true));
        assert_eq!(file.pysmurf_version, None);

        let file = parsed_file(json!({"path": "/f", "action_ts": 1_700_000_000.99, "plot": 0}));
        assert_eq!(file.action_ts, Some(1_700_000_000));
        assert_eq!(file.plot, Some(false));
    }

    #[test]
    fn streamer_g3_file_has_only_path_and_archive() {
        let datagram = Datagram::parse(&datagram_with(
            "g3_file",
            json!({"path": "/data/so/timestreams/17000/crate1slot2/1700000000_000.g3",
                   "archive_name": "timestreams"}),
        ))
        .expect("parses");
        let Message::G3File(file) = datagram.message() else {
            panic!("not a g3_file: {datagram:?}");
        };
        assert_eq!(file.archive_name.as_deref(), Some("timestreams"));
        assert_eq!(
            (file.file_type.as_ref(), file.timestamp, file.plot),
            (None, None, None)
        );
    }

    #[test]
    fn metadata_and_stream_id() {
        let mut json = json!({
            "host": "smurf-srv", "id": "STREAMER:crate1slot2", "script": null, "time": 1.5,
            "seq_no": 0, "type": "metadata",
            "payload": {"path": "AMCc.enableStreaming", "type": "int", "value": null},
        });
        let datagram = Datagram::parse(json.to_string().as_bytes()).expect("parses");
        assert_eq!(datagram.envelope().stream_id(), "crate1slot2");
        assert_eq!(datagram.envelope().script_id, None);
        assert_eq!(
            datagram.message(),
            &Message::Metadata(MetadataPayload {
                path: "AMCc.enableStreaming".to_owned(),
                value_type: "int".to_owned(),
                value: Value::Null,
            })
        );

        json["id"] = json!("unidentified");
        let datagram = Datagram::parse(json.to_string().as_bytes()).expect("parses");
        assert_eq!(datagram.envelope().stream_id(), "unidentified");
    }

    #[test]
    fn session_messages_keep_the_object_whole() {
        let sent = json!({
            "host": "h", "id": "crate1slot2", "script": "s", "time": 2.0, "seq_no": 9,
            "type": "session_data", "payload": {"datafile": "/f.dat", "active_channels": [0, 1]},
            "extra": {"kept": true},
        });
        let datagram = Datagram::parse(sent.to_string().as_bytes()).expect("parses");
        assert_eq!(datagram.message(), &Message::SessionData);
        assert_eq!(datagram.payload(), &sent["payload"]);
        assert_eq!(Value::Object(datagram.into_json()), sent);

        let log = Datagram::parse(&datagram_with("session_log", json!("line"))).expect("parses");
        assert_eq!(log.message(), &Message::SessionLog);
        assert_eq!(log.payload(), &json!("line"));
    }

    #[test]
    fn unknown_type_is_other_with_payload() {
        let datagram =
            Datagram::parse(&datagram_with("general", json!([1, "two"]))).expect("parses");
        assert_eq!(
            datagram.message(),
            &Message::Other {
                kind: "general".to_owned(),
                payload: json!([1, "two"]),
            }
        );
        assert_eq!(datagram.message().kind(), "general");
    }

    #[test]
    fn minimal_envelope_and_start_stop() {
        check(
            br#"{"id": "a", "type": "start", "payload": {}}"#,
            "Ok(start)",
        );
        check(
            br#"{"id": "a", "type": "stop", "payload": null}"#,
            "Ok(stop)",
        );
        check(
            br#"{"id": "a", "type": "log", "payload": {"message": "hi"}, "script": null}"#,
            "Ok(log)",
        );
    }

    /// Strings that are field names or type strings, so generated objects often look like
    /// datagrams, plus arbitrary text.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "id", "type", "payload", "host", "script", "time", "seq_no", "path", "format",
                "timestamp", "action", "action_ts", "plot", "pysmurf_version", "archive_name",
                "value", "message", "data_file", "g3_file", "metadata", "log", "backend_error",
                "session_data", "session_log", "start", "stop", "STREAMER:x", "1700000000", "",
            ])
            .prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (0u8..3).prop_map(Value::from),
            word().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(word(), inner, 0..10)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Objects with the envelope's keys, a known or random type, and a random payload.
    fn datagram_like() -> impl Strategy<Value = Value> {
        (
            prop::collection::btree_map(word(), json_value(), 0..8),
            word(),
            prop_oneof![3 => word().prop_map(Value::from), 1 => json_value()],
            prop::collection::btree_map(word(), json_value(), 0..10),
        )
            .prop_map(|(envelope, kind, id, payload)| {
                let mut map: Map<String, Value> = envelope.into_iter().collect();
                map.insert("type".to_owned(), Value::from(kind));
                map.insert("id".to_owned(), id);
                map.insert(
                    "payload".to_owned(),
                    Value::Object(payload.into_iter().collect()),
                );
                Value::Object(map)
            })
    }

    /// Values a publisher might plausibly send for `key`, and now and then anything.
    fn field_value(key: &'static str) -> BoxedStrategy<Value> {
        let plausible = match key {
            "timestamp" | "action_ts" | "time" => prop_oneof![
                (-1e10f64..1e10).prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<i64>().prop_map(|n| Value::from(n.to_string())),
                (-1e10f64..1e10).prop_map(|f| Value::from(f.to_string())),
            ]
            .boxed(),
            "plot" => prop_oneof![
                any::<bool>().prop_map(Value::from),
                (0u8..2).prop_map(Value::from)
            ]
            .boxed(),
            "seq_no" => any::<u64>().prop_map(Value::from).boxed(),
            "value" => json_value().boxed(),
            _ => word().prop_map(Value::from).boxed(),
        };
        prop_oneof![12 => plausible, 1 => Just(Value::Null), 1 => json_value()].boxed()
    }

    /// An object whose keys are a random subset of `keys`, each with a plausible value.
    fn object_of(keys: &'static [&'static str]) -> impl Strategy<Value = Map<String, Value>> {
        let fields: Vec<_> = keys
            .iter()
            .map(|&key| {
                proptest::option::weighted(0.9, field_value(key)).prop_map(move |v| (key, v))
            })
            .collect();
        fields.prop_map(|fields| {
            fields
                .into_iter()
                .filter_map(|(key, value)| Some((key.to_owned(), value?)))
                .collect()
        })
    }

    /// Datagrams of the known kinds that are mostly well formed.
    fn plausible_datagram() -> impl Strategy<Value = Value> {
        let kind = prop::sample::select(vec![
            "data_file",
            "g3_file",
            "metadata",
            "log",
            "backend_error",
            "session_data",
            "session_log",
            "start",
            "stop",
            "general",
        ]);
        let payload = prop_oneof![
            object_of(&[
                "path",
                "type",
                "format",
                "timestamp",
                "action",
                "action_ts",
                "plot",
                "pysmurf_version",
                "archive_name",
            ]),
            object_of(&["path", "type", "value"]),
            object_of(&["message"]),
        ];
        (
            object_of(&["host", "id", "script", "time", "seq_no"]),
            kind,
            payload,
        )
            .prop_map(|(mut envelope, kind, payload)| {
                envelope.insert("type".to_owned(), Value::from(kind));
                envelope.insert("payload".to_owned(), Value::Object(payload));
                Value::Object(envelope)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Datagram::parse(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let _ = Datagram::parse(value.to_string().as_bytes());
        }

        #[test]
        fn datagram_like_json_never_panics(value in datagram_like()) {
            let bytes = value.to_string().into_bytes();
            if let Ok(datagram) = Datagram::parse(&bytes) {
                prop_assert_eq!(datagram.message().kind(), datagram.envelope().kind.as_str());
                prop_assert_eq!(Value::Object(datagram.into_json()), value);
            }
        }

        #[test]
        fn plausible_datagrams_never_panic(value in plausible_datagram()) {
            let bytes = value.to_string().into_bytes();
            if let Ok(datagram) = Datagram::parse(&bytes) {
                prop_assert_eq!(datagram.message().kind(), datagram.envelope().kind.as_str());
                prop_assert_eq!(Value::Object(datagram.into_json()), value);
            }
        }

        #[test]
        fn file_payload_round_trips(
            path in any::<String>(),
            file_type in proptest::option::of(any::<String>()),
            format in proptest::option::of(any::<String>()),
            timestamp in proptest::option::of(-1e12f64..1e12),
            action in proptest::option::of(any::<String>()),
            action_ts in proptest::option::of(any::<i64>()),
            plot in proptest::option::of(any::<bool>()),
            pysmurf_version in proptest::option::of(any::<String>()),
            archive_name in proptest::option::of(any::<String>()),
        ) {
            let file = FilePayload {
                path, file_type, format, timestamp, action, action_ts, plot, pysmurf_version,
                archive_name,
            };
            let parsed = Datagram::parse(&data_file(file.to_json())).map(Datagram::into_message);
            prop_assert_eq!(parsed.ok(), Some(Message::DataFile(file)));
        }
    }
}
