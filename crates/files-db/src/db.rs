//! [`FilesDb`]: a connection pool to one target and every query on the table.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row};

use crate::error::{DbError, FailureKind};
use crate::nodes::MySqlNodes;
use crate::row::{FileRow, StoredFile};
use crate::schema::{self, create_statements, table_name, SCHEMA_VERSION, TABLE_PREFIX};
use crate::suprsync;
use crate::target::{sqlite_options, Backend, DbTarget, TargetKind};

/// Rows per `INSERT` statement: 15 bound values a row stays under SQLite's
/// 32,766 and MariaDB's 65,535 placeholders per statement.
const ROWS_PER_STATEMENT: usize = 1000;

/// How long a connection attempt may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns an `INSERT` writes: every column but `id`.
const INSERT_COLUMNS: &str = "path, action, timestamp, action_timestamp, format, plot, site, \
     pub_id, script_id, instance_id, copied, failed_copy_attempts, md5sum, pysmurf_version, \
     socs_version";

/// A connection pool to one database target, and every operation on the
/// `pysmurf_files_v<N>` table. Cheap to clone (the pool is shared).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use files_db::{DbTarget, FileRow, FilesDb};
///
/// let dir = tempfile::tempdir().unwrap();
/// let db = FilesDb::connect(&DbTarget::sqlite(dir.path().join("files.db"))).await.unwrap();
/// db.create_table().await.unwrap();
/// db.insert_files(&[FileRow::new("/data/a.npy", [7; 16])]).await.unwrap();
/// let stored = db.files_by_path("/data/a.npy").await.unwrap();
/// assert_eq!(stored[0].row.md5sum, [7; 16]);
/// # });
/// ```
#[derive(Clone)]
pub struct FilesDb {
    pool: Pool,
    target: DbTarget,
    table: String,
}

#[derive(Clone)]
enum Pool {
    MySql(Arc<MySqlNodes>),
    Sqlite(SqlitePool),
    /// SupRsync's database: every operation goes to [`crate::suprsync`].
    Suprsync(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool: each arm type-checks
/// the same code against its own backend, so queries are written once.
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.pool {
            Pool::MySql(nodes) => {
                let $pool = &nodes.pool();
                $body
            }
            Pool::Sqlite($pool) | Pool::Suprsync($pool) => $body,
        }
    };
}

/// Reads one row of `SELECT id, {INSERT_COLUMNS}` on either backend.
macro_rules! stored_file_from_row {
    ($row:expr) => {{
        let row = $row;
        let md5: Vec<u8> = row.try_get("md5sum")?;
        StoredFile {
            id: row.try_get("id")?,
            row: FileRow {
                path: row.try_get("path")?,
                action: row.try_get("action")?,
                timestamp: row.try_get("timestamp")?,
                action_timestamp: row.try_get("action_timestamp")?,
                format: row.try_get("format")?,
                plot: row.try_get("plot")?,
                site: row.try_get("site")?,
                pub_id: row.try_get("pub_id")?,
                script_id: row.try_get("script_id")?,
                instance_id: row.try_get("instance_id")?,
                copied: row.try_get("copied")?,
                failed_copy_attempts: row.try_get("failed_copy_attempts")?,
                md5sum: md5.try_into().map_err(|bytes: Vec<u8>| {
                    sqlx::Error::Decode(
                        format!("md5sum has {} bytes, expected 16", bytes.len()).into(),
                    )
                })?,
                pysmurf_version: row.try_get("pysmurf_version")?,
                socs_version: row.try_get("socs_version")?,
                archive_name: None,
                registered_at: None,
            },
        }
    }};
}

/// Which rows [`FilesDb::recent_files`] returns: those whose `action` and
/// `pub_id` equal the given values and whose `path` starts with
/// `path_prefix` (each `None`: no condition). `%`, `_` and `!` in the prefix
/// match themselves; whether letter case matters is the database's rule for
/// the column (MariaDB's default collation and SQLite's `LIKE` ignore ASCII
/// case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFilter {
    /// Only rows of this pysmurf action.
    pub action: Option<String>,
    /// Only rows of this publisher id.
    pub pub_id: Option<String>,
    /// Only rows whose path starts with this.
    pub path_prefix: Option<String>,
}

/// What [`FilesDb::create_table`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The table did not exist and was created.
    Created,
    /// The table already existed; nothing changed.
    AlreadyPresent,
}

