//! The batcher's timing on tokio's paused clock, in process on SQLite (no
//! router): the batch delay, the retry back-off, the probe of an unreachable
//! database, reject bisection, and draining at shutdown (with the spool read
//! back at the next start).
//!
//! The clock is paused after the set-up, and a blocking task held for the
//! whole test keeps tokio from advancing the paused clock on its own while
//! the pipeline waits for real work (UDP, the spool's and SQLite's
//! threads): virtual time moves only by `tokio::time::advance`, in jumps
//! the test makes and in small steps while it waits (sqlx needs its timers
//! to move on). So the tests measure in virtual time, where a missing delay
//! shows as an early commit and a missing deadline as none at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use file_registration::Recorder;
use files_db::{DbTarget, FilesDb};
use monitor_core::{bind_udp, Monitor, MonitorStats, PipelineOptions};
use smurf_protocol::{FilePayload, Publisher, PublisherConfig};
use sqlx::{Connection, SqliteConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest real time the pipeline gets to do what a step expects.
const REAL_WAIT: Duration = Duration::from_secs(20);

/// Real time given to the pipeline to show that something does *not*
/// happen (it happens within milliseconds when it does).
const QUIET: Duration = Duration::from_millis(1000);

/// The small step the paused clock moves while a test waits.
const CREEP: Duration = Duration::from_millis(1);

struct Running {
    stats: Arc<MonitorStats>,
    publisher: Publisher,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), monitor_core::PipelineError>>,
    /// Dropped at the end: ends the blocking task that keeps the paused
    /// clock from advancing by itself.
    _hold_clock: std::sync::mpsc::Sender<()>,
}

impl Running {
    /// A monitor on `dir/files.db` (with its table when `table` says so),
    /// spooling under `dir/spool`; the clock is paused once it runs.
    async fn start(dir: &Path, table: bool, options: PipelineOptions) -> Running {
        let db = FilesDb::connect(&DbTarget::sqlite(dir.join("files.db")))
            .await
            .unwrap();
        if table {
            db.create_table().await.unwrap();
        }
        let recorder = Recorder::this_program("test", "batcher");
        let monitor = Monitor::builder(db, recorder, dir.join("spool"))
            .options(options)
            .build()
            .await
            .unwrap();
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let target = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::time::pause();
        let (hold_clock, held) = std::sync::mpsc::channel::<()>();
        // A running blocking task inhibits the paused clock's auto-advance.
        tokio::task::spawn_blocking(move || held.recv());
        Running {
            stats: monitor.stats(),
            publisher: Publisher::new(target, PublisherConfig::new("crate1slot2", "batcher.py"))
                .unwrap(),
            task: tokio::spawn(monitor.run(socket, shutdown.clone())),
            shutdown,
            _hold_clock: hold_clock,
        }
    }

    fn register(&mut self, path: &Path) {
        self.publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
            .unwrap();
    }

    fn counter(&self, name: &str) -> u64 {
        self.stats.snapshot()[name].as_u64().unwrap()
    }

    /// Waits until `done`, moving the paused clock on by `step` every few
    /// real milliseconds.
    async fn settle(&self, what: &str, step: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + REAL_WAIT;
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {:?}",
                self.stats.snapshot()
            );
            real_sleep(Duration::from_millis(2)).await;
            tokio::time::advance(step).await;
        }
    }

    /// Waits [`QUIET`] in real time, moving the paused clock on by 1 ms
    /// every 5 real ms, then checks that `still` holds.
    async fn stays(&self, what: &str, still: impl Fn(&Self) -> bool) {
        let end = std::time::Instant::now() + QUIET;
        while std::time::Instant::now() < end {
            real_sleep(Duration::from_millis(5)).await;
            tokio::time::advance(CREEP).await;
        }
        assert!(still(self), "{what}: {:?}", self.stats.snapshot());
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Sleeps in real time (the paused clock standing still) while the runtime
/// goes on running the pipeline's tasks.
async fn real_sleep(duration: Duration) {
    tokio::task::spawn_blocking(move || std::thread::sleep(duration))
        .await
        .unwrap();
}

/// `count` existing files `<prefix>-N.dat` under `dir/data`.
fn files(dir: &Path, prefix: &str, count: usize) -> Vec<PathBuf> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    (0..count)
        .map(|i| {
            let path = data.join(format!("{prefix}-{i}.dat"));
            std::fs::write(&path, format!("{prefix} {i}")).unwrap();
            path
        })
        .collect()
}

