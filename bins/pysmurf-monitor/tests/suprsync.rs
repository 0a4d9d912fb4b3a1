//! The SupRsync target against the real thing (socs 0.6.4 in the test
//! virtualenv, a real crossbar router): the same datagrams give the same
//! `supersync_v0` rows as socs's own `PysmurfMonitor`; the real `SupRsync`
//! agent archives everything while both write the database; kill -9 and
//! restart lose and double nothing. Each agent is started from a socs 0.6.4
//! site entry, unchanged.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_ocs_client, shared_router, write_file};
use files_db::testing::suprsync_tempdir;
use ocs_feed::testing::{self as ocs_testing, Crossbar};
use serde_json::{json, Value};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

/// An agent process (ours or socs's), killed at drop; its log kept.
struct AgentProcess {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    fn spawn(name: &str, mut command: Command) -> Self {
        command
            .env_remove("OCS_CONFIG_DIR")
            .env("LOGLEVEL", "info")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, name) = (log.clone(), name.to_owned());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Our binary, started as `ocs-agent-cli` starts an agent: site file,
    /// host and instance id; everything else from the site entry.
    fn ours(site: &Site, instance: &str) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pysmurf-monitor"));
        command
            .args(site.agent_args(instance))
            .current_dir(&site.dir);
        Self::spawn(instance, command)
    }

    /// A socs 0.6.4 agent (`module` e.g. `socs.agents.suprsync.agent`).
    fn socs(site: &Site, venv: &Path, module: &str, instance: &str) -> Self {
        let mut command = Command::new(venv.join("bin/python"));
        command
            .args(["-m", module])
            .args(site.agent_args(instance))
            .current_dir(&site.dir);
        Self::spawn(instance, command)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn kill_9(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.alive() {
            eprintln!("[{}] killed at the end of the test", self.name);
        }
        self.kill_9();
    }
}

/// An OCS site file with agent instances, as a site writes it.
struct Site {
    dir: PathBuf,
    file: PathBuf,
}

impl Site {
    /// `instances`: (agent class, instance id, arguments as YAML).
    fn write(dir: &Path, router: &Crossbar, instances: &[(&str, &str, String)]) -> Site {
        let mut yaml = format!(
            "hub:\n  wamp_server: {}\n  wamp_http: {}\n  wamp_realm: {}\n  address_root: {}\n\
             hosts:\n  localhost:\n    agent-instances:\n",
            router.ws_url(),
            router.http_url(),
            ocs_testing::REALM,
            ocs_testing::ROOT
        );
        for (class, instance, arguments) in instances {
            yaml.push_str(&format!(
                "      - agent-class: {class}\n        instance-id: {instance}\n        \
                 arguments: {arguments}\n"
            ));
        }
        let file = dir.join("site.yaml");
        std::fs::write(&file, yaml).unwrap();
        Site {
            dir: dir.to_owned(),
            file,
        }
    }

    fn agent_args(&self, instance: &str) -> Vec<String> {
        vec![
            "--site-file".into(),
            self.file.display().to_string(),
            "--site-host".into(),
            "localhost".into(),
            "--instance-id".into(),
            instance.into(),
        ]
    }
}