/// What [`FilesDb::drop_table`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropOutcome {
    /// The table existed with this many rows and was dropped.
    Dropped {
        /// Rows it held.
        rows: u64,
    },
    /// There was no table to drop.
    Absent,
}

/// What [`FilesDb::insert_new_files`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertSummary {
    /// Rows inserted.
    pub inserted: u64,
    /// Rows skipped because an identical registration was already stored.
    pub skipped: u64,
}

/// One column as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Declared type as the server reports it, e.g. `varchar(260)`.
    pub sql_type: String,
    /// Whether it accepts `NULL`.
    pub nullable: bool,
}

/// One `pysmurf_files_v<N>` table found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatus {
    /// Table name.
    pub name: String,
    /// Its version `N`.
    pub version: u32,
    /// Rows it holds.
    pub rows: u64,
    /// Its columns, in table order.
    pub columns: Vec<ColumnInfo>,
}

/// What [`FilesDb::status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbStatus {
    /// The target, password redacted.
    pub target: String,
    /// The backend.
    pub backend: Backend,
    /// The version this build writes (1: `pysmurf_files_v1`).
    pub current_version: u32,
    /// Every `pysmurf_files_v<N>` table present, lowest version first.
    pub tables: Vec<TableStatus>,
}

impl DbStatus {
    /// The table of the current version, if present.
    pub fn current_table(&self) -> Option<&TableStatus> {
        self.tables
            .iter()
            .find(|t| t.version == self.current_version)
    }
}

impl FilesDb {
    /// Connects to `target`. An SQLite file is created (with its directory
    /// missing, this fails) if it does not exist; a MariaDB database must.
    ///
    /// MariaDB sessions use time zone `+00:00` (rows store UTC) and strict SQL
    /// mode, so a value too long for its column is an error rather than
    /// silently truncated.
    pub async fn connect(target: &DbTarget) -> Result<Self, DbError> {
        Self::open(target, true, true).await
    }

    /// A pool that connects on first use: for a long-running service that
    /// must start (and retry) while the database is down. Errors then come
    /// from the first operation. An SQLite file is created when missing.
    pub async fn connect_lazy(target: &DbTarget) -> Result<Self, DbError> {
        Self::open(target, true, false).await
    }

    /// Like [`FilesDb::connect`], but an SQLite file that does not exist is an
    /// error instead of being created: for tools that only inspect or drop.
    pub async fn connect_existing(target: &DbTarget) -> Result<Self, DbError> {
        Self::open(target, false, true).await
    }

    async fn open(target: &DbTarget, create_sqlite: bool, verify: bool) -> Result<Self, DbError> {
        // An SQLite file that must exist and does not.
        fn missing_file(action: String, path: &std::path::Path) -> DbError {
            let missing = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            );
            DbError::with_kind(action, FailureKind::CannotOpen, sqlx::Error::Io(missing))
        }

