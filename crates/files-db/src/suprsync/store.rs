//! The SQL run on SupRsync's database.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, QueryBuilder, Row};

use super::{
    SuprsyncFile, BUSY_TIMEOUT, SUPERSYNC_DDL, SUPERSYNC_TABLE, TIMECODE_DIRS_DDL,
    TIMECODE_DIRS_TABLE,
};
use crate::db::{
    statement_chunks, ColumnInfo, CreateOutcome, DbStatus, InsertSummary, TableStatus,
};
use crate::error::{DbError, FailureKind};
use crate::row::FileRow;
use crate::target::{Backend, DbTarget};

/// Rows per `INSERT`: 6 bound values a row stays well under SQLite's
/// 32,766 placeholders, and a transaction of this many rows takes
/// milliseconds.
const ROWS_PER_STATEMENT: usize = 1000;

/// Every column of `supersync_v0`, in table order.
const COLUMNS: &str = "id, local_path, local_md5sum, archive_name, remote_path, timestamp, \
     remote_md5sum, copied, removed, failed_copy_attempts, deletable, \"ignore\"";

/// One row of `supersync_v0` as stored, every column (SupRsync fills in
/// `remote_md5sum`, `copied`, `removed` and `failed_copy_attempts` as it
/// works).
#[derive(Debug, Clone, PartialEq)]
pub struct SuprsyncStoredFile {
    /// `id`.
    pub id: i64,
    /// `local_path`.
    pub local_path: String,
    /// `local_md5sum` (hex).
    pub local_md5sum: String,
    /// `archive_name`.
    pub archive_name: String,
    /// `remote_path`.
    pub remote_path: String,
    /// `timestamp`: when the file was registered, Unix seconds.
    pub timestamp: f64,
    /// `remote_md5sum`: the md5 SupRsync computed on the archive side.
    pub remote_md5sum: Option<String>,
    /// `copied`: when SupRsync copied it, Unix seconds.
    pub copied: Option<f64>,
    /// `removed`: when SupRsync deleted the local copy (0: found missing).
    pub removed: Option<f64>,
    /// `failed_copy_attempts`.
    pub failed_copy_attempts: Option<i64>,
    /// `deletable`.
    pub deletable: Option<bool>,
    /// `ignore`.
    pub ignore: Option<bool>,
}

impl SuprsyncStoredFile {
    /// Whether SupRsync has archived it: its remote md5 equals the local one.
    pub fn archived(&self) -> bool {
        self.remote_md5sum.as_deref() == Some(self.local_md5sum.as_str())
    }
}

pub(crate) fn connect_options(path: &Path, create: bool, echo_sql: bool) -> SqliteConnectOptions {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        // SupRsync's own setting (SQLite's default): a commit the monitor
        // acknowledged survives a power cut too.
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        // As socs's SQLAlchemy engine: foreign keys are not enforced.
        .foreign_keys(false);
    if echo_sql {
        options.log_statements(log::LevelFilter::Info)
    } else {
        options
    }
}

/// A pool of one connection: one writer at a time is SQLite's rule, and one
/// connection never makes SQLite busy against itself.
pub(crate) fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(BUSY_TIMEOUT * 2)
}

fn fail(target: &DbTarget, action: impl std::fmt::Display) -> impl Fn(sqlx::Error) -> DbError {
    let action = format!("{action} in {target}");
    move |err| DbError::new(action.clone(), err)
}

/// Creates the tables that are missing, with socs's exact DDL, in one
/// `BEGIN IMMEDIATE` transaction.
pub(crate) async fn create_tables(
    pool: &SqlitePool,
    target: &DbTarget,
) -> Result<CreateOutcome, DbError> {
    let fail = fail(
        target,
        format!("create tables {SUPERSYNC_TABLE}, {TIMECODE_DIRS_TABLE}"),
    );
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(&fail)?;
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
    )
    .bind(SUPERSYNC_TABLE)
    .bind(TIMECODE_DIRS_TABLE)
    .fetch_all(&mut *tx)
    .await
    .map_err(&fail)?;
    let mut created = false;
    for (table, ddl) in [
        (SUPERSYNC_TABLE, SUPERSYNC_DDL),
        (TIMECODE_DIRS_TABLE, TIMECODE_DIRS_DDL),
    ] {
        if !present.iter().any(|name| name == table) {
            sqlx::query(ddl).execute(&mut *tx).await.map_err(&fail)?;
            created |= table == SUPERSYNC_TABLE;
        }
    }
    tx.commit().await.map_err(&fail)?;
    Ok(if created {
        CreateOutcome::Created
    } else {
        CreateOutcome::AlreadyPresent
    })
}

