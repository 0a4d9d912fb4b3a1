//! The row type of `pysmurf_files_v1`.

use chrono::{DateTime, Utc};

/// One file registration: every column of `pysmurf_files_v1` but `id`,
/// plus what the SupRsync target needs besides (`archive_name`,
/// `registered_at`).
///
/// Field names are the column names. `None` stores SQL `NULL`.
///
/// ```
/// use files_db::FileRow;
///
/// let row = FileRow::new("/data/smurf/1700000000/outputs/1700000000_tune.npy", [0; 16]);
/// assert_eq!(row.copied, Some(false));
/// assert_eq!(row.failed_copy_attempts, Some(0));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// Path of the file (at most 260 characters).
    pub path: String,
    /// The pysmurf action that wrote the file (at most 32 characters).
    pub action: Option<String>,
    /// When the file was written, UTC. Stored with whole-second precision:
    /// fractions of a second are dropped on insert.
    pub timestamp: Option<DateTime<Utc>>,
    /// Unix time of the start of the pysmurf action (must fit a 32-bit `INT`).
    pub action_timestamp: Option<i64>,
    /// File format, e.g. `npy` or `txt` (at most 32 characters).
    pub format: Option<String>,
    /// Whether the file is a plot.
    pub plot: Option<bool>,
    /// Site name: the first part of the monitor agent's address.
    pub site: Option<String>,
    /// The pysmurf publisher id (`SMURFPUB_ID`).
    pub pub_id: Option<String>,
    /// The publishing script's id.
    pub script_id: Option<String>,
    /// Instance id of the monitor agent that recorded the file.
    pub instance_id: Option<String>,
    /// Whether the archiver has copied the file.
    pub copied: Option<bool>,
    /// How many times the archiver failed to copy the file.
    pub failed_copy_attempts: Option<i32>,
    /// MD5 digest of the file's bytes.
    pub md5sum: [u8; 16],
    /// pysmurf's version string (at most 64 characters).
    pub pysmurf_version: Option<String>,
    /// The recording program's name and version (at most 64 characters).
    pub socs_version: Option<String>,
    /// The archive the file belongs to: the payload's `archive_name`
    /// (`None`: `smurf`). Not a `pysmurf_files_v1` column: only the
    /// SupRsync target stores it (see [`crate::suprsync`]).
    pub archive_name: Option<String>,
    /// When the monitor received the registration. Not a
    /// `pysmurf_files_v1` column: the SupRsync target stores it as
    /// `timestamp` (`None`: the time of the insert).
    pub registered_at: Option<DateTime<Utc>>,
}

impl FileRow {
    /// A row for `path` with digest `md5sum`, not yet copied (`copied` 0,
    /// `failed_copy_attempts` 0) and every other column `NULL`.
    pub fn new(path: impl Into<String>, md5sum: [u8; 16]) -> Self {
        Self {
            path: path.into(),
            action: None,
            timestamp: None,
            action_timestamp: None,
            format: None,
            plot: None,
            site: None,
            pub_id: None,
            script_id: None,
            instance_id: None,
            copied: Some(false),
            failed_copy_attempts: Some(0),
            md5sum,
            pysmurf_version: None,
            socs_version: None,
            archive_name: None,
            registered_at: None,
        }
    }

    /// The key the monitor's replay uses to recognise a row it already
    /// inserted: (`path`, `md5sum`, `pub_id`, `action_timestamp`).
    pub fn identity(&self) -> (&str, &[u8; 16], Option<&str>, Option<i64>) {
        (
            &self.path,
            &self.md5sum,
            self.pub_id.as_deref(),
            self.action_timestamp,
        )
    }
}

/// A row read back from the table: its `id` and its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// The `id` column (auto-increment primary key).
    pub id: i64,
    /// Every other column.
    pub row: FileRow,
}
