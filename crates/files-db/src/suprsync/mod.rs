//! SupRsync's database (socs 0.6): the target of `--db-path`.
//!
//! socs 0.6.4's `PysmurfMonitor` records files in the SQLite database of
//! **SupRsync**, the socs agent that copies them to the archive, checks
//! their md5 on the far side, finalizes timecode directories and deletes
//! local copies. This module owns every line of SQL the project runs there:
//!
//! - the two tables socs 0.6.4 (SQLAlchemy 2) creates, with exactly its DDL
//!   ([`SUPERSYNC_DDL`], [`TIMECODE_DIRS_DDL`]), created if missing, and
//!   journal mode WAL as socs sets it;
//! - per registration, the row socs writes (`SuprsyncFile::from_row`:
//!   `local_path`, hex `local_md5sum`, `archive_name` (default `smurf`),
//!   `remote_path` ([`remote_path`]), `timestamp` (registration time,
//!   float seconds), `deletable` (`is_deletable`), `failed_copy_attempts`
//!   0, `ignore` false, the other columns `NULL`), and a `timecode_dirs_v0`
//!   row for every new (timecode, archive) as SupRsync's own `add_file`
//!   makes it (socs's monitor does not: socs#562);
//! - replay de-duplication: the table has no natural key, so a replayed
//!   registration is skipped when a row with the same (`local_path`,
//!   `local_md5sum`, `archive_name`, `remote_path`) is stored (a file
//!   re-registered with changed content is a new row, as in socs);
//! - sharing the file with SupRsync, which writes it from another process:
//!   every write is one short `BEGIN IMMEDIATE` transaction (at most
//!   1,000 rows, milliseconds), waiting at most 5 s for the
//!   write lock. A lock not obtained in time ("database is locked",
//!   `SQLITE_BUSY`) is [`FailureKind::Unreachable`](crate::FailureKind):
//!   the caller retries the same rows later, and since the transaction
//!   rolled back nothing is doubled. Reads for replay de-duplication are
//!   done before the write lock is taken, so it is never held for a scan.
//!
//! [`FilesDb`](crate::FilesDb) dispatches to this module when its target is
//! [`DbTarget::suprsync`](crate::DbTarget::suprsync): the pipeline's
//! insert / replay interface (`insert_files`, `insert_new_files`,
//! `create_table`, `status`) is the same for all three targets.

mod mapping;
pub(crate) mod store;

pub(crate) use mapping::SuprsyncFile;
pub use mapping::{remote_path, timecode, UnknownArchive, SMURF_ARCHIVE, TIMESTREAMS_ARCHIVE};
pub use store::SuprsyncStoredFile;

/// SupRsync's files table.
pub(crate) const SUPERSYNC_TABLE: &str = "supersync_v0";

/// SupRsync's timecode-directory table.
pub(crate) const TIMECODE_DIRS_TABLE: &str = "timecode_dirs_v0";

/// How long a write waits for SupRsync to release the database's write lock
/// before it counts as "database is locked" and is retried later.
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `supersync_v0` exactly as socs 0.6.4's SQLAlchemy creates it (the text
/// `sqlite_master` holds).
pub const SUPERSYNC_DDL: &str = "CREATE TABLE supersync_v0 (\n\
\tid INTEGER NOT NULL, \n\
\tlocal_path VARCHAR NOT NULL, \n\
\tlocal_md5sum VARCHAR NOT NULL, \n\
\tarchive_name VARCHAR NOT NULL, \n\
\tremote_path VARCHAR NOT NULL, \n\
\ttimestamp FLOAT NOT NULL, \n\
\tremote_md5sum VARCHAR, \n\
\tcopied FLOAT, \n\
\tremoved FLOAT, \n\
\tfailed_copy_attempts INTEGER, \n\
\tdeletable BOOLEAN, \n\
\t\"ignore\" BOOLEAN, \n\
\tPRIMARY KEY (id)\n\
)";

/// `timecode_dirs_v0` exactly as socs 0.6.4's SQLAlchemy creates it.
pub const TIMECODE_DIRS_DDL: &str = "CREATE TABLE timecode_dirs_v0 (\n\
\tid INTEGER NOT NULL, \n\
\ttimecode INTEGER NOT NULL, \n\
\tarchive_name VARCHAR NOT NULL, \n\
\tcompleted BOOLEAN, \n\
\tsynced BOOLEAN, \n\
\tfinalized BOOLEAN, \n\
\tfinalize_file_id INTEGER, \n\
\tPRIMARY KEY (id), \n\
\tFOREIGN KEY(finalize_file_id) REFERENCES supersync_v0 (id)\n\
)";
