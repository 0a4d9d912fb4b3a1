//! The pysmurf publisher's UDP datagram as Rust types.
//!
//! pysmurf, the smurf-streamer and other smurf tools send one JSON object per UDP datagram:
//! an envelope (`host`, `id`, `script`, `time`, `seq_no`, `type`) around a `payload`. This
//! crate owns that contract: it reads datagrams ([`Datagram::parse`]), names what is wrong
//! with bad ones ([`ParseError`]), and sends them ([`Publisher`]).
//!
//! It does not own sockets beyond [`Publisher`]'s, databases, or OCS feeds: the monitor
//! receives the bytes, decides what to do with each [`Message`], and forwards
//! [`Datagram::json`] where a feed wants the datagram unchanged.
//!
//! # Main types
//!
//! - [`Datagram`]: one parsed datagram: its [`Envelope`], its [`Message`], and the JSON
//!   object it came from, parsed once.
//! - [`Message`]: what the datagram says, by `type`: files to record ([`FilePayload`]),
//!   streamer metadata ([`MetadataPayload`]), log lines ([`LogPayload`]), session data and
//!   logs, start and stop, and any other type kept as it came.
//! - [`ParseError`]: why a datagram was refused, naming the field and what it held.
//! - [`Publisher`] and [`PublishError`]: a blocking UDP sender with pysmurf's envelope.
//!
//! Parsing is lenient where real publishers differ (a `null` or missing optional field is
//! `None`, `plot` may be 0/1, timestamps may be strings) but never fills in data that was
//! not sent.
//!
//! # Example
//!
//! ```
//! use smurf_protocol::{Datagram, Message};
//!
//! let bytes = br#"{"host": "smurf-srv", "id": "crate1slot2", "script": "tune.py",
//!     "time": 1700000000.5, "seq_no": 4, "type": "data_file",
//!     "payload": {"path": "/data/smurf_data/tune.npy", "type": "tuning", "format": "npy",
//!                 "timestamp": 1700000000.4, "action": "tune", "action_ts": "1700000000",
//!                 "plot": false, "pysmurf_version": "7.3.0"}}"#;
//!
//! let datagram = Datagram::parse(bytes)?;
//! match datagram.message() {
//!     Message::DataFile(file) => {
//!         assert_eq!(file.path, "/data/smurf_data/tune.npy");
//!         assert_eq!(file.action_ts, Some(1_700_000_000));
//!     }
//!     other => panic!("expected a data_file, got {other:?}"),
//! }
//! assert_eq!(datagram.envelope().seq_no, Some(4));
//! # Ok::<(), smurf_protocol::ParseError>(())
//! ```

mod datagram;
mod error;
mod field;
mod payload;
mod publisher;

pub use datagram::{Datagram, Envelope, Message, MAX_DATAGRAM_LEN};
pub use error::ParseError;
pub use payload::{FilePayload, LogPayload, MetadataPayload};
pub use publisher::{PublishError, Publisher, PublisherConfig};
