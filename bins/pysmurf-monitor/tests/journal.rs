//! Issue #14 point 3, from outside: a datagram the real `pysmurf-monitor`
//! has read is on disk (the receive journal) before it reads many more, so
//! a `kill -9` does not lose what was read but not yet spooled.

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_exactly_once, numbered, register_numbered, wait_below, wait_for_rows, MonitorProcess,
};
use files_db::{DbTarget, FilesDb};

/// Registrations of the burst: fewer than the stalled pipeline holds in
/// front of the spool (8,192 routed registrations, then 1,024 received
/// batches, of one datagram each at this pace), so the receiver reads them
/// all.
const BURST: usize = 5_000;
/// Malformed datagrams sent with them.
const GARBAGE: usize = 50;

/// The spool stage is stalled (fault `stall-in=spooler`) while 5,000
/// registrations and 50 malformed datagrams are sent: the monitor reads
/// every one (its socket's queue is empty, `datagrams_received` says all)
/// and spools none; then it is killed with SIGKILL. Restarted on the same
/// directory, it replays its receive journal: every registration is in the
/// database exactly once, and the malformed datagrams the first run had
/// already counted are not counted again.
#[tokio::test]
async fn datagrams_read_but_not_spooled_survive_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let stalled = MonitorProcess::start(
        work.path(),
        &[("PYSMURF_MONITOR_FAULT", "stall-in=spooler".to_owned())],
        &[],
    );
    let mut publisher = stalled.publisher();
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for start in (0..BURST).step_by(BURST / GARBAGE) {
        register_numbered(&mut publisher, work.path(), start..start + BURST / GARBAGE);
        garbage.send_to(b"\xff not json", stalled.udp).unwrap();
        wait_below(stalled.udp.port(), 256 << 10);
    }
    stalled.wait_until_read(Duration::from_secs(30));
    let queue = stalled.socket_queue();
    assert_eq!(queue.drops, 0, "the kernel dropped datagrams: {queue:?}");
    // Routed, all of them: the registrations wait in front of the spool.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counters = loop {
        let counters = stalled.counters();
        if counters["files_accepted"] == BURST && counters["rejected_malformed"] == GARBAGE {
            break counters;
        }
        assert!(Instant::now() < deadline, "not all routed: {counters}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        counters["datagrams_received"],
        BURST + GARBAGE,
        "{counters}"
    );
    assert_eq!(counters["unspooled"], BURST, "{counters}");
    assert_eq!(counters["spool_depth"], 0, "nothing spooled: {counters}");
    assert_eq!(counters["journal_errors"], 0, "{counters}");
    stalled.kill_9();

    let restarted = MonitorProcess::start(work.path(), &[], &[]);
    let db = FilesDb::connect(&DbTarget::sqlite(work.path().join("pysmurf_files.db")))
        .await
        .unwrap();
    wait_for_rows(&db, BURST as u64, Duration::from_secs(120)).await;
    let paths: Vec<_> = (0..BURST).map(|i| numbered(work.path(), i)).collect();
    assert_exactly_once(&db, &paths).await;
    let (code, counters, _) = restarted.terminate_with_log();
    assert_eq!(code, 0);
    assert_eq!(counters["files_accepted"], BURST, "{counters}");
    assert_eq!(counters["rejected_malformed"], 0, "{counters}");
    assert_eq!(counters["spool_depth"], 0, "{counters}");
    db.close().await;
}

/// Datagrams still in the kernel's socket buffer when the monitor is told to
/// stop (the receiver is held back with the fault `stall-in=receiver`, so all
/// of them wait there) are read at the stop and recorded, not dropped with
/// the socket: SIGTERM, exit 0, and after a restart each registration is in
/// the database exactly once.
#[tokio::test]
async fn datagrams_queued_in_the_kernel_at_a_stop_are_recorded() {
    const QUEUED: usize = 300;
    let work = tempfile::tempdir().unwrap();
    let held = MonitorProcess::start(
        work.path(),
        &[("PYSMURF_MONITOR_FAULT", "stall-in=receiver".to_owned())],
        &[],
    );
    let mut publisher = held.publisher();
    register_numbered(&mut publisher, work.path(), 0..QUEUED);
    let queue = held.socket_queue();
    assert!(queue.rx_queue_bytes > 0, "unread: {queue:?}");
    assert_eq!(queue.drops, 0, "{queue:?}");
    assert_eq!(held.terminate(), 0);

    let restarted = MonitorProcess::start(work.path(), &[], &[]);
    let db = FilesDb::connect(&DbTarget::sqlite(work.path().join("pysmurf_files.db")))
        .await
        .unwrap();
    wait_for_rows(&db, QUEUED as u64, Duration::from_secs(60)).await;
    let paths: Vec<_> = (0..QUEUED).map(|i| numbered(work.path(), i)).collect();
    assert_exactly_once(&db, &paths).await;
    assert_eq!(restarted.terminate(), 0);
    db.close().await;
}