/// Whether `venv` has socs 0.6.4's agents (and, for SupRsync, rsync is
/// installed): `scripts/setup-python-env` installs both. Skipped when
/// missing, a failure under `PYSMURF_TEST_REQUIRE_SERVICES=1`.
fn socs_available(venv: &Path) -> bool {
    let socs = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import socs.agents.pysmurf_monitor.agent, socs.agents.suprsync.agent",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let rsync = Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if socs && rsync {
        return true;
    }
    let reason = format!(
        "socs 0.6.4 (in {}) or rsync missing: run scripts/setup-python-env",
        venv.display()
    );
    if std::env::var("PYSMURF_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("PYSMURF_TEST_REQUIRE_SERVICES=1 but {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn open_db(path: &Path) -> SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    SqlitePool::connect_with(options).await.unwrap()
}

/// Waits for `path` to exist with its `supersync_v0` table.
async fn wait_for_tables(path: &Path, agent: &mut AgentProcess, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        assert!(agent.alive(), "{} exited", agent.name);
        if path.exists() {
            let pool = open_db(path).await;
            let found: Option<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'supersync_v0'")
                    .fetch_optional(&pool)
                    .await
                    .unwrap_or(None);
            pool.close().await;
            if found.is_some() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} made no tables in {within:?}",
            agent.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn wait_for_count(path: &Path, sql: &str, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    let pool = open_db(path).await;
    loop {
        let n = count(&pool, sql).await;
        if n >= expected {
            assert_eq!(n, expected, "{sql}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n} of {expected} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
}

/// `sqlite_master` of the two SupRsync tables.
async fn ddl(pool: &SqlitePool) -> Vec<(String, String, String, String)> {
    sqlx::query_as(
        "SELECT type, name, tbl_name, sql FROM sqlite_master \
         WHERE tbl_name IN ('supersync_v0', 'timecode_dirs_v0') ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every column but `id` and `timestamp` (with each value's SQLite type),
/// by local path.
async fn rows_by_path(pool: &SqlitePool) -> BTreeMap<String, Vec<String>> {
    let rows = sqlx::query(
        "SELECT local_path, local_md5sum, archive_name, remote_path, remote_md5sum, copied, \
         removed, failed_copy_attempts, deletable, \"ignore\", typeof(local_md5sum), \
         typeof(timestamp), typeof(remote_md5sum), typeof(failed_copy_attempts), \
         typeof(deletable), typeof(\"ignore\") FROM supersync_v0",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut by_path = BTreeMap::new();
    for row in rows {
        let columns: Vec<String> = (0..row.len())
            .map(|i| {
                let text: Option<String> = row
                    .try_get::<Option<String>, _>(i)
                    .ok()
                    .flatten()
                    .or_else(|| {
                        row.try_get::<Option<i64>, _>(i)
                            .ok()
                            .flatten()
                            .map(|v| v.to_string())
                    })
                    .or_else(|| {
                        row.try_get::<Option<f64>, _>(i)
                            .ok()
                            .flatten()
                            .map(|v| v.to_string())
                    });
                text.unwrap_or_else(|| "NULL".into())
            })
            .collect();
        let previous = by_path.insert(columns[0].clone(), columns);
        assert!(previous.is_none(), "a local path registered twice");
    }
    by_path
}

/// A `data_file` (or `g3_file`) datagram as pysmurf / the smurf-streamer
/// sends it.
fn file_datagram(kind: &str, payload: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "host": "smurf-srv", "id": "crate1slot2", "script": "differential.py",
        "time": 1_700_000_000.0, "seq_no": 0, "type": kind, "payload": payload,
    }))
    .unwrap()
}

/// The files of the differential test: what each kind of registration
/// socs handles specially. Returns the datagrams.
fn differential_files(data: &Path) -> Vec<Vec<u8>> {
    let tc = data.join("1700000000/crate1slot2");
    // pysmurf's files: (path announced, format, action, plot, action_ts).
    let smurf_files = [
        (
            tc.join("outputs/1700000101_take_noise.txt"),
            "txt",
            "take_noise",
            false,
            json!("1700000100"),
        ),
        (
            tc.join("plots/1700000102_noise.png"),
            "png",
            "take_noise",
            true,
            json!(1_700_000_100),
        ),
        // npy announced without its suffix: the file on disk has it.
        (
            tc.join("outputs/1700000103_psd"),
            "npy",
            "take_noise",
            false,
            json!("1700000100"),
        ),
        (
            tc.join("outputs/1700000104_iv_info.npy"),
            "npy",
            "take_iv",
            false,
            json!("1700000104"),
        ),
        (
            tc.join("tune/1700000105_tune.npy"),
            "npy",
            "tune_band",
            false,
            json!("1700000105"),
        ),
        (
            tc.join("config/1700000106_channel_assignment_b0.txt"),
            "txt",
            "setup",
            false,
            json!("1700000106"),
        ),
        // Outside a timecode directory (the 4th path part is not a number).
        (
            data.join("smurf_misc/crate1slot2/1700000107_note.txt"),
            "txt",
            "note",
            false,
            json!("1700000107"),
        ),
    ];
    let mut datagrams = Vec::new();
    let mut add = |disk: PathBuf, payload: Value, kind: &str| {
        write_file(&disk, disk.to_str().unwrap().as_bytes());
        datagrams.push(file_datagram(kind, payload));
    };
    for (path, format, action, plot, action_ts) in smurf_files {
        let disk = match format {
            "npy" => path.with_extension("npy"),
            _ => path.clone(),
        };
        let payload = json!({
            "path": path.to_str().unwrap(), "type": format, "format": format,
            "timestamp": 1_700_000_123.25, "action": action, "action_ts": action_ts,
            "plot": plot, "pysmurf_version": "v8.0.0",
        });
        add(disk, payload, "data_file");
    }
    // A timestream of the smurf-streamer.
    let g3 = data.join("timestreams/17000/crate1slot2/1700000108_000.g3");
    add(
        g3.clone(),
        json!({
            "path": g3.to_str().unwrap(), "type": "g3", "format": "g3",
            "timestamp": 1_700_000_108.0, "action": null, "action_ts": null, "plot": false,
            "archive_name": "timestreams",
        }),
        "g3_file",
    );
    datagrams
}

/// The same datagrams to socs 0.6.4's PysmurfMonitor and to ours, each
/// from a socs site entry with its own `--db-path`: the DDL is the same and
/// the `supersync_v0` rows are equal column by column but `id` and
/// `timestamp`. Ours also makes the `timecode_dirs_v0` rows SupRsync's
/// `add_file` would (socs's monitor makes none: socs#562).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_datagrams_give_socs_rows() {
    let Some((router, venv)) = shared_router().await else {
        return;
    };
    if !socs_available(&venv) {
        return;
    }
    let work = suprsync_tempdir();
    // /tmp/<dir>/<timecode>/…: the 4th path part is socs's timecode test.
    let data = work.path().to_owned();
    let (socs_db, our_db) = (
        work.path().join("socs/suprsync.db"),
        work.path().join("ours/suprsync.db"),
    );
    let (socs_port, our_port) = (free_udp_port(), free_udp_port());
    let pid = std::process::id();
    let (socs_id, our_id) = (format!("socs-monitor-{pid}"), format!("rs-monitor-{pid}"));
    let entry = |port: u16, db: &Path| {
        format!(
            "[['--udp-port', {port}], ['--create-table', True], ['--db-path', '{}']]",
            db.display()
        )
    };
    let site = Site::write(
        work.path(),
        router,
        &[
            ("PysmurfMonitor", &socs_id, entry(socs_port, &socs_db)),
            ("PysmurfMonitor", &our_id, entry(our_port, &our_db)),
        ],
    );
    let mut socs = AgentProcess::socs(&site, &venv, "socs.agents.pysmurf_monitor.agent", &socs_id);
    let mut ours = AgentProcess::ours(&site, &our_id);
    wait_for_tables(&socs_db, &mut socs, Duration::from_secs(60)).await;
    wait_for_tables(&our_db, &mut ours, Duration::from_secs(30)).await;

    let datagrams = differential_files(&data);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in &datagrams {
        socket.send_to(datagram, ("127.0.0.1", socs_port)).unwrap();
        socket.send_to(datagram, ("127.0.0.1", our_port)).unwrap();
    }
    let all = "SELECT COUNT(*) FROM supersync_v0";
    let n = datagrams.len() as i64;
    wait_for_count(&socs_db, all, n, Duration::from_secs(30)).await;
    wait_for_count(&our_db, all, n, Duration::from_secs(30)).await;

    let (socs_pool, our_pool) = (open_db(&socs_db).await, open_db(&our_db).await);
    assert_eq!(ddl(&our_pool).await, ddl(&socs_pool).await);
    let (socs_rows, our_rows) = (
        rows_by_path(&socs_pool).await,
        rows_by_path(&our_pool).await,
    );
    assert_eq!(our_rows.len(), datagrams.len());
    for (path, socs_row) in &socs_rows {
        assert_eq!(our_rows.get(path), Some(socs_row), "{path}");
    }
    // What the comparison covers: socs's quirks are in the rows.
    let deletable: HashMap<&str, &str> = our_rows
        .iter()
        .map(|(path, row)| (path.rsplit('/').next().unwrap(), row[8].as_str()))
        .collect();
    assert_eq!(deletable["1700000101_take_noise.txt"], "1");
    assert_eq!(deletable["1700000104_iv_info.npy"], "0");
    assert_eq!(deletable["1700000107_note.txt"], "0");
    assert!(deletable.contains_key("1700000103_psd.npy"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for pool in [&socs_pool, &our_pool] {
        let times: Vec<f64> = sqlx::query_scalar("SELECT timestamp FROM supersync_v0")
            .fetch_all(pool)
            .await
            .unwrap();
        assert!(times.iter().all(|t| (now - t).abs() < 120.0), "{times:?}");
    }
    let dirs: Vec<(i64, String)> =
        sqlx::query_as("SELECT timecode, archive_name FROM timecode_dirs_v0 ORDER BY id")
            .fetch_all(&our_pool)
            .await
            .unwrap();
    assert_eq!(
        dirs,
        [
            (17000, "smurf".to_owned()),
            (17000, "timestreams".to_owned())
        ]
    );
    assert_eq!(
        count(&socs_pool, "SELECT COUNT(*) FROM timecode_dirs_v0").await,
        0
    );
    assert!(socs.alive() && ours.alive());
    socs_pool.close().await;
    our_pool.close().await;
}

/// Every `local_path` under `prefix` with its number of rows.
async fn rows_per_local_path(pool: &SqlitePool, prefix: &str) -> HashMap<String, i64> {
    sqlx::query_as(
        "SELECT local_path, COUNT(*) FROM supersync_v0 \
         WHERE substr(local_path, 1, length(?1)) = ?1 GROUP BY local_path",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Each of `expected` has exactly one row, and nothing else under `prefix`.
async fn assert_exactly_once(pool: &SqlitePool, prefix: &str, expected: &[PathBuf]) {
    let counts = rows_per_local_path(pool, prefix).await;
    let missing = expected
        .iter()
        .filter(|p| !counts.contains_key(p.to_str().unwrap()))
        .count();
    let doubled = counts.values().filter(|n| **n > 1).count();
    assert!(
        missing == 0 && doubled == 0 && counts.len() == expected.len(),
        "{} sent: {missing} missing, {doubled} doubled, {} distinct paths stored",
        expected.len(),
        counts.len()
    );
}

/// A smurf-archive registration of `path` (in a timecode directory).
fn smurf_datagram(path: &Path, n: usize) -> Vec<u8> {
    file_datagram(
        "data_file",
        json!({
            "path": path.to_str().unwrap(), "type": "dat", "format": "dat",
            "timestamp": 1_700_000_000.0 + n as f64, "action": "stream",
            "action_ts": "1700000000", "plot": false,
        }),
    )
}

/// The real SupRsync agent (socs 0.6.4, copying locally, every 0.5 s) runs
/// on the monitor's database while the monitor takes a burst of 3,000
/// registrations into the same file: every file is copied to its
/// `remote_path` with `remote_md5sum` equal to `local_md5sum`, no
/// registration is lost or doubled, and both agents stay alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suprsync_archives_everything_while_both_write_the_database() {
    const BURST: usize = 3_000;
    let Some((router, venv)) = shared_router().await else {
        return;
    };
    if !socs_available(&venv) {
        return;
    }
    let work = suprsync_tempdir();
    let db = work.path().join("databases/suprsync.db");
    let remote = work.path().join("archive");
    let port = free_udp_port();
    let pid = std::process::id();
    let (monitor_id, suprsync_id) = (format!("rs-monitor-sr-{pid}"), format!("suprsync-{pid}"));
    let site = Site::write(
        work.path(),
        router,
        &[
            (
                "PysmurfMonitor",
                &monitor_id,
                format!(
                    "[['--udp-port', {port}], ['--db-path', '{}']]",
                    db.display()
                ),
            ),
            (
                "SupRsync",
                &suprsync_id,
                format!(
                    "[['--archive-name', 'smurf'], ['--remote-basedir', '{}'], \
                     ['--db-path', '{}'], ['--suprsync-file-root', '{}'], ['--sleep-time', 0.5]]",
                    remote.display(),
                    db.display(),
                    work.path().join("suprsync_files").display()
                ),
            ),
        ],
    );
    let mut monitor = AgentProcess::ours(&site, &monitor_id);
    wait_for_tables(&db, &mut monitor, Duration::from_secs(30)).await;
    let mut suprsync = AgentProcess::socs(&site, &venv, "socs.agents.suprsync.agent", &suprsync_id);

    let data = work.path().join("1700000000/crate1slot2/outputs");
    let paths: Vec<PathBuf> = (0..BURST)
        .map(|i| data.join(format!("{i:05}.dat")))
        .collect();
    for (i, path) in paths.iter().enumerate() {
        write_file(path, format!("file {i} of the burst").as_bytes());
    }
    // SupRsync is copying before and during the burst.
    let deadline = Instant::now() + Duration::from_secs(60);
    // (Its first loop: a copy of nothing, then the timecode dirs.)
    while !suprsync.log_contains("Finished creating tcdirs") {
        assert!(suprsync.alive(), "SupRsync exited");
        assert!(Instant::now() < deadline, "SupRsync never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, path) in paths.iter().enumerate() {
        socket
            .send_to(&smurf_datagram(path, i), ("127.0.0.1", port))
            .unwrap();
        if i % 100 == 99 {
            // Paced as a busy pysmurf is: the burst takes about a second.
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    let prefix = data.to_str().unwrap();
    let pool = open_db(&db).await;
    let archived = format!(
        "SELECT COUNT(*) FROM supersync_v0 WHERE local_md5sum = remote_md5sum \
         AND substr(local_path, 1, length('{prefix}')) = '{prefix}'"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = count(&pool, &archived).await;
        if done >= BURST as i64 {
            break;
        }
        assert!(monitor.alive() && suprsync.alive(), "an agent exited");
        assert!(
            Instant::now() < deadline,
            "{done} of {BURST} archived after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_exactly_once(&pool, prefix, &paths).await;
    let rows: Vec<(String, String, String, Option<f64>)> = sqlx::query_as(
        "SELECT local_path, local_md5sum, remote_path, copied FROM supersync_v0 \
         WHERE substr(local_path, 1, length(?1)) = ?1",
    )
    .bind(prefix)
    .fetch_all(&pool)
    .await
    .unwrap();
    for (local, md5, remote_path, copied) in &rows {
        assert!(copied.is_some(), "{local}");
        let original = std::fs::read(local).unwrap();
        let copy = std::fs::read(remote.join(remote_path))
            .unwrap_or_else(|e| panic!("{local} not at {remote_path}: {e}"));
        assert_eq!(copy, original, "{remote_path}");
        assert_eq!(md5.len(), 32);
    }
    assert!(rows[0]
        .2
        .starts_with("17000/crate1slot2/1700000000_stream/outputs/"));
    assert!(monitor.alive(), "the monitor is alive");
    assert!(suprsync.alive(), "SupRsync is alive");
    pool.close().await;
}

/// `kill -9` of the monitor while it commits a burst into SupRsync's
/// database, then a restart on the same spool and database, nothing sent
/// again: every registration is in `supersync_v0` exactly once. As in
/// `faults.rs`, the table is write-locked while the burst is spooled, then
/// released, and the monitor killed as soon as the first rows are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_and_doubles_nothing() {
    const BURST: usize = 10_000;
    let work = suprsync_tempdir();
    let db_path = work.path().join("suprsync.db");
    let db_arg = db_path.to_str().unwrap().to_owned();
    let monitor = common::MonitorProcess::start(work.path(), &[], &["--db-path", &db_arg]);
    let target = files_db::DbTarget::suprsync(&db_path, false);
    let data = work.path().join("1700000000/crate1slot2/outputs");
    let paths: Vec<PathBuf> = (0..BURST)
        .map(|i| data.join(format!("{i:05}.dat")))
        .collect();
    for (i, path) in paths.iter().enumerate() {
        write_file(path, format!("file {i}").as_bytes());
    }
    let lock = files_db::testing::WriteLock::acquire(&target, "supersync_v0").await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, path) in paths.iter().enumerate() {
        socket
            .send_to(&smurf_datagram(path, i), monitor.udp)
            .unwrap();
        if i % 50 == 49 {
            common::wait_below(monitor.udp.port(), 128 << 10);
        }
    }
    monitor.wait_until_read(Duration::from_secs(30));
    assert_eq!(monitor.socket_queue().drops, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counters = monitor.counters();
        // Locked out: "database is locked" after the busy timeout, shown
        // as the database being down (run's degraded), nothing lost.
        if counters["spool_depth"] == BURST && counters["database_up"] == false {
            assert_eq!(counters["files_registered"], 0, "{counters}");
            break;
        }
        assert!(Instant::now() < deadline, "not spooled: {counters}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lock.release().await;
    let pool = open_db(&db_path).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut committed = 0;
    while committed == 0 {
        assert!(Instant::now() < deadline, "no row committed after the lock");
        tokio::time::sleep(Duration::from_millis(2)).await;
        committed = count(&pool, "SELECT COUNT(*) FROM supersync_v0").await;
    }
    monitor.kill_9();
    eprintln!("{committed} of {BURST} rows committed when killed");
    assert!((committed as usize) < BURST, "nothing was left to replay");

    let restarted = common::MonitorProcess::start(work.path(), &[], &["--db-path", &db_arg]);
    wait_for_count(
        &db_path,
        "SELECT COUNT(*) FROM supersync_v0",
        BURST as i64,
        Duration::from_secs(120),
    )
    .await;
    assert_exactly_once(&pool, data.to_str().unwrap(), &paths).await;
    let dirs = count(&pool, "SELECT COUNT(*) FROM timecode_dirs_v0").await;
    assert_eq!(dirs, 1, "one timecode directory, made once");
    let (code, counters, _) = restarted.terminate_with_log();
    assert_eq!(code, 0);
    assert_eq!(counters["spool_depth"], 0, "{counters}");
    pool.close().await;
}

/// A socs 0.6.4 site entry with every argument socs's PysmurfMonitor takes
/// (`--echo-sql`, `--test-mode` included) starts our binary unchanged:
/// `run` does not start at startup, `run(test_mode=True)` from the real
/// OCSClient returns once what was received is processed, every SQL
/// statement is logged, metadata reaches `<stream-id>_meta` with the stream
/// id's case kept, and a stream id that cannot name a feed and a file of an
/// unknown archive are refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socs_site_entry_with_test_mode_and_echo_sql() {
    let Some((router, venv)) = shared_router().await else {
        return;
    };
    let work = suprsync_tempdir();
    let db = work.path().join("suprsync.db");
    let port = free_udp_port();
    let instance = format!("rs-monitor-test-mode-{}", std::process::id());
    let site = Site::write(
        work.path(),
        router,
        &[(
            "PysmurfMonitor",
            &instance,
            format!(
                "[['--udp-port', {port}], ['--create-table', True], ['--db-path', '{}'], \
                 ['--echo-sql'], ['--test-mode']]",
                db.display()
            ),
        )],
    );
    let mut monitor = AgentProcess::ours(&site, &instance);
    wait_for_tables(&db, &mut monitor, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !monitor.log_contains("joined and registered") {
        assert!(Instant::now() < deadline, "the monitor did not join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let file = work.path().join("1700000000/crate1slot2/outputs/a.dat");
    write_file(&file, b"a");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |datagram: Vec<u8>| socket.send_to(&datagram, ("127.0.0.1", port)).unwrap();
    send(smurf_datagram(&file, 0));
    send(file_datagram(
        "data_file",
        json!({"path": file.to_str().unwrap(), "type": "dat", "format": "dat",
               "timestamp": 1.7e9, "action": "x", "action_ts": 1, "plot": false,
               "archive_name": "books"}),
    ));
    for pub_id in ["STREAMER:Crate1Slot2", "STREAMER:ufm.mv5"] {
        send(
            serde_json::to_vec(&json!({
                "host": "srv", "id": pub_id, "script": null, "time": 1.7e9, "seq_no": 0,
                "type": "metadata",
                "payload": {"path": "AMCc.FpgaTopLevel.Enable", "type": "int", "value": 1},
            }))
            .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !monitor.log_contains("Crate1Slot2_meta") && !monitor.log_contains("INSERT INTO") {
        assert!(Instant::now() < deadline, "nothing processed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = run_ocs_client(&venv, "test_mode_client.py", &site.file, &instance)
        .await
        .unwrap_or_else(|stderr| panic!("{stderr}"));
    assert_ne!(client["before"]["session"]["status"], "running", "{client}");
    let run = &client["run"]["session"];
    assert_eq!(run["success"], true, "{client}");
    assert_eq!(run["status"], "done", "{client}");
    assert_eq!(run["data"]["files_registered"], 1, "{client}");
    assert_eq!(run["data"]["rejected_archive_refused"], 1, "{client}");
    assert_eq!(run["data"]["rejected_stream_id_refused"], 1, "{client}");
    assert_eq!(run["data"]["metadata_messages"], 2, "{client}");
    let feeds = client["feeds"].as_array().unwrap();
    assert!(feeds.contains(&json!("Crate1Slot2_meta")), "{client}");
    assert!(
        !feeds.iter().any(|f| f.as_str().unwrap().contains("mv5")),
        "{client}"
    );
    assert!(
        monitor.log_contains("INSERT INTO supersync_v0"),
        "--echo-sql logs the statements"
    );
    let pool = open_db(&db).await;
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM supersync_v0").await, 1);
    pool.close().await;
    assert!(monitor.alive());
}
