//! Helpers shared by the end-to-end test binaries (`e2e.rs`, `faults.rs`,
//! `cluster.rs`, `hardening.rs`, `suprsync.rs`): the real `pysmurf-monitor`
//! binary as a child process, a real publisher, the database it writes (the
//! SQLite default or a MariaDB database of the test's own), a real crossbar
//! router and ocs clients, and checks made through the real database.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use files_db::testing::TestDatabase;
use files_db::{DbTarget, FileFilter, FilesDb, StoredFile, MYSQL_ENV_VARS};
use ocs_feed::testing::{self as ocs_testing, Crossbar};
use smurf_protocol::{FilePayload, Publisher, PublisherConfig};

/// A running monitor and where it listens.
pub struct MonitorProcess {
    pub child: Child,
    pub udp: SocketAddr,
    /// The monitor's log lines (also echoed to the test's stderr).
    pub log: mpsc::Receiver<String>,
}

impl MonitorProcess {
    /// Starts the binary in `working_dir` on a free UDP port with `env`
    /// added to a clean environment (no `MYSQL_*`, no OCS config). The
    /// router address is a closed loopback port: these tests run without one.
    pub fn start(working_dir: &Path, env: &[(&str, String)], extra_args: &[&str]) -> Self {
        Self::start_under(&[], working_dir, env, extra_args)
    }

    /// [`start`](Self::start), run by `wrapper` (a program and its
    /// arguments that then execs the monitor, e.g. `setpriv ...`).
    pub fn start_under(
        wrapper: &[&str],
        working_dir: &Path,
        env: &[(&str, String)],
        extra_args: &[&str],
    ) -> Self {
        let binary = env!("CARGO_BIN_EXE_pysmurf-monitor");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        for name in MYSQL_ENV_VARS {
            command.env_remove(name);
        }
        command
            .env_remove("OCS_CONFIG_DIR")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(working_dir)
            .args(["--udp-host", "127.0.0.1", "--udp-port", "0"])
            .args(extra_args);
        if !extra_args.contains(&"--site-hub") {
            // No router: a closed loopback port.
            command.args(["--site-hub", "ws://127.0.0.1:1/ws"]);
        }
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start pysmurf-monitor");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Owned from here on: dropping it kills and reaps the child.
        let mut monitor = Self {
            child,
            udp: "0.0.0.0:0".parse().unwrap(),
            log: rx,
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[monitor] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = monitor
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the monitor said where it receives");
            if let Some(rest) = line.split(" udp=").nth(1) {
                monitor.udp = rest.split_whitespace().next().unwrap().parse().unwrap();
                return monitor;
            }
        }
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(self) -> i32 {
        self.terminate_with_log().0
    }

    /// SIGTERM, then the exit code, the counters of the monitor's last log
    /// line (`pipeline stopped counters={...}`) and every log line since start-up.
    pub fn terminate_with_log(mut self) -> (i32, serde_json::Value, Vec<String>) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        // The reader thread ends with the child's stderr, closing the channel.
        let lines: Vec<String> = self.log.iter().collect();
        let counters = lines
            .iter()
            .find_map(|line| {
                let json = line.split_once("pipeline stopped counters=")?.1;
                serde_json::from_str(json).ok()
            })
            .unwrap_or_default();
        (status.code().unwrap_or(-1), counters, lines)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.udp, PublisherConfig::new("crate1slot2", "e2e_test.py")).unwrap()
    }
}

