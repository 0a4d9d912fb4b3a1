//! A registration given up on leaves the spool only once its dead letter is
//! written: in process, on SQLite, no router.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use file_registration::{Recorder, WaitPolicy};
use files_db::{DbTarget, FilesDb};
use monitor_core::{bind_udp, Monitor, MonitorStats, PipelineOptions};
use smurf_protocol::{FilePayload, Publisher, PublisherConfig};
use tokio_util::sync::CancellationToken;

/// Files that do not exist are given up on at once.
fn options() -> PipelineOptions {
    PipelineOptions {
        wait_policy: WaitPolicy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            give_up_after: Duration::ZERO,
        },
        ..PipelineOptions::default()
    }
}

async fn wait_for(stats: &MonitorStats, what: &str, done: impl Fn(&MonitorStats) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(stats) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counter(stats: &MonitorStats, name: &str) -> u64 {
    stats.snapshot()[name].as_u64().unwrap()
}

/// Runs a monitor spooling under `spool`; `during` gets its stats and the
/// address it receives on; then it is shut down.
async fn run_monitor<F, Fut>(db: &FilesDb, spool: &Path, during: F) -> Arc<MonitorStats>
where
    F: FnOnce(Arc<MonitorStats>, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let recorder = Recorder::this_program("test", "dead-letters");
    let monitor = Monitor::builder(db.clone(), recorder, spool)
        .options(options())
        .build()
        .await
        .unwrap();
    let stats = monitor.stats();
    let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let target = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(monitor.run(socket, shutdown.clone()));
    during(stats.clone(), target).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    stats
}

/// The dead-letter file cannot be written (its path is a directory): the
/// registration of a missing file is counted as a failed dead letter and
/// stays in the spool. Once the path is fixed, the next start dead-letters
/// it: nothing is lost.
#[tokio::test]
async fn a_dead_letter_that_cannot_be_written_stays_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let db = FilesDb::connect(&DbTarget::sqlite(dir.path().join("files.db")))
        .await
        .unwrap();
    db.create_table().await.unwrap();
    let spool = dir.path().join("spool");
    let letters = spool.join("dead_letters.jsonl");
    std::fs::create_dir_all(&letters).unwrap();
    let missing = dir.path().join("missing.dat");

    let stats = run_monitor(&db, &spool, |stats, target| {
        let missing = missing.clone();
        async move {
            Publisher::new(target, PublisherConfig::new("crate1slot2", "dl.py"))
                .unwrap()
                .register_file(&FilePayload::new(missing.to_str().unwrap(), "dat"))
                .unwrap();
            wait_for(&stats, "a failed dead letter", |s| {
                counter(s, "dead_letter_errors") == 1
            })
            .await;
        }
    })
    .await;
    assert_eq!(stats.dead_letters(), 0);
    assert_eq!(
        counter(&stats, "spool_depth"),
        1,
        "the record stays spooled"
    );

    std::fs::remove_dir(&letters).unwrap();
    let stats = run_monitor(&db, &spool, |stats, _| async move {
        wait_for(&stats, "the replayed registration dead-lettered", |s| {
            s.dead_letters() == 1
        })
        .await;
    })
    .await;
    assert_eq!(counter(&stats, "dead_letter_errors"), 0);
    assert_eq!(counter(&stats, "spool_depth"), 0, "acked once written");
    let text = std::fs::read_to_string(&letters).unwrap();
    assert_eq!(text.lines().count(), 1);
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        line["datagram"]["payload"]["path"],
        missing.to_str().unwrap()
    );
    assert!(line["reason"].as_str().unwrap().contains("does not exist"));
}
