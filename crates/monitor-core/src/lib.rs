//! `monitor-core` owns the pysmurf monitor's pipeline: from a received
//! datagram to a committed row or a feed message. It will not own how the
//! monitor is launched (arguments, logging, signals: `bins/pysmurf-monitor`),
//! the datagram format (`smurf-protocol`), SQL (`files-db`) or OCS
//! (`ocs-feed`).
//!
//! Built so far, the pieces every registration passes through:
//! - [`file_row`]: a `data_file` / `g3_file` datagram and its md5 to the
//!   [`files_db::FileRow`] it registers (with the `.npy` path fix,
//!   [`registered_path`]), stamped by a [`Recorder`];
//! - [`FileHasher`]: md5 on blocking threads with bounded concurrency,
//!   waiting per a [`WaitPolicy`] for files announced before they exist, and
//!   never inventing a digest ([`HashError`]).
//!
//! Still to come (the monitor issue): the UDP receiver, the router, the
//! durable spool, the batcher, the counters, and the `init`/`run` OCS ops.
//! See `docs/architecture.md`.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use monitor_core::{file_row, FileHasher, Recorder, WaitPolicy};
//! use smurf_protocol::{Datagram, Message};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("1700000000_tune.npy");
//! std::fs::write(&path, b"data").unwrap();
//! let json = format!(
//!     r#"{{"id":"crate1slot2","type":"data_file","payload":{{"path":"{}","format":"npy"}}}}"#,
//!     path.display()
//! );
//! let datagram = Datagram::parse(json.as_bytes()).unwrap();
//! let Message::DataFile(file) = datagram.message() else { unreachable!() };
//!
//! let md5 = FileHasher::new(4, WaitPolicy::default()).md5(&path).await.unwrap();
//! let recorder = Recorder::this_program("observatory", "pysmurf-monitor");
//! let row = file_row(datagram.envelope(), file, &recorder, md5);
//! assert_eq!(row.pub_id.as_deref(), Some("crate1slot2"));
//! # });
//! ```

mod hasher;
mod registration;

pub use hasher::{FileHasher, HashError, WaitPolicy};
pub use registration::{file_row, registered_path, Recorder};
