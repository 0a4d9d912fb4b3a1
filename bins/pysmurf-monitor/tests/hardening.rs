//! Issue #14, from outside: the real `pysmurf-monitor` binary refuses a UDP
//! port another process has, never doubles the rows of a commit whose
//! answer was lost, and exits non-zero when its pipeline stops.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_exactly_once, connect_default_sqlite, numbered, ocs_client_command, register_numbered,
    shared_router, wait_for_at_least, wait_for_rows, MonitorProcess,
};
use files_db::testing::TestDatabase;
use files_db::FilesDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs the binary to its end (at most `within`) and returns its exit code
/// and its stderr.
fn run_to_exit(mut command: Command, within: Duration) -> (i32, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pysmurf-monitor");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the monitor still runs after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

/// A second monitor on the port of a running one (another instance-id,
/// another working directory) refuses to start, says why, exits non-zero;
/// the first one keeps receiving every registration.
#[tokio::test]
async fn a_second_monitor_on_the_same_udp_port_refuses_to_start() {
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let first = MonitorProcess::start(first_dir.path(), &[], &[]);
    let port = first.udp.port();

    let mut second = Command::new(env!("CARGO_BIN_EXE_pysmurf-monitor"));
    for name in files_db::MYSQL_ENV_VARS {
        second.env_remove(name);
    }
    second
        .env_remove("OCS_CONFIG_DIR")
        .current_dir(second_dir.path())
        .args(["--udp-host", "127.0.0.1", "--udp-port", &port.to_string()])
        .args(["--instance-id", "second-monitor"])
        .args(["--site-hub", "ws://127.0.0.1:1/ws"]);
    let (code, stderr) = run_to_exit(second, Duration::from_secs(30));
    assert_ne!(code, 0, "the second monitor must fail: {stderr}");
    assert!(
        stderr.contains(&format!(
            "UDP port {port} is already in use by another process"
        )),
        "the error names the port and says another process has it: {stderr}"
    );

    // Every registration still goes to the first monitor.
    let mut publisher = first.publisher();
    register_numbered(&mut publisher, first_dir.path(), 0..4);
    let db = connect_default_sqlite(first_dir.path()).await;
    wait_for_rows(&db, 4, Duration::from_secs(30)).await;
    assert!(
        !second_dir.path().join("pysmurf_files.db").exists(),
        "the second monitor opened no database"
    );
    assert_eq!(first.terminate(), 0);
    db.close().await;
}

/// A TCP forwarder to a MariaDB server that knows just enough of the MySQL
/// protocol to lose a commit's answer: armed with [`CommitCutter::cut_next`],
/// it forwards the next `COMMIT` (a `COM_QUERY` packet) to the server, waits
/// for the server's reply — so the transaction is committed — and then
/// closes both connections instead of passing the reply on. It also clears
/// the server's TLS capability in its greeting so the client talks in clear.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

impl CommitCutter {
    async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(Self::forward(client, server, a.clone(), c.clone()));
            }
        });
        Self { port, armed, cut }
    }

    /// Cuts the connection after each of the next `commits` commits.
    fn cut_next(&self, commits: usize) {
        self.armed.store(commits, Ordering::SeqCst);
    }

    /// How many commit replies were swallowed so far.
    fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }

    async fn forward(
        client: TcpStream,
        server: SocketAddr,
        armed: Arc<AtomicUsize>,
        cut: Arc<AtomicUsize>,
    ) {
        let Ok(server) = TcpStream::connect(server).await else {
            return;
        };
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let swallow = AtomicBool::new(false);
        let up = async {
            loop {
                let mut header = [0u8; 4];
                from_client.read_exact(&mut header).await?;
                let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
                let mut payload = vec![0u8; len];
                from_client.read_exact(&mut payload).await?;
                // COM_QUERY (0x03) "COMMIT".
                if payload.eq_ignore_ascii_case(b"\x03COMMIT")
                    && armed
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    swallow.store(true, Ordering::SeqCst);
                }
                to_server.write_all(&header).await?;
                to_server.write_all(&payload).await?;
            }
            #[allow(unreachable_code)]
            std::io::Result::Ok(())
        };
        let down = async {
            // The greeting: protocol version, NUL-terminated server version,
            // connection id (4), auth data (8), filler (1), then the lower
            // capability flags, whose CLIENT_SSL (0x0800) is cleared.
            let mut header = [0u8; 4];
            from_server.read_exact(&mut header).await?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
            let mut greeting = vec![0u8; len];
            from_server.read_exact(&mut greeting).await?;
            if let Some(nul) = greeting.iter().skip(1).position(|&b| b == 0) {
                let flags = 1 + nul + 1 + 4 + 8 + 1;
                if let Some(byte) = greeting.get_mut(flags + 1) {
                    *byte &= !0x08;
                }
            }
            to_client.write_all(&header).await?;
            to_client.write_all(&greeting).await?;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = from_server.read(&mut buffer).await?;
                if n == 0 {
                    return std::io::Result::Ok(());
                }
                if swallow.load(Ordering::SeqCst) {
                    // The server has committed and answered; the client
                    // never hears it.
                    cut.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                to_client.write_all(&buffer[..n]).await?;
            }
        };
        // Whichever side ends first closes both connections.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }
}

