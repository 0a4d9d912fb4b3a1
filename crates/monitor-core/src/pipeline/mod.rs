//! The pipeline: receiver → router → spool → hasher → batcher → database,
//! with session and metadata messages routed to OCS feeds on the way.
//!
//! Each stage is a task; stages talk through bounded channels whose
//! capacities are named below with who absorbs the pressure when one fills.
//! One [`CancellationToken`] stops them in order: the receiver stops
//! reading, each later stage drains what reaches it, the batcher commits
//! what it can within the drain timeout, and whatever is not committed stays
//! in the spool for the next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use file_registration::{epoch_seconds, FileHasher, Recorder, WaitPolicy};
use files_db::{FileRow, FilesDb};
use ocs_feed::{Agent, FeedOptions};
use serde_json::{json, Value};
use smurf_protocol::{Envelope, FilePayload};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::{DeadLetterWriter, DeadLetters};
use crate::guard::AllowList;
use crate::spool::{Spool, SpoolId};
use crate::stats::MonitorStats;

mod batch;
mod journaling;
mod receive;
mod register;
mod route;
mod sinks;
mod supervise;

use batch::Batcher;
use journaling::replay_journal;
use receive::Receiver;
use register::Spooler;
use route::Router;
use sinks::{DeadLetterSink, Feeds, Refusals};
use supervise::Supervisor;

/// The feed that carries `session_data` and `session_log` datagrams,
/// unchanged, to pysmurf-controller agents.
pub const SESSION_FEED: &str = "pysmurf_session_data";

/// The recorded feed of the monitor's own counters.
pub const STATS_FEED: &str = "monitor_stats";

/// Batches of received datagrams waiting for the router (at most
/// 64 × 4096 = 262,144 datagrams, about 100 MB of typical ones, held only
/// during a burst the spool is behind). Each is in the receive journal
/// already, so a long queue costs memory, not safety; it is what lets a
/// monitor without `CAP_NET_ADMIN`, whose socket buffer the kernel caps at
/// `net.core.rmem_max` (a few thousand datagrams), take a 100k burst whole.
/// When full, the receiver stops reading and the kernel's socket buffer
/// absorbs the rest.
const RECEIVED_CAPACITY: usize = 262_144 / receive::RECEIVE_BATCH;

/// File datagrams waiting to be spooled: two spool transactions' worth.
/// When full, the router waits; the received-datagram channel behind it
/// absorbs the pressure.
const TO_SPOOL_CAPACITY: usize = 2 * SPOOL_GROUP;

/// Most records one spool transaction takes.
const SPOOL_GROUP: usize = 4_096;

/// Hashed rows waiting for the batcher. When full, hashing tasks wait;
/// their registrations are already safe in the spool. (Every hashed row
/// holds one of the [`register::IN_MEMORY`] slots, which bounds it anyway.)
const TO_BATCH_CAPACITY: usize = 4_096;

/// Spool depth above which the `run` session reports `degraded`: the
/// database is not keeping up.
pub(crate) const DEGRADED_SPOOL_DEPTH: u64 = 10_000;