/// A row waits for its batch to fill for `batch_delay` and no longer; a
/// full batch goes at once.
#[tokio::test]
async fn a_row_waits_the_batch_delay_for_company_and_a_full_batch_goes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let options = PipelineOptions {
        batch_rows: 3,
        batch_delay: Duration::from_secs(60),
        ..PipelineOptions::default()
    };
    let mut monitor = Running::start(dir.path(), true, options).await;
    let paths = files(dir.path(), "f", 4);

    let sent = tokio::time::Instant::now();
    monitor.register(&paths[0]);
    monitor
        .settle("the row hashed", CREEP, |m| {
            m.counter("pending_md5") == 0 && m.counter("files_accepted") == 1
        })
        .await;
    tokio::time::advance(Duration::from_secs(59)).await;
    monitor
        .stays("the row still waits for its batch", |m| {
            m.stats.files_registered() == 0
        })
        .await;
    monitor
        .settle(
            "the row committed at the batch delay",
            Duration::from_millis(10),
            |m| m.stats.files_registered() == 1,
        )
        .await;
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_secs(60),
        "committed after {waited:?}"
    );

    let sent = tokio::time::Instant::now();
    for path in &paths[1..] {
        monitor.register(path);
    }
    monitor
        .settle("a full batch committed", CREEP, |m| {
            m.stats.files_registered() == 4
        })
        .await;
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(30),
        "a full batch waited {waited:?}"
    );
    monitor.stop().await;
}

/// A database that answers but fails the writes (here: the table is
/// missing) is retried after 1 s, then 2 s later, then 4 s: with the table
/// made after the first retry, the rows land 3 s after the first attempt,
/// not before.
#[tokio::test]
async fn a_failing_database_is_retried_with_doubling_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let options = PipelineOptions {
        batch_rows: 1,
        ..PipelineOptions::default()
    };
    let mut monitor = Running::start(dir.path(), false, options).await;
    let paths = files(dir.path(), "f", 1);
    monitor.register(&paths[0]);
    monitor
        .settle("the first attempt failed", CREEP, |m| {
            !m.stats.database_up()
        })
        .await;
    let failed = tokio::time::Instant::now();

    // The first retry, 1 s later, fails too (the table is still missing).
    tokio::time::advance(Duration::from_secs(1)).await;
    monitor
        .stays("the first retry failed", |m| !m.stats.database_up())
        .await;
    create_table_outside_the_clock(dir.path().join("files.db")).await;

    monitor
        .settle(
            "the second retry committed",
            Duration::from_millis(10),
            |m| m.stats.files_registered() == 1,
        )
        .await;
    let waited = failed.elapsed();
    assert!(
        waited >= Duration::from_millis(2_900) && waited < Duration::from_secs(4),
        "committed {waited:?} after the first failure, not 1 s + 2 s"
    );
    monitor
        .settle("the database shown up again", CREEP, |m| {
            m.stats.database_up()
        })
        .await;
    monitor.stop().await;
}

/// A database that cannot be reached (here: SQLite busy, another connection
/// holding the write lock) is probed after 250 ms and the rows retried the
/// moment the probe answers: with the lock released right after the
/// failure, the rows land 250 ms later, not after the 1 s, 2 s, ... back-off
/// of other failures.
///
/// The rows of the first attempt (the table missing) are uncertain, so their
/// retries go through the de-duplicating insert, whose read-then-write
/// transaction SQLite fails at once ("database is locked") instead of
/// waiting out its busy timeout.
#[tokio::test]
async fn an_unreachable_database_is_retried_when_the_probe_answers() {
    let dir = tempfile::tempdir().unwrap();
    let options = PipelineOptions {
        batch_rows: 1,
        ..PipelineOptions::default()
    };
    let mut monitor = Running::start(dir.path(), false, options).await;
    let paths = files(dir.path(), "f", 1);
    monitor.register(&paths[0]);
    monitor
        .settle("the first attempt failed", CREEP, |m| {
            !m.stats.database_up()
        })
        .await;
    let lock = WriteLock::take(dir.path().join("files.db")).await;

    // The back-off's retry, 1 s later, finds the database locked.
    monitor
        .settle("the retry found the database locked", CREEP, |m| {
            last_database_error(m).contains("cannot reach the database")
        })
        .await;
    let unreachable = tokio::time::Instant::now();
    lock.release().await;
    monitor
        .settle("the rows committed once the probe answered", CREEP, |m| {
            m.stats.files_registered() == 1
        })
        .await;
    let waited = unreachable.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(400),
        "committed {waited:?} after the database was found unreachable, not at the 250 ms probe"
    );
    monitor
        .settle("the database shown up again", CREEP, |m| {
            m.stats.database_up()
        })
        .await;
    monitor.stop().await;
}

