//! Issue #14, from outside: the real `pysmurf-monitor` binary refuses a UDP
//! port another process has, never doubles the rows of a commit whose
//! answer was lost, and exits non-zero when its pipeline stops.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{register_numbered, wait_for_rows, MonitorProcess};
use files_db::{DbTarget, FilesDb};

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
    let db = FilesDb::connect(&DbTarget::sqlite(first_dir.path().join("pysmurf_files.db")))
        .await
        .unwrap();
    wait_for_rows(&db, 4, Duration::from_secs(30)).await;
    assert!(
        !second_dir.path().join("pysmurf_files.db").exists(),
        "the second monitor opened no database"
    );
    assert_eq!(first.terminate(), 0);
    db.close().await;
}