/// The replay key: the table has no natural key.
type Key = (String, String, String, String);

fn key_of(file: &SuprsyncFile) -> Key {
    (
        file.local_path.clone(),
        file.local_md5sum.clone(),
        file.archive_name.clone(),
        file.remote_path.clone(),
    )
}

/// Inserts `rows` (and their new timecode directories) in one short
/// `BEGIN IMMEDIATE` transaction; with `skip_stored`, rows whose key is
/// already stored are skipped.
pub(crate) async fn insert(
    pool: &SqlitePool,
    target: &DbTarget,
    rows: &[FileRow],
    skip_stored: bool,
) -> Result<InsertSummary, DbError> {
    if rows.is_empty() {
        return Ok(InsertSummary::default());
    }
    let action = match rows {
        [only] => format!("insert {:?} into {SUPERSYNC_TABLE}", only.path),
        [first, ..] => format!(
            "insert {} rows (the first {:?}) into {SUPERSYNC_TABLE}",
            rows.len(),
            first.path
        ),
        [] => unreachable!("checked above"),
    };
    let fail = fail(target, &action);
    let files = rows
        .iter()
        .map(SuprsyncFile::from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            DbError::refused(
                format!("{action} in {target}"),
                FailureKind::Rejected,
                err.to_string(),
            )
        })?;

    // Replay: read what is stored before taking the write lock (a scan of a
    // large table must not block SupRsync); only rows committed after that
    // read are checked again under the lock, by id range.
    let mut stored = HashSet::new();
    let mut read_up_to = 0_i64;
    if skip_stored {
        let mut conn = pool.acquire().await.map_err(&fail)?;
        read_up_to = sqlx::query_scalar(&format!(
            "SELECT COALESCE(MAX(id), 0) FROM {SUPERSYNC_TABLE}"
        ))
        .fetch_one(&mut *conn)
        .await
        .map_err(&fail)?;
        stored = stored_keys(&mut conn, &files, None).await.map_err(&fail)?;
    }

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(&fail)?;
    if skip_stored {
        stored.extend(
            stored_keys(&mut tx, &files, Some(read_up_to))
                .await
                .map_err(&fail)?,
        );
    }
    let fresh: Vec<&SuprsyncFile> = files
        .iter()
        .filter(|file| !stored.contains(&key_of(file)))
        .collect();
    for chunk in statement_chunks(&fresh, ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::new(format!(
            "INSERT INTO {SUPERSYNC_TABLE} (local_path, local_md5sum, archive_name, remote_path, \
             timestamp, remote_md5sum, copied, removed, failed_copy_attempts, deletable, \"ignore\") "
        ));
        query.push_values(chunk, |mut values, file| {
            values
                .push_bind(file.local_path.as_str())
                .push_bind(file.local_md5sum.as_str())
                .push_bind(file.archive_name.as_str())
                .push_bind(file.remote_path.as_str())
                .push_bind(file.timestamp)
                .push_unseparated(", NULL, NULL, NULL, 0")
                .push_bind(file.deletable)
                .push_unseparated(", 0");
        });
        query.build().execute(&mut *tx).await.map_err(&fail)?;
    }
    // As SupRsync's add_file: one row per (timecode, archive), made once.
    let dirs: BTreeSet<(i64, &str)> = fresh.iter().filter_map(|f| f.timecode_dir()).collect();
    for (code, archive) in dirs {
        sqlx::query(&format!(
            "INSERT INTO {TIMECODE_DIRS_TABLE} (timecode, archive_name, completed, synced, \
             finalized, finalize_file_id) SELECT ?1, ?2, 0, 0, 0, NULL WHERE NOT EXISTS \
             (SELECT 1 FROM {TIMECODE_DIRS_TABLE} WHERE timecode = ?1 AND archive_name = ?2)"
        ))
        .bind(code)
        .bind(archive)
        .execute(&mut *tx)
        .await
        .map_err(&fail)?;
    }
    tx.commit().await.map_err(&fail)?;
    Ok(InsertSummary {
        inserted: fresh.len() as u64,
        skipped: (files.len() - fresh.len()) as u64,
    })
}

/// The keys among `files` already stored (only in rows with `id` above
/// `after`, when given).
async fn stored_keys(
    conn: &mut sqlx::SqliteConnection,
    files: &[SuprsyncFile],
    after: Option<i64>,
) -> Result<HashSet<Key>, sqlx::Error> {
    let mut stored = HashSet::new();
    for chunk in statement_chunks(files, ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::new(format!(
            "SELECT local_path, local_md5sum, archive_name, remote_path FROM {SUPERSYNC_TABLE} \
             WHERE "
        ));
        if let Some(after) = after {
            query.push("id > ").push_bind(after).push(" AND ");
        }
        query.push("local_path IN (");
        let mut paths = query.separated(", ");
        for file in chunk {
            paths.push_bind(file.local_path.as_str());
        }
        query.push(")");
        let found: Vec<Key> = query.build_query_as().fetch_all(&mut *conn).await?;
        stored.extend(found);
    }
    Ok(stored)
}

