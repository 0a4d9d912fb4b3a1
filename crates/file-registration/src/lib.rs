//! `file-registration` owns what both binaries know about a *file
//! registration*, so that the monitor (`monitor-core`) and
//! `pysmurf-files-manager` can never disagree on it:
//!
//! - the row a `data_file` / `g3_file` datagram registers ([`file_row`],
//!   [`registered_path`]) and who records it ([`Recorder`]);
//! - the md5 of the registered file ([`FileHasher`]), waiting for a file that
//!   is not there yet as its [`WaitPolicy`] says, refusing files outside the
//!   data roots ([`HashError`]);
//! - pysmurf's directory layout, which gives the columns of a file that was
//!   never announced ([`LayoutColumns`], for `backfill`);
//! - the line format of the monitor's dead-letter file ([`DeadLetterLine`],
//!   times as [`epoch_seconds`]), written by the monitor and read back by
//!   `replay-dead-letters`.
//!
//! It does not own the datagram format (`smurf-protocol`), the table and its
//! SQL (`files-db`: this crate only fills a [`files_db::FileRow`]), or any
//! of the monitor's machinery: the spool, the pipeline's stages, writing the
//! dead-letter file, OCS (`monitor-core`, `ocs-feed`). It depends on
//! `smurf-protocol` and `files-db` only, so the files manager gets no
//! WebSocket or OCS code through it.
//!
//! The row a file datagram registers:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use file_registration::{file_row, FileHasher, Recorder, WaitPolicy};
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

mod dead_letter;
mod hasher;
mod layout;
mod registration;

pub use dead_letter::{epoch_seconds, DeadLetterLine};
pub use hasher::{FileHasher, HashError, WaitPolicy};
pub use layout::LayoutColumns;
pub use registration::{file_row, registered_path, Recorder};
