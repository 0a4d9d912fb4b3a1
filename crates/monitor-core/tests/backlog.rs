//! The pipeline's memory bound, end to end on a real SQLite database: while
//! the database cannot be written, registrations pile up in the spool, not
//! in memory, and every one of them is committed exactly once when it can
//! be written again.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use files_db::{DbTarget, FileFilter, FilesDb};
use monitor_core::{bind_udp, Monitor, MonitorStats, PipelineOptions, Recorder, WaitPolicy};
use smurf_protocol::{FilePayload, Publisher, PublisherConfig};
use sqlx::{Connection, SqliteConnection};
use tokio_util::sync::CancellationToken;

/// More than the pipeline holds in memory (4096 registrations) several times.
const FILES: usize = 12_000;

fn counter(stats: &MonitorStats, name: &str) -> u64 {
    stats.snapshot()[name].as_u64().unwrap()
}

/// Registers each path, in steps the kernel's default receive buffer always
/// holds (waiting until the monitor has received each step).
async fn register_paced(publisher: &mut Publisher, stats: &MonitorStats, paths: &[PathBuf]) {
    let base = counter(stats, "datagrams_received");
    for (step, chunk) in paths.chunks(200).enumerate() {
        for path in chunk {
            publisher
                .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
                .unwrap();
        }
        let sent = (step * 200 + chunk.len()) as u64;
        while counter(stats, "datagrams_received") < base + sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn wait_for(what: &str, stats: &MonitorStats, within: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_database_fills_the_spool_not_memory_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("files.db");
    let db = FilesDb::connect(&DbTarget::sqlite(&db_path)).await.unwrap();
    db.create_table().await.unwrap();

    // Another connection holds SQLite's write lock: every insert of the
    // monitor fails as "database is locked" until it lets go.
    let mut lock = SqliteConnection::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();

    let monitor = Monitor::new(
        db.clone(),
        None,
        Recorder::this_program("test", "backlog"),
        dir.path().join("spool"),
        PipelineOptions::default(),
    )
    .await
    .unwrap();
    let stats = monitor.stats();
    let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let target = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(monitor.run(socket, shutdown.clone()));

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut publisher =
        Publisher::new(target, PublisherConfig::new("crate1slot2", "backlog.py")).unwrap();
    let mut sent = 0;
    let mut most_in_memory = 0;
    while sent < FILES {
        // In steps the kernel's default receive buffer always holds.
        for i in sent..(sent + 200).min(FILES) {
            let path = data.join(format!("{i:05}.dat"));
            std::fs::write(&path, format!("file {i}")).unwrap();
            publisher
                .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
                .unwrap();
        }
        sent = (sent + 200).min(FILES);
        while counter(&stats, "datagrams_received") < sent as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        most_in_memory =
            most_in_memory.max(counter(&stats, "pending_md5") + counter(&stats, "pending_insert"));
    }
    for _ in 0..100 {
        if counter(&stats, "spool_depth") == FILES as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        counter(&stats, "spool_depth"),
        FILES as u64,
        "{:?}",
        stats.snapshot()
    );
    assert_eq!(stats.files_registered(), 0);
    most_in_memory =
        most_in_memory.max(counter(&stats, "pending_md5") + counter(&stats, "pending_insert"));
    assert!(
        most_in_memory <= 4096,
        "{most_in_memory} registrations held in memory"
    );
    assert!(most_in_memory > 0, "nothing was hashed at all");

    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
    for _ in 0..1200 {
        if stats.files_registered() == FILES as u64 && counter(&stats, "spool_depth") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stats.files_registered(),
        FILES as u64,
        "{:?}",
        stats.snapshot()
    );

    let rows = db
        .recent_files(&FileFilter::default(), FILES as u32 + 10)
        .await
        .unwrap();
    let paths: HashSet<String> = rows.iter().map(|row| row.row.path.clone()).collect();
    assert_eq!(rows.len(), FILES, "one row per registration");
    assert_eq!(paths.len(), FILES, "no path twice");
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(counter(&stats, "spool_depth"), 0);
    assert_eq!(stats.dead_letters(), 0);
}

/// Files announced before they exist wait without holding the slots of
/// the files that do: more missing files than the pipeline holds in memory
/// do not delay the others, and each lands once it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_do_not_exist_yet_do_not_hold_up_the_others() {
    const MISSING: usize = 5_000;
    const PRESENT: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let db = FilesDb::connect(&DbTarget::sqlite(dir.path().join("files.db")))
        .await
        .unwrap();
    db.create_table().await.unwrap();
    let options = PipelineOptions {
        wait_policy: WaitPolicy {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(500),
            give_up_after: Duration::from_secs(300),
        },
        ..PipelineOptions::default()
    };
    let monitor = Monitor::new(
        db.clone(),
        None,
        Recorder::this_program("test", "waiting"),
        dir.path().join("spool"),
        options,
    )
    .await
    .unwrap();
    let stats = monitor.stats();
    let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let target = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(monitor.run(socket, shutdown.clone()));
    let mut publisher =
        Publisher::new(target, PublisherConfig::new("crate1slot2", "waiting.py")).unwrap();

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let missing: Vec<PathBuf> = (0..MISSING)
        .map(|i| data.join(format!("later-{i:05}.dat")))
        .collect();
    let present: Vec<PathBuf> = (0..PRESENT)
        .map(|i| data.join(format!("now-{i:05}.dat")))
        .collect();
    for path in &present {
        std::fs::write(path, b"here").unwrap();
    }
    register_paced(&mut publisher, &stats, &missing).await;
    register_paced(&mut publisher, &stats, &present).await;
    // Far sooner than any missing file could give up.
    wait_for(
        "the files that exist are registered",
        &stats,
        Duration::from_secs(30),
        || stats.files_registered() == PRESENT as u64,
    )
    .await;
    assert_eq!(counter(&stats, "pending_md5"), MISSING as u64);

    for path in &missing {
        std::fs::write(path, b"late").unwrap();
    }
    wait_for(
        "the late files are registered",
        &stats,
        Duration::from_secs(60),
        || stats.files_registered() == (MISSING + PRESENT) as u64,
    )
    .await;
    let rows = db
        .recent_files(&FileFilter::default(), (MISSING + PRESENT) as u32 + 10)
        .await
        .unwrap();
    let paths: HashSet<&str> = rows.iter().map(|row| row.row.path.as_str()).collect();
    assert_eq!(rows.len(), MISSING + PRESENT);
    assert_eq!(paths.len(), MISSING + PRESENT);
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(stats.dead_letters(), 0);
}