/// Both tables, their row counts and columns (`supersync_v0` first, as
/// the "current" table of version 0).
pub(crate) async fn status(pool: &SqlitePool, target: &DbTarget) -> Result<DbStatus, DbError> {
    let fail = fail(target, "read the status of SupRsync's tables");
    let mut tables = Vec::new();
    for name in [SUPERSYNC_TABLE, TIMECODE_DIRS_TABLE] {
        let present: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?")
                .bind(name)
                .fetch_optional(pool)
                .await
                .map_err(&fail)?;
        if present.is_none() {
            continue;
        }
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {name}"))
            .fetch_one(pool)
            .await
            .map_err(&fail)?;
        let columns: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT name, type, \"notnull\" = 0 AND pk = 0 FROM pragma_table_info(?) ORDER BY cid",
        )
        .bind(name)
        .fetch_all(pool)
        .await
        .map_err(&fail)?;
        tables.push(TableStatus {
            name: name.to_owned(),
            version: 0,
            rows: rows.max(0) as u64,
            columns: columns
                .into_iter()
                .map(|(name, sql_type, nullable)| ColumnInfo {
                    name,
                    sql_type,
                    nullable,
                })
                .collect(),
        });
    }
    Ok(DbStatus {
        target: target.to_string(),
        backend: Backend::Sqlite,
        current_version: 0,
        tables,
    })
}

/// The last `limit` rows (highest id first) whose `local_path` starts with
/// `path_prefix` (any when `None`) and whose archive is `archive` (any when
/// `None`).
pub(crate) async fn recent(
    pool: &SqlitePool,
    target: &DbTarget,
    archive: Option<&str>,
    path_prefix: Option<&str>,
    limit: u32,
) -> Result<Vec<SuprsyncStoredFile>, DbError> {
    let fail = fail(target, format!("list rows of {SUPERSYNC_TABLE}"));
    let mut query = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM {SUPERSYNC_TABLE} WHERE 1 = 1"
    ));
    if let Some(archive) = archive {
        query.push(" AND archive_name = ").push_bind(archive);
    }
    if let Some(prefix) = path_prefix {
        // substr rather than LIKE: exact, case-sensitive, no wildcards.
        query
            .push(" AND substr(local_path, 1, length(")
            .push_bind(prefix)
            .push(")) = ")
            .push_bind(prefix);
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit));
    let rows = query.build().fetch_all(pool).await.map_err(&fail)?;
    rows.iter()
        .map(|row| {
            Ok(SuprsyncStoredFile {
                id: row.try_get("id")?,
                local_path: row.try_get("local_path")?,
                local_md5sum: row.try_get("local_md5sum")?,
                archive_name: row.try_get("archive_name")?,
                remote_path: row.try_get("remote_path")?,
                timestamp: row.try_get("timestamp")?,
                remote_md5sum: row.try_get("remote_md5sum")?,
                copied: row.try_get("copied")?,
                removed: row.try_get("removed")?,
                failed_copy_attempts: row.try_get("failed_copy_attempts")?,
                deletable: row.try_get("deletable")?,
                ignore: row.try_get("ignore")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(&fail)
}

/// The (local_path, md5) pairs stored for any of `paths`.
pub(crate) async fn stored_md5s<P: AsRef<str>>(
    pool: &SqlitePool,
    target: &DbTarget,
    paths: &[P],
) -> Result<HashSet<(String, [u8; 16])>, DbError> {
    let fail = fail(
        target,
        format!(
            "read the md5sums of {} paths from {SUPERSYNC_TABLE}",
            paths.len()
        ),
    );
    let mut stored = HashSet::new();
    for chunk in statement_chunks(paths, ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::new(format!(
            "SELECT local_path, local_md5sum FROM {SUPERSYNC_TABLE} WHERE local_path IN ("
        ));
        let mut list = query.separated(", ");
        for path in chunk {
            list.push_bind(path.as_ref());
        }
        query.push(")");
        let found: Vec<(String, String)> = query
            .build_query_as()
            .fetch_all(pool)
            .await
            .map_err(&fail)?;
        for (path, md5) in found {
            if let Some(md5) = parse_hex(&md5) {
                stored.insert((path, md5));
            }
        }
    }
    Ok(stored)
}

fn parse_hex(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}
