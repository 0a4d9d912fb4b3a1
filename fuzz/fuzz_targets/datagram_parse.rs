//! Arbitrary bytes into `smurf_protocol::Datagram::parse`.
//!
//! Checks that parsing never panics, that the errors it gives agree with the input (length,
//! UTF-8), and for what parses:
//!
//! - the accessors agree with each other (`kind`, `payload`, `stream_id`, `into_message`,
//!   `into_json`);
//! - `Datagram::from_json` of the kept object gives the same datagram;
//! - the kept object, serialised again, parses to the same datagram (serde_json's
//!   `float_roundtrip` makes floats exact), unless the text grew over `MAX_DATAGRAM_LEN`
//!   (`1e5` comes back as `100000.0`), which must then be `TooLarge`;
//! - a typed payload written back with its `to_json` reads as the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use smurf_protocol::{Datagram, Message, ParseError, MAX_DATAGRAM_LEN};

fuzz_target!(|bytes: &[u8]| check(bytes));

fn check(bytes: &[u8]) {
    match Datagram::parse(bytes) {
        Ok(datagram) => check_parsed(datagram),
        Err(err) => check_error(bytes, &err),
    }
}

fn check_error(bytes: &[u8], err: &ParseError) {
    // Display and the source chain must not panic either.
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    assert!(!text.is_empty());
    match err {
        ParseError::TooLarge { len } => {
            assert_eq!(*len, bytes.len());
            assert!(bytes.len() > MAX_DATAGRAM_LEN);
        }
        _ => assert!(bytes.len() <= MAX_DATAGRAM_LEN, "{err:?}"),
    }
    let utf8 = std::str::from_utf8(bytes);
    match err {
        ParseError::TooLarge { .. } => {}
        ParseError::NotUtf8 { offset, .. } => {
            let Err(utf8_err) = utf8 else {
                panic!("valid UTF-8 refused as not UTF-8: {err:?}")
            };
            assert_eq!(*offset, utf8_err.valid_up_to());
        }
        _ => assert!(utf8.is_ok(), "invalid UTF-8 not reported as such: {err:?}"),
    }
}

fn check_parsed(datagram: Datagram) {
    let envelope = datagram.envelope();
    let message = datagram.message();
    assert_eq!(message.kind(), envelope.kind);
    assert!(envelope.pub_id.ends_with(envelope.stream_id()));
    assert_eq!(Some(datagram.payload()), datagram.json().get("payload"));
    assert_eq!(
        datagram.json().get("type").and_then(Value::as_str),
        Some(envelope.kind.as_str())
    );
    assert_eq!(
        datagram.json().get("id").and_then(Value::as_str),
        Some(envelope.pub_id.as_str())
    );
    let _ = format!("{datagram:?}");

    // The object it kept reads as the same datagram, typed or as text.
    let again = Datagram::from_json(datagram.json().clone());
    assert_eq!(again.as_ref().ok(), Some(&datagram));
    let text = serde_json::to_vec(datagram.json()).expect("a JSON object serialises");
    match Datagram::parse(&text) {
        Ok(reparsed) => assert_eq!(reparsed, datagram),
        Err(ParseError::TooLarge { len }) if len > MAX_DATAGRAM_LEN => {}
        Err(err) => panic!("re-serialised datagram refused: {err:?}"),
    }

    // A typed payload written back by its own `to_json` reads the same.
    let written = match message {
        Message::DataFile(file) | Message::G3File(file) => {
            assert!(datagram.payload().get("path").is_some());
            Some(file.to_json())
        }
        Message::Metadata(metadata) => Some(metadata.to_json()),
        Message::Log(log) | Message::BackendError(log) => Some(log.to_json()),
        Message::Other { kind, payload } => {
            assert_eq!(kind, &envelope.kind);
            assert_eq!(payload, datagram.payload());
            None
        }
        Message::SessionData | Message::SessionLog | Message::Start | Message::Stop => None,
    };
    if let Some(payload) = written {
        let mut json: Map<String, Value> = datagram.json().clone();
        json.insert("payload".to_owned(), payload);
        let rewritten = Datagram::from_json(json).map(Datagram::into_message);
        assert_eq!(rewritten.as_ref().ok(), Some(message));
    }

    let expected_json = datagram.json().clone();
    let expected_message = message.clone();
    assert_eq!(datagram.clone().into_json(), expected_json);
    assert_eq!(datagram.into_message(), expected_message);
}