        let action = || format!("connect to {target}");
        let fail = |err| DbError::new(action(), err);
        let pool = match &target.kind {
            TargetKind::MySql { .. } => {
                // One direct connection first (to the first node of a list that
                // answers): a pool's first acquire retries until its timeout and then
                // reports only "timed out", hiding e.g. "connection refused".
                let first = if verify {
                    MySqlNodes::first_answering(target).await.map_err(fail)?
                } else {
                    0
                };
                Pool::MySql(Arc::new(MySqlNodes::new(target, first)))
            }
            TargetKind::Sqlite { path } => {
                if !create_sqlite && !path.exists() {
                    return Err(missing_file(action(), path));
                }
                let pool_options = SqlitePoolOptions::new()
                    // One writer at a time is SQLite's rule; one connection avoids
                    // SQLITE_BUSY between our own connections.
                    .max_connections(1)
                    .acquire_timeout(CONNECT_TIMEOUT);
                let options = sqlite_options(path, create_sqlite);
                let pool = if verify {
                    pool_options.connect_with(options).await.map_err(fail)?
                } else {
                    pool_options.connect_lazy_with(options)
                };
                Pool::Sqlite(pool)
            }
            TargetKind::Suprsync { path, echo_sql } => {
                if !create_sqlite && !path.exists() {
                    return Err(missing_file(action(), path));
                }
                // As socs: the database's directory is made when missing.
                if create_sqlite {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| fail(sqlx::Error::Io(e)))?;
                    }
                }
                let options = suprsync::store::connect_options(path, create_sqlite, *echo_sql);
                let pool_options = suprsync::store::pool_options();
                let pool = if verify {
                    pool_options.connect_with(options).await.map_err(fail)?
                } else {
                    pool_options.connect_lazy_with(options)
                };
                Pool::Suprsync(pool)
            }
        };
        let table = if target.is_suprsync() {
            suprsync::SUPERSYNC_TABLE.to_owned()
        } else {
            table_name(SCHEMA_VERSION)
        };
        Ok(Self {
            pool,
            target: target.clone(),
            table,
        })
    }

    /// The target this pool is connected to.
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    /// The table rows are written to, `pysmurf_files_v{SCHEMA_VERSION}`.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn error(&self, action: impl std::fmt::Display, source: sqlx::Error) -> DbError {
        DbError::new(format!("{action} in {}", self.target), source)
    }

    /// Creates the current version's table (and its index) if it does not
    /// exist. Safe to call at every start-up.
    pub async fn create_table(&self) -> Result<CreateOutcome, DbError> {
        if let Pool::Suprsync(pool) = &self.pool {
            return suprsync::store::create_tables(pool, &self.target).await;
        }
        let action = format!("create table {}", self.table);
        let existed = self
            .table_exists(&self.table)
            .await
            .map_err(|e| self.error(action.as_str(), e))?;
        for statement in create_statements(self.target.backend()) {
            with_pool!(self, |pool| sqlx::query(&statement)
                .execute(pool)
                .await
                .map(drop))
            .map_err(|e| self.error(action.as_str(), e))?;
        }
        Ok(if existed {
            CreateOutcome::AlreadyPresent
        } else {
            CreateOutcome::Created
        })
    }

    /// Drops the current version's table and every row in it. Tables of
    /// other versions are left alone.
    pub async fn drop_table(&self) -> Result<DropOutcome, DbError> {
        let action = format!("drop table {}", self.table);
        if let Pool::Suprsync(_) = &self.pool {
            return Err(DbError::refused(
                format!("{action} in {}", self.target),
                FailureKind::Other,
                "SupRsync's tables belong to SupRsync: this tool does not drop them".to_owned(),
            ));
        }
        let fail = |e| self.error(action.as_str(), e);
        if !self.table_exists(&self.table).await.map_err(fail)? {
            return Ok(DropOutcome::Absent);
        }
        let rows = self.count_rows(&self.table).await.map_err(fail)?;
        let sql = format!("DROP TABLE IF EXISTS {}", self.table);
        with_pool!(self, |pool| sqlx::query(&sql).execute(pool).await.map(drop)).map_err(fail)?;
        Ok(DropOutcome::Dropped { rows })
    }

    /// Every `pysmurf_files_v<N>` table present, with row counts and columns.
    pub async fn status(&self) -> Result<DbStatus, DbError> {
        if let Pool::Suprsync(pool) = &self.pool {
            return suprsync::store::status(pool, &self.target).await;
        }
        let fail = |e| self.error("read the status of the pysmurf_files tables", e);
        let mut tables = Vec::new();
        for name in self.versioned_tables().await.map_err(fail)? {
            let Some(version) = schema::version_of(&name) else {
                continue;
            };
            tables.push(TableStatus {
                rows: self.count_rows(&name).await.map_err(fail)?,
                columns: self.columns(&name).await.map_err(fail)?,
                name,
                version,
            });
        }
        tables.sort_by_key(|t| t.version);
        Ok(DbStatus {
            target: self.target.to_string(),
            backend: self.target.backend(),
            current_version: SCHEMA_VERSION,
            tables,
        })
    }

    /// Inserts `rows` into the current table in one transaction: all of them
    /// or, on error, none. Returns the number inserted.
    ///
    /// A [`FailureKind::Rejected`](crate::FailureKind::Rejected) error means a
    /// row's data was refused; the caller can insert the rows one by one to
    /// find it.
    pub async fn insert_files(&self, rows: &[FileRow]) -> Result<u64, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        if let Pool::Suprsync(pool) = &self.pool {
            return Ok(suprsync::store::insert(pool, &self.target, rows, false)
                .await?
                .inserted);
        }
        let action = || describe_insert(&self.table, rows);
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(|e| self.error(action(), e))?;
            for chunk in statement_chunks(rows, ROWS_PER_STATEMENT) {
                insert_statement(&self.table, chunk)
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(action(), e))?;
            }
            tx.commit().await.map_err(|e| self.error(action(), e))?;
        });
        Ok(rows.len() as u64)
    }

    /// Like [`FilesDb::insert_files`], but a row whose
    /// [`identity`](FileRow::identity) (path, md5sum, pub_id,
    /// action_timestamp) is already stored is skipped: replaying a spool or
    /// backfilling twice never doubles a row. Checked and inserted in one
    /// transaction.
    pub async fn insert_new_files(&self, rows: &[FileRow]) -> Result<InsertSummary, DbError> {
        if rows.is_empty() {
            return Ok(InsertSummary::default());
        }
        if let Pool::Suprsync(pool) = &self.pool {
            return suprsync::store::insert(pool, &self.target, rows, true).await;
        }
        let action = || describe_insert(&self.table, rows);
        let mut summary = InsertSummary::default();
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await.map_err(|e| self.error(action(), e))?;
            for chunk in statement_chunks(rows, ROWS_PER_STATEMENT) {
                let mut query = QueryBuilder::new(format!(
                    "SELECT path, md5sum, pub_id, action_timestamp FROM {} WHERE path IN (",
                    self.table
                ));
                let mut paths = query.separated(", ");
                for row in chunk {
                    paths.push_bind(row.path.as_str());
                }
                query.push(")");
                let found = query
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| self.error(action(), e))?;
                let mut stored = HashSet::new();
                for row in found {
                    let key: (String, Vec<u8>, Option<String>, Option<i64>) = (
                        row.try_get(0).map_err(|e| self.error(action(), e))?,
                        row.try_get(1).map_err(|e| self.error(action(), e))?,
                        row.try_get(2).map_err(|e| self.error(action(), e))?,
                        row.try_get(3).map_err(|e| self.error(action(), e))?,
                    );
                    stored.insert(key);
                }
                let fresh: Vec<FileRow> = chunk
                    .iter()
                    .filter(|row| {
                        !stored.contains(&(
                            row.path.clone(),
                            row.md5sum.to_vec(),
                            row.pub_id.clone(),
                            row.action_timestamp,
                        ))
                    })
                    .cloned()
                    .collect();
                summary.skipped += (chunk.len() - fresh.len()) as u64;
                summary.inserted += fresh.len() as u64;
                for fresh in statement_chunks(&fresh, ROWS_PER_STATEMENT) {
                    insert_statement(&self.table, fresh)
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.error(action(), e))?;
                }
            }
            tx.commit().await.map_err(|e| self.error(action(), e))?;
        });
        Ok(summary)
    }

    /// Every stored row whose `path` is exactly `path`, oldest first.
    /// (`pysmurf_files_v1` targets; for SupRsync's database see
    /// [`FilesDb::suprsync_files`].)
    pub async fn files_by_path(&self, path: &str) -> Result<Vec<StoredFile>, DbError> {
        self.refuse_suprsync("read rows by path")?;
        let sql = format!(
            "SELECT id, {INSERT_COLUMNS} FROM {} WHERE path = ? ORDER BY id",
            self.table
        );
        let fail = |e| self.error(format!("read rows of {path:?} from {}", self.table), e);
        with_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(path)
                .fetch_all(pool)
                .await
                .map_err(fail)?;
            rows.iter()
                .map(|row| Ok(stored_file_from_row!(row)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(fail)
        })
    }

    /// The most recently recorded rows (highest `id` first), at most `limit`
    /// of them, that pass `filter`. Every value is a bound parameter; `%`, `_` and `!` in the
    /// prefix match themselves. Whether letter case matters is the database's
    /// rule for the column (MariaDB's default collation and SQLite's `LIKE`
    /// ignore ASCII case).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use files_db::{DbTarget, FileFilter, FileRow, FilesDb};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = FilesDb::connect(&DbTarget::sqlite(dir.path().join("files.db"))).await.unwrap();
    /// db.create_table().await.unwrap();
    /// let mut tune = FileRow::new("/data/b_tune.npy", [2; 16]);
    /// tune.action = Some("tune".into());
    /// db.insert_files(&[FileRow::new("/data/a.npy", [1; 16]), tune]).await.unwrap();
    ///
    /// let newest = db.recent_files(&FileFilter::default(), 1).await.unwrap();
    /// assert_eq!(newest[0].row.path, "/data/b_tune.npy");
    /// let filter = FileFilter {
    ///     action: Some("tune".into()),
    ///     path_prefix: Some("/data/".into()),
    ///     ..FileFilter::default()
    /// };
    /// let tunes = db.recent_files(&filter, 20).await.unwrap();
    /// assert_eq!(tunes.len(), 1);
    /// # });
    /// ```
    pub async fn recent_files(
        &self,
        filter: &FileFilter,
        limit: u32,
    ) -> Result<Vec<StoredFile>, DbError> {
        self.refuse_suprsync("list recent rows")?;
        let (action, pub_id) = (filter.action.as_deref(), filter.pub_id.as_deref());
        let path_prefix = filter.path_prefix.as_deref();
        let fail = |e| self.error(format!("read recent rows from {}", self.table), e);
        let pattern = path_prefix.map(|prefix| {
            let mut pattern = String::with_capacity(prefix.len() + 1);
            for c in prefix.chars() {
                if matches!(c, '!' | '%' | '_') {
                    pattern.push('!');
                }
                pattern.push(c);
            }
            pattern.push('%');
            pattern
        });
        with_pool!(self, |pool| {
            let mut query = QueryBuilder::new(format!(
                "SELECT id, {INSERT_COLUMNS} FROM {} WHERE 1 = 1",
                self.table
            ));
            if let Some(action) = action {
                query.push(" AND action = ").push_bind(action);
            }
            if let Some(pub_id) = pub_id {
                query.push(" AND pub_id = ").push_bind(pub_id);
            }
            if let Some(pattern) = pattern.as_deref() {
                // '!' rather than a backslash: the escape literal then reads the
                // same to MariaDB and SQLite.
                query
                    .push(" AND path LIKE ")
                    .push_bind(pattern)
                    .push(" ESCAPE '!'");
            }
            query
                .push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(limit));
            let rows = query.build().fetch_all(pool).await.map_err(fail)?;
            rows.iter()
                .map(|row| Ok(stored_file_from_row!(row)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(fail)
        })
    }

    /// The (path, md5sum) pairs stored for any of `paths`: what a backfill
    /// checks to skip files already recorded with the same content. Reads
    /// in chunks of 1,000 paths.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use files_db::{DbTarget, FileRow, FilesDb};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = FilesDb::connect(&DbTarget::sqlite(dir.path().join("files.db"))).await.unwrap();
    /// db.create_table().await.unwrap();
    /// db.insert_files(&[FileRow::new("/data/a.npy", [1; 16])]).await.unwrap();
    ///
    /// let stored = db.stored_md5s(&["/data/a.npy", "/data/b.npy"]).await.unwrap();
    /// assert!(stored.contains(&("/data/a.npy".to_owned(), [1; 16])));
    /// assert_eq!(stored.len(), 1);
    /// # });
    /// ```
    pub async fn stored_md5s<P: AsRef<str>>(
        &self,
        paths: &[P],
    ) -> Result<HashSet<(String, [u8; 16])>, DbError> {
        let fail = |e| {
            self.error(
                format!(
                    "read the md5sums of {} paths from {}",
                    paths.len(),
                    self.table
                ),
                e,
            )
        };
        if let Pool::Suprsync(pool) = &self.pool {
            return suprsync::store::stored_md5s(pool, &self.target, paths).await;
        }
        let mut stored = HashSet::new();
        for chunk in statement_chunks(paths, ROWS_PER_STATEMENT) {
            let found: Vec<(String, Vec<u8>)> = with_pool!(self, |pool| {
                let mut query = QueryBuilder::new(format!(
                    "SELECT path, md5sum FROM {} WHERE path IN (",
                    self.table
                ));
                let mut list = query.separated(", ");
                for path in chunk {
                    list.push_bind(path.as_ref());
                }
                query.push(")");
                query.build_query_as().fetch_all(pool).await.map_err(fail)?
            });
            for (path, md5) in found {
                // A malformed digest cannot equal a file's; it is not a match.
                if let Ok(md5) = <[u8; 16]>::try_from(md5) {
                    stored.insert((path, md5));
                }
            }
        }
        Ok(stored)
    }

    /// The most recent rows of SupRsync's `supersync_v0` (highest `id`
    /// first), at most `limit`, of `archive` and with `local_path` starting
    /// with `path_prefix` (exactly, case-sensitive) when given. Only for a
    /// [`DbTarget::suprsync`] target.
    pub async fn suprsync_files(
        &self,
        archive: Option<&str>,
        path_prefix: Option<&str>,
        limit: u32,
    ) -> Result<Vec<suprsync::SuprsyncStoredFile>, DbError> {
        match &self.pool {
            Pool::Suprsync(pool) => {
                suprsync::store::recent(pool, &self.target, archive, path_prefix, limit).await
            }
            _ => Err(DbError::refused(
                format!("list rows of supersync_v0 in {}", self.target),
                FailureKind::Other,
                "not SupRsync's database (give --db-path)".to_owned(),
            )),
        }
    }

    fn refuse_suprsync(&self, action: &str) -> Result<(), DbError> {
        if let Pool::Suprsync(_) = &self.pool {
            return Err(DbError::refused(
                format!("{action} of {} in {}", self.table, self.target),
                FailureKind::Other,
                "a pysmurf_files query on SupRsync's database (use suprsync_files)".to_owned(),
            ));
        }
        Ok(())
    }

    /// Closes every connection of the pool.
    pub async fn close(&self) {
        match &self.pool {
            Pool::MySql(nodes) => nodes.close().await,
            Pool::Sqlite(pool) | Pool::Suprsync(pool) => pool.close().await,
        }
    }

    /// Checks, cheaply, whether the database takes writes now: a fresh
    /// connection and two short queries (MariaDB), `SELECT 1` (SQLite). For
    /// a caller whose writes failed to wait on before retrying them, without
    /// loading the server with the writes themselves while it is down.
    ///
    /// With several nodes (a Galera cluster), probes the node in use, then
    /// the others in the order given, and moves to the first that answers:
    /// connects, is not read-only and, for a Galera node, is ready
    /// (`wsrep_ready`, i.e. in the primary component). Later operations use
    /// that node; while it is not the first node, the first is looked at
    /// every 30 s and used again as soon as it answers. Each node's probe
    /// gives up after 2 s.
    pub async fn probe(&self) -> Result<(), DbError> {
        match &self.pool {
            Pool::MySql(nodes) => nodes.probe().await,
            Pool::Sqlite(pool) | Pool::Suprsync(pool) => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)
                .map_err(|e| self.error("probe", e)),
        }
    }

    /// While a MariaDB target of several nodes is on another node than the
    /// first, how often to look whether the first answers again, and move
    /// back to it if so (default 30 s; the look is in the background, never
    /// in an operation's way). No effect on other targets.
    pub fn set_node_return_interval(&self, interval: std::time::Duration) {
        if let Pool::MySql(nodes) = &self.pool {
            nodes.set_return_interval(interval);
        }
    }

    /// `HOST:PORT` of the MariaDB node in use (of several, the one operations
    /// go to now); the file path for SQLite.
    pub fn active_node(&self) -> String {
        match &self.pool {
            Pool::MySql(nodes) => self.target.node_name(nodes.active_index()),
            Pool::Sqlite(_) | Pool::Suprsync(_) => self.target.endpoint(),
        }
    }

    async fn table_exists(&self, name: &str) -> Result<bool, sqlx::Error> {
        Ok(self
            .versioned_tables()
            .await?
            .iter()
            .any(|table| table == name))
    }

    /// Names of the tables that start with [`TABLE_PREFIX`].
    async fn versioned_tables(&self) -> Result<Vec<String>, sqlx::Error> {
        let pattern = format!("{}%", TABLE_PREFIX.replace('_', "\\_"));
        match &self.pool {
            Pool::MySql(nodes) => {
                sqlx::query_scalar(
                    "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE ?",
                )
                .bind(pattern)
                .fetch_all(&nodes.pool())
                .await
            }
            Pool::Sqlite(pool) | Pool::Suprsync(pool) => sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
            )
            .bind(pattern)
            .fetch_all(pool)
            .await,
        }
    }

    /// `name` must come from [`Self::versioned_tables`] or [`table_name`]:
    /// table names cannot be bound parameters.
    async fn count_rows(&self, name: &str) -> Result<u64, sqlx::Error> {
        debug_assert!(schema::version_of(name).is_some());
        let sql = format!("SELECT COUNT(*) FROM {name}");
        let count: i64 = with_pool!(self, |pool| sqlx::query_scalar(&sql).fetch_one(pool).await)?;
        Ok(count.max(0) as u64)
    }

    async fn columns(&self, name: &str) -> Result<Vec<ColumnInfo>, sqlx::Error> {
        let rows: Vec<(String, String, bool)> = match &self.pool {
            Pool::MySql(nodes) => {
                sqlx::query_as(
                    "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
                     IS_NULLABLE = 'YES' FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                )
                .bind(name)
                .fetch_all(&nodes.pool())
                .await?
            }
            Pool::Sqlite(pool) | Pool::Suprsync(pool) => {
                sqlx::query_as(
                    "SELECT name, type, \"notnull\" = 0 AND pk = 0 FROM pragma_table_info(?) ORDER BY cid",
                )
                .bind(name)
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(name, sql_type, nullable)| ColumnInfo {
                name,
                sql_type,
                nullable,
            })
            .collect())
    }
}

