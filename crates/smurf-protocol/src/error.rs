//! What can be wrong with a datagram.

use crate::MAX_DATAGRAM_LEN;

/// Why [`Datagram::parse`](crate::Datagram::parse) rejected a datagram.
///
/// Each variant names what was found, so a caller can log it next to the sender without
/// re-reading the bytes. Field names are dotted paths from the top of the datagram, as
/// `"id"` or `"payload.path"`.
///
/// Kinds of JSON value are named `"null"`, `"boolean"`, `"integer"`, `"float"`, `"string"`,
/// `"array"` and `"object"`; a string that should have held a number is named
/// `"non-numeric string"`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The datagram is longer than [`MAX_DATAGRAM_LEN`], which no publisher sends.
    #[error("datagram is {len} bytes, over the limit of {MAX_DATAGRAM_LEN}")]
    TooLarge {
        /// Length of the datagram in bytes.
        len: usize,
    },

    /// The datagram is not UTF-8 text.
    #[error("datagram is not UTF-8: invalid byte at offset {offset}")]
    NotUtf8 {
        /// Offset of the first byte that is not part of valid UTF-8.
        offset: usize,
        /// The decoding error.
        #[source]
        source: std::str::Utf8Error,
    },

    /// The datagram is text but not one JSON value.
    #[error("datagram is not JSON: error at line {line}, column {column}")]
    NotJson {
        /// Line of the error, counted from 1.
        line: usize,
        /// Column of the error in bytes, counted from 1 (0 when the text ended early on an
        /// empty line).
        column: usize,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// The datagram is JSON but not an object.
    #[error("datagram is a JSON {found}, not an object")]
    NotObject {
        /// The kind of JSON value found.
        found: &'static str,
    },

    /// A required field is absent.
    #[error("datagram has no field `{field}`")]
    MissingField {
        /// Dotted name of the field, as `"payload.path"`.
        field: &'static str,
    },

    /// A field holds a value of the wrong kind.
    #[error("field `{field}` is {found}, expected {expected}")]
    MistypedField {
        /// Dotted name of the field, as `"payload.plot"`.
        field: &'static str,
        /// What the field may hold, as `"boolean or 0/1"`.
        expected: &'static str,
        /// The kind of JSON value found.
        found: &'static str,
    },
}
