//! `monitor-core` owns the pysmurf monitor's pipeline: from a received UDP
//! datagram to a committed row of `pysmurf_files_v1` or an OCS feed message,
//! losing nothing and doubling nothing on the way. It does not own how the
//! monitor is launched (arguments, logging, signals: `bins/pysmurf-monitor`),
//! the datagram format (`smurf-protocol`), SQL (`files-db`) or being an OCS
//! agent (`ocs-feed`).
//!
//! The pipeline ([`Monitor`]): receiver → router → [`Spool`] → [`FileHasher`]
//! → batcher → [`files_db::FilesDb`], with `session_data`/`session_log`
//! datagrams relayed unchanged on [`SESSION_FEED`] and streamer metadata on
//! `<stream-id>_meta`. A registration is durable in the spool before anything
//! else happens to it and leaves it only once its row is committed or it is
//! written to the [`DeadLetters`] file with the reason. Counters are in
//! [`MonitorStats`]; [`Monitor::register_ops`] adds the OCS `init` task and
//! `run` process to an agent.
//!
//! Embedding it in another agent:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use files_db::{DbTarget, FilesDb};
//! use monitor_core::{bind_udp, Monitor, PipelineOptions, Recorder};
//! use ocs_feed::{Agent, SiteConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let site = SiteConfig::new("ws://127.0.0.1:8001/ws", "test_realm", "observatory", "my-monitor");
//! let agent = Agent::new("PysmurfMonitor", site);
//! let db = FilesDb::connect_lazy(&DbTarget::sqlite("pysmurf_files.db")).await?;
//! db.create_table().await?;
//! let recorder = Recorder::this_program("observatory", "my-monitor");
//! let monitor = Monitor::new(db, Some(agent.clone()), recorder, "spool".into(), PipelineOptions::default()).await?;
//! monitor.register_ops(&agent, true)?;
//!
//! let shutdown = CancellationToken::new();
//! tokio::spawn({ let (agent, shutdown) = (agent.clone(), shutdown.clone()); async move { agent.run(shutdown).await } });
//! // Err when the pipeline stopped on its own (e.g. the socket failed): exit non-zero.
//! monitor.run(bind_udp("127.0.0.1:8200".parse()?)?, shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! The pieces are usable alone too, e.g. the row a file datagram registers:
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

mod dead_letter;
mod fault;
mod guard;
mod hasher;
mod ops;
mod pipeline;
mod registration;
mod socket;
mod spool;
mod stats;

pub use dead_letter::{epoch_seconds, DeadLetter, DeadLetterError, DeadLetterLine, DeadLetters};
pub use guard::{AllowList, IpNet, IpNetParseError};
pub use hasher::{FileHasher, HashError, WaitPolicy};
pub use pipeline::{
    Monitor, MonitorError, PipelineError, PipelineOptions, DEGRADED_SPOOL_DEPTH, SESSION_FEED,
    STATS_FEED,
};
pub use registration::{file_row, registered_path, Recorder};
pub use socket::{bind_udp, RECEIVE_BUFFER_BYTES};
pub use spool::{Spool, SpoolCursor, SpoolError, SpoolId, SpoolPage, SpooledRecord};
pub use stats::{MonitorStats, RejectReason};