impl std::fmt::Debug for FilesDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesDb")
            .field("target", &self.target)
            .field("table", &self.table)
            .finish()
    }
}

fn describe_insert(table: &str, rows: &[FileRow]) -> String {
    match rows {
        [only] => format!("insert {:?} into {table}", only.path),
        [first, ..] => format!(
            "insert {} rows (the first {:?}) into {table}",
            rows.len(),
            first.path
        ),
        [] => format!("insert no rows into {table}"),
    }
}

/// `INSERT INTO table (...) VALUES (...), (...)` for `rows`, every value bound.
/// `items` in slices of `max_rows`, the rest in decreasing powers of two:
/// how to cut rows into multi-row statements. A statement's text depends on
/// its row count, and each distinct text is a prepared statement the
/// connection keeps (a 1000-row insert is megabytes in SQLite); cut this way,
/// only `log2(max_rows) + 2` sizes are ever prepared, whatever sizes the
/// batches have.
pub(crate) fn statement_chunks<T>(items: &[T], max_rows: usize) -> impl Iterator<Item = &[T]> {
    let max_rows = max_rows.max(1);
    let mut rest = items;
    std::iter::from_fn(move || {
        let size = match rest.len() {
            0 => return None,
            n if n >= max_rows => max_rows,
            n => 1 << n.ilog2(),
        };
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

fn insert_statement<'a, DB>(table: &str, rows: &'a [FileRow]) -> QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<NaiveDateTime>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<i32>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<bool>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = QueryBuilder::new(format!("INSERT INTO {table} ({INSERT_COLUMNS}) "));
    query.push_values(rows, |mut values, row| {
        values
            .push_bind(row.path.as_str())
            .push_bind(row.action.as_deref())
            .push_bind(row.timestamp.map(whole_seconds_utc))
            .push_bind(row.action_timestamp)
            .push_bind(row.format.as_deref())
            .push_bind(row.plot)
            .push_bind(row.site.as_deref())
            .push_bind(row.pub_id.as_deref())
            .push_bind(row.script_id.as_deref())
            .push_bind(row.instance_id.as_deref())
            .push_bind(row.copied)
            .push_bind(row.failed_copy_attempts)
            .push_bind(row.md5sum.as_slice())
            .push_bind(row.pysmurf_version.as_deref())
            .push_bind(row.socs_version.as_deref());
    });
    query
}

/// The column is a second-resolution `TIMESTAMP`; dropping the fraction here
/// makes both backends store the same value (MariaDB would otherwise round).
fn whole_seconds_utc(time: DateTime<Utc>) -> NaiveDateTime {
    let naive = time.naive_utc();
    naive.with_nanosecond(0).unwrap_or(naive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_chunks_cover_every_row_in_few_sizes() {
        let sizes = |n: usize| -> Vec<usize> {
            statement_chunks(&vec![0u8; n], ROWS_PER_STATEMENT)
                .map(<[u8]>::len)
                .collect()
        };
        assert!(sizes(0).is_empty());
        assert_eq!(sizes(2345), [1000, 1000, 256, 64, 16, 8, 1]);
        let mut distinct = HashSet::new();
        for n in 0..3000 {
            let chunks = sizes(n);
            assert_eq!(chunks.iter().sum::<usize>(), n);
            distinct.extend(chunks);
        }
        assert_eq!(distinct.len(), 11, "{distinct:?}");
    }
}
