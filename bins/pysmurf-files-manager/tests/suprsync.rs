//! `pysmurf-files-manager --db-path` on SupRsync's database (socs 0.6):
//! create, status, list and a backfill that computes the rows the monitor
//! computes (remote_path, deletable, timecode directories).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use files_db::testing::suprsync_tempdir;
use files_db::{DbTarget, FilesDb};

fn manager(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pysmurf-files-manager"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!(
        "$ pysmurf-files-manager {}\n{stdout}{stderr}",
        args.join(" ")
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// A file written with modification time `mtime`.
fn file(path: &Path, mtime: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, path.to_str().unwrap()).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

#[tokio::test]
async fn create_status_list_and_backfill_on_suprsyncs_database() {
    let work = suprsync_tempdir();
    let root = work.path();
    let db_path = root.join("databases/suprsync.db");
    let db_arg = db_path.to_str().unwrap();
    // pysmurf's layout: <root>/<ctime5>/<pub_id>/<action_ts>_<action>/{outputs,plots}/FILE.
    let action = root.join("17000/crate1slot2/1700000100_take_noise");
    file(&action.join("outputs/1700000123_psd.dat"), 1_700_000_123);
    file(&action.join("plots/1700000124_psd.png"), 1_700_000_124);
    file(&root.join("17000/tune/1700000200_tune.npy"), 1_700_000_200);
    let g3 = root.join("timestreams/17000/ufm_mv5/1700000300_000.g3");
    file(&g3, 1_700_000_300);

    let (code, out, _) = manager(root, &["--db-path", db_arg, "create"]);
    assert_eq!(code, 0);
    assert!(out.contains("created table supersync_v0"), "{out}");
    let smurf_dir = root.join("17000");
    let (code, out, _) = manager(
        root,
        &["--db-path", db_arg, "backfill", smurf_dir.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let (code, _, _) = manager(
        root,
        &[
            "--db-path",
            db_arg,
            "backfill",
            "--archive-name",
            "timestreams",
            g3.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    // Twice: nothing doubled.
    let (code, out, _) = manager(
        root,
        &["--db-path", db_arg, "backfill", smurf_dir.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert!(out.contains('3'), "{out}");

    let db = FilesDb::connect_existing(&DbTarget::suprsync(&db_path, false))
        .await
        .unwrap();
    let rows = db.suprsync_files(None, None, 100).await.unwrap();
    assert_eq!(rows.len(), 4);
    let by_name = |name: &str| rows.iter().find(|r| r.local_path.ends_with(name)).unwrap();
    // As the monitor computes them for the datagrams pysmurf sent.
    let psd = by_name("1700000123_psd.dat");
    assert_eq!(
        psd.remote_path,
        "17000/crate1slot2/1700000100_take_noise/outputs/1700000123_psd.dat"
    );
    assert_eq!(psd.archive_name, "smurf");
    assert_eq!(psd.deletable, Some(true));
    assert_eq!(psd.failed_copy_attempts, Some(0));
    assert_eq!(psd.ignore, Some(false));
    assert_eq!(psd.remote_md5sum, None);
    assert_eq!(psd.local_md5sum.len(), 32);
    let png = by_name("1700000124_psd.png");
    assert_eq!(
        png.remote_path,
        "17000/crate1slot2/1700000100_take_noise/plots/1700000124_psd.png"
    );
    let tune = by_name("1700000200_tune.npy");
    assert_eq!(tune.deletable, Some(false));
    assert_eq!(
        tune.remote_path,
        "17000/None/None_None/outputs/1700000200_tune.npy"
    );
    let g3_row = by_name("1700000300_000.g3");
    assert_eq!(g3_row.archive_name, "timestreams");
    assert_eq!(g3_row.remote_path, "17000/ufm_mv5/1700000300_000.g3");
    let status = db.status().await.unwrap();
    let rows_of = |table: &str| status.tables.iter().find(|t| t.name == table).unwrap().rows;
    assert_eq!(rows_of("supersync_v0"), 4);
    assert_eq!(
        rows_of("timecode_dirs_v0"),
        2,
        "(17000, smurf) and (17000, timestreams)"
    );
    db.close().await;

    let (code, out, _) = manager(root, &["--db-path", db_arg, "status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("supersync_v0") && out.contains("timecode_dirs_v0"),
        "{out}"
    );
    let (code, out, _) = manager(
        root,
        &[
            "--db-path",
            db_arg,
            "list",
            "--json",
            "--archive-name",
            "timestreams",
        ],
    );
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["remote_path"], "17000/ufm_mv5/1700000300_000.g3");
    let (code, out, _) = manager(root, &["--db-path", db_arg, "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 5, "{out}");
    let (code, _, err) = manager(root, &["--db-path", db_arg, "list", "--action", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("not columns"), "{err}");
    let (code, _, err) = manager(root, &["--db-path", db_arg, "drop", "--yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("SupRsync"), "{err}");
    let (code, _, err) = manager(
        root,
        &[
            "--db-path",
            db_arg,
            "backfill",
            "--archive-name",
            "books",
            g3.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("\"books\""), "{err}");
}