/// The database error the `run` session shows.
fn last_database_error(monitor: &Running) -> String {
    monitor.stats.session_data()["last_database_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The table created and SQLite's write lock held by a connection of the
/// test's own, on a thread and runtime of its own (not the paused clock's).
struct WriteLock {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl WriteLock {
    /// Creates the table in the database at `path`, then takes its write
    /// lock (`BEGIN IMMEDIATE`); returns once both are done.
    async fn take(path: PathBuf) -> WriteLock {
        let (locked_tx, locked) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut conn = runtime.block_on(async {
                let db = FilesDb::connect(&DbTarget::sqlite(&path)).await.unwrap();
                db.create_table().await.unwrap();
                db.close().await;
                let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn
            });
            locked_tx.send(()).unwrap();
            let _ = released.recv();
            runtime.block_on(async {
                sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            });
        });
        // Waits in real time: the paused clock stands still meanwhile.
        tokio::task::spawn_blocking(move || locked.recv().unwrap())
            .await
            .unwrap();
        WriteLock { release, thread }
    }

    /// Releases the lock; returns once it is released.
    async fn release(self) {
        self.release.send(()).unwrap();
        tokio::task::spawn_blocking(move || self.thread.join().unwrap())
            .await
            .unwrap();
    }
}

/// Creates the table from a runtime of its own, whose clock is not paused
/// (awaiting the database on the paused runtime would let its clock jump).
async fn create_table_outside_the_clock(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let db = FilesDb::connect(&DbTarget::sqlite(path)).await.unwrap();
                db.create_table().await.unwrap();
                db.close().await;
            })
    })
    .await
    .unwrap();
}

/// A batch with one row the database refuses (a path over the 260
/// characters its column holds) is bisected: the other rows land, the bad
/// one alone is dead-lettered, and every spool record is acked.
#[tokio::test]
async fn a_rejected_row_is_isolated_by_bisection() {
    let dir = tempfile::tempdir().unwrap();
    let options = PipelineOptions {
        batch_rows: 5,
        batch_delay: Duration::from_secs(60),
        ..PipelineOptions::default()
    };
    let mut monitor = Running::start(dir.path(), true, options).await;
    let mut paths = files(dir.path(), "f", 4);
    let deep = dir.path().join("d".repeat(200));
    std::fs::create_dir_all(&deep).unwrap();
    let long = deep.join(format!("{}.dat", "l".repeat(100)));
    std::fs::write(&long, b"too long a path").unwrap();
    assert!(long.to_str().unwrap().len() > 260);
    paths.insert(2, long);
    for path in &paths {
        monitor.register(path);
    }
    monitor
        .settle("the batch settled", CREEP, |m| {
            m.stats.files_registered() + m.stats.dead_letters() == 5
        })
        .await;
    assert_eq!(monitor.stats.files_registered(), 4);
    assert_eq!(monitor.stats.dead_letters(), 1);
    monitor
        .settle("every record acked", CREEP, |m| {
            m.counter("spool_depth") == 0
        })
        .await;
    let letters = std::fs::read_to_string(dir.path().join("spool/dead_letters.jsonl")).unwrap();
    assert_eq!(letters.lines().count(), 1);
    assert!(letters.contains("rejected by the database"), "{letters}");
    monitor.stop().await;
}

/// At shutdown the batcher keeps retrying a failing database for
/// `drain_timeout`, then gives up: `run` returns with the rows still in the
/// spool, and the next start reads them back and commits them.
#[tokio::test]
async fn draining_gives_up_at_the_drain_timeout_and_the_next_start_commits_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let options = PipelineOptions {
        batch_rows: 1,
        drain_timeout: Duration::from_secs(10),
        ..PipelineOptions::default()
    };
    let mut monitor = Running::start(dir.path(), false, options.clone()).await;
    let paths = files(dir.path(), "f", 3);
    for path in &paths {
        monitor.register(path);
    }
    monitor
        .settle("every row hashed, the database failing", CREEP, |m| {
            m.counter("files_accepted") == 3
                && m.counter("pending_md5") == 0
                && !m.stats.database_up()
        })
        .await;

    monitor.shutdown.cancel();
    monitor
        .stays("still retrying within the drain timeout", |m| {
            !m.task.is_finished()
        })
        .await;
    tokio::time::advance(Duration::from_secs(10)).await;
    monitor
        .settle("run returned at the drain timeout", CREEP, |m| {
            m.task.is_finished()
        })
        .await;
    let Running { stats, task, .. } = monitor;
    task.await.unwrap().unwrap();
    assert_eq!(stats.files_registered(), 0);
    assert_eq!(stats.snapshot()["spool_depth"], 3, "the rows stay spooled");

    tokio::time::resume();
    let monitor = Running::start(dir.path(), true, options).await;
    monitor
        .settle("the spooled rows committed", CREEP, |m| {
            m.stats.files_registered() == 3 && m.counter("spool_depth") == 0
        })
        .await;
    monitor.stop().await;
}
