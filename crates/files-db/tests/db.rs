//! `files-db` against real databases: an SQLite file and, when the test
//! script provides one, a real MariaDB server (a fresh database per test).

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use files_db::testing::TestDatabase;
use files_db::{
    Backend, CreateOutcome, DbTarget, DropOutcome, FailureKind, FileFilter, FileRow, FilesDb,
    InsertSummary, COLUMNS,
};

/// A database of one backend, dropped (MariaDB) or deleted (SQLite) at the end.
enum Scratch {
    MySql(Box<TestDatabase>),
    Sqlite(tempfile::TempDir),
}

impl Scratch {
    fn target(&self) -> DbTarget {
        match self {
            Scratch::MySql(db) => db.target().clone(),
            Scratch::Sqlite(dir) => DbTarget::sqlite(dir.path().join("files.db")),
        }
    }

    /// Runs one SQL statement outside `files-db` (e.g. to fake another version's table).
    async fn execute(&self, sql: &str) {
        match self {
            Scratch::MySql(db) => {
                db.query_text(sql).await;
            }
            Scratch::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("files.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
    }

    async fn finish(self) {
        if let Scratch::MySql(db) = self {
            db.drop_database().await;
        }
    }
}

/// Runs `check` once on SQLite and once on MariaDB (skipped, or a failure
/// under `scripts/test`, when no MariaDB is configured).
async fn on_each_backend<F, Fut>(test: &str, check: F)
where
    F: Fn(FilesDb, Arc<Scratch>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut scratches = vec![Scratch::Sqlite(tempfile::tempdir().unwrap())];
    if let Some(db) = TestDatabase::create(test).await {
        scratches.push(Scratch::MySql(Box::new(db)));
    }
    for scratch in scratches {
        let target = scratch.target();
        let db = FilesDb::connect(&target).await.expect("connect");
        eprintln!("{test}: running on {} ({target})", target.backend());
        let scratch = Arc::new(scratch);
        check(db.clone(), scratch.clone()).await;
        db.close().await;
        if let Ok(scratch) = Arc::try_unwrap(scratch) {
            scratch.finish().await;
        }
    }
}

/// A [`FileFilter`] from its three optional conditions.
fn filter(action: Option<&str>, pub_id: Option<&str>, path_prefix: Option<&str>) -> FileFilter {
    FileFilter {
        action: action.map(str::to_owned),
        pub_id: pub_id.map(str::to_owned),
        path_prefix: path_prefix.map(str::to_owned),
    }
}

fn full_row(n: usize) -> FileRow {
    FileRow {
        path: format!("/data/smurf_data/20231115/crate1slot2/1700000000/outputs/{n}_tune.npy"),
        action: Some("tune_band".into()),
        timestamp: Some(Utc.timestamp_opt(1_700_000_123, 987_000_000).unwrap()),
        action_timestamp: Some(1_700_000_000),
        format: Some("npy".into()),
        plot: Some(n % 2 == 1),
        site: Some("observatory".into()),
        pub_id: Some("crate1slot2".into()),
        script_id: Some("tune.py".into()),
        instance_id: Some("pysmurf-monitor".into()),
        copied: Some(false),
        failed_copy_attempts: Some(0),
        md5sum: [n as u8; 16],
        pysmurf_version: Some("v8.0.1".into()),
        socs_version: Some("pysmurf-monitor-rs 0.1.0".into()),
        archive_name: None,
        registered_at: None,
    }
}

#[tokio::test]
async fn create_table_is_idempotent_and_has_exactly_the_columns() {
    on_each_backend("create_table", |db, scratch| async move {
        let backend = scratch.target().backend();
        assert_eq!(db.create_table().await.unwrap(), CreateOutcome::Created);
        assert_eq!(
            db.create_table().await.unwrap(),
            CreateOutcome::AlreadyPresent
        );

        let status = db.status().await.unwrap();
        assert_eq!(status.backend, backend);
        let table = status.current_table().expect("table present");
        assert_eq!(table.name, "pysmurf_files_v1");
        assert_eq!(table.rows, 0);
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, COLUMNS);
        let types: Vec<String> = table
            .columns
            .iter()
            .map(|c| c.sql_type.to_lowercase())
            .collect();
        let expected = match backend {
            Backend::MySql => [
                "int(11)",
                "varchar(260)",
                "varchar(32)",
                "timestamp",
                "int(11)",
                "varchar(32)",
                "tinyint(1)",
                "varchar(32)",
                "varchar(32)",
                "varchar(32)",
                "varchar(32)",
                "tinyint(1)",
                "int(11)",
                "binary(16)",
                "varchar(64)",
                "varchar(64)",
            ],
            Backend::Sqlite => [
                "integer",
                "varchar(260)",
                "varchar(32)",
                "timestamp",
                "int",
                "varchar(32)",
                "tinyint(1)",
                "varchar(32)",
                "varchar(32)",
                "varchar(32)",
                "varchar(32)",
                "tinyint(1)",
                "int",
                "binary(16)",
                "varchar(64)",
                "varchar(64)",
            ],
        };
        assert_eq!(types, expected);
        let not_null: Vec<&str> = table
            .columns
            .iter()
            .filter(|c| !c.nullable)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(not_null, ["id", "path", "md5sum"]);
    })
    .await;
}

/// `SHOW CREATE TABLE` on MariaDB shows socs' column definitions.
#[tokio::test]
async fn mariadb_show_create_table_matches_socs() {
    let Some(test_db) = TestDatabase::create("show_create_table").await else {
        return;
    };
    let db = FilesDb::connect(test_db.target()).await.unwrap();
    db.create_table().await.unwrap();
    let rows = test_db
        .query_text("SHOW CREATE TABLE pysmurf_files_v1")
        .await;
    let ddl = &rows[0][1];
    for line in [
        "`id` int(11) NOT NULL AUTO_INCREMENT,",
        "`path` varchar(260) NOT NULL,",
        "`action` varchar(32) DEFAULT NULL,",
        "`timestamp` timestamp NULL DEFAULT NULL,",
        "`action_timestamp` int(11) DEFAULT NULL,",
        "`format` varchar(32) DEFAULT NULL,",
        "`plot` tinyint(1) DEFAULT NULL,",
        "`site` varchar(32) DEFAULT NULL,",
        "`pub_id` varchar(32) DEFAULT NULL,",
        "`script_id` varchar(32) DEFAULT NULL,",
        "`instance_id` varchar(32) DEFAULT NULL,",
        "`copied` tinyint(1) DEFAULT NULL,",
        "`failed_copy_attempts` int(11) DEFAULT NULL,",
        "`md5sum` binary(16) NOT NULL,",
        "`pysmurf_version` varchar(64) DEFAULT NULL,",
        "`socs_version` varchar(64) DEFAULT NULL,",
        "PRIMARY KEY (`id`),",
        "KEY `pysmurf_files_v1_path` (`path`)",
    ] {
        assert!(ddl.contains(line), "missing {line:?} in\n{ddl}");
    }
    assert!(!ddl.contains("ON UPDATE"), "{ddl}");
    db.close().await;
    test_db.drop_database().await;
}

#[tokio::test]
async fn every_column_round_trips() {
    on_each_backend("round_trip", |db, _scratch| async move {
        db.create_table().await.unwrap();
        let mut sparse = FileRow::new("/data/sparse.txt", [0xff; 16]);
        sparse.copied = None;
        sparse.failed_copy_attempts = None;
        let rows = [full_row(1), full_row(2), sparse.clone()];
        assert_eq!(db.insert_files(&rows).await.unwrap(), 3);

        let stored = db.files_by_path(&rows[0].path).await.unwrap();
        assert_eq!(stored.len(), 1);
        let mut expected = full_row(1);
        // The column has whole seconds; the fraction is dropped, not rounded.
        expected.timestamp = Some(Utc.timestamp_opt(1_700_000_123, 0).unwrap());
        assert_eq!(stored[0].row, expected);
        assert_eq!(
            db.files_by_path(&rows[1].path).await.unwrap()[0].row.plot,
            Some(false)
        );
        assert_eq!(
            db.files_by_path("/data/sparse.txt").await.unwrap()[0].row,
            sparse
        );
        assert!(db.files_by_path("/nope").await.unwrap().is_empty());
        assert_eq!(db.status().await.unwrap().current_table().unwrap().rows, 3);
    })
    .await;
}

/// The instant stored is the payload's, whatever the server's time zone: a
/// session in another zone reads the same Unix time back.
#[tokio::test]
async fn mariadb_timestamps_are_utc() {
    let Some(test_db) = TestDatabase::create("timestamps_utc").await else {
        return;
    };
    let db = FilesDb::connect(test_db.target()).await.unwrap();
    db.create_table().await.unwrap();
    db.insert_files(&[full_row(1)]).await.unwrap();
    let rows = test_db
        .query_text(
            "SELECT CAST(UNIX_TIMESTAMP(timestamp) AS CHAR), \
             CAST(CONVERT_TZ(timestamp, @@session.time_zone, '+00:00') AS CHAR) \
             FROM pysmurf_files_v1",
        )
        .await;
    assert_eq!(rows[0][0], "1700000123");
    assert_eq!(rows[0][1], "2023-11-14 22:15:23");
    db.close().await;
    test_db.drop_database().await;
}

#[tokio::test]
async fn a_rejected_row_fails_the_whole_batch_and_says_why() {
    on_each_backend("rejected_row", |db, _scratch| async move {
        db.create_table().await.unwrap();
        let mut too_long = full_row(2);
        too_long.path = format!("/{}", "x".repeat(260));
        let mut bad_action = full_row(3);
        bad_action.action = Some("a".repeat(33));
        let mut bad_action_ts = full_row(4);
        bad_action_ts.action_timestamp = Some(i64::from(i32::MAX) + 1);
        for bad in [too_long, bad_action, bad_action_ts] {
            let err = db
                .insert_files(&[full_row(1), bad.clone()])
                .await
                .expect_err("rejected");
            assert_eq!(
                err.kind(),
                FailureKind::Rejected,
                "{err}: {}",
                err.database_message()
            );
            assert!(!err.is_retryable());
            assert!(err.to_string().contains("insert 2 rows"), "{err}");
            assert!(err.to_string().contains("pysmurf_files_v1"), "{err}");
            assert!(!err.database_message().is_empty());
            // Nothing of the batch was kept.
            assert_eq!(db.status().await.unwrap().current_table().unwrap().rows, 0);
            // The row alone is refused the same way; the good row alone is fine.
            assert_eq!(
                db.insert_files(&[bad]).await.unwrap_err().kind(),
                FailureKind::Rejected
            );
        }
        assert_eq!(db.insert_files(&[full_row(1)]).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn large_batches_span_several_statements_in_one_transaction() {
    on_each_backend("large_batch", |db, _scratch| async move {
        db.create_table().await.unwrap();
        let rows: Vec<FileRow> = (0..2500).map(full_row).collect();
        assert_eq!(db.insert_files(&rows).await.unwrap(), 2500);
        assert_eq!(
            db.status().await.unwrap().current_table().unwrap().rows,
            2500
        );

        // One bad row in the last statement undoes the first two statements too.
        let mut more: Vec<FileRow> = (2500..4600).map(full_row).collect();
        more[2099].path = "y".repeat(261);
        assert!(db.insert_files(&more).await.is_err());
        assert_eq!(
            db.status().await.unwrap().current_table().unwrap().rows,
            2500
        );
    })
    .await;
}

#[tokio::test]
async fn insert_new_files_never_doubles_a_registration() {
    on_each_backend("insert_new_files", |db, _scratch| async move {
        db.create_table().await.unwrap();
        db.insert_files(&[full_row(1), full_row(2)]).await.unwrap();

        let mut same_path_new_md5 = full_row(1);
        same_path_new_md5.md5sum = [0xee; 16];
        let mut same_path_no_pub_id = full_row(2);
        same_path_no_pub_id.pub_id = None;
        let replay = [
            full_row(1),
            full_row(2),
            full_row(3),
            same_path_new_md5,
            same_path_no_pub_id,
        ];
        let summary = db.insert_new_files(&replay).await.unwrap();
        assert_eq!(
            summary,
            InsertSummary {
                inserted: 3,
                skipped: 2
            }
        );
        let again = db.insert_new_files(&replay).await.unwrap();
        assert_eq!(
            again,
            InsertSummary {
                inserted: 0,
                skipped: 5
            }
        );
        assert_eq!(db.status().await.unwrap().current_table().unwrap().rows, 5);
    })
    .await;
}

#[tokio::test]
async fn missing_table_is_named_as_such() {
    on_each_backend("missing_table", |db, _scratch| async move {
        let err = db.insert_files(&[full_row(1)]).await.unwrap_err();
        assert_eq!(err.kind(), FailureKind::TableMissing, "{err}");
        assert!(
            err.to_string().contains("pysmurf-files-manager create"),
            "{err}"
        );
        assert!(db.status().await.unwrap().current_table().is_none());
        assert_eq!(db.drop_table().await.unwrap(), DropOutcome::Absent);
    })
    .await;
}

#[tokio::test]
async fn drop_table_reports_rows_and_leaves_other_versions() {
    on_each_backend("drop_table", |db, scratch| async move {
        let backend = scratch.target().backend();
        db.create_table().await.unwrap();
        db.insert_files(&[full_row(1), full_row(2)]).await.unwrap();
        // A table of a later version, as a newer monitor would create it.
        let fake_v2 = match backend {
            Backend::MySql => "CREATE TABLE pysmurf_files_v2 (id INT)",
            Backend::Sqlite => "CREATE TABLE pysmurf_files_v2 (id INTEGER)",
        };
        scratch.execute(fake_v2).await;

        let versions: Vec<u32> = db
            .status()
            .await
            .unwrap()
            .tables
            .iter()
            .map(|t| t.version)
            .collect();
        assert_eq!(versions, [1, 2]);
        assert_eq!(
            db.drop_table().await.unwrap(),
            DropOutcome::Dropped { rows: 2 }
        );
        let versions: Vec<u32> = db
            .status()
            .await
            .unwrap()
            .tables
            .iter()
            .map(|t| t.version)
            .collect();
        assert_eq!(versions, [2]);
    })
    .await;
}

#[tokio::test]
async fn connection_failures_are_classified() {
    // Nothing listens on port 1 of loopback.
    let target = DbTarget::from_url("mysql://nobody@127.0.0.1:1/files").unwrap();
    let err = FilesDb::connect(&target).await.unwrap_err();
    assert_eq!(err.kind(), FailureKind::Unreachable, "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("nobody@127.0.0.1:1"), "{err}");

    // A lazy pool starts without the server and fails (retryably) on use.
    let lazy = FilesDb::connect_lazy(&target)
        .await
        .expect("lazy pools start without a server");
    let err = lazy.create_table().await.unwrap_err();
    assert_eq!(err.kind(), FailureKind::Unreachable, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = DbTarget::sqlite(dir.path().join("absent.db"));
    let err = FilesDb::connect_existing(&missing).await.unwrap_err();
    assert!(err.to_string().contains("absent.db"), "{err}");
    assert!(!dir.path().join("absent.db").exists());

    let Some(test_db) = TestDatabase::create("connection_failures").await else {
        return;
    };
    let env: std::collections::HashMap<_, _> = test_db.env().iter().cloned().collect();
    let wrong_password = DbTarget::from_url(&format!(
        "mysql://{}:not-the-password@{}:{}/{}",
        env["MYSQL_USER"],
        env["MYSQL_HOST"],
        env["MYSQL_PORT"],
        test_db.name()
    ))
    .unwrap();
    let err = FilesDb::connect(&wrong_password).await.unwrap_err();
    assert_eq!(err.kind(), FailureKind::AccessDenied, "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");

    let unknown_db = DbTarget::from_url(&format!(
        "mysql://{}:{}@{}:{}/pysmurf_t_does_not_exist",
        env["MYSQL_USER"], env["MYSQL_PASSWORD"], env["MYSQL_HOST"], env["MYSQL_PORT"]
    ))
    .unwrap();
    let err = FilesDb::connect(&unknown_db).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            FailureKind::UnknownDatabase | FailureKind::AccessDenied
        ),
        "{err}"
    );
    test_db.drop_database().await;
}

#[tokio::test]
async fn recent_files_are_newest_first_filtered_and_limited() {
    on_each_backend("recent_files", |db, _scratch| async move {
        db.create_table().await.unwrap();
        assert!(db
            .recent_files(&filter(None, None, None), 20)
            .await
            .unwrap()
            .is_empty());
        let mut rows: Vec<FileRow> = (0..6).map(full_row).collect();
        rows[1].action = Some("take_iv".into());
        rows[2].pub_id = Some("crate2slot3".into());
        rows[3].path = "/other/100%_done/x.txt".into();
        rows[4].path = "/other/100a_done/y.txt".into();
        rows[5].action = None;
        rows[5].pub_id = None;
        db.insert_files(&rows).await.unwrap();

        let paths = |stored: Vec<files_db::StoredFile>| -> Vec<String> {
            stored.into_iter().map(|s| s.row.path).collect()
        };
        let all = db
            .recent_files(&filter(None, None, None), 20)
            .await
            .unwrap();
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(all[0].row.path, rows[5].path);
        let mut expected = rows[0].clone();
        expected.timestamp = Some(Utc.timestamp_opt(1_700_000_123, 0).unwrap());
        assert_eq!(all[5].row, expected, "every column is read back");

        let two = db.recent_files(&filter(None, None, None), 2).await.unwrap();
        assert_eq!(paths(two), [rows[5].path.clone(), rows[4].path.clone()]);
        assert!(db
            .recent_files(&filter(None, None, None), 0)
            .await
            .unwrap()
            .is_empty());

        let iv = db
            .recent_files(&filter(Some("take_iv"), None, None), 20)
            .await
            .unwrap();
        assert_eq!(paths(iv), [rows[1].path.clone()]);
        let crate2 = db
            .recent_files(&filter(None, Some("crate2slot3"), None), 20)
            .await
            .unwrap();
        assert_eq!(paths(crate2), [rows[2].path.clone()]);
        let tune_crate1 = db
            .recent_files(&filter(Some("tune_band"), Some("crate1slot2"), None), 20)
            .await
            .unwrap();
        assert_eq!(
            paths(tune_crate1),
            [
                rows[4].path.clone(),
                rows[3].path.clone(),
                rows[0].path.clone()
            ]
        );

        // Wildcards in the prefix match only themselves.
        let percent = db
            .recent_files(&filter(None, None, Some("/other/100%")), 20)
            .await
            .unwrap();
        assert_eq!(paths(percent), [rows[3].path.clone()]);
        let other = db
            .recent_files(&filter(None, None, Some("/other/")), 1)
            .await
            .unwrap();
        assert_eq!(paths(other), [rows[4].path.clone()]);
        let data = db
            .recent_files(&filter(None, None, Some("/data/smurf_data/")), 20)
            .await
            .unwrap();
        assert_eq!(data.len(), 4);
        assert!(db
            .recent_files(&filter(None, None, Some("/data/smurf_data/_")), 20)
            .await
            .unwrap()
            .is_empty());
        assert!(db
            .recent_files(&filter(Some("nothing"), None, None), 20)
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn stored_md5s_returns_the_pairs_stored_for_the_paths() {
    on_each_backend("stored_md5s", |db, _scratch| async move {
        db.create_table().await.unwrap();
        assert!(db.stored_md5s::<&str>(&[]).await.unwrap().is_empty());
        let mut rewritten = full_row(1);
        rewritten.md5sum = [0xee; 16];
        db.insert_files(&[full_row(1), rewritten, full_row(2)])
            .await
            .unwrap();
        // More paths than one statement takes.
        let mut paths: Vec<String> = (1000..2500).map(|n| format!("/absent/{n}")).collect();
        paths.push(full_row(1).path);
        paths.push(full_row(3).path);
        let stored = db.stored_md5s(&paths).await.unwrap();
        let expected: std::collections::HashSet<(String, [u8; 16])> =
            [(full_row(1).path, [1; 16]), (full_row(1).path, [0xee; 16])]
                .into_iter()
                .collect();
        assert_eq!(stored, expected);
    })
    .await;
}
