//! The real `pysmurf-files-manager` binary against a real SQLite file and a
//! real MariaDB database.

use std::path::Path;
use std::process::{Command, Output};

use files_db::testing::TestDatabase;
use files_db::MYSQL_ENV_VARS;

/// The binary with a clean environment: no inherited `MYSQL_*` variables,
/// run in `dir`, stdin not a terminal.
fn manager(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pysmurf-files-manager"));
    for name in MYSQL_ENV_VARS {
        command.env_remove(name);
    }
    command
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .args(args)
        .output()
        .expect("run pysmurf-files-manager")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

#[track_caller]
fn run(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let out = manager(dir, env, args);
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ pysmurf-files-manager {}\n[exit {}]\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// A failure is exactly one line on stderr, starting `error: `, and a
/// non-zero exit.
#[track_caller]
fn assert_one_line_failure(run: &Run, needle: &str) {
    assert_ne!(run.code, 0);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
}

/// create → status → create → drop (refused without --yes) → drop --yes → status.
fn life_cycle(dir: &Path, env: &[(&str, String)], describe: &str) {
    let status = run(dir, env, &["status"]);
    assert_ne!(status.code, 0, "no table yet");

    let create = run(dir, env, &["create"]);
    assert_eq!(create.code, 0, "{}", create.stderr);
    assert!(create.stdout.contains("created table pysmurf_files_v1"));
    assert!(create.stdout.contains(describe), "{}", create.stdout);

    let status = run(dir, env, &["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status
        .stdout
        .contains("pysmurf_files_v1 (current version): 0 rows"));
    let columns: Vec<&str> = status
        .stdout
        .lines()
        .filter(|line| line.starts_with("  "))
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(columns, files_db::COLUMNS);

    let again = run(dir, env, &["create"]);
    assert_eq!(again.code, 0);
    assert!(again.stdout.contains("already exists"));

    let refused = run(dir, env, &["drop"]);
    assert_one_line_failure(&refused, "pass --yes");
    assert_eq!(run(dir, env, &["status"]).code, 0, "still there");

    let dropped = run(dir, env, &["drop", "--yes"]);
    assert_eq!(dropped.code, 0, "{}", dropped.stderr);
    assert!(dropped
        .stdout
        .contains("dropped table pysmurf_files_v1 (0 rows)"));

    let status = run(dir, env, &["status"]);
    assert_one_line_failure(&status, "does not exist");
    let drop_absent = run(dir, env, &["drop", "--yes"]);
    assert_one_line_failure(&drop_absent, "nothing to drop");
}

#[test]
fn sqlite_life_cycle_on_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run(dir.path(), &[], &["status"]);
    assert_one_line_failure(&missing, "pysmurf_files.db");
    assert!(
        !dir.path().join("pysmurf_files.db").exists(),
        "status must not create the file"
    );
    life_cycle(dir.path(), &[], "sqlite://pysmurf_files.db");
}

#[test]
fn sqlite_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("other.db").display());
    let create = run(dir.path(), &[], &["--db-url", &url, "create"]);
    assert_eq!(create.code, 0, "{}", create.stderr);
    assert!(dir.path().join("other.db").exists());
    assert!(!dir.path().join("pysmurf_files.db").exists());
}

#[tokio::test]
async fn mariadb_life_cycle_from_the_environment() {
    let Some(db) = TestDatabase::create("mariadb_life_cycle").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = db.env().to_vec();
    life_cycle(dir.path(), &env, &format!("/{}", db.name()));
    db.drop_database().await;
}

#[tokio::test]
async fn mariadb_failures_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let unreachable = [
        ("MYSQL_HOST", "127.0.0.1".to_owned()),
        ("MYSQL_PORT", "1".to_owned()),
        ("MYSQL_USER", "monitor".to_owned()),
        ("MYSQL_PASSWORD", "hunter2".to_owned()),
    ];
    let out = run(dir.path(), &unreachable, &["status"]);
    assert_one_line_failure(&out, "monitor@127.0.0.1:1");
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"));

    let bad_port = [("MYSQL_PORT", "db".to_owned())];
    assert_one_line_failure(&run(dir.path(), &bad_port, &["status"]), "MYSQL_PORT");

    let Some(db) = TestDatabase::create("mariadb_failures").await else {
        return;
    };
    let mut wrong: Vec<(&str, String)> = db.env().to_vec();
    for (name, value) in &mut wrong {
        if *name == "MYSQL_PASSWORD" {
            *value = "not-the-password".into();
        }
    }
    let out = run(dir.path(), &wrong, &["create"]);
    assert_one_line_failure(&out, "access denied");
    assert!(!out.stderr.contains("not-the-password"));

    let env: Vec<(&str, String)> = db.env().to_vec();
    let out = run(dir.path(), &env, &["drop", "--yes"]);
    assert_one_line_failure(&out, "nothing to drop");
    db.drop_database().await;
}

/// On a terminal with no password anywhere, the manager prompts for it
/// without echo and uses it. The terminal is a pseudo-terminal driven by
/// Python's `pty` module (python3 is on every machine the test script runs).
#[tokio::test]
async fn prompts_for_the_password_on_a_terminal_without_echo() {
    let Some(db) = TestDatabase::create("password_prompt").await else {
        return;
    };
    let env: Vec<(&str, String)> = db.env().to_vec();
    let password = env
        .iter()
        .find(|(name, _)| *name == "MYSQL_PASSWORD")
        .map(|(_, value)| value.clone())
        .unwrap();
    const DRIVER: &str = r#"
import os, pty, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "create"])
out = b""
deadline = time.time() + 20
while b"Password for" not in out and time.time() < deadline:
    out += os.read(fd, 4096)
# Type only once the program has switched echo off, as a person would after the prompt.
while termios.tcgetattr(fd)[3] & termios.ECHO and time.time() < deadline:
    time.sleep(0.01)
os.write(fd, os.environ["TYPED"].encode() + b"\n")
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut command = Command::new("python3");
    command
        .args(["-c", DRIVER, env!("CARGO_BIN_EXE_pysmurf-files-manager")])
        .env("TYPED", &password);
    for (name, value) in &env {
        if *name != "MYSQL_PASSWORD" {
            command.env(name, value);
        }
    }
    command.env_remove("MYSQL_PASSWORD");
    let out = command.output().expect("run python3");
    let screen = String::from_utf8_lossy(&out.stdout);
    eprintln!("{screen}");
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("Password for "), "{screen}");
    assert!(
        screen.contains("created table pysmurf_files_v1"),
        "{screen}"
    );
    assert!(!screen.contains(&password), "the password was echoed");
    db.drop_database().await;
}