/// Longest wait between retries of a database that answers but fails the
/// writes (access denied, a missing table, ...).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How often an unreachable database is probed (one connection attempt each
/// time, on a cluster one per node until one answers): the rows are retried
/// within about this long of the database's return.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How the pipeline is tuned. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Files hashed at once (default 4).
    pub hash_concurrency: usize,
    /// How long to wait for announced files that do not exist yet.
    pub wait_policy: WaitPolicy,
    /// Only hash files under these directories (none: no restriction).
    pub data_roots: Vec<PathBuf>,
    /// Senders heard (empty: everyone).
    pub allow_from: AllowList,
    /// Rows per database transaction at most (default 1000).
    pub batch_rows: usize,
    /// Longest a row waits for its batch to fill (default 5 ms: under load
    /// batches form by themselves while the previous commit runs; the short
    /// wait only gathers the rows of a moderate rate into fewer
    /// transactions, without delaying a lone registration noticeably).
    pub batch_delay: Duration,
    /// After shutdown is requested, how long the stages may keep
    /// committing what they hold (default 10 s).
    pub drain_timeout: Duration,
    /// How often the counters go to the `monitor_stats` feed (default 5 s).
    pub stats_interval: Duration,
    /// Create the table when an insert finds it missing (e.g. a database
    /// restored without it), as `--create-table` asks (default false).
    pub create_missing_table: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            hash_concurrency: 4,
            wait_policy: WaitPolicy::default(),
            data_roots: Vec::new(),
            allow_from: AllowList::default(),
            batch_rows: 1000,
            batch_delay: Duration::from_millis(5),
            drain_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(5),
            create_missing_table: false,
        }
    }
}

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The spool could not be opened or read.
    #[error("cannot use the spool")]
    Spool(#[from] crate::spool::SpoolError),
    /// A data root does not exist or cannot be resolved.
    #[error("unusable data root")]
    DataRoot(#[source] std::io::Error),
    /// The dead-letter writer's thread could not be started.
    #[error("cannot start the dead-letter writer thread")]
    DeadLetterWriter(#[source] std::io::Error),
    /// A feed could not be registered on the agent.
    #[error("cannot register feed")]
    Feed(#[from] ocs_feed::FeedError),
    /// The `init` and `run` operations could not be registered on the agent.
    #[error("cannot register the monitor's OCS operations")]
    Ops(#[source] ocs_feed::AgentError),
    /// A [`Recorder`] value does not fit its column: every row would be
    /// refused by the database.
    #[error("{column} {value:?} is longer than the {max} characters its column holds")]
    RecorderTooLong {
        /// The column: `site`, `instance_id` or `socs_version`.
        column: &'static str,
        /// The value.
        value: String,
        /// The column's size.
        max: usize,
    },
}

/// Why the pipeline stopped on its own: [`Monitor::run`]'s error. The
/// process should exit non-zero so that its service manager restarts it;
/// what the pipeline held is in the spool by then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The receiver's thread or runtime could not be started.
    #[error("cannot start the UDP receiver: {0}")]
    ReceiverStart(#[source] std::io::Error),
    /// The UDP socket failed: nothing more can be received on it.
    #[error("the UDP socket failed, nothing more can be received: {0}")]
    Socket(#[source] std::io::Error),
    /// A stage panicked (a bug; the panic's message is kept).
    #[error("the {stage} stage panicked: {message}")]
    Panicked {
        /// `receiver`, `router`, `spooler`, `hasher`, `batcher` or `stats`.
        stage: &'static str,
        /// The panic's message.
        message: String,
    },
}

/// The pysmurf monitor pipeline, ready to run on a socket.
///
/// Build it with [`Monitor::builder`], run it with [`Monitor::run`]; read
/// its counters through [`Monitor::stats`] while it runs.
pub struct Monitor {
    db: FilesDb,
    recorder: Recorder,
    spool: Spool,
    /// The receive journal's directory (`<spool-dir>/journal`).
    journal_dir: PathBuf,
    hasher: FileHasher,
    options: PipelineOptions,
    stats: Arc<MonitorStats>,
    refusals: Arc<Refusals>,
    dead_letters: Arc<DeadLetterSink>,
    feeds: Arc<Feeds>,
    supervisor: Arc<Supervisor>,
}

/// A datagram as the receiver hands it on.
struct Received {
    sender: SocketAddr,
    received_at: SystemTime,
    /// Shared with the spool's append: never copied after the receive.
    bytes: Arc<[u8]>,
    /// Its receive-journal sequence number (0: not journaled).
    journal_seq: u64,
    /// Replayed from the journal at start-up: read by an earlier run, which
    /// may have routed it already.
    replayed: bool,
}

/// A file registration on its way to the database.
struct Registration {
    /// Its spool record; `None` if the spool failed (kept in memory only).
    spool_id: Option<SpoolId>,
    received: Received,
    envelope: Envelope,
    file: FilePayload,
    /// Its row may already be committed: replayed from an earlier run, or
    /// written by an attempt that failed without an answer (a lost commit
    /// reply). Such rows go through the de-duplicating insert.
    replayed: bool,
    /// Its place among the registrations held in memory, given back when
    /// it is dropped (settled, or waiting for its file on a waiting slot).
    /// `None` before hashing, and for a registration kept in memory only
    /// because the spool failed.
    slot: Option<OwnedSemaphorePermit>,
}

/// A row ready to insert, with what is needed to ack or dead-letter it.
struct Hashed {
    row: FileRow,
    registration: Registration,
}

/// How the monitor's OCS operations start on its agent
/// ([`MonitorBuilder::ocs_agent`]). `Default`: as socs starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpsConfig {
    /// The default of the `init` task's `create_table` param, and what
    /// `init` runs with when it starts at the first join (default true:
    /// the table is created if missing).
    pub create_table: bool,
    /// socs 0.6's `--test-mode`: `run` is not started at the first join
    /// (default false). Either way `run` takes socs's `test_mode` param:
    /// with it true, `run` returns once every registration received so far
    /// is committed or dead-lettered (and the database is up).
    pub test_mode: bool,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            create_table: true,
            test_mode: false,
        }
    }
}

/// What a [`Monitor`] is built from: [`Monitor::builder`], then
/// [`options`](MonitorBuilder::options) and
/// [`ocs_agent`](MonitorBuilder::ocs_agent) as needed, then
/// [`build`](MonitorBuilder::build).
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct MonitorBuilder {
    db: FilesDb,
    recorder: Recorder,
    spool_dir: PathBuf,
    options: PipelineOptions,
    agent: Option<(Agent, OpsConfig)>,
}

impl MonitorBuilder {
    /// Tunes the pipeline (default: [`PipelineOptions::default`]).
    pub fn options(mut self, options: PipelineOptions) -> Self {
        self.options = options;
        self
    }

    /// Publishes on `agent` and adds the monitor's operations to it:
    /// `build` registers the feeds `pysmurf_session_data` ([`SESSION_FEED`])
    /// and `monitor_stats` ([`STATS_FEED`]), the `init` task (creates the
    /// table when its `create_table` param is true) and the `run` process
    /// (shows the counters in its session data every second and sets
    /// `degraded` while the database fails, the spool holds more than
    /// 10,000 registrations, or the pipeline failed).
    /// Without an agent the monitor records files and publishes nothing.
    ///
    /// The pipeline itself runs from [`Monitor::run`] whether or not the
    /// router is reachable: stopping `run` stops its reports, never the
    /// recording of files.
    pub fn ocs_agent(mut self, agent: &Agent, ops: OpsConfig) -> Self {
        self.agent = Some((agent.clone(), ops));
        self
    }

    /// Checks the recorder against the table's columns, opens the spool
    /// (`spool_dir/spool.db`) and the dead-letter file's writer
    /// (`spool_dir/dead_letters.jsonl`), and registers the feeds and
    /// operations on the agent, if one was given.
    pub async fn build(self) -> Result<Monitor, MonitorError> {
        let MonitorBuilder {
            db,
            recorder,
            spool_dir,
            options,
            agent,
        } = self;
        // SupRsync's table has no such columns: only pysmurf_files_v1 limits them.
        let checked = if db.target().is_suprsync() {
            Vec::new()
        } else {
            vec![
                ("site", &recorder.site),
                ("instance_id", &recorder.instance_id),
                ("socs_version", &recorder.program),
            ]
        };
        for (column, value) in checked {
            let max = files_db::max_chars(column).unwrap_or(usize::MAX);
            if value.chars().count() > max {
                return Err(MonitorError::RecorderTooLong {
                    column,
                    value: value.clone(),
                    max,
                });
            }
        }
        let spool = Spool::open(&spool_dir).await?;
        let hasher = FileHasher::new(options.hash_concurrency, options.wait_policy)
            .with_data_roots(&options.data_roots)
            .map_err(MonitorError::DataRoot)?;
        if let Some((agent, _)) = &agent {
            agent.register_feed(SESSION_FEED, FeedOptions::default())?;
            agent.register_feed(STATS_FEED, FeedOptions::recorded(json!({}), 0.0))?;
        }
        let dead_letters =
            DeadLetterWriter::start(DeadLetters::new(spool_dir.join("dead_letters.jsonl")))
                .map_err(MonitorError::DeadLetterWriter)?;
        let stats = Arc::new(MonitorStats::default());
        // Up until an operation says otherwise: `run` must not start degraded.
        stats.set_database_error(None);
        if let Some((agent, ops)) = &agent {
            let pending = {
                let (spool, stats) = (spool.clone(), stats.clone());
                Arc::new(move || {
                    spool.depth()
                        + stats.pending_md5.load(Ordering::Relaxed)
                        + stats.pending_insert.load(Ordering::Relaxed)
                })
            };
            crate::ops::register(db.clone(), stats.clone(), agent, *ops, pending)
                .map_err(MonitorError::Ops)?;
        }
        Ok(Monitor {
            db,
            recorder,
            spool,
            journal_dir: spool_dir.join(crate::journal::DIR_NAME),
            hasher,
            options,
            refusals: Arc::new(Refusals::new(stats.clone())),
            dead_letters: Arc::new(DeadLetterSink::new(dead_letters, stats.clone())),
            feeds: Arc::new(Feeds::new(agent.map(|(agent, _)| agent), stats.clone())),
            supervisor: Arc::new(Supervisor::new(stats.clone())),
            stats,
        })
    }
}

impl Monitor {
    /// A monitor writing to `db`, stamping rows with `recorder` and spooling
    /// under `spool_dir`, to finish with [`MonitorBuilder`]:
    ///
    /// ```no_run
    /// # async fn example(db: files_db::FilesDb, agent: ocs_feed::Agent) -> Result<(), monitor_core::MonitorError> {
    /// use file_registration::Recorder;
    /// use monitor_core::{Monitor, OpsConfig, PipelineOptions};
    ///
    /// let recorder = Recorder::this_program("observatory", "pysmurf-monitor");
    /// let monitor = Monitor::builder(db, recorder, "spool")
    ///     .options(PipelineOptions::default())
    ///     .ocs_agent(&agent, OpsConfig::default())
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(
        db: FilesDb,
        recorder: Recorder,
        spool_dir: impl Into<PathBuf>,
    ) -> MonitorBuilder {
        MonitorBuilder {
            db,
            recorder,
            spool_dir: spool_dir.into(),
            options: PipelineOptions::default(),
            agent: None,
        }
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<MonitorStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled: replays the spool, then receives
    /// on `socket`. Returns once every stage has drained (bounded by
    /// [`PipelineOptions::drain_timeout`] after the cancel).
    ///
    /// If the pipeline cannot go on (the receiver cannot start, the socket
    /// fails, a stage panics), it stops receiving as if `shutdown` were
    /// cancelled, drains what it holds to the spool, and returns the first
    /// such failure; meanwhile [`MonitorStats::pipeline_error`] (and the
    /// `run` session, degraded) says why. `shutdown` itself is left alone:
    /// the caller decides what else to stop. A process should then exit
    /// non-zero so that its service manager restarts it.
    pub async fn run(
        self,
        socket: UdpSocket,
        shutdown: CancellationToken,
    ) -> Result<(), PipelineError> {
        let supervisor = self.supervisor.clone();
        let stop = supervisor.stop_token().clone();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            }
        });
        // Stages after the receiver keep going after `shutdown` until their
        // input closes, or until `drain` fires when the drain timeout is over.
        let drain = CancellationToken::new();

        let (received_tx, received_rx) = mpsc::channel(RECEIVED_CAPACITY);
        let (spool_tx, spool_rx) = mpsc::channel(TO_SPOOL_CAPACITY);
        let (batch_tx, batch_rx) = mpsc::channel(TO_BATCH_CAPACITY);

        let batcher = Batcher {
            db: self.db.clone(),
            spool: self.spool.clone(),
            stats: self.stats.clone(),
            dead_letters: self.dead_letters.clone(),
            batch_rows: self.options.batch_rows,
            batch_delay: self.options.batch_delay,
            create_missing_table: self.options.create_missing_table,
        };
        supervisor.spawn("batcher", batcher.run(batch_rx, drain.clone()));
        // Also replays what an earlier run left in the spool.
        let spooler = Spooler {
            spool: self.spool.clone(),
            hasher: self.hasher,
            recorder: self.recorder,
            stats: self.stats.clone(),
            refusals: self.refusals.clone(),
            dead_letters: self.dead_letters.clone(),
            supervisor: supervisor.clone(),
        };
        supervisor.spawn("spooler", spooler.run(spool_rx, batch_tx, drain.clone()));
        let router = Router {
            stats: self.stats.clone(),
            refusals: self.refusals.clone(),
            dead_letters: self.dead_letters.clone(),
            feeds: self.feeds.clone(),
            suprsync: self.db.target().is_suprsync(),
        };
        supervisor.spawn("router", router.run(received_rx, spool_tx));
        supervisor.spawn(
            "stats",
            stats_stage(
                self.feeds.clone(),
                self.spool.clone(),
                self.stats.clone(),
                self.options.stats_interval,
                stop.clone(),
            ),
        );
        // What an earlier run read and did not spool, before anything new.
        let journaling = replay_journal(
            self.journal_dir.clone(),
            self.spool.clone(),
            self.stats.clone(),
            &received_tx,
        )
        .await;
        let receiver = Receiver {
            allow_from: self.options.allow_from.clone(),
            stats: self.stats.clone(),
            refusals: self.refusals.clone(),
            journaling,
            supervisor: supervisor.clone(),
        };
        if let Err(err) = receiver.start(socket, received_tx, stop.clone()) {
            supervisor.fail(PipelineError::ReceiverStart(err));
        }
        let tracker = supervisor.tracker();
        tracker.close();

        stop.cancelled().await;
        tracing::info!("shutting down: draining the pipeline");
        if tokio::time::timeout(self.options.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                spool_depth = self.spool.depth(),
                "drain timeout reached; the rest stays in the spool"
            );
            drain.cancel();
            tracker.wait().await;
        }
        self.spool.close().await;
        // Dead letters of datagrams that had no spool record are not waited
        // for where they are queued: they are on disk before `run` returns.
        self.dead_letters.flush().await;
        self.stats
            .spool_depth
            .store(self.spool.depth(), Ordering::Relaxed);
        // Every counter, as JSON: what the run did, for the operator's log.
        let counters = Value::Object(self.stats.snapshot());
        tracing::info!(%counters, "pipeline stopped");
        supervisor.take_failure().map_or(Ok(()), Err)
    }
}

