//! The pipeline's memory bound, end to end on a real SQLite database: while
//! the database cannot be written, registrations pile up in the spool, not
//! in memory; files announced before they exist wait without holding up the
//! others; and every registration is committed exactly once in the end.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use file_registration::{Recorder, WaitPolicy};
use files_db::{DbTarget, FileFilter, FilesDb};
use monitor_core::{bind_udp, Monitor, MonitorStats, PipelineOptions};
use smurf_protocol::{FilePayload, Publisher, PublisherConfig};
use sqlx::{Connection, SqliteConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Registrations the pipeline holds in memory past the spool at most.
const IN_MEMORY: u64 = 4096;

/// A monitor running on a loopback socket, with a publisher aimed at it.
struct Running {
    stats: Arc<MonitorStats>,
    publisher: Publisher,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), monitor_core::PipelineError>>,
}

impl Running {
    /// A monitor writing to `db`, spooling under `dir/spool`.
    async fn start(dir: &Path, db: &FilesDb, options: PipelineOptions) -> Running {
        let recorder = Recorder::this_program("test", "backlog");
        let monitor = Monitor::builder(db.clone(), recorder, dir.join("spool"))
            .options(options)
            .build()
            .await
            .unwrap();
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let target = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        Running {
            stats: monitor.stats(),
            publisher: Publisher::new(target, PublisherConfig::new("crate1slot2", "backlog.py"))
                .unwrap(),
            task: tokio::spawn(monitor.run(socket, shutdown.clone())),
            shutdown,
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.stats.snapshot()[name].as_u64().unwrap()
    }

    /// Registers each path, in steps the kernel's default receive buffer
    /// always holds (waiting until the monitor has received each step).
    async fn register_paced(&mut self, paths: &[PathBuf]) {
        let base = self.counter("datagrams_received");
        for (step, chunk) in paths.chunks(200).enumerate() {
            for path in chunk {
                self.publisher
                    .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
                    .unwrap();
            }
            let sent = (step * 200 + chunk.len()) as u64;
            while self.counter("datagrams_received") < base + sent {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} within {within:?}: {:?}",
                self.stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the monitor and checks nothing was left or dead-lettered.
    async fn stop(mut self) {
        self.shutdown.cancel();
        (&mut self.task).await.unwrap().unwrap();
        assert_eq!(self.counter("spool_depth"), 0);
        assert_eq!(self.stats.dead_letters(), 0);
    }
}

/// An SQLite files database with its table, in `dir`.
async fn files_db(dir: &Path) -> (FilesDb, PathBuf) {
    let path = dir.join("files.db");
    let db = FilesDb::connect(&DbTarget::sqlite(&path)).await.unwrap();
    db.create_table().await.unwrap();
    (db, path)
}

/// `count` files named `<prefix>-NNNNN.dat` under `dir/data`, written when
/// `write` says so.
fn files(dir: &Path, prefix: &str, count: usize, write: bool) -> Vec<PathBuf> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    (0..count)
        .map(|i| {
            let path = data.join(format!("{prefix}-{i:05}.dat"));
            if write {
                std::fs::write(&path, format!("{prefix} {i}")).unwrap();
            }
            path
        })
        .collect()
}

/// The table holds exactly one row for each of `paths`, and nothing else.
async fn assert_exactly_once(db: &FilesDb, paths: &[PathBuf]) {
    let rows = db
        .recent_files(&FileFilter::default(), paths.len() as u32 + 10)
        .await
        .unwrap();
    let stored: HashSet<&str> = rows.iter().map(|row| row.row.path.as_str()).collect();
    let expected: HashSet<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    assert_eq!(rows.len(), paths.len(), "one row per registration");
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_database_fills_the_spool_not_memory_and_loses_nothing() {
    // Several times what the pipeline holds in memory.
    const FILES: usize = 12_000;
    let dir = tempfile::tempdir().unwrap();
    let (db, db_path) = files_db(dir.path()).await;
    let paths = files(dir.path(), "file", FILES, true);

    // Another connection holds SQLite's write lock: every insert of the
    // monitor fails as "database is locked" until it lets go.
    let mut lock = SqliteConnection::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();

    let mut monitor = Running::start(dir.path(), &db, PipelineOptions::default()).await;
    monitor.register_paced(&paths).await;
    monitor
        .wait_for(
            "every registration is spooled",
            Duration::from_secs(10),
            |m| m.counter("spool_depth") == FILES as u64,
        )
        .await;
    assert_eq!(monitor.stats.files_registered(), 0);
    // Nothing is committed, so what was taken into memory is still there.
    let in_memory = monitor.counter("pending_md5") + monitor.counter("pending_insert");
    assert!(
        (1..=IN_MEMORY).contains(&in_memory),
        "{in_memory} registrations held in memory"
    );

    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
    monitor
        .wait_for("every row is committed", Duration::from_secs(60), |m| {
            m.stats.files_registered() == FILES as u64 && m.counter("spool_depth") == 0
        })
        .await;
    assert_exactly_once(&db, &paths).await;
    monitor.stop().await;
}

/// Files announced before they exist wait without holding the slots of
/// the files that do: more missing files than the pipeline holds in memory
/// do not delay the others, and each lands once it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_do_not_exist_yet_do_not_hold_up_the_others() {
    const MISSING: usize = 5_000;
    const PRESENT: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = files_db(dir.path()).await;
    let options = PipelineOptions {
        wait_policy: WaitPolicy {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(500),
            give_up_after: Duration::from_secs(300),
        },
        ..PipelineOptions::default()
    };
    let missing = files(dir.path(), "later", MISSING, false);
    let present = files(dir.path(), "now", PRESENT, true);

    let mut monitor = Running::start(dir.path(), &db, options).await;
    monitor.register_paced(&missing).await;
    monitor.register_paced(&present).await;
    // Far sooner than any missing file could give up.
    monitor
        .wait_for(
            "the files that exist are registered",
            Duration::from_secs(30),
            |m| m.stats.files_registered() == PRESENT as u64,
        )
        .await;
    assert_eq!(monitor.counter("pending_md5"), MISSING as u64);

    for path in &missing {
        std::fs::write(path, b"late").unwrap();
    }
    monitor
        .wait_for(
            "the late files are registered",
            Duration::from_secs(60),
            |m| m.stats.files_registered() == (MISSING + PRESENT) as u64,
        )
        .await;
    assert_exactly_once(&db, &[missing, present].concat()).await;
    monitor.stop().await;
}
