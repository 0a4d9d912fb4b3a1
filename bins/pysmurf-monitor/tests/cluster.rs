//! Many monitors, one database (issue #14): a site runs one monitor per
//! SMuRF server, all writing to one MariaDB database, often a Galera
//! cluster. Real `pysmurf-monitor` binaries, each with its own UDP port,
//! instance-id and spool, take bursts at once; the database, read with SQL,
//! holds every registration exactly once.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    assert_exactly_once, blocking, blocking_on, numbered, wait_below, wait_for_rows, write_file,
    MonitorProcess, Stream,
};
use files_db::testing::{GaleraCluster, TestDatabase};
use files_db::FilesDb;
use smurf_protocol::FilePayload;

/// Monitors writing to the one database at once.
const MONITORS: usize = 8;

/// Registrations each monitor takes in its burst.
const PER_MONITOR: usize = 1_500;

/// Unread bytes a burst leaves in a monitor's receive buffer at most: well
/// under what the kernel grants with the default `net.core.rmem_max`.
const PACE_BYTES: u64 = 128 << 10;

/// Eight monitors, each a burst of 1,500 files at the same moment, into one
/// MariaDB database: 12,000 rows, each file exactly once (checked with SQL:
/// no path twice, every path present, each under its monitor's
/// instance-id), none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_bursting_into_one_database_record_each_file_exactly_once() {
    let Some(test_db) = TestDatabase::create("cluster_many_monitors").await else {
        return;
    };
    let db = FilesDb::connect(test_db.target()).await.unwrap();
    db.create_table().await.unwrap();
    let env: Vec<(&str, String)> = test_db.env().to_vec();

    let mut monitors = Vec::new();
    for i in 0..MONITORS {
        let work = tempfile::tempdir().unwrap();
        let instance = format!("monitor-{i}");
        let monitor = MonitorProcess::start(work.path(), &env, &["--instance-id", &instance]);
        // The files exist before the bursts start: the bursts overlap fully.
        let paths: Vec<PathBuf> = (0..PER_MONITOR)
            .map(|n| {
                let path = numbered(work.path(), n);
                write_file(&path, format!("monitor {i} file {n}").as_bytes());
                path
            })
            .collect();
        monitors.push((work, instance, monitor, paths));
    }

    let started = Instant::now();
    let senders: Vec<_> = monitors
        .iter()
        .map(|(_, _, monitor, paths)| {
            let mut publisher = monitor.publisher();
            let port = monitor.udp.port();
            let paths = paths.clone();
            std::thread::spawn(move || {
                for (n, path) in paths.iter().enumerate() {
                    if n % 50 == 0 {
                        wait_below(port, PACE_BYTES);
                    }
                    publisher
                        .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
                        .unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let total = MONITORS * PER_MONITOR;
    wait_for_rows(&db, total as u64, Duration::from_secs(60)).await;
    let took = started.elapsed();
    eprintln!(
        "{MONITORS} monitors x {PER_MONITOR} files: {total} rows in {took:?} ({:.0} rows/s together)",
        total as f64 / took.as_secs_f64()
    );

    // Exactly once, in SQL: as many distinct paths as rows, no path twice.
    let table = db.table().to_owned();
    let counts = test_db
        .query_text(&format!(
            "SELECT CAST(COUNT(*) AS CHAR), CAST(COUNT(DISTINCT path) AS CHAR) FROM {table}"
        ))
        .await;
    assert_eq!(counts, [[total.to_string(), total.to_string()]]);
    let doubled = test_db
        .query_text(&format!(
            "SELECT path FROM {table} GROUP BY path HAVING COUNT(*) > 1 LIMIT 5"
        ))
        .await;
    assert!(doubled.is_empty(), "paths recorded twice: {doubled:?}");
    // Each monitor's files under its own instance-id, every one of them.
    let per_instance = test_db
        .query_text(&format!(
            "SELECT instance_id, CAST(COUNT(DISTINCT path) AS CHAR) FROM {table} \
             GROUP BY instance_id ORDER BY instance_id"
        ))
        .await;
    let expected: Vec<Vec<String>> = monitors
        .iter()
        .map(|(_, instance, _, _)| vec![instance.clone(), PER_MONITOR.to_string()])
        .collect();
    assert_eq!(per_instance, expected);
    for (work, instance, _, paths) in &monitors {
        let foreign = test_db
            .query_text(&format!(
                "SELECT path FROM {table} WHERE instance_id = '{instance}' \
                 AND path NOT LIKE '{}/%' LIMIT 5",
                work.path().display()
            ))
            .await;
        assert!(foreign.is_empty(), "{instance} recorded {foreign:?}");
        assert_eq!(paths.len(), PER_MONITOR);
    }
    let every: Vec<PathBuf> = monitors
        .iter()
        .flat_map(|(_, _, _, paths)| paths.iter().cloned())
        .collect();
    assert_exactly_once(&db, &every).await;

    for (_, instance, monitor, _) in monitors {
        let (code, counters, _) = monitor.terminate_with_log();
        assert_eq!(code, 0, "{instance}");
        assert_eq!(
            counters["files_registered"], PER_MONITOR,
            "{instance}: {counters}"
        );
        assert_eq!(counters["dead_letters"], 0, "{instance}: {counters}");
        assert_eq!(counters["spool_depth"], 0, "{instance}: {counters}");
    }
    db.close().await;
    test_db.drop_database().await;
}

/// The database the Galera test's cluster holds.
const GALERA_DATABASE: &str = "pysmurf_files";

/// Rows of `instance` in the table, as node `node` sees them.
async fn rows_of(cluster: &GaleraCluster, node: usize, table: &str, instance: &str) -> u64 {
    let rows = cluster
        .query_text(
            node,
            GALERA_DATABASE,
            &format!("SELECT CAST(COUNT(*) AS CHAR) FROM {table} WHERE instance_id = '{instance}'"),
        )
        .await;
    rows[0][0].parse().unwrap()
}

/// A three-node Galera cluster on loopback, three monitors, one per node
/// (each given all three nodes, its own first), registrations streaming to
/// each; node 3 is killed (`SIGKILL`) mid-stream and restarted. Monitor 3
/// moves to a healthy node at once (its rows keep landing during the
/// outage, not held until node 3 is back); at the end every registration is
/// in the table exactly once and the three nodes hold identical tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_monitors_on_a_galera_cluster_lose_and_double_nothing_when_a_node_dies() {
    let started = Instant::now();
    let Some(cluster) = blocking(|| GaleraCluster::start("cluster_galera", 3)).await else {
        return;
    };
    eprintln!("three Galera nodes synced after {:?}", started.elapsed());
    cluster
        .execute(0, None, &format!("CREATE DATABASE {GALERA_DATABASE}"))
        .await;
    let db = FilesDb::connect(&cluster.target(0, GALERA_DATABASE))
        .await
        .unwrap();
    db.create_table().await.unwrap();
    let table = db.table().to_owned();

    let mut monitors = Vec::new();
    for i in 0..3 {
        let work = tempfile::tempdir().unwrap();
        let instance = format!("galera-{i}");
        // Its own node first, then the others.
        let url = cluster.url(&[i, (i + 1) % 3, (i + 2) % 3], GALERA_DATABASE);
        let monitor = MonitorProcess::start(
            work.path(),
            &[],
            &["--db-url", &url, "--instance-id", &instance],
        );
        let stream = Stream::start(monitor.publisher(), work.path(), 0, 100);
        monitors.push((work, instance, monitor, stream));
    }
    common::wait_for_at_least(&db, 300, Duration::from_secs(30)).await;

    // Node 3 crashes: monitor 3 must move its rows to a healthy node.
    let cluster = blocking_on(cluster, |cluster| cluster.kill(2)).await;
    let killed = Instant::now();
    let at_kill = rows_of(&cluster, 0, &table, "galera-2").await;
    let sent_at_kill = monitors[2].3.sent();
    // Galera evicts the dead node within a few seconds (evs.suspect_timeout
    // 3 s); monitor 3's rows from after the kill land on node 1 meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now_rows = rows_of(&cluster, 0, &table, "galera-2").await;
        if now_rows >= sent_at_kill as u64 + 100 {
            eprintln!(
                "monitor 3 moved: {} of its rows landed {:?} after its node was killed",
                now_rows - at_kill,
                killed.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "monitor 3 held its rows while node 3 was down: {now_rows} rows (had {at_kill}, \
             sent {sent_at_kill} before the kill, {} now)",
            monitors[2].3.sent()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (_, instance, _, _) in &monitors {
        eprintln!(
            "{instance}: {} rows",
            rows_of(&cluster, 0, &table, instance).await
        );
    }

    // Node 3 comes back (a full state transfer after the crash).
    let restarting = Instant::now();
    let cluster = blocking_on(cluster, |cluster| cluster.restart(2)).await;
    eprintln!(
        "node 3 rejoined and synced after {:?}",
        restarting.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut sent = Vec::new();
    let mut finished = Vec::new();
    for (work, instance, monitor, stream) in monitors {
        let paths = stream.finish();
        sent.extend(paths.iter().cloned());
        finished.push((work, instance, monitor, paths.len()));
    }
    wait_for_rows(&db, sent.len() as u64, Duration::from_secs(60)).await;
    assert_exactly_once(&db, &sent).await;

    // The three nodes hold the same rows, ids and all.
    let digest = format!(
        "SELECT CAST(COUNT(*) AS CHAR), CAST(SUM(CRC32(CONCAT_WS('|', id, path, HEX(md5sum), \
         instance_id))) AS CHAR) FROM {table}"
    );
    let first = cluster.query_text(0, GALERA_DATABASE, &digest).await;
    assert_eq!(first[0][0], sent.len().to_string());
    for node in 1..3 {
        assert_eq!(
            cluster.query_text(node, GALERA_DATABASE, &digest).await,
            first,
            "node {} differs from node 1",
            node + 1
        );
    }
    for (_, instance, monitor, count) in finished {
        let (code, counters, _) = monitor.terminate_with_log();
        assert_eq!(code, 0, "{instance}");
        assert_eq!(counters["dead_letters"], 0, "{instance}: {counters}");
        assert_eq!(counters["spool_depth"], 0, "{instance}: {counters}");
        assert!(
            counters["files_registered"].as_u64().unwrap() <= count as u64,
            "{instance}: {counters}"
        );
    }
    db.close().await;
    eprintln!("Galera test took {:?}", started.elapsed());
}
