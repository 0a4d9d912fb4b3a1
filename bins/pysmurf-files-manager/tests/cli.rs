//! The real `pysmurf-files-manager` binary against a real SQLite file and a
//! real MariaDB database.

use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, TimeZone, Utc};
use files_db::testing::TestDatabase;
use files_db::{DbTarget, FileRow, FilesDb, StoredFile, MYSQL_ENV_VARS};

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

/// Two tests of `checks`: `$sqlite` on [`Scratch::sqlite`], `$mariadb` on
/// [`Scratch::mariadb`] (named `$name`).
macro_rules! on_both_backends {
    ($checks:ident, $name:literal: $sqlite:ident, $mariadb:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let scratch = Scratch::sqlite().await;
            $checks(&scratch).await;
            scratch.finish().await;
        }

        #[tokio::test]
        async fn $mariadb() {
            let Some(scratch) = Scratch::mariadb($name).await else {
                return;
            };
            $checks(&scratch).await;
            scratch.finish().await;
        }
    };
}

/// A scratch database of one backend for the subcommands that read and
/// write rows: the directory the binary runs in, its environment, and the
/// target for checking rows through `files_db`.
struct Scratch {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    target: DbTarget,
    mariadb: Option<TestDatabase>,
}

impl Scratch {
    /// The default SQLite file in a fresh directory, table created.
    async fn sqlite() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let target = DbTarget::sqlite(dir.path().join("pysmurf_files.db"));
        Scratch::with_table(dir, Vec::new(), target, None).await
    }

    /// A fresh MariaDB database selected through MYSQL_*, table created.
    async fn mariadb(test: &str) -> Option<Scratch> {
        let db = TestDatabase::create(test).await?;
        let env = db.env().to_vec();
        let target = db.target().clone();
        Some(Scratch::with_table(tempfile::tempdir().unwrap(), env, target, Some(db)).await)
    }

    async fn with_table(
        dir: tempfile::TempDir,
        env: Vec<(&'static str, String)>,
        target: DbTarget,
        mariadb: Option<TestDatabase>,
    ) -> Scratch {
        let scratch = Scratch {
            dir,
            env,
            target,
            mariadb,
        };
        let create = scratch.run(&["create"]);
        assert_eq!(create.code, 0, "{}", create.stderr);
        scratch
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> Run {
        run(self.dir.path(), &self.env, args)
    }

    async fn insert(&self, rows: &[FileRow]) {
        let db = FilesDb::connect(&self.target).await.unwrap();
        db.insert_files(rows).await.unwrap();
        db.close().await;
    }

    async fn rows(&self, path: &str) -> Vec<StoredFile> {
        let db = FilesDb::connect(&self.target).await.unwrap();
        let rows = db.files_by_path(path).await.unwrap();
        db.close().await;
        rows
    }

    async fn count(&self) -> u64 {
        let db = FilesDb::connect(&self.target).await.unwrap();
        let status = db.status().await.unwrap();
        db.close().await;
        status.current_table().unwrap().rows
    }

    async fn finish(self) {
        if let Some(db) = self.mariadb {
            db.drop_database().await;
        }
    }
}

fn listed_row(n: u8, action: &str, pub_id: &str, path: &str) -> FileRow {
    let mut row = FileRow::new(path, [n; 16]);
    row.action = Some(action.into());
    row.pub_id = Some(pub_id.into());
    row.timestamp = Some(Utc.timestamp_opt(1_700_000_000 + i64::from(n), 0).unwrap());
    row.format = Some("npy".into());
    row
}

async fn list_checks(scratch: &Scratch) {
    let empty = scratch.run(&["list"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert!(
        empty.stdout.contains("no matching rows"),
        "{}",
        empty.stdout
    );
    assert_eq!(scratch.run(&["list", "--json"]).stdout, "");

    let rows: Vec<FileRow> = (1..=25)
        .map(|n| {
            let (action, pub_id) = match n % 3 {
                0 => ("tune", "crate1slot2"),
                1 => ("take_iv", "crate1slot2"),
                _ => ("tune", "crate2slot3"),
            };
            let dir = if n <= 5 { "/old" } else { "/data" };
            listed_row(n, action, pub_id, &format!("{dir}/{n:02}_{action}.npy"))
        })
        .collect();
    scratch.insert(&rows).await;

    let json = scratch.run(&["list", "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let objects: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(objects.len(), 20, "the default limit");
    assert_eq!(objects[0]["path"], "/data/25_take_iv.npy", "newest first");
    assert_eq!(objects[0]["md5sum"], "19".repeat(16));
    assert_eq!(objects[0]["timestamp"], "2023-11-14T22:13:45Z");
    assert_eq!(objects[0]["action"], "take_iv");
    assert_eq!(objects[0]["copied"], false);
    assert_eq!(objects[19]["path"], "/data/06_tune.npy");

    let paths = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["list", "--json"];
        full.extend_from_slice(args);
        let out = scratch.run(&full);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["path"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(
        paths(&["--limit", "2"]),
        ["/data/25_take_iv.npy", "/data/24_tune.npy"]
    );
    assert_eq!(
        paths(&["--action", "take_iv", "--limit", "3"]),
        [
            "/data/25_take_iv.npy",
            "/data/22_take_iv.npy",
            "/data/19_take_iv.npy"
        ]
    );
    assert_eq!(
        paths(&[
            "--action",
            "tune",
            "--pub-id",
            "crate2slot3",
            "--limit",
            "2"
        ]),
        ["/data/23_tune.npy", "/data/20_tune.npy"]
    );
    assert_eq!(
        paths(&["--path-prefix", "/old/"]),
        [
            "/old/05_tune.npy",
            "/old/04_take_iv.npy",
            "/old/03_tune.npy",
            "/old/02_tune.npy",
            "/old/01_take_iv.npy"
        ]
    );
    assert!(paths(&["--pub-id", "nobody"]).is_empty());

    let table = scratch.run(&["list", "--limit", "3", "--pub-id", "crate1slot2"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", table.stdout);
    assert!(lines[0].starts_with("ID"), "{}", lines[0]);
    let path_column = lines[0].find("PATH").unwrap();
    let md5_column = lines[0].find("MD5SUM").unwrap();
    assert_eq!(&lines[1][path_column..], "/data/25_take_iv.npy");
    assert_eq!(&lines[3][path_column..], "/data/22_take_iv.npy");
    assert_eq!(&lines[2][md5_column..md5_column + 32], "18".repeat(16));
    assert!(lines[1].contains("2023-11-14T22:13:45Z"), "{}", lines[1]);

    let bad = scratch.run(&["list", "--limit", "many"]);
    assert_ne!(bad.code, 0);
}

#[tokio::test]
async fn list_on_sqlite() {
    let scratch = Scratch::sqlite().await;
    list_checks(&scratch).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = run(dir.path(), &[], &["list"]);
    assert_one_line_failure(&missing, "pysmurf_files.db");
    assert!(!dir.path().join("pysmurf_files.db").exists());
    scratch.finish().await;
}

#[tokio::test]
async fn list_on_mariadb() {
    let Some(scratch) = Scratch::mariadb("list").await else {
        return;
    };
    list_checks(&scratch).await;
    scratch.finish().await;
}

/// The digest coreutils' `md5sum` computes, as raw bytes.
fn md5sum_tool(path: &Path) -> [u8; 16] {
    let out = Command::new("md5sum")
        .arg(path)
        .output()
        .expect("run md5sum");
    assert!(out.status.success());
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.split_whitespace().next().unwrap().to_owned();
    let mut digest = [0; 16];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    digest
}

fn write_file(path: &Path, bytes: &[u8], modified: Option<DateTime<Utc>>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    if let Some(time) = modified {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(time.into()).unwrap();
    }
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success());
}

fn text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// A pysmurf-style tree: what backfill must add, skip, and refuse.
async fn backfill_checks(scratch: &Scratch) {
    let data = scratch.dir.path().join("smurf_data");
    let action = data.join("17000/crate1slot2/1700000000_tune_band");
    let tune = action.join("outputs/1700000123_tune.npy");
    let plot = action.join("plots/1700000124_tune.png");
    let iv = data.join("17000/1700000200_take_iv/outputs/iv_info.txt");
    let readme = data.join("misc/readme.txt");
    let notes = data.join("misc/notes");
    let big = data.join("misc/big.dat");
    let modified = Utc.timestamp_opt(1_700_000_500, 0).unwrap();
    write_file(&tune, b"tune data", Some(modified));
    write_file(&plot, b"\x89PNG plot", None);
    write_file(&iv, b"iv", None);
    write_file(&readme, b"read me", None);
    write_file(&notes, b"", None);
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    write_file(&big, &bytes, None);
    // Not followed: it would make a loop.
    std::os::unix::fs::symlink(&data, data.join("misc/loop")).unwrap();
    // Cannot be hashed (opening it would block); reported, the rest still land.
    let fifo = action.join("outputs/stream.fifo");
    mkfifo(&fifo);
    // Refused by the database (the path column holds 260 characters); the
    // rest of its batch still lands.
    let long = data.join(format!("misc/{}/{}.txt", "d".repeat(200), "f".repeat(60)));
    write_file(&long, b"long", None);

    // Already recorded with the same content: skipped. Recorded with other content: added.
    let mut recorded = FileRow::new(text(&readme), md5sum_tool(&readme));
    recorded.pub_id = Some("someone".into());
    let stale = FileRow::new(text(&iv), [0; 16]);
    scratch.insert(&[recorded, stale]).await;

    let dry = scratch.run(&["backfill", "--dry-run", &text(&data)]);
    assert_one_line_failure(&dry, "1 file could not be backfilled");
    // A dry run cannot know what the database would refuse.
    assert!(dry.stdout.contains(&format!("would add {}\n", text(&long))));
    for added in [&tune, &plot, &iv, &notes, &big] {
        assert!(
            dry.stdout.contains(&format!("would add {}\n", text(added))),
            "{added:?}: {}",
            dry.stdout
        );
    }
    assert!(!dry.stdout.contains(&format!("would add {}", text(&readme))));
    assert!(dry.stdout.contains(
        "dry run, nothing written: 7 files found, 6 would be added, 1 skipped (already recorded), 1 failed"
    ), "{}", dry.stdout);
    assert_eq!(scratch.count().await, 2, "a dry run writes nothing");

    let first = scratch.run(&[
        "backfill",
        "--site",
        "testsite",
        "--jobs",
        "3",
        &text(&data),
    ]);
    assert_one_line_failure(&first, "2 files could not be backfilled");
    assert!(
        first
            .stdout
            .contains("backfill: 7 files found, 5 added, 1 skipped (already recorded), 2 failed"),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("1 symbolic links not followed"));
    assert!(
        first.stdout.contains(&format!(
            "failed: {}: not a regular file (a FIFO)",
            text(&fifo)
        )),
        "{}",
        first.stdout
    );
    assert_eq!(scratch.count().await, 7);
    let refused = format!("failed: insert {:?} into pysmurf_files_v1", text(&long));
    assert!(first.stdout.contains(&refused), "{}", first.stdout);
    assert!(first.stdout.contains("the database rejected the data"));
    assert!(scratch.rows(&text(&long)).await.is_empty());

    let stored = scratch.rows(&text(&tune)).await;
    assert_eq!(stored.len(), 1);
    let row = &stored[0].row;
    assert_eq!(row.action.as_deref(), Some("tune_band"));
    assert_eq!(row.action_timestamp, Some(1_700_000_000));
    assert_eq!(row.plot, Some(false));
    assert_eq!(row.format.as_deref(), Some("npy"));
    assert_eq!(row.pub_id.as_deref(), Some("crate1slot2"));
    assert_eq!(row.timestamp, Some(modified));
    assert_eq!(row.site.as_deref(), Some("testsite"));
    assert_eq!(row.instance_id.as_deref(), Some("pysmurf-files-manager"));
    assert_eq!(
        row.socs_version.as_deref(),
        Some(concat!("pysmurf-files-manager ", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(row.script_id, None);
    assert_eq!(row.copied, Some(false));
    assert_eq!(row.failed_copy_attempts, Some(0));

    let plot_row = &scratch.rows(&text(&plot)).await[0].row;
    assert_eq!(plot_row.plot, Some(true));
    assert_eq!(plot_row.format.as_deref(), Some("png"));
    let iv_rows = scratch.rows(&text(&iv)).await;
    assert_eq!(
        iv_rows.len(),
        2,
        "the stale row stays, the new content is added"
    );
    let iv_row = &iv_rows[1].row;
    assert_eq!(iv_row.pub_id, None, "no pub_id directory");
    assert_eq!(iv_row.action.as_deref(), Some("take_iv"));
    assert_eq!(iv_row.action_timestamp, Some(1_700_000_200));
    let notes_row = &scratch.rows(&text(&notes)).await[0].row;
    assert_eq!(
        (
            notes_row.action.as_ref(),
            notes_row.plot,
            notes_row.format.as_ref()
        ),
        (None, None, None)
    );
    for file in [&tune, &plot, &iv, &notes, &big] {
        let rows = scratch.rows(&text(file)).await;
        assert_eq!(
            rows.last().unwrap().row.md5sum,
            md5sum_tool(file),
            "{file:?}"
        );
    }
    assert_eq!(scratch.rows(&text(&readme)).await.len(), 1);

    let second = scratch.run(&["backfill", &text(&data)]);
    assert!(
        second
            .stdout
            .contains("7 files found, 0 added, 6 skipped (already recorded), 2 failed"),
        "{}",
        second.stdout
    );
    assert_eq!(scratch.count().await, 7, "a second run adds nothing");

    // Without the FIFO, a file also given by a relative path with `..`, and a
    // changed file: exit 0, the file counted once, the changed one added.
    std::fs::remove_file(&fifo).unwrap();
    std::fs::remove_file(&long).unwrap();
    write_file(&notes, b"now with notes", None);
    let third = scratch.run(&[
        "backfill",
        &text(&data),
        "smurf_data/misc/../17000/crate1slot2/./1700000000_tune_band/outputs/1700000123_tune.npy",
    ]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        third
            .stdout
            .contains("6 files found, 1 added, 5 skipped (already recorded), 0 failed"),
        "{}",
        third.stdout
    );
    assert_eq!(third.stderr, "");
    assert_eq!(scratch.count().await, 8);

    let missing = scratch.run(&["backfill", &text(&data.join("absent"))]);
    assert_one_line_failure(&missing, "absent");
}

on_both_backends!(backfill_checks, "backfill": backfill_on_sqlite, backfill_on_mariadb);

fn dead_letter(reason: &str, datagram: serde_json::Value) -> String {
    serde_json::json!({
        "dead_at": 1_700_000_900.5,
        "reason": reason,
        "sender": "127.0.0.1:5000",
        "received_at": 1_700_000_800.25,
        "datagram": datagram,
    })
    .to_string()
}

fn file_datagram(kind: &str, path: &str, format: &str, action: &str) -> serde_json::Value {
    serde_json::json!({
        "host": "smurf-srv", "id": "crate1slot2", "script": "tune.py", "time": 1_700_000_001.0,
        "seq_no": 3, "type": kind,
        "payload": {"path": path, "type": "tuning", "format": format,
                    "timestamp": 1_700_000_000.0, "action": action, "action_ts": 1_699_999_999,
                    "plot": false, "pysmurf_version": "v8.1.0"}
    })
}

async fn replay_checks(scratch: &Scratch) {
    let dir = scratch.dir.path();
    let tune = dir.join("1700000000_tune");
    write_file(&dir.join("1700000000_tune.npy"), b"tune", None);
    let g3 = dir.join("stream.g3");
    write_file(&g3, b"g3 frames", None);
    let other = dir.join("other.txt");
    write_file(&other, b"other", None);
    let lines = [
        // Registered with ".npy" added, as the monitor does.
        dead_letter(
            "database unreachable",
            file_datagram("data_file", &text(&tune), "npy", "tune_band"),
        ),
        dead_letter(
            "database unreachable",
            file_datagram("g3_file", &text(&g3), "g3", "stream"),
        ),
        // The same registration again: already present.
        dead_letter(
            "database unreachable",
            file_datagram("g3_file", &text(&g3), "g3", "stream"),
        ),
        dead_letter(
            "never appeared",
            file_datagram("data_file", &text(&dir.join("gone.txt")), "txt", "x"),
        ),
        dead_letter(
            "Data too long for column 'action'",
            file_datagram("data_file", &text(&other), "txt", &"a".repeat(40)),
        ),
        dead_letter(
            "odd",
            serde_json::json!({"id": "p", "type": "start", "payload": {}}),
        ),
        dead_letter(
            "relative path",
            file_datagram("data_file", "other.txt", "txt", "x"),
        ),
        "not json at all".to_owned(),
    ];
    let file = dir.join("dead_letters.jsonl");
    let original = format!("{}\n\n", lines.join("\n"));
    std::fs::write(&file, &original).unwrap();

    let out = scratch.run(&[
        "replay-dead-letters",
        "--instance-id",
        "replayer",
        &text(&file),
    ]);
    assert_one_line_failure(&out, "5 dead letters still fail");
    let remaining_path = dir.join("dead_letters.jsonl.remaining");
    assert!(
        out.stdout.contains(&format!(
            "replayed 2, already present 1, still failing 5 (written to {})",
            text(&remaining_path)
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "FILE is never edited"
    );

    let stored = scratch.rows(&format!("{}.npy", text(&tune))).await;
    assert_eq!(stored.len(), 1);
    let row = &stored[0].row;
    assert_eq!(row.md5sum, md5sum_tool(&dir.join("1700000000_tune.npy")));
    assert_eq!(row.action.as_deref(), Some("tune_band"));
    assert_eq!(row.pub_id.as_deref(), Some("crate1slot2"));
    assert_eq!(row.script_id.as_deref(), Some("tune.py"));
    assert_eq!(row.site.as_deref(), Some("observatory"));
    assert_eq!(row.instance_id.as_deref(), Some("replayer"));
    assert_eq!(row.action_timestamp, Some(1_699_999_999));
    assert_eq!(
        row.timestamp,
        Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap())
    );
    assert_eq!(scratch.rows(&text(&g3)).await.len(), 1);

    let remaining: Vec<serde_json::Value> = std::fs::read_to_string(&remaining_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(remaining.len(), 5);
    assert!(remaining[0]["reason"]
        .as_str()
        .unwrap()
        .contains("gone.txt does not exist"));
    assert_eq!(remaining[0]["sender"], "127.0.0.1:5000");
    assert_eq!(remaining[0]["received_at"], 1_700_000_800.25);
    assert_eq!(remaining[0]["datagram"]["payload"]["action"], "x");
    assert!(
        remaining[1]["reason"]
            .as_str()
            .unwrap()
            .contains("the database rejected the data"),
        "{}",
        remaining[1]
    );
    assert!(remaining[2]["reason"]
        .as_str()
        .unwrap()
        .contains("a start datagram registers no file"));
    assert!(remaining[3]["reason"]
        .as_str()
        .unwrap()
        .contains("\"other.txt\" is empty or relative"));
    assert_eq!(remaining[4]["datagram"], "not json at all");
    assert!(remaining[4]["reason"]
        .as_str()
        .unwrap()
        .contains("line 8 is not a JSON object"));

    // Replaying again doubles nothing; replaying what remains changes nothing.
    let again = scratch.run(&["replay-dead-letters", &text(&file)]);
    assert!(
        again
            .stdout
            .contains("replayed 0, already present 3, still failing 5"),
        "{}",
        again.stdout
    );
    assert_eq!(scratch.count().await, 2);
    let rest = scratch.run(&["replay-dead-letters", &text(&remaining_path)]);
    assert!(
        rest.stdout
            .contains("replayed 0, already present 0, still failing 5"),
        "{}",
        rest.stdout
    );

    // With --data-root, files outside it are not read.
    let fence = dir.join("fenced");
    std::fs::create_dir(&fence).unwrap();
    let fenced = scratch.run(&[
        "replay-dead-letters",
        "--data-root",
        &text(&fence),
        &text(&file),
    ]);
    assert!(
        fenced
            .stdout
            .contains("replayed 0, already present 0, still failing 8"),
        "{}",
        fenced.stdout
    );
    let outside = std::fs::read_to_string(&remaining_path).unwrap();
    assert_eq!(
        outside.matches("outside the data roots").count(),
        4,
        "{outside}"
    );
    let no_root = scratch.run(&[
        "replay-dead-letters",
        "--data-root",
        &text(&dir.join("no-such-root")),
        &text(&file),
    ]);
    assert_one_line_failure(&no_root, "no-such-root");

    let missing = scratch.run(&["replay-dead-letters", &text(&dir.join("absent.jsonl"))]);
    assert_one_line_failure(&missing, "absent.jsonl");
}

on_both_backends!(
    replay_checks,
    "replay": replay_dead_letters_on_sqlite,
    replay_dead_letters_on_mariadb
);

/// On a terminal, backfill redraws one progress line on stderr (and clears
/// it at the end); elsewhere it writes none (see `backfill_checks`).
#[tokio::test]
async fn backfill_shows_progress_on_a_terminal() {
    let scratch = Scratch::sqlite().await;
    let data = scratch.dir.path().join("data");
    for n in 0..3 {
        write_file(&data.join(format!("{n}.txt")), b"x", None);
    }
    const DRIVER: &str = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.chdir(sys.argv[2])
    os.execv(sys.argv[1], [sys.argv[1], "backfill", sys.argv[3]])
out = b""
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
    for name in MYSQL_ENV_VARS {
        command.env_remove(name);
    }
    let out = command
        .args([
            "-c",
            DRIVER,
            env!("CARGO_BIN_EXE_pysmurf-files-manager"),
            &text(scratch.dir.path()),
            &text(&data),
        ])
        .output()
        .expect("run python3");
    let screen = String::from_utf8_lossy(&out.stdout);
    eprintln!("{screen:?}");
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("\r\x1b[Khashed 1/3 files"), "{screen:?}");
    // The last state, then cleared before the summary.
    assert!(
        screen.contains("hashed 3/3 files, 3 new\r\x1b[Kbackfill: 3 files found, 3 added"),
        "{screen:?}"
    );
    assert_eq!(scratch.count().await, 3);
    scratch.finish().await;
}
