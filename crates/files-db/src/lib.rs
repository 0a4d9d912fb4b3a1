//! `files-db` owns the `pysmurf_files_v<N>` table of the `files` database and
//! every line of SQL the project runs against it: the per-backend DDL embedded
//! from the workspace's `migrations/`, the row type, connecting (from a URL,
//! the `MYSQL_*` environment, or an SQLite file), create / drop / status,
//! batched inserts in one transaction, and queries.
//!
//! It knows nothing of UDP, OCS or md5: callers hand it finished [`FileRow`]s.
//! Both binaries share it: `pysmurf-monitor` inserts, `pysmurf-files-manager`
//! administers.
//!
//! A third target is SupRsync's SQLite database (socs 0.6's `--db-path`),
//! whose `supersync_v0` and `timecode_dirs_v0` tables socs defines: see
//! [`suprsync`]. The same insert / replay interface writes it.
//!
//! Backends are MariaDB/MySQL (production; column names and types exactly as
//! socs created them, so the archiver reads the table unchanged) and SQLite
//! (the embedded default; the closest equivalent, with CHECK constraints that
//! reject what MariaDB's strict mode rejects). Every value is a bound
//! parameter; timestamps are stored as UTC whatever the server's time zone.
//!
//! Main types: [`DbTarget`] (where), [`FilesDb`] (the pool and operations),
//! [`FileRow`] (one registration), [`DbError`] with its [`FailureKind`] (what
//! went wrong, and whether retrying can help).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use files_db::{CreateOutcome, DbTarget, FileRow, FilesDb};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let target = DbTarget::resolve(None, &dir.path().join("pysmurf_files.db")).unwrap();
//! let db = FilesDb::connect(&target).await.unwrap();
//! assert_eq!(db.create_table().await.unwrap(), CreateOutcome::Created);
//!
//! let mut row = FileRow::new("/data/smurf/1700000000_tune.npy", [0xab; 16]);
//! row.action = Some("tune".into());
//! db.insert_files(&[row]).await.unwrap();
//!
//! let status = db.status().await.unwrap();
//! assert_eq!(status.current_table().unwrap().rows, 1);
//! # });
//! ```

mod db;
mod error;
mod nodes;
mod row;
mod schema;
pub mod suprsync;
mod target;
#[cfg(feature = "test-support")]
pub mod testing;

pub use db::{
    ColumnInfo, CreateOutcome, DbStatus, DropOutcome, FileFilter, FilesDb, InsertSummary,
    TableStatus,
};
pub use error::{ConfigError, DbError, FailureKind};
pub use row::{FileRow, StoredFile};
pub use schema::{max_chars, COLUMNS};
pub use target::{Backend, DbTarget, MYSQL_ENV_VARS};