/// Acks committed or dead-lettered registrations' spool records (a failure
/// is counted and logged: the rows are settled, and the next start's replay
/// skips them) and updates the `spool_depth` counter.
async fn ack(spool: &Spool, stats: &MonitorStats, ids: &[SpoolId]) {
    if ids.is_empty() {
        return;
    }
    if let Err(err) = spool.ack(ids).await {
        // The rows are committed; at the next start the replay skips them.
        stats.spool_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %err, "cannot ack spool records");
    }
    stats.spool_depth.store(spool.depth(), Ordering::Relaxed);
}

/// Publishes the counters on `monitor_stats` every `interval`, and flushes
/// the metadata feeds ([`Feeds::flush_metadata`]).
async fn stats_stage(
    feeds: Arc<Feeds>,
    spool: Spool,
    stats: Arc<MonitorStats>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if !feeds.has_agent() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        feeds.flush_metadata();
        stats.spool_depth.store(spool.depth(), Ordering::Relaxed);
        let data: serde_json::Map<String, Value> = stats
            .snapshot()
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    if let Value::Bool(b) = v {
                        json!(u8::from(b))
                    } else {
                        v
                    },
                )
            })
            .collect();
        feeds.publish(
            STATS_FEED,
            json!({"block_name": STATS_FEED, "timestamp": epoch_seconds(SystemTime::now()), "data": data}),
        );
    }
}

#[cfg(test)]
mod tests {
    use files_db::FilesDb;

    use super::{Monitor, MonitorError};
    use file_registration::Recorder;

    /// `site` and `instance_id` are `pysmurf_files_v1` columns of 32
    /// characters: a longer instance id refuses to start there, not on
    /// SupRsync's database, which has no such columns.
    #[tokio::test]
    async fn recorder_limits_apply_to_pysmurf_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::this_program("observatory", "x".repeat(40));
        let start = |db: FilesDb, spool: &str| {
            Monitor::builder(db, recorder.clone(), dir.path().join(spool)).build()
        };
        let v1 = files_db::DbTarget::sqlite(dir.path().join("files.db"));
        let v1 = FilesDb::connect(&v1).await.unwrap();
        assert!(matches!(
            start(v1, "spool1").await,
            Err(MonitorError::RecorderTooLong {
                column: "instance_id",
                ..
            })
        ));
        let suprsync = files_db::DbTarget::suprsync(dir.path().join("suprsync.db"), false);
        let suprsync = FilesDb::connect(&suprsync).await.unwrap();
        assert!(start(suprsync, "spool2").await.is_ok());
    }
}
