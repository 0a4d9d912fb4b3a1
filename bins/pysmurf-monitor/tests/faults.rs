//! The fault suite of issue #8: the real `pysmurf-monitor` binary through
//! real failures of what it depends on — a MariaDB server stopped and
//! restarted (with and without its table), a full disk under the spool, a
//! hung router, `kill -9` in the middle of a burst, a flood from a sender it
//! does not accept. Each test ends by reading the database: every
//! registration sent is there exactly once, and nothing else is.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    assert_exactly_once, blocking, blocking_on, connect_default_sqlite, current_rows, numbered,
    private_router, register_numbered, socket_queue, wait_below, wait_for_at_least, wait_for_rows,
    write_file, Backend, MonitorProcess, Stream,
};
use files_db::testing::{PrivateMariaDb, WriteLock};
use files_db::FilesDb;
use ocs_feed::testing::{self as ocs_testing, Subscriber};
use serde_json::json;
use smurf_protocol::FilePayload;

/// The database every private MariaDB server of these tests holds.
const DATABASE: &str = "pysmurf_files";

/// How many datagrams a burst sends between two looks at the monitor's
/// socket, and how full (bytes the kernel accounts, about 1 KiB per small
/// datagram) it may be then: under the 416 KiB a receive buffer gets with
/// Linux's default `net.core.rmem_max` (212992) even with a whole step on top.
const PACE_EVERY: usize = 50;
const PACE_BYTES: u64 = 128 << 10;

/// A private MariaDB server with an empty database [`DATABASE`]; `None` = skip.
async fn private_server(test: &str) -> Option<PrivateMariaDb> {
    let test = test.to_owned();
    let server = blocking(move || PrivateMariaDb::start(&test)).await?;
    server
        .execute(None, &format!("CREATE DATABASE {DATABASE}"))
        .await;
    Some(server)
}

/// A monitor in `work` writing to [`DATABASE`] on `server`, creating its
/// table when it is missing.
fn start_monitor_on(server: &PrivateMariaDb, work: &Path) -> MonitorProcess {
    let url = server.url(DATABASE);
    MonitorProcess::start(work, &[], &["--db-url", &url, "--create-table", "True"])
}