/// Registrations whose commit reached MariaDB but whose answer was lost
/// (the connection cut between the server's OK and the monitor): the
/// monitor retries them, and every registration is in the table exactly once.
///
/// SQLite has no such case: its commit is a call inside the process, not a
/// message that can be lost, and a failed SQLite commit is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_doubles_no_row_on_mariadb() {
    const GROUP: usize = 100;
    let Some(test_db) = TestDatabase::create("hardening_lost_commit").await else {
        return;
    };
    let db = FilesDb::connect(test_db.target()).await.unwrap();
    db.create_table().await.unwrap();
    let gate = CommitCutter::start(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        test_db.server_port(),
    )))
    .await;
    let env = test_db.env_through(gate.port);
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &env, &[]);
    let mut publisher = monitor.publisher();

    // Two groups, each with the first commit's answer lost.
    for group in 0..2 {
        gate.cut_next(1);
        register_numbered(
            &mut publisher,
            work.path(),
            group * GROUP..(group + 1) * GROUP,
        );
        wait_for_at_least(&db, ((group + 1) * GROUP) as u64, Duration::from_secs(60)).await;
        assert_eq!(gate.cuts(), group + 1, "a commit's answer was lost");
    }
    // Until nothing waits for the database any more.
    let deadline = Instant::now() + Duration::from_secs(60);
    while monitor.counters()["spool_depth"] != 0 {
        assert!(Instant::now() < deadline, "the spool did not empty");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, counters, _) = monitor.terminate_with_log();
    assert_eq!(code, 0);
    let paths: Vec<_> = (0..2 * GROUP).map(|i| numbered(work.path(), i)).collect();
    assert_exactly_once(&db, &paths).await;
    // The rows of each lost answer were found committed, not written again.
    let registered = counters["files_registered"].as_u64().unwrap();
    let present = counters["files_already_present"].as_u64().unwrap();
    assert!(present >= 2, "{counters}");
    assert_eq!(registered + present, (2 * GROUP) as u64, "{counters}");
    db.close().await;
    test_db.drop_database().await;
}

/// Waits (at most `within`) for the monitor to exit on its own; its exit
/// code and every log line.
fn wait_for_exit(mut monitor: MonitorProcess, within: Duration) -> (i32, Vec<String>) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = monitor.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor still runs {within:?} after its pipeline failed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines = monitor.log.iter().collect();
    (status.code().unwrap_or(-1), lines)
}

/// The fault (see monitor-core's `src/fault.rs`, compiled into the tests'
/// binary only) as the child's environment.
fn fault(spec: &str) -> (&'static str, String) {
    ("PYSMURF_MONITOR_FAULT", spec.to_owned())
}

fn assert_logged(lines: &[String], needle: &str) {
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "no log line with {needle:?}"
    );
}

/// A receiver that cannot start: the monitor exits non-zero and says why
/// (it used to log and exit 0).
#[test]
fn a_receiver_that_cannot_start_makes_the_monitor_exit_non_zero() {
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &[fault("receiver-start")], &[]);
    let (code, lines) = wait_for_exit(monitor, Duration::from_secs(30));
    assert_ne!(code, 0);
    assert_logged(&lines, "cannot start the UDP receiver");
    assert_logged(&lines, "exiting to be restarted");
}

/// The UDP socket fails after 5 datagrams: the 5 are recorded, the
/// monitor stops receiving, exits non-zero and says why (it used to keep
/// running, deaf, with `run` healthy).
#[tokio::test]
async fn a_failing_udp_socket_makes_the_monitor_exit_non_zero() {
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &[fault("socket-after=5")], &[]);
    let mut publisher = monitor.publisher();
    register_numbered(&mut publisher, work.path(), 0..5);
    let db = connect_default_sqlite(work.path()).await;
    wait_for_rows(&db, 5, Duration::from_secs(30)).await;
    register_numbered(&mut publisher, work.path(), 5..6);
    let (code, lines) = wait_for_exit(monitor, Duration::from_secs(30));
    assert_ne!(code, 0);
    assert_logged(&lines, "the UDP socket failed");
    let paths: Vec<_> = (0..5).map(|i| numbered(work.path(), i)).collect();
    assert_exactly_once(&db, &paths).await;
    db.close().await;
}

