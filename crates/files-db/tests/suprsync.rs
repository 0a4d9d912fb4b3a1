//! The SupRsync target on a real SQLite file: socs's DDL and WAL, the rows
//! and timecode directories, replay de-duplication, and "database is
//! locked" as a retryable failure that neither loses nor doubles a row.

use chrono::DateTime;
use files_db::suprsync::{SUPERSYNC_DDL, TIMECODE_DIRS_DDL};
use files_db::testing::WriteLock;
use files_db::{CreateOutcome, DbTarget, FailureKind, FileRow, FilesDb, InsertSummary};
use sqlx::Row;

fn registration(path: &str, n: u8) -> FileRow {
    let mut row = FileRow::new(path, [n; 16]);
    row.timestamp = DateTime::from_timestamp(1_700_000_123, 500_000_000);
    row.action = Some("take_noise".into());
    row.action_timestamp = Some(1_700_000_100);
    row.plot = Some(false);
    row.pub_id = Some("crate1slot2".into());
    row.registered_at = DateTime::from_timestamp(1_700_000_200, 250_000_000);
    row
}

async fn open(dir: &tempfile::TempDir) -> (FilesDb, sqlx::SqlitePool) {
    let path = dir.path().join("databases/suprsync.db");
    let db = FilesDb::connect(&DbTarget::suprsync(&path, false))
        .await
        .unwrap();
    assert_eq!(db.create_table().await.unwrap(), CreateOutcome::Created);
    assert_eq!(
        db.create_table().await.unwrap(),
        CreateOutcome::AlreadyPresent
    );
    let reader = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    (db, reader)
}

#[tokio::test]
async fn tables_have_socs_ddl_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (db, reader) = open(&dir).await;
    let ddl: Vec<(String, String)> =
        sqlx::query_as("SELECT name, sql FROM sqlite_master ORDER BY name")
            .fetch_all(&reader)
            .await
            .unwrap();
    assert_eq!(
        ddl,
        [
            ("supersync_v0".to_owned(), SUPERSYNC_DDL.to_owned()),
            ("timecode_dirs_v0".to_owned(), TIMECODE_DIRS_DDL.to_owned()),
        ]
    );
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let status = db.status().await.unwrap();
    let current = status.current_table().unwrap();
    assert_eq!(current.name, "supersync_v0");
    assert_eq!(current.columns.len(), 12);
    assert_eq!(status.tables.len(), 2);
}

#[tokio::test]
async fn rows_are_socs_rows_with_timecode_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let (db, reader) = open(&dir).await;
    let mut plot = registration("/data/smurf_data/1700000000/crate1slot2/plots/a.png", 1);
    plot.plot = Some(true);
    let mut g3 = registration(
        "/data/so/timestreams/17000/crate1slot2/1700000000_000.g3",
        2,
    );
    g3.archive_name = Some("timestreams".into());
    let outside = registration("/data/smurf_data/tune/1700000000_tune.npy", 3);
    let second_same_dir = registration("/data/smurf_data/1700000000/crate1slot2/outputs/b.dat", 4);
    db.insert_files(&[plot, g3, outside, second_same_dir])
        .await
        .unwrap();

    let rows = sqlx::query(
        "SELECT local_path, local_md5sum, archive_name, remote_path, timestamp, remote_md5sum, \
         copied, removed, failed_copy_attempts, deletable, \"ignore\", typeof(timestamp), \
         typeof(deletable) FROM supersync_v0 ORDER BY id",
    )
    .fetch_all(&reader)
    .await
    .unwrap();
    let first = &rows[0];
    assert_eq!(first.get::<String, _>(1), "01".repeat(16));
    assert_eq!(first.get::<String, _>(2), "smurf");
    assert_eq!(
        first.get::<String, _>(3),
        "17000/crate1slot2/1700000100_take_noise/plots/a.png"
    );
    assert_eq!(first.get::<f64, _>(4), 1_700_000_200.25);
    for null in 5..=7 {
        assert!(first.get::<Option<f64>, _>(null).is_none(), "column {null}");
    }
    assert_eq!(first.get::<i64, _>(8), 0);
    assert_eq!(first.get::<i64, _>(9), 1);
    assert_eq!(first.get::<i64, _>(10), 0);
    assert_eq!(first.get::<String, _>(11), "real");
    assert_eq!(first.get::<String, _>(12), "integer");
    assert_eq!(rows[1].get::<String, _>(2), "timestreams");
    assert_eq!(
        rows[1].get::<String, _>(3),
        "17000/crate1slot2/1700000000_000.g3"
    );
    assert_eq!(
        rows[2].get::<i64, _>(9),
        0,
        "outside a timecode dir, a tune"
    );

    let dirs: Vec<(i64, String, i64, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT timecode, archive_name, completed, synced, finalized, finalize_file_id \
         FROM timecode_dirs_v0 ORDER BY id",
    )
    .fetch_all(&reader)
    .await
    .unwrap();
    assert_eq!(
        dirs,
        [
            (17000, "smurf".to_owned(), 0, 0, 0, None),
            (17000, "timestreams".to_owned(), 0, 0, 0, None),
        ]
    );
    // The same timecode again makes no second directory row.
    db.insert_files(&[registration("/data/smurf_data/1700000001/p/c.dat", 5)])
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM timecode_dirs_v0")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn replays_skip_stored_rows_and_unknown_archives_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (db, reader) = open(&dir).await;
    let rows: Vec<FileRow> = (0..1500)
        .map(|n| registration(&format!("/data/smurf_data/1700000000/p/{n}.dat"), n as u8))
        .collect();
    db.insert_files(&rows[..1000]).await.unwrap();
    assert_eq!(
        db.insert_new_files(&rows).await.unwrap(),
        InsertSummary {
            inserted: 500,
            skipped: 1000
        }
    );
    // Same path, new content: a new row, as socs makes one.
    let changed = registration("/data/smurf_data/1700000000/p/0.dat", 99);
    assert_eq!(db.insert_new_files(&[changed]).await.unwrap().inserted, 1);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM supersync_v0")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(count, 1501);

    let mut unknown = registration("/data/smurf_data/1700000000/p/x.dat", 1);
    unknown.archive_name = Some("books".into());
    let err = db.insert_files(&[unknown]).await.unwrap_err();
    assert_eq!(err.kind(), FailureKind::Rejected);
    assert!(err.database_message().contains("\"books\""), "{err}");
}

/// SupRsync holding the write lock: the insert fails retryable ("database
/// is locked") after the busy timeout, writes nothing, and the retry after
/// the lock is gone writes each row once.
#[tokio::test]
async fn a_locked_database_is_retryable_and_nothing_is_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let (db, reader) = open(&dir).await;
    let lock = WriteLock::acquire(db.target(), "supersync_v0").await;
    let rows = [registration("/data/smurf_data/1700000000/p/a.dat", 1)];
    let err = db.insert_files(&rows).await.unwrap_err();
    assert_eq!(err.kind(), FailureKind::Unreachable, "{err}");
    assert!(err.is_retryable());
    assert!(
        err.database_message().contains("locked"),
        "{}",
        err.database_message()
    );
    lock.release().await;
    assert_eq!(db.insert_new_files(&rows).await.unwrap().inserted, 1);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM supersync_v0")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(count, 1);
}