/// 1. The MariaDB server shut down for 30 s while registrations keep
///    coming at 20 a second, then started again: every registration, before,
///    during and after, is in the table exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_server_stopped_for_30_s_mid_stream_loses_and_doubles_nothing() {
    let Some(mut server) = private_server("faults_mariadb_stopped").await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let monitor = start_monitor_on(&server, work.path());
    let db = FilesDb::connect(&server.target(DATABASE)).await.unwrap();
    let stream = Stream::start(monitor.publisher(), work.path(), 0, 20);

    wait_for_at_least(&db, 40, Duration::from_secs(20)).await;
    db.close().await;
    let before = stream.sent();
    server = blocking_on(server, PrivateMariaDb::stop).await;
    let stopped = Instant::now();
    // The monitor notices: its writes fail and the rows stay spooled.
    let monitor = blocking(move || {
        monitor.wait_for_log("database write failed", Duration::from_secs(20));
        monitor
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    let during = stream.sent() - before;
    assert!(
        during >= 400,
        "only {during} registrations during the outage"
    );
    server = blocking_on(server, PrivateMariaDb::restart).await;
    let restarted = Instant::now();
    let resumed = stream.sent();
    let db = FilesDb::connect(&server.target(DATABASE)).await.unwrap();
    wait_for_at_least(&db, resumed as u64, Duration::from_secs(60)).await;
    // The monitor probes the stopped server every 250 ms and retries at
    // once when it answers: the backlog is in within about a second, not
    // after a back-off of up to 30 s. 5 s is a generous bound for a busy machine.
    let catch_up = restarted.elapsed();
    eprintln!("caught up {resumed} registrations {catch_up:?} after the restart");
    assert!(
        catch_up < Duration::from_secs(5),
        "the backlog took {catch_up:?} after the restart"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = stream.finish();
    assert!(
        sent.len() >= resumed + 20,
        "registrations after the restart"
    );

    wait_for_rows(&db, sent.len() as u64, Duration::from_secs(60)).await;
    assert_exactly_once(&db, &sent).await;
    let (code, counters, _) = monitor.terminate_with_log();
    assert_eq!(code, 0);
    assert_eq!(counters["files_registered"], sent.len(), "{counters}");
    assert_eq!(counters["spool_depth"], 0, "{counters}");
    db.close().await;
}

/// 2. The table dropped, then the MariaDB server stopped and started again
///    (a database restored without the table): with `--create-table` the
///    monitor recreates it; every registration sent from the drop on is there
///    exactly once, and none of those committed before it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_restarted_without_its_table_gets_it_back_and_loses_nothing_after() {
    let Some(mut server) = private_server("faults_mariadb_table_dropped").await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let monitor = start_monitor_on(&server, work.path());
    let mut publisher = monitor.publisher();
    let db = FilesDb::connect(&server.target(DATABASE)).await.unwrap();
    register_numbered(&mut publisher, work.path(), 0..100);
    wait_for_rows(&db, 100, Duration::from_secs(30)).await;
    db.close().await;

    server
        .execute(Some(DATABASE), "DROP TABLE pysmurf_files_v1")
        .await;
    server = blocking_on(server, PrivateMariaDb::stop).await;
    // While the server is down: spooled, waiting.
    register_numbered(&mut publisher, work.path(), 100..200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server = blocking_on(server, PrivateMariaDb::restart).await;
    register_numbered(&mut publisher, work.path(), 200..300);

    let db = FilesDb::connect(&server.target(DATABASE)).await.unwrap();
    wait_for_rows(&db, 200, Duration::from_secs(60)).await;
    // Nothing more arrives late (e.g. a replay of the rows dropped with the table).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: Vec<PathBuf> = (100..300).map(|i| numbered(work.path(), i)).collect();
    assert_exactly_once(&db, &expected).await;
    let (code, _, log) = monitor.terminate_with_log();
    assert_eq!(code, 0);
    assert!(
        log.iter()
            .any(|l| l.contains("table was missing; created it")),
        "the monitor recreated the table"
    );
    db.close().await;
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`) on `path`; `None` when
    /// this machine does not allow it (not root, or no mount in a container).
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "cannot mount a tmpfs on {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (e.g. a monitor not yet reaped): detach it now,
            // the kernel frees it when the last user is gone.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}

/// Fills the filesystem of `dir` with `<dir>/filler` until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).and_then(|()| file.flush()).is_ok() {}
    // Whatever is left below a block.
    while file.write_all(&[0]).is_ok() {}
    path
}

/// 3. The spool's disk full: spooling and the receive journal fail
///    (counted, logged once), registrations still land while the process lives, and once there is room again the
///    spool works again (what it holds at a stop is replayed by the next
///    run); every registration exactly once.
///
/// Needs `mount -t tmpfs` (root). Without it the test is skipped with a
/// message whatever `PYSMURF_TEST_REQUIRE_SERVICES` says: it is a privilege,
/// not a service, and the spool's own unit test already fakes a full disk.
#[tokio::test]
async fn a_full_disk_under_the_spool_loses_no_registration() {
    const LANDED: usize = 200;
    const LATE: usize = 20;
    let work = tempfile::tempdir().unwrap();
    let Some(spool) = Tmpfs::mount(&work.path().join("spool"), "2m") else {
        eprintln!(
            "skipped: a_full_disk_under_the_spool_loses_no_registration: mounting a tmpfs \
             needs root (the spool's unit test covers a failing disk without it)"
        );
        return;
    };
    let args = ["--spool-dir", spool.path.to_str().unwrap()];
    let monitor = MonitorProcess::start(work.path(), &[], &args);
    let mut publisher = monitor.publisher();
    let db = connect_default_sqlite(work.path()).await;
    register_numbered(&mut publisher, work.path(), 0..50);
    wait_for_rows(&db, 50, Duration::from_secs(20)).await;

    let filler = fill(&spool.path);
    register_numbered(&mut publisher, work.path(), 50..150);
    wait_for_rows(&db, 150, Duration::from_secs(30)).await;
    std::fs::remove_file(&filler).unwrap();
    register_numbered(&mut publisher, work.path(), 150..LANDED);
    wait_for_rows(&db, LANDED as u64, Duration::from_secs(30)).await;
    // Announced before their files exist: they wait in the spool, which
    // works again, and stay there when the monitor stops.
    for i in LANDED..LANDED + LATE {
        let path = numbered(work.path(), i);
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
            .unwrap();
    }
    monitor.wait_until_read(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (code, counters, log) = monitor.terminate_with_log();
    assert_eq!(code, 0);
    assert!(
        counters["spool_errors"].as_u64().unwrap_or(0) > 0,
        "the full disk failed no spool write: {counters}"
    );
    assert!(
        log.iter().any(|l| l.contains("cannot spool registrations")),
        "the spool failure is logged"
    );
    // The receive journal is on the same disk: receiving went on without
    // it, said so once per episode (a write may pass while SQLite frees a
    // page), and it works again.
    assert!(
        counters["journal_errors"].as_u64().unwrap_or(0) > 0,
        "the full disk failed no journal write: {counters}"
    );
    assert_eq!(counters["journal_up"], true, "{counters}");
    let said = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    let (failed, recovered) = (
        said("cannot write the receive journal"),
        said("the receive journal is written again"),
    );
    assert!(failed >= 1 && failed == recovered, "{failed} {recovered}");
    assert_eq!(counters["files_registered"], LANDED, "{counters}");
    assert_eq!(counters["spool_depth"], LATE, "{counters}");

    for i in LANDED..LANDED + LATE {
        write_file(&numbered(work.path(), i), format!("late {i}").as_bytes());
    }
    let restarted = MonitorProcess::start(work.path(), &[], &args);
    wait_for_rows(&db, (LANDED + LATE) as u64, Duration::from_secs(30)).await;
    let expected: Vec<PathBuf> = (0..LANDED + LATE)
        .map(|i| numbered(work.path(), i))
        .collect();
    assert_exactly_once(&db, &expected).await;
    assert_eq!(restarted.terminate(), 0);
    db.close().await;
    drop(spool);
}

/// The `payload` of a `pysmurf_session_data` event (the datagram as sent).
fn session_text(event: &serde_json::Value) -> String {
    event["args"][0][0]["payload"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// 4. The router hung (SIGSTOP) for 20 s while registrations and session
///    messages keep coming: every registration exactly once; a subscriber
///    gets every session message sent while the router ran, before the
///    pause and after the monitor is back (a second subscriber after the
///    pause: the router drops the first when it wakes up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_hung_for_20_s_costs_no_registration_and_no_later_session_message() {
    let Some(venv) = ocs_testing::venv() else {
        return;
    };
    let router = private_router(&venv).await;
    // At most 32 characters: the length of the table's instance_id column.
    let instance = format!("pm-hung-router-{}", std::process::id());
    let topic = format!(
        "{}.{instance}.feeds.pysmurf_session_data",
        ocs_testing::ROOT
    );
    let heartbeat = format!("{}.{instance}.feeds.heartbeat", ocs_testing::ROOT);
    let mut subscriber =
        Subscriber::start(&venv, &router.ws_url(), &[topic.clone(), heartbeat.clone()]).await;
    let work = tempfile::tempdir().unwrap();
    let hub = router.ws_url();
    let monitor = MonitorProcess::start(
        work.path(),
        &[],
        &["--site-hub", &hub, "--instance-id", &instance],
    );
    subscriber
        .next_on(&heartbeat, Duration::from_secs(30))
        .await;
    let db = connect_default_sqlite(work.path()).await;
    let stream = Stream::start(monitor.publisher(), work.path(), 0, 20);
    let mut session = monitor.publisher();
    let mut say = |text: String| {
        session.publish("session_log", &json!(text)).unwrap();
    };

    for i in 0..50 {
        say(format!("before {i}"));
    }
    for i in 0..50 {
        let event = subscriber.next_on(&topic, Duration::from_secs(20)).await;
        assert_eq!(session_text(&event), format!("before {i}"));
    }

    router.pause();
    let at_pause = stream.sent();
    let paused = Instant::now();
    let mut i = 0;
    while paused.elapsed() < Duration::from_secs(20) {
        say(format!("during {i}"));
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    router.resume();
    let at_resume = stream.sent();
    assert!(
        at_resume - at_pause >= 300,
        "registrations while the router was hung"
    );
    // The router's own WebSocket pings time out over the pause, and it drops
    // the sessions it had, the subscriber's too (which then exits): a new
    // subscriber listens from here on.
    subscriber.stop().await;
    let mut subscriber =
        Subscriber::start(&venv, &router.ws_url(), std::slice::from_ref(&topic)).await;

    // Back when a probe gets through; what was sent while the router was
    // hung may or may not arrive first.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut probe = 0;
    'probing: loop {
        assert!(
            Instant::now() < deadline,
            "no session message reached the subscriber after the router resumed:\n{}",
            router.log()
        );
        say(format!("probe {probe}"));
        probe += 1;
        while let Some(event) = subscriber
            .try_next_on(&topic, Duration::from_millis(500))
            .await
        {
            if session_text(&event).starts_with("probe") {
                break 'probing;
            }
        }
    }
    for i in 0..50 {
        say(format!("after {i}"));
    }
    let mut next = 0;
    while next < 50 {
        let text = session_text(&subscriber.next_on(&topic, Duration::from_secs(20)).await);
        if text.starts_with("probe") {
            continue;
        }
        assert_eq!(text, format!("after {next}"), "every one, in order");
        next += 1;
    }
    subscriber.stop().await;

    let sent = stream.finish();
    assert!(
        at_pause > 0 && sent.len() > at_resume,
        "registrations before and after the pause"
    );
    wait_for_rows(&db, sent.len() as u64, Duration::from_secs(30)).await;
    assert_exactly_once(&db, &sent).await;
    assert_eq!(monitor.terminate(), 0);
    db.close().await;
    drop(router);
}

/// 5. `kill -9` while a burst of 50,000 registrations is being committed,
///    then a restart on the same spool and database, nothing sent again:
///    every one of them is in the table exactly once.
///
/// The kill must come after the monitor has spooled the whole burst but
/// before it has committed it. Reading the socket is not enough (datagrams
/// wait in memory before the spool, and those are lost to a `kill -9`, as
/// the kernel's buffer would be), and committing can be as fast as
/// spooling. So the table is write-locked (a slow database) while the burst
/// is sent, the monitor's counters (SIGUSR1) show when all is spooled, then
/// the lock is released and the monitor killed as soon as the first rows
/// are committed.
async fn kill_9_during_a_burst(backend: &Backend) {
    const BURST: usize = 50_000;
    let (work, target, env) = (backend.work.path(), &backend.target, &backend.env);
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let paths: Vec<PathBuf> = (0..BURST)
        .map(|i| data.join(format!("{i:05}.dat")))
        .collect();
    for (i, path) in paths.iter().enumerate() {
        std::fs::write(path, format!("burst {i}")).unwrap();
    }
    let monitor = MonitorProcess::start(work, env, &[]);
    let lock = WriteLock::acquire(target, "pysmurf_files_v1").await;
    let port = monitor.udp.port();
    let mut publisher = monitor.publisher();
    let started = Instant::now();
    for (i, path) in paths.iter().enumerate() {
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
            .unwrap();
        if i % PACE_EVERY == PACE_EVERY - 1 {
            wait_below(port, PACE_BYTES);
        }
    }
    let sent_in = started.elapsed();
    monitor.wait_until_read(Duration::from_secs(30));
    let queue = monitor.socket_queue();
    assert_eq!(queue.drops, 0, "the kernel dropped datagrams: {queue:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counters = monitor.counters();
        if counters["spool_depth"] == BURST {
            assert_eq!(counters["files_registered"], 0, "{counters}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the burst was not spooled: {counters}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spooled_in = started.elapsed();

    lock.release().await;
    let db = FilesDb::connect(target).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut committed = 0;
    while committed == 0 {
        assert!(Instant::now() < deadline, "no row committed after the lock");
        tokio::time::sleep(Duration::from_millis(2)).await;
        committed = current_rows(&db).await;
    }
    monitor.kill_9();
    eprintln!(
        "sent {BURST} in {sent_in:?}; all spooled after {spooled_in:?}; {committed} rows \
         when killed"
    );
    assert!(
        (committed as usize) < BURST,
        "every row was committed before the kill: nothing was tested"
    );

    let restarted = MonitorProcess::start(work, env, &[]);
    wait_for_rows(&db, BURST as u64, Duration::from_secs(120)).await;
    assert_exactly_once(&db, &paths).await;
    let (code, counters, log) = restarted.terminate_with_log();
    assert_eq!(code, 0);
    assert!(
        log.iter()
            .any(|l| l.contains("replaying spooled registrations")),
        "the restart replayed the spool"
    );
    assert_eq!(counters["spool_depth"], 0, "{counters}");
    db.close().await;
}

#[tokio::test]
async fn kill_9_during_a_50_000_registration_burst_on_sqlite() {
    kill_9_during_a_burst(&Backend::sqlite_default()).await;
}

#[tokio::test]
async fn kill_9_during_a_50_000_registration_burst_on_mariadb() {
    let Some(backend) = Backend::mariadb("faults_kill_9_burst").await else {
        return;
    };
    kill_9_during_a_burst(&backend).await;
    backend.finish().await;
}

/// 6. A sender outside `--allow-from` floods 100,000 datagrams (file
///    registrations of real files, and garbage) while the allowed publisher
///    registers 500 files: those 500 land exactly once, nothing of the flood
///    does, every flood datagram is counted as refused, and the log has one
///    refusal line for it, not 100,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_a_sender_not_allowed_costs_no_registration() {
    const FLOOD: usize = 100_000;
    const ALLOWED: usize = 500;
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &[], &["--allow-from", "127.0.0.1"]);
    let port = monitor.udp.port();
    let decoy = work.path().join("flood/decoy.dat");
    write_file(&decoy, b"not to be registered");
    let mut intruder = monitor.publisher_from("127.0.0.2:0", "flood.py");
    let flood = std::thread::spawn(move || {
        let payload = FilePayload::new(decoy.to_str().unwrap(), "dat");
        for i in 0..FLOOD {
            if i % 2 == 0 {
                intruder.register_file(&payload).unwrap();
            } else {
                intruder
                    .socket()
                    .send_to(
                        format!("garbage {i} \u{fffd}").as_bytes(),
                        intruder.target(),
                    )
                    .unwrap();
            }
            if i % PACE_EVERY == PACE_EVERY - 1 {
                wait_below(port, PACE_BYTES);
            }
        }
    });
    let mut publisher = monitor.publisher();
    for i in 0..ALLOWED {
        register_numbered(&mut publisher, work.path(), i..i + 1);
        if i % 10 == 9 {
            wait_below(port, PACE_BYTES);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    flood.join().unwrap();
    let db = connect_default_sqlite(work.path()).await;
    wait_for_rows(&db, ALLOWED as u64, Duration::from_secs(60)).await;
    monitor.wait_until_read(Duration::from_secs(30));
    let drops = socket_queue(port).drops;
    assert_eq!(drops, 0, "the kernel dropped datagrams");
    let expected: Vec<PathBuf> = (0..ALLOWED).map(|i| numbered(work.path(), i)).collect();
    assert_exactly_once(&db, &expected).await;

    let (code, counters, log) = monitor.terminate_with_log();
    assert_eq!(code, 0);
    assert_eq!(counters["rejected_not_allowed"], FLOOD, "{counters}");
    assert_eq!(counters["files_registered"], ALLOWED, "{counters}");
    let refusals: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("datagram refused"))
        .collect();
    assert!(
        !refusals.is_empty() && refusals.len() <= 3,
        "one refusal line per sender and reason a minute: {refusals:#?}"
    );
    assert!(
        refusals.iter().all(|l| l.contains("127.0.0.2")),
        "{refusals:#?}"
    );
    db.close().await;
}