impl Drop for MonitorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The digest coreutils' `md5sum` computes: an independent implementation.
pub fn md5sum_tool(path: &Path) -> [u8; 16] {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.split_whitespace().next().unwrap();
    let mut digest = [0; 16];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    digest
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Polls until `db` holds `count` rows (or fails after `within`).
pub async fn wait_for_rows(db: &FilesDb, count: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let rows = db
            .status()
            .await
            .ok()
            .and_then(|s| s.current_table().map(|t| t.rows))
            .unwrap_or(0);
        if rows >= count {
            assert_eq!(rows, count, "more rows than registrations");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {rows} of {count} rows after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes and registers `<dir>/data/NNNN.dat` for each number of `range`.
pub fn register_numbered(publisher: &mut Publisher, dir: &Path, range: std::ops::Range<usize>) {
    for i in range {
        let path = numbered(dir, i);
        write_file(&path, format!("file {i}").as_bytes());
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
            .unwrap();
    }
}

/// The file [`register_numbered`] writes for `i`.
pub fn numbered(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("data/{i:04}.dat"))
}

pub async fn only_row(db: &FilesDb, path: &Path) -> StoredFile {
    let mut rows = db.files_by_path(path.to_str().unwrap()).await.unwrap();
    assert_eq!(rows.len(), 1, "exactly one row for {}", path.display());
    rows.remove(0)
}

/// The kernel's view of the monitor's UDP socket (`/proc/net/udp`, IPv4):
/// datagrams queued but not yet read, and datagrams it dropped because the
/// receive buffer was full. Datagrams the kernel drops never reach the
/// monitor; tests that need every datagram delivered check `drops` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketQueue {
    /// Bytes waiting in the receive buffer.
    pub rx_queue_bytes: u64,
    /// Datagrams dropped by the kernel.
    pub drops: u64,
}

impl MonitorProcess {
    /// The kernel's counters of the monitor's UDP socket (bound on 127.0.0.1).
    pub fn socket_queue(&self) -> SocketQueue {
        socket_queue(self.udp.port())
    }

    /// Waits until the monitor has read every datagram the kernel holds for it.
    pub fn wait_until_read(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.socket_queue().rx_queue_bytes > 0 {
            assert!(
                Instant::now() < deadline,
                "the monitor did not read its socket within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A publisher (pub id `crate1slot2`) sending from `local` (e.g. `127.0.0.2:0`).
    pub fn publisher_from(&self, local: &str, script: &str) -> Publisher {
        let socket = std::net::UdpSocket::bind(local).unwrap();
        Publisher::with_socket(
            socket,
            self.udp,
            PublisherConfig::new("crate1slot2", script),
        )
    }

    /// Waits for a log line containing `needle`, within `within`; returns it.
    /// Lines read while waiting are consumed.
    /// The monitor's counters now: SIGUSR1 makes it log them.
    pub fn counters(&self) -> serde_json::Value {
        Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()
            .unwrap();
        let line = self.wait_for_log("SIGUSR1: counters", Duration::from_secs(10));
        let json = line.split_once("counters=").expect("counters=").1;
        // The last field of the line: the JSON object runs to its end.
        serde_json::from_str(json.trim()).expect("the counters are JSON")
    }

    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?} within {within:?}"),
            }
        }
    }
}

/// The kernel's counters of the UDP socket bound on `127.0.0.1:port`.
pub fn socket_queue(port: u16) -> SocketQueue {
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let local = format!("0100007F:{port:04X}");
    let line = table
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
        .unwrap_or_else(|| panic!("no {local} in /proc/net/udp:\n{table}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let rx_hex = fields[4].split_once(':').expect("tx_queue:rx_queue").1;
    SocketQueue {
        rx_queue_bytes: u64::from_str_radix(rx_hex, 16).unwrap(),
        drops: fields.last().unwrap().parse().unwrap(),
    }
}

/// Every row of `db`'s table, counted by path.
pub async fn rows_per_path(db: &FilesDb) -> HashMap<String, u64> {
    let rows = db
        .recent_files(&FileFilter::default(), u32::MAX)
        .await
        .expect("read every row");
    let mut counts = HashMap::new();
    for row in rows {
        *counts.entry(row.row.path).or_insert(0) += 1;
    }
    counts
}

/// The table holds every path of `expected` exactly once and nothing else.
pub async fn assert_exactly_once(db: &FilesDb, expected: &[PathBuf]) {
    let counts = rows_per_path(db).await;
    let mut missing = Vec::new();
    let mut doubled = Vec::new();
    for path in expected {
        match counts.get(path.to_str().unwrap()).copied().unwrap_or(0) {
            0 => missing.push(path.display().to_string()),
            1 => {}
            n => doubled.push(format!("{} ({n} rows)", path.display())),
        }
    }
    let wanted: std::collections::HashSet<&str> =
        expected.iter().map(|p| p.to_str().unwrap()).collect();
    let unexpected: Vec<&String> = counts
        .keys()
        .filter(|p| !wanted.contains(p.as_str()))
        .collect();
    let total: u64 = counts.values().sum();
    assert!(
        missing.is_empty() && doubled.is_empty() && unexpected.is_empty(),
        "{} registrations sent, {total} rows: {} missing (first: {:?}), {} doubled (first: {:?}), \
         {} unexpected (first: {:?})",
        expected.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        doubled.len(),
        doubled.iter().take(5).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(5).collect::<Vec<_>>(),
    );
    assert_eq!(total, expected.len() as u64);
}

/// Waits until `db` holds at least `count` rows (any number more is left to
/// the caller's exactly-once check); fails after `within`.
pub async fn wait_for_at_least(db: &FilesDb, count: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let rows = current_rows(db).await;
        if rows >= count {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "only {rows} of {count} rows after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rows of the table now (0 when it or the database is missing).
pub async fn current_rows(db: &FilesDb) -> u64 {
    db.status()
        .await
        .ok()
        .and_then(|s| s.current_table().map(|t| t.rows))
        .unwrap_or(0)
}

/// Holds a sender back while more than `bytes` wait unread in the receive
/// buffer of the monitor's socket on `port` (gives up after 30 s): a burst
/// as fast as the monitor reads, never lost by the kernel for lack of room.
pub fn wait_below(port: u16, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket_queue(port).rx_queue_bytes > bytes && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The database a monitor started with no database option writes: its working
/// directory's `pysmurf_files.db`.
pub fn default_sqlite_target(work: &Path) -> DbTarget {
    DbTarget::sqlite(work.join("pysmurf_files.db"))
}

/// A connection to [`default_sqlite_target`] of `work`.
pub async fn connect_default_sqlite(work: &Path) -> FilesDb {
    FilesDb::connect(&default_sqlite_target(work))
        .await
        .unwrap()
}

/// Where a test's monitor writes: a working directory, the database target
/// and the environment that selects it (for [`MonitorProcess::start`]).
pub struct Backend {
    pub work: tempfile::TempDir,
    pub target: DbTarget,
    pub env: Vec<(&'static str, String)>,
    mariadb: Option<TestDatabase>,
}

impl Backend {
    /// No database configured: the SQLite default in a fresh working directory.
    pub fn sqlite_default() -> Self {
        let work = tempfile::tempdir().unwrap();
        Self {
            target: default_sqlite_target(work.path()),
            work,
            env: Vec::new(),
            mariadb: None,
        }
    }

    /// A fresh MariaDB database selected by `MYSQL_*`; `None` when the test is
    /// skipped (see [`TestDatabase::create`]).
    pub async fn mariadb(test: &str) -> Option<Self> {
        let database = TestDatabase::create(test).await?;
        Some(Self {
            work: tempfile::tempdir().unwrap(),
            target: database.target().clone(),
            env: database.env().to_vec(),
            mariadb: Some(database),
        })
    }

    /// The test's MariaDB database, if it has one.
    pub fn mariadb_database(&self) -> Option<&TestDatabase> {
        self.mariadb.as_ref()
    }

    /// Drops the MariaDB database, if any.
    pub async fn finish(self) {
        if let Some(database) = self.mariadb {
            database.drop_database().await;
        }
    }
}

/// Registers numbered files (`<dir>/data/NNNN.dat`, from `first` on) at a
/// steady rate from a thread of its own until [`Stream::finish`].
pub struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<PathBuf>>,
}

impl Stream {
    pub fn start(mut publisher: Publisher, dir: &Path, first: usize, per_second: u32) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let period = Duration::from_secs(1) / per_second;
        let dir = dir.to_owned();
        let thread = std::thread::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            move || {
                let mut paths = Vec::new();
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let i = first + paths.len();
                    register_numbered(&mut publisher, &dir, i..i + 1);
                    paths.push(numbered(&dir, i));
                    sent.store(paths.len(), Ordering::SeqCst);
                    next += period;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                paths
            }
        });
        Stream { stop, sent, thread }
    }

    /// How many registrations were sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops sending; the paths of every registration sent.
    pub fn finish(self) -> Vec<PathBuf> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the registering thread")
    }
}

/// Runs a blocking step (starting or stopping a server or router) off the
/// test's runtime.
pub async fn blocking<T: Send + 'static>(step: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(step).await.unwrap()
}