/// A stage panics (the batcher at its second batch, the hasher at its
/// second chunk): the monitor exits non-zero naming the stage and the
/// panic, what it held stays in the spool, and the restarted monitor
/// records every registration exactly once.
#[tokio::test]
async fn a_stage_that_panics_makes_the_monitor_exit_non_zero_and_loses_nothing() {
    for stage in ["batcher", "hasher"] {
        let work = tempfile::tempdir().unwrap();
        let monitor =
            MonitorProcess::start(work.path(), &[fault(&format!("panic-in={stage}@2"))], &[]);
        let mut publisher = monitor.publisher();
        register_numbered(&mut publisher, work.path(), 0..1);
        let db = connect_default_sqlite(work.path()).await;
        wait_for_rows(&db, 1, Duration::from_secs(30)).await;
        register_numbered(&mut publisher, work.path(), 1..20);
        let (code, lines) = wait_for_exit(monitor, Duration::from_secs(30));
        assert_ne!(code, 0, "{stage}");
        assert_logged(
            &lines,
            &format!("the {stage} stage panicked: injected fault: panic-in={stage}@2"),
        );

        let restarted = MonitorProcess::start(work.path(), &[], &[]);
        wait_for_rows(&db, 20, Duration::from_secs(30)).await;
        assert_eq!(restarted.terminate(), 0);
        let paths: Vec<_> = (0..20).map(|i| numbered(work.path(), i)).collect();
        assert_exactly_once(&db, &paths).await;
        db.close().await;
    }
}

/// While a failed pipeline drains (here 10 s: a registration waits for its
/// file, which never comes; the database is fine), a real OCSClient sees the
/// `run` session degraded, with the reason in its data and messages; then
/// the monitor exits non-zero, the registration left in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pipeline_shows_degraded_with_the_reason_in_the_run_session() {
    use tokio::io::AsyncBufReadExt;
    let Some((router, venv)) = shared_router().await else {
        return;
    };
    let instance = format!("pysmurf-monitor-failing-{}", std::process::id());
    let work = tempfile::tempdir().unwrap();
    let hub = router.ws_url();
    let monitor = MonitorProcess::start(
        work.path(),
        &[fault("socket-after=1")],
        &["--site-hub", &hub, "--instance-id", &instance],
    );
    let site_file = router.site_file(work.path());
    let mut client = ocs_client_command(&venv, "run_status_client.py", &site_file, &instance)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let ready = lines.next_line().await.unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));

    let mut publisher = monitor.publisher();
    let missing = work.path().join("not/yet/there.dat");
    publisher
        .register_file(&smurf_protocol::FilePayload::new(
            missing.to_str().unwrap(),
            "dat",
        ))
        .unwrap();
    // Read by the receiver before the next makes the socket fail.
    let deadline = Instant::now() + Duration::from_secs(10);
    while monitor.socket_queue().rx_queue_bytes > 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    register_numbered(&mut publisher, work.path(), 1..2);
    let session: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(session["degraded"], true, "{session}");
    assert_eq!(session["data"]["pipeline_up"], false, "{session}");
    let reason = session["data"]["pipeline_error"].as_str().unwrap();
    assert!(reason.contains("the UDP socket failed"), "{session}");
    assert!(
        session["messages"].as_array().unwrap().iter().any(|m| m
            .to_string()
            .contains("pipeline stopped: the UDP socket failed")),
        "{session}"
    );
    let (code, _) = wait_for_exit(monitor, Duration::from_secs(30));
    assert_ne!(code, 0);
}

/// The kill -9 window counters: `unspooled` (datagrams read, not yet in the
/// spool) is back to 0 once everything is spooled, whatever the datagrams
/// were (registrations, session messages, garbage, refused paths), and
/// `unspooled_peak` kept the burst's highest value.
#[tokio::test]
async fn the_unspooled_counter_returns_to_zero_and_keeps_its_peak() {
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &[], &[]);
    let mut publisher = monitor.publisher();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..20 {
        socket.send_to(b"\xff not json", monitor.udp).unwrap();
        publisher
            .publish("session_log", &serde_json::json!(format!("line {i}")))
            .unwrap();
        publisher
            .register_file(&smurf_protocol::FilePayload::new(
                "relative/path.dat",
                "dat",
            ))
            .unwrap();
    }
    register_numbered(&mut publisher, work.path(), 0..200);
    let db = connect_default_sqlite(work.path()).await;
    wait_for_rows(&db, 200, Duration::from_secs(30)).await;
    let counters = monitor.counters();
    assert_eq!(counters["datagrams_received"], 260, "{counters}");
    assert_eq!(counters["unspooled"], 0, "{counters}");
    let peak = counters["unspooled_peak"].as_u64().unwrap();
    assert!((1..=260).contains(&peak), "{counters}");
    assert_eq!(monitor.terminate(), 0);
    db.close().await;
}
