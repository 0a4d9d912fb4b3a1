//! `monitor-core` owns the pysmurf monitor's pipeline: from a received UDP
//! datagram to a committed row of `pysmurf_files_v1` or an OCS feed message,
//! losing nothing and doubling nothing on the way. It does not own how the
//! monitor is launched (arguments, logging, signals: `bins/pysmurf-monitor`),
//! the datagram format (`smurf-protocol`), SQL (`files-db`), being an OCS
//! agent (`ocs-feed`), or what it shares with `pysmurf-files-manager` about a
//! file registration: its row, the md5 of its file, the dead-letter line
//! (`file-registration`).
//!
//! The pipeline ([`Monitor`]): receiver → router → spool →
//! [`FileHasher`](file_registration::FileHasher)
//! → batcher → [`files_db::FilesDb`], with `session_data`/`session_log`
//! datagrams relayed unchanged on [`SESSION_FEED`] and streamer metadata on
//! `<stream-id>_meta`. A registration is durable in the spool before anything
//! else happens to it and leaves it only once its row is committed or it is
//! written to the dead-letter file (`dead_letters.jsonl` in the spool
//! directory) with the reason. Counters are in
//! [`MonitorStats`]; [`MonitorBuilder::ocs_agent`] adds the OCS `init` task
//! and `run` process to an agent.
//!
//! Embedding it in another agent:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use files_db::{DbTarget, FilesDb};
//! use file_registration::Recorder;
//! use monitor_core::{bind_udp, Monitor, OpsConfig, PipelineOptions};
//! use ocs_feed::{Agent, SiteConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let site = SiteConfig::new("ws://127.0.0.1:8001/ws", "test_realm", "observatory", "my-monitor");
//! let agent = Agent::new("PysmurfMonitor", site);
//! let db = FilesDb::connect_lazy(&DbTarget::sqlite("pysmurf_files.db")).await?;
//! db.create_table().await?;
//! let recorder = Recorder::this_program("observatory", "my-monitor");
//! let monitor = Monitor::builder(db, recorder, "spool")
//!     .options(PipelineOptions::default())
//!     .ocs_agent(&agent, OpsConfig::default())
//!     .build()
//!     .await?;
//!
//! let shutdown = CancellationToken::new();
//! tokio::spawn({ let (agent, shutdown) = (agent.clone(), shutdown.clone()); async move { agent.run(shutdown).await } });
//! // Err when the pipeline stopped on its own (e.g. the socket failed): exit non-zero.
//! monitor.run(bind_udp("127.0.0.1:8200".parse()?)?, shutdown).await?;
//! # Ok(()) }
//! ```

mod dead_letter;
mod fault;
mod guard;
mod journal;
mod ops;
mod pipeline;
mod socket;
mod spool;
mod stats;

pub use guard::{AllowList, IpNet, IpNetParseError};
pub use pipeline::{
    Monitor, MonitorBuilder, MonitorError, OpsConfig, PipelineError, PipelineOptions, SESSION_FEED,
    STATS_FEED,
};
pub use socket::bind_udp;
pub use spool::SpoolError;
#[cfg(feature = "fuzzing")]
pub use spool::{Spool, SpoolId, SpooledRecord};
pub use stats::{MonitorStats, RejectReason};