/// Runs a blocking `step` on `value` (stopping a server, killing a router)
/// off the test's runtime; gives `value` back.
pub async fn blocking_on<T: Send + 'static>(
    mut value: T,
    step: impl FnOnce(&mut T) + Send + 'static,
) -> T {
    blocking(move || {
        step(&mut value);
        value
    })
    .await
}

/// The crossbar router the test binary shares and the virtualenv (crossbar,
/// ocs, socs); `None` when the test is skipped (see
/// [`ocs_testing::venv`]).
pub async fn shared_router() -> Option<(&'static Crossbar, PathBuf)> {
    let router = blocking(ocs_testing::shared_crossbar).await?;
    let venv = ocs_testing::venv().expect("venv present when the router is");
    Some((router, venv))
}

/// A crossbar router of the test's own (to kill, restart or pause).
pub async fn private_router(venv: &Path) -> Crossbar {
    let venv = venv.to_owned();
    blocking(move || Crossbar::start(&venv).expect("start a router of our own")).await
}

/// `tests/python/<script> SITE_FILE INSTANCE_ID` with the virtualenv's
/// Python: an ocs client of the monitor `instance`.
pub fn ocs_client_command(
    venv: &Path,
    script: &str,
    site_file: &Path,
    instance: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(venv.join("bin/python"));
    command
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python")
                .join(script),
        )
        .arg(site_file)
        .arg(instance);
    command
}

/// Runs [`ocs_client_command`] to its end: its JSON output, or its stderr
/// when it failed.
pub async fn run_ocs_client(
    venv: &Path,
    script: &str,
    site_file: &Path,
    instance: &str,
) -> Result<serde_json::Value, String> {
    let out = ocs_client_command(venv, script, site_file, instance)
        .output()
        .await
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits (at most `within`) until the dead-letter file of the monitor in
/// `work` (its default spool) satisfies `done`; returns its text.
pub async fn wait_for_dead_letters(
    work: &Path,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let path = work.join("pysmurf_monitor_spool/dead_letters.jsonl");
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(&path);
        match text {
            Ok(text) if done(&text) => return text,
            text => assert!(
                Instant::now() < deadline,
                "dead letters after {within:?}: {text:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
