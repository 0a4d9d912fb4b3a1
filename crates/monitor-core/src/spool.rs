//! The spool: the durable queue of accepted file registrations.
//!
//! Every accepted `data_file` / `g3_file` datagram is appended to the spool
//! before anything else happens to it, and leaves it only when the caller
//! acknowledges it (its row is committed, or it went to the dead-letter
//! file). [`Spool::read_page`] reads it back in id order, a page at a
//! time: at start-up for replay, and whenever the consumer fell behind and
//! let go of records it could not hold in memory.
//!
//! What it owns: one SQLite file, `spool.db` in the directory given to
//! [`Spool::open`], with one table
//! `spool(id, received_at_ns, sender, datagram, replays)`, and the one task
//! that writes it. Its guarantees:
//!
//! - **Once [`Spool::append`] has returned an id, the record survives
//!   `kill -9`**: it is in a committed WAL transaction (`synchronous=NORMAL`,
//!   so the bytes are handed to the OS, not fsynced; power loss can lose the
//!   last transactions, which is the grouped-fsync trade-off of the design).
//!   Once [`Spool::ack`] has returned, the records are gone for good after a
//!   kill (after a power loss, the last acknowledged ones may come back:
//!   replay must skip rows already in the database anyway).
//! - **Group commit without a timer**: one writer task takes whatever
//!   appends and acks are queued when it wakes and commits them in one
//!   transaction, then replies. At a low rate every append is its own small
//!   transaction; batching never waits for company.
//! - **Ids are monotonic and never reused**, across restarts too (the table
//!   is `AUTOINCREMENT`, and the writer hands out ids past both the largest
//!   row and SQLite's high-water mark).
//! - **One process per spool**: the file is opened with
//!   `locking_mode=EXCLUSIVE`, so a second monitor pointed at the same
//!   directory fails to open it instead of replaying the same records and
//!   colliding on ids.
//! - **The receive journal's mark**: an append may say up to which
//!   receive-journal sequence number it covers
//!   ([`Spool::append_covering`]); the mark is raised in the same
//!   transaction as the records, so "spooled" and "covered" never disagree,
//!   and read back by [`Spool::journal_mark`].
//! - A stored record that cannot be decoded is skipped by the reads with
//!   an error log naming its id, and counted
//!   ([`Spool::corrupt_records_skipped`]); the others still replay.
//!
//! What it does not do: it never parses datagrams (they are opaque bytes
//! here), and it does not deduplicate a replay against the files database —
//! a record committed to the database whose ack was lost comes back from
//! [`Spool::read_page`], and the replaying side must skip rows already
//! present.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

/// The spool's file name inside the directory given to [`Spool::open`].
const FILE_NAME: &str = "spool.db";

/// `PRAGMA user_version` of the spool's schema. A file with a larger version
/// was written by a newer program and is not touched.
const FORMAT_VERSION: i64 = 1;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at_ns INTEGER NOT NULL,
    sender TEXT NOT NULL,
    datagram BLOB NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0
)";

/// The highest receive-journal sequence number whose datagram is spooled or
/// was not a registration (one row), written in the transaction of the
/// append that covers it. Older programs ignore the table.
const JOURNAL_MARK_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS journal_mark (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    covered INTEGER NOT NULL
)";

/// Raises the journal mark, never lowers it.
const RAISE_JOURNAL_MARK: &str = "INSERT INTO journal_mark (only, covered) VALUES (1, ?) \
    ON CONFLICT (only) DO UPDATE SET covered = max(covered, excluded.covered)";

/// Commands queued for the writer task. When it is full, `append` waits:
/// the spool is where pressure on registrations is absorbed, and the
/// router's own bounded channel (then the kernel's socket buffer) behind it.
const COMMAND_QUEUE: usize = 4096;

/// Most records one transaction takes from the queue. Bounds the latency of
/// the commands queued behind a burst, not the size of one `append_many`,
/// which is always one transaction.
const MAX_BATCH_RECORDS: usize = 8192;

/// Most datagram bytes one transaction takes from the queue (same role as
/// [`MAX_BATCH_RECORDS`] for large datagrams).
const MAX_BATCH_BYTES: usize = 32 << 20;

/// How long opening waits for another connection's lock on the file: long
/// enough for a previous monitor that is shutting down to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Most rows per multi-row `INSERT` (4 parameters each, far below SQLite's
/// limit of 32766). A batch of n rows is n / 256 statements of 256 rows and
/// the rest in decreasing powers of two, so only 9 distinct statements are
/// ever prepared (each is memory kept by the connection): [`insert_chunks`].
const MAX_INSERT_ROWS: usize = 256;
const _: () = assert!(MAX_INSERT_ROWS.is_power_of_two());

/// Prepared statements each connection keeps: every `INSERT` size, plus the
/// few other statements.
const STATEMENT_CACHE: usize = 32;

/// Consecutive failed transactions between two error logs.
const FAILURE_LOG_EVERY: u64 = 1024;

/// The query of a page from the first row on (`id >= i64::MIN`).
const READ_FROM_START: &str = "SELECT id, received_at_ns, sender, datagram FROM spool \
    WHERE id >= ? ORDER BY id LIMIT ?";

/// The query of a page after a given id.
const READ_AFTER: &str = "SELECT id, received_at_ns, sender, datagram FROM spool \
    WHERE id > ? ORDER BY id LIMIT ?";

/// Rows read per query by [`Spool::pending`].
#[cfg(any(test, feature = "fuzzing"))]
const PENDING_PAGE: usize = 1024;

/// A record's place in the spool: monotonic, never reused. Only the spool
/// hands them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolId(u64);

#[cfg(feature = "fuzzing")]
impl SpoolId {
    /// The id of the spool table's row `id` (the fuzz target names rows it
    /// edited behind the spool's back).
    pub fn new(id: u64) -> Self {
        Self(id)
    }

    /// The spool table's row id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A record still in the spool, as returned by [`Spool::read_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    /// Its id, as returned by the append that stored it.
    pub id: SpoolId,
    /// When the datagram was received (stored with nanosecond precision).
    pub received_at: SystemTime,
    /// Who sent it. An IPv6 sender's flow label is not stored (its scope id
    /// is).
    pub sender: SocketAddr,
    /// The datagram's bytes, unchanged.
    pub datagram: Arc<[u8]>,
}

/// Where a [`Spool::read_page`] starts: at the first record, or at a given
/// id. Pages hand back the cursor of the next page, which also moves past
/// corrupt records (whose ids may not even be valid [`SpoolId`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolCursor {
    /// Rows with ids above this are read; `None`: every row.
    after: Option<i64>,
}

impl SpoolCursor {
    /// Before the first record.
    pub const START: SpoolCursor = SpoolCursor { after: None };

    /// At `id`: the records with ids from `id` on.
    pub fn from_id(id: SpoolId) -> SpoolCursor {
        SpoolCursor {
            // An id beyond i64 was never handed out: nothing is at or after it.
            after: Some(i64::try_from(id.0).map_or(i64::MAX, |id| id - 1)),
        }
    }
}

/// One page of [`Spool::read_page`]: records in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolPage {
    /// The records of the page that could be decoded.
    pub records: Vec<SpooledRecord>,
    /// Where the next page starts: past every row this page looked at,
    /// corrupt ones included.
    pub next: SpoolCursor,
    /// No record after this page existed when it was read.
    pub is_last: bool,
}

/// Why a spool operation failed. Each variant names the spool file; the
/// operation is in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool's directory could not be created.
    #[error("cannot create the spool directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The spool file could not be opened or prepared (including: another
    /// process holds it).
    #[error("cannot open the spool {path}")]
    Open {
        /// The spool file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: sqlx::Error,
    },
    /// The spool file was written by a newer program.
    #[error(
        "cannot open the spool {path}: its format version {found} is newer than {FORMAT_VERSION}"
    )]
    UnknownFormat {
        /// The spool file.
        path: PathBuf,
        /// The file's `user_version`.
        found: i64,
    },
    /// A record's receive time cannot be stored (more than 292 years from
    /// 1970). Nothing was appended.
    #[error("cannot append to the spool {path}: receive time {received_at:?} is out of range")]
    TimeOutOfRange {
        /// The spool file.
        path: PathBuf,
        /// The offending time.
        received_at: SystemTime,
    },
    /// The transaction holding the appended records failed (disk full, I/O
    /// error); none of them was stored. Every command committed with them
    /// gets the same error.
    #[error("cannot append to the spool {path}")]
    Append {
        /// The spool file.
        path: PathBuf,
        /// SQLite's error, shared by every command of the failed transaction.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The transaction removing acknowledged records failed; they are all
    /// still in the spool.
    #[error("cannot remove acknowledged records from the spool {path}")]
    Ack {
        /// The spool file.
        path: PathBuf,
        /// SQLite's error, shared by every command of the failed transaction.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The spool's ids are used up (only a foreign writer can get there:
    /// ids start at 1 and count up by one per record). Nothing was appended.
    #[error("cannot append to the spool {path}: its ids are used up")]
    IdsExhausted {
        /// The spool file.
        path: PathBuf,
    },
    /// The pending records could not be read.
    #[error("cannot read the pending records of the spool {path}")]
    Read {
        /// The spool file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: sqlx::Error,
    },
    /// The spool was closed (or its writer stopped) before the operation was
    /// taken. Nothing was done.
    #[error("cannot {operation} the spool {path}: it is closed")]
    Closed {
        /// The spool file.
        path: PathBuf,
        /// What was attempted: "append to", "acknowledge records in", "read".
        operation: &'static str,
    },
}

/// The durable queue of accepted file registrations (see the
/// module documentation for its guarantees). Cheap to clone; clones
/// share one file and one writer task.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    /// The id of this run's first append: smaller ids were appended by an
    /// earlier run of the program.
    first_id_of_this_run: SpoolId,
    /// Taken by the first `close`; the async mutex makes a concurrent
    /// `close` wait until the writer has really stopped.
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Counters the writer task keeps and the handles read.
#[derive(Default)]
struct Counters {
    /// Rows in the table: appended and not acknowledged.
    depth: AtomicU64,
    /// Distinct corrupt records skipped by the reads.
    corrupt_skipped: AtomicU64,
    /// The receive journal's mark, as committed.
    journal_mark: AtomicU64,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.inner.path)
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating the directory and file if needed) the spool
    /// `dir/spool.db` and spawns its writer task on the current tokio
    /// runtime.
    ///
    /// Fails if another process (or another `Spool` in this one) has the
    /// file open, after waiting up to 10 s for it to let go.
    pub async fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Self::open_with(dir, |options| options).await
    }

    /// [`open`](Self::open), with the connection options adjusted by `tune`
    /// (tests: a short lock wait, a size limit).
    pub(crate) async fn open_with(
        dir: &Path,
        tune: impl FnOnce(SqliteConnectOptions) -> SqliteConnectOptions,
    ) -> Result<Spool, SpoolError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| SpoolError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let path = dir.join(FILE_NAME);
        let options = tune(connect_options(&path, LOCK_WAIT));
        let open_error = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = options.connect().await.map_err(open_error)?;
        let state = match prepare(&mut conn).await {
            Ok(state) => state,
            Err(err) => {
                close_quietly(conn, &path).await;
                return Err(match err {
                    Prepare::Sql(source) => open_error(source),
                    Prepare::Newer(found) => SpoolError::UnknownFormat { path, found },
                });
            }
        };
        tracing::info!(
            spool = %path.display(),
            pending = state.rows,
            next_id = state.next_id,
            journal_mark = state.journal_mark,
            "spool opened"
        );

        let counters = Arc::new(Counters {
            depth: AtomicU64::new(state.rows),
            corrupt_skipped: AtomicU64::new(0),
            journal_mark: AtomicU64::new(state.journal_mark),
        });
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let writer = Writer {
            path: path.clone(),
            options,
            conn: Some(conn),
            next_id: state.next_id,
            journal_mark: state.journal_mark,
            counters: Arc::clone(&counters),
            corrupt_seen: HashSet::new(),
            insert_sql: InsertSql::default(),
            failures_in_a_row: 0,
        };
        let handle = tokio::spawn(writer.run(queue));
        Ok(Spool {
            inner: Arc::new(Inner {
                path,
                commands,
                counters,
                first_id_of_this_run: SpoolId(state.next_id as u64),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Stores one record and returns its id once it is committed.
    ///
    /// Dropping the returned future after it started does not withdraw the
    /// record: it may still be stored (and then comes back from
    /// [`read_page`](Self::read_page) at the next start), but its id is lost to
    /// the caller.
    #[cfg(any(test, feature = "fuzzing"))]
    pub async fn append(
        &self,
        sender: SocketAddr,
        received_at: SystemTime,
        datagram: impl Into<Arc<[u8]>>,
    ) -> Result<SpoolId, SpoolError> {
        let records = vec![self.new_record(sender, received_at, datagram.into())?];
        let ids = self.submit_append(records, 0).await?;
        match ids.first() {
            Some(&id) => Ok(id),
            // The writer returns one id per record; this is unreachable, but
            // an I/O path does not panic.
            None => Err(self.closed("append to")),
        }
    }

    /// Stores several records in one transaction (all or none) and returns
    /// their ids, consecutive and in the order given. Same cancellation
    /// caveat as [`append`](Self::append). The datagrams are shared, not
    /// copied.
    #[cfg(any(test, feature = "fuzzing"))]
    pub async fn append_many(
        &self,
        records: Vec<(SocketAddr, SystemTime, Arc<[u8]>)>,
    ) -> Result<Vec<SpoolId>, SpoolError> {
        self.append_covering(records, 0).await
    }

    /// [`append_many`](Self::append_many) that also raises the receive
    /// journal's mark to `journal_seq` in the same transaction (a lower
    /// value leaves it; 0: no journal). Raises it even when `records` is
    /// empty.
    pub async fn append_covering(
        &self,
        records: Vec<(SocketAddr, SystemTime, Arc<[u8]>)>,
        journal_seq: u64,
    ) -> Result<Vec<SpoolId>, SpoolError> {
        if records.is_empty() && journal_seq <= self.journal_mark() {
            return Ok(Vec::new());
        }
        let records = records
            .into_iter()
            .map(|(sender, received_at, datagram)| self.new_record(sender, received_at, datagram))
            .collect::<Result<Vec<_>, _>>()?;
        self.submit_append(records, journal_seq).await
    }

    /// The highest receive-journal sequence number a committed append
    /// covers (0: none yet): the journal's records above it are replayed at
    /// the next start.
    pub fn journal_mark(&self) -> u64 {
        self.inner.counters.journal_mark.load(Ordering::Relaxed)
    }

    /// Removes records for good, returning once the removal is committed.
    /// Ids that are not in the spool (never appended, already acknowledged)
    /// are ignored.
    pub async fn ack(&self, ids: &[SpoolId]) -> Result<(), SpoolError> {
        // An id beyond i64 was never handed out: ignoring it is "unknown".
        let ids: Vec<i64> = ids
            .iter()
            .filter_map(|id| i64::try_from(id.0).ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Ack { ids, reply }, "acknowledge records in")
            .await?;
        answer
            .await
            .unwrap_or_else(|_| Err(self.closed("acknowledge records in")))
    }

    /// Up to `limit` records not acknowledged yet, from `from` on, smallest
    /// id first. The page sees every append and ack that returned before it
    /// was asked for.
    ///
    /// A record that cannot be decoded (a NULL, a sender that does not
    /// parse, a field of the wrong type, an id this program never hands out)
    /// is left out, logged with its id at error level and counted in
    /// [`corrupt_records_skipped`](Self::corrupt_records_skipped); it stays
    /// in the file (and in [`depth`](Self::depth)) until acknowledged by id.
    /// It still counts towards `limit`, and the page's
    /// [`next`](SpoolPage::next) goes past it.
    pub async fn read_page(
        &self,
        from: SpoolCursor,
        limit: usize,
    ) -> Result<SpoolPage, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(
            Command::Read {
                from,
                limit: limit.max(1),
                reply,
            },
            "read",
        )
        .await?;
        answer.await.unwrap_or_else(|_| Err(self.closed("read")))
    }

    /// Every record not acknowledged yet, smallest id first: all the pages
    /// of [`read_page`](Self::read_page) at once, so the whole answer is
    /// in memory (at most the spool's size on disk). For tools and tests;
    /// the pipeline pages.
    #[cfg(any(test, feature = "fuzzing"))]
    pub async fn pending(&self) -> Result<Vec<SpooledRecord>, SpoolError> {
        let mut records = Vec::new();
        let mut from = SpoolCursor::START;
        loop {
            let page = self.read_page(from, PENDING_PAGE).await?;
            records.extend(page.records);
            if page.is_last {
                return Ok(records);
            }
            from = page.next;
        }
    }

    /// The id of this run's first append: records with smaller ids were
    /// appended before this [`Spool::open`] (by an earlier run, whose rows
    /// may be committed already).
    pub fn first_id_of_this_run(&self) -> SpoolId {
        self.inner.first_id_of_this_run
    }

    /// Records appended and not yet acknowledged (exact: kept by the writer
    /// as it commits; includes corrupt records still in the file).
    pub fn depth(&self) -> u64 {
        // Each update happens before the reply that announces it, so a
        // caller whose append or ack has returned sees its effect.
        self.inner.counters.depth.load(Ordering::Relaxed)
    }

    /// Distinct corrupt records that the reads have skipped
    /// since this spool was opened (a record skipped by two calls counts
    /// once).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn corrupt_records_skipped(&self) -> u64 {
        self.inner.counters.corrupt_skipped.load(Ordering::Relaxed)
    }

    /// Finishes every command already queued, stops the writer task and
    /// closes the file. Afterwards every operation fails with
    /// [`SpoolError::Closed`]. Calling it again (from any clone) waits for
    /// the first call to finish.
    pub async fn close(&self) {
        let mut writer = self.inner.writer.lock().await;
        if let Some(handle) = writer.take() {
            // If the send fails the writer has already stopped.
            let _ = self.inner.commands.send(Command::Close).await;
            if let Err(err) = handle.await {
                tracing::error!(
                    spool = %self.inner.path.display(),
                    error = %err,
                    "the spool writer task did not finish cleanly"
                );
            }
        }
    }

    fn new_record(
        &self,
        sender: SocketAddr,
        received_at: SystemTime,
        datagram: Arc<[u8]>,
    ) -> Result<NewRecord, SpoolError> {
        let received_at_ns =
            nanos_since_epoch(received_at).ok_or_else(|| SpoolError::TimeOutOfRange {
                path: self.inner.path.clone(),
                received_at,
            })?;
        Ok(NewRecord {
            received_at_ns,
            sender: sender.to_string(),
            datagram,
        })
    }

    async fn submit_append(
        &self,
        records: Vec<NewRecord>,
        covers: u64,
    ) -> Result<Vec<SpoolId>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(
            Command::Append {
                records,
                covers,
                reply,
            },
            "append to",
        )
        .await?;
        answer
            .await
            .unwrap_or_else(|_| Err(self.closed("append to")))
    }

    async fn send(&self, command: Command, operation: &'static str) -> Result<(), SpoolError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| self.closed(operation))
    }

    fn closed(&self, operation: &'static str) -> SpoolError {
        SpoolError::Closed {
            path: self.inner.path.clone(),
            operation,
        }
    }
}

/// How the spool file is opened: as `files_db`'s SQLite targets (WAL,
/// `synchronous=NORMAL`), plus an exclusive lock held for the connection's
/// life, which also keeps the WAL index in memory instead of a `-shm` file.
fn connect_options(path: &Path, lock_wait: Duration) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .locking_mode(SqliteLockingMode::Exclusive)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(lock_wait)
        .statement_cache_capacity(STATEMENT_CACHE)
}

enum Prepare {
    Sql(sqlx::Error),
    Newer(i64),
}

impl From<sqlx::Error> for Prepare {
    fn from(err: sqlx::Error) -> Self {
        Prepare::Sql(err)
    }
}

struct Opened {
    rows: u64,
    next_id: i64,
    journal_mark: u64,
}

/// Checks the format, creates the table, takes the exclusive lock (the
/// first write does) and reads where the ids and the depth stand.
async fn prepare(conn: &mut SqliteConnection) -> Result<Opened, Prepare> {
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    if version > FORMAT_VERSION {
        return Err(Prepare::Newer(version));
    }
    let mut tx = conn.begin().await?;
    sqlx::query(SCHEMA).execute(&mut *tx).await?;
    sqlx::query(JOURNAL_MARK_SCHEMA).execute(&mut *tx).await?;
    // Always written, so that the exclusive lock is taken now rather than at
    // the first append.
    sqlx::query(&format!("PRAGMA user_version = {FORMAT_VERSION}"))
        .execute(&mut *tx)
        .await?;
    let (rows, max_id): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(max(id), 0) FROM spool")
            .fetch_one(&mut *tx)
            .await?;
    let high_water: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'spool'")
            .fetch_optional(&mut *tx)
            .await?;
    let journal_mark: Option<i64> = sqlx::query_scalar("SELECT covered FROM journal_mark")
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Opened {
        rows: u64::try_from(rows).unwrap_or(0),
        // Ids start at 1, whatever a foreign writer left below that.
        next_id: max_id.max(high_water.unwrap_or(0)).max(0).saturating_add(1),
        journal_mark: journal_mark.map_or(0, |mark| u64::try_from(mark).unwrap_or(0)),
    })
}

async fn close_quietly(conn: SqliteConnection, path: &Path) {
    if let Err(err) = conn.close().await {
        tracing::warn!(spool = %path.display(), error = %err, "closing the spool file failed");
    }
}

/// The text of the `INSERT` of each size, made on first use.
#[derive(Default)]
struct InsertSql(Vec<String>);

impl InsertSql {
    /// `INSERT` of `rows` rows (1 to [`MAX_INSERT_ROWS`]; 0 is taken as 1).
    fn get(&mut self, rows: usize) -> &str {
        let rows = rows.max(1);
        if self.0.len() < rows {
            self.0.resize(rows, String::new());
        }
        let sql = &mut self.0[rows - 1];
        if sql.is_empty() {
            sql.push_str(
                "INSERT INTO spool (id, received_at_ns, sender, datagram) VALUES (?,?,?,?)",
            );
            for _ in 1..rows {
                sql.push_str(",(?,?,?,?)");
            }
        }
        sql
    }
}

/// A record on its way in, already in its stored form.
struct NewRecord {
    received_at_ns: i64,
    sender: String,
    datagram: Arc<[u8]>,
}

enum Command {
    Append {
        records: Vec<NewRecord>,
        /// The receive-journal sequence number this append covers.
        covers: u64,
        reply: oneshot::Sender<Result<Vec<SpoolId>, SpoolError>>,
    },
    Ack {
        ids: Vec<i64>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Read {
        from: SpoolCursor,
        limit: usize,
        reply: oneshot::Sender<Result<SpoolPage, SpoolError>>,
    },
    Close,
}

impl Command {
    /// (records, datagram bytes) this command adds to a transaction.
    fn weight(&self) -> (usize, usize) {
        match self {
            Command::Append { records, .. } => (
                records.len(),
                records.iter().map(|r| r.datagram.len()).sum(),
            ),
            Command::Ack { ids, .. } => (ids.len(), 0),
            Command::Read { .. } | Command::Close => (0, 0),
        }
    }
}

/// The one task that touches the file.
struct Writer {
    path: PathBuf,
    options: SqliteConnectOptions,
    /// `None` after a failed transaction: the connection is closed and a
    /// fresh one opened for the next command, so no half-known transaction
    /// state survives an error.
    conn: Option<SqliteConnection>,
    /// The receive journal's mark, as committed.
    journal_mark: u64,
    /// The id the next appended record gets. Not rolled back when a
    /// transaction fails: ids are never reused, gaps are harmless.
    next_id: i64,
    counters: Arc<Counters>,
    corrupt_seen: HashSet<i64>,
    insert_sql: InsertSql,
    /// Failed transactions since the last one that succeeded.
    failures_in_a_row: u64,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        while let Some(first) = queue.recv().await {
            // Group commit: take what is already queued, never wait for more.
            let (mut records, mut bytes) = first.weight();
            batch.push(first);
            while records < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                let Ok(next) = queue.try_recv() else { break };
                let (r, b) = next.weight();
                records += r;
                bytes += b;
                batch.push(next);
            }

            let mut writes = Vec::with_capacity(batch.len());
            for command in batch.drain(..) {
                match command {
                    // Commands already queued behind `Close` are still
                    // carried out; later sends fail.
                    Command::Close => queue.close(),
                    // Reads see every write queued before them.
                    Command::Read { from, limit, reply } => {
                        self.write(std::mem::take(&mut writes)).await;
                        let _ = reply.send(self.read(from, limit).await);
                    }
                    write => writes.push(write),
                }
            }
            self.write(writes).await;
        }
        if let Some(conn) = self.conn.take() {
            close_quietly(conn, &self.path).await;
        }
        tracing::info!(spool = %self.path.display(), "spool closed");
    }

    /// Commits the appends and acks of `commands` in one transaction and
    /// answers each of them.
    async fn write(&mut self, mut commands: Vec<Command>) {
        let first_id = self.next_id;
        let mut appended: usize = commands
            .iter()
            .map(|c| match c {
                Command::Append { records, .. } => records.len(),
                _ => 0,
            })
            .sum();
        // The id after the last one handed out; i64::MAX itself is never an id.
        match i64::try_from(appended)
            .ok()
            .and_then(|n| first_id.checked_add(n))
        {
            Some(next_id) => self.next_id = next_id,
            None => {
                tracing::error!(spool = %self.path.display(), "spool ids are used up; appends fail");
                commands.retain_mut(|command| match command {
                    Command::Append { reply, .. } => {
                        let (closed, _) = oneshot::channel();
                        let reply = std::mem::replace(reply, closed);
                        let _ = reply.send(Err(SpoolError::IdsExhausted {
                            path: self.path.clone(),
                        }));
                        false
                    }
                    _ => true,
                });
                appended = 0;
            }
        }
        if commands.is_empty() {
            return;
        }
        let covers = commands
            .iter()
            .map(|c| match c {
                Command::Append { covers, .. } => *covers,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let raise = (covers > self.journal_mark).then_some(covers);

        match self.commit(&commands, first_id, raise).await {
            Ok(removed) => {
                if let Some(mark) = raise {
                    self.journal_mark = mark;
                    self.counters.journal_mark.store(mark, Ordering::Relaxed);
                }
                if self.failures_in_a_row > 0 {
                    tracing::info!(
                        spool = %self.path.display(),
                        failures = self.failures_in_a_row,
                        "spool transactions succeed again"
                    );
                    self.failures_in_a_row = 0;
                }
                // Before the replies, so that a caller sees its own effect.
                let _ = self.counters.depth.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |depth| {
                        Some(
                            depth
                                .saturating_add(appended as u64)
                                .saturating_sub(removed),
                        )
                    },
                );
                let mut next = first_id;
                for command in commands {
                    match command {
                        Command::Append { records, reply, .. } => {
                            // Ids from 1 to i64::MAX - 1 (checked above).
                            let ids = (0..records.len())
                                .map(|offset| SpoolId((next + offset as i64) as u64))
                                .collect();
                            next += records.len() as i64;
                            let _ = reply.send(Ok(ids));
                        }
                        Command::Ack { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                        Command::Read { .. } | Command::Close => {}
                    }
                }
            }
            Err(err) => {
                // A full disk fails every transaction; the callers count
                // them, the log gets the first and every 1024th.
                if self.failures_in_a_row % FAILURE_LOG_EVERY == 0 {
                    tracing::error!(
                        spool = %self.path.display(),
                        error = %err,
                        records = appended,
                        commands = commands.len(),
                        failures_in_a_row = self.failures_in_a_row + 1,
                        "spool transaction failed"
                    );
                }
                self.failures_in_a_row += 1;
                if let Some(conn) = self.conn.take() {
                    close_quietly(conn, &self.path).await;
                }
                let source = Arc::new(err);
                for command in commands {
                    let path = self.path.clone();
                    let source = Arc::clone(&source);
                    match command {
                        Command::Append { reply, .. } => {
                            let _ = reply.send(Err(SpoolError::Append { path, source }));
                        }
                        Command::Ack { reply, .. } => {
                            let _ = reply.send(Err(SpoolError::Ack { path, source }));
                        }
                        Command::Read { .. } | Command::Close => {}
                    }
                }
            }
        }
    }

    /// The transaction: inserts with ids from `first_id` on, raises the
    /// journal mark to `raise`, then deletes. Returns how many rows the
    /// deletes removed.
    async fn commit(
        &mut self,
        commands: &[Command],
        first_id: i64,
        raise: Option<u64>,
    ) -> Result<u64, sqlx::Error> {
        let mut rows: Vec<&NewRecord> = Vec::new();
        let mut acked: Vec<i64> = Vec::new();
        for command in commands {
            match command {
                Command::Append { records, .. } => rows.extend(records),
                Command::Ack { ids, .. } => acked.extend(ids),
                Command::Read { .. } | Command::Close => {}
            }
        }

        let conn = connection(&mut self.conn, &self.options).await?;
        // One statement is a transaction of its own: one round trip to
        // SQLite's thread instead of three (begin, statement, commit), which
        // is most of the cost of the small batches of a low rate.
        let statements = insert_chunks(&rows).count()
            + usize::from(!acked.is_empty())
            + usize::from(raise.is_some());
        if statements <= 1 {
            if !rows.is_empty() {
                insert(conn, &mut self.insert_sql, &rows, first_id).await?;
            } else if !acked.is_empty() {
                return delete(conn, &acked).await;
            } else if let Some(mark) = raise {
                raise_journal_mark(conn, mark).await?;
            }
            return Ok(0);
        }
        let mut tx = conn.begin().await?;
        let mut id = first_id;
        for chunk in insert_chunks(&rows) {
            insert(&mut tx, &mut self.insert_sql, chunk, id).await?;
            id += chunk.len() as i64;
        }
        if let Some(mark) = raise {
            raise_journal_mark(&mut tx, mark).await?;
        }
        let removed = if acked.is_empty() {
            0
        } else {
            delete(&mut tx, &acked).await?
        };
        tx.commit().await?;
        Ok(removed)
    }

    async fn read(&mut self, from: SpoolCursor, limit: usize) -> Result<SpoolPage, SpoolError> {
        let read_error = |source| SpoolError::Read {
            path: self.path.clone(),
            source,
        };
        let conn = connection(&mut self.conn, &self.options)
            .await
            .map_err(read_error)?;
        // From the start, every row: even one whose id is i64::MIN.
        let (sql, bound) = match from.after {
            None => (READ_FROM_START, i64::MIN),
            Some(after) => (READ_AFTER, after),
        };
        let rows = sqlx::query(sql)
            .bind(bound)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(read_error)?;
        let mut page = SpoolPage {
            records: Vec::with_capacity(rows.len()),
            next: from,
            is_last: rows.len() < limit,
        };
        for row in &rows {
            // The rowid alias is always an integer.
            let id: i64 = row.try_get(0).map_err(read_error)?;
            page.next = SpoolCursor { after: Some(id) };
            match decode(id, row) {
                Ok(record) => page.records.push(record),
                Err(problem) => {
                    tracing::error!(
                        spool = %self.path.display(),
                        id,
                        problem = %problem,
                        "skipping a corrupt spool record"
                    );
                    if self.corrupt_seen.insert(id) {
                        self.counters
                            .corrupt_skipped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(page)
    }
}

/// Raises the receive journal's mark to `mark` (never lowers it).
async fn raise_journal_mark(conn: &mut SqliteConnection, mark: u64) -> Result<(), sqlx::Error> {
    // Sequence numbers count records: far below i64::MAX.
    sqlx::query(RAISE_JOURNAL_MARK)
        .bind(i64::try_from(mark).unwrap_or(i64::MAX))
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts `rows` (at most [`MAX_INSERT_ROWS`]) with ids from `first_id` on,
/// in one statement.
async fn insert(
    conn: &mut SqliteConnection,
    sql: &mut InsertSql,
    rows: &[&NewRecord],
    first_id: i64,
) -> Result<(), sqlx::Error> {
    let mut query = sqlx::query(sql.get(rows.len()));
    // Offsets, not a `first_id..` range: its successor could overflow.
    for (offset, record) in rows.iter().enumerate() {
        query = query
            .bind(first_id + offset as i64)
            .bind(record.received_at_ns)
            .bind(record.sender.as_str())
            .bind(&*record.datagram);
    }
    query.execute(conn).await?;
    Ok(())
}

/// Deletes the rows with these ids, in one statement (the list travels as
/// one JSON array parameter); returns how many there were.
async fn delete(conn: &mut SqliteConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let done = sqlx::query("DELETE FROM spool WHERE id IN (SELECT value FROM json_each(?))")
        .bind(format!("[{list}]"))
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// The writer's connection, opened again if the last transaction failed.
async fn connection<'c>(
    slot: &'c mut Option<SqliteConnection>,
    options: &SqliteConnectOptions,
) -> Result<&'c mut SqliteConnection, sqlx::Error> {
    let conn = match slot.take() {
        Some(conn) => conn,
        None => options.connect().await?,
    };
    Ok(slot.insert(conn))
}

/// A stored row back to a record; the error says which field is wrong.
fn decode(id: i64, row: &SqliteRow) -> Result<SpooledRecord, String> {
    let id = u64::try_from(id)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("id {id} was never handed out (ids start at 1)"))?;
    // Declared NOT NULL, but a file written by another program may hold
    // NULLs, which would otherwise read as 0 or empty.
    let received_at_ns: i64 = row
        .try_get::<Option<i64>, _>(1)
        .map_err(|err| format!("received_at_ns: {err}"))?
        .ok_or("received_at_ns is NULL")?;
    let received_at = time_from_nanos(received_at_ns)
        .ok_or_else(|| format!("received_at_ns {received_at_ns} is out of range"))?;
    let sender: String = row
        .try_get::<Option<String>, _>(2)
        .map_err(|err| format!("sender: {err}"))?
        .ok_or("sender is NULL")?;
    let sender = sender
        .parse()
        .map_err(|err| format!("sender {sender:?}: {err}"))?;
    let datagram: &[u8] = row
        .try_get::<Option<&[u8]>, _>(3)
        .map_err(|err| format!("datagram: {err}"))?
        .ok_or("datagram is NULL")?;
    Ok(SpooledRecord {
        id: SpoolId(id),
        received_at,
        sender,
        datagram: Arc::from(datagram),
    })
}

/// Signed nanoseconds since the Unix epoch, if they fit in an `i64`.
/// A time as nanoseconds since 1970 (`None` beyond ±292 years); the
/// spool's and the receive journal's stored form.
pub(crate) fn nanos_since_epoch(time: SystemTime) -> Option<i64> {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).ok(),
        Err(before) => i64::try_from(before.duration().as_nanos()).ok().map(|n| -n),
    }
}

/// The inverse of [`nanos_since_epoch`].
pub(crate) fn time_from_nanos(nanos: i64) -> Option<SystemTime> {
    let offset = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

/// `rows` cut into multi-row `INSERT`s: slices of [`MAX_INSERT_ROWS`] and
/// the rest in decreasing powers of two, so that few distinct statements
/// are ever prepared. (The spool's own cut: `files-db` cuts its inserts the
/// same way but keeps that helper to itself.)
fn insert_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = MAX_INSERT_ROWS.min(1 << rest.len().checked_ilog2()?);
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command as Process, Stdio};

    fn sender(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 2], port))
    }

    fn at(nanos: i64) -> SystemTime {
        time_from_nanos(nanos).expect("test times are in range")
    }

    fn datagram(n: usize) -> Arc<[u8]> {
        format!(r#"{{"type":"data_file","n":{n}}}"#)
            .into_bytes()
            .into()
    }

    async fn open(dir: &Path) -> Spool {
        Spool::open(dir).await.expect("open the spool")
    }

    async fn pending_ids(spool: &Spool) -> Vec<u64> {
        let records = spool.pending().await.expect("read pending");
        records.iter().map(|r| r.id.0).collect()
    }

    #[test]
    fn inserts_are_cut_in_few_sizes() {
        let sizes = |n: usize| {
            insert_chunks(&vec![0u8; n])
                .map(<[u8]>::len)
                .collect::<Vec<_>>()
        };
        assert!(sizes(0).is_empty());
        assert_eq!(sizes(600), [256, 256, 64, 16, 8]);
        let mut distinct = HashSet::new();
        for n in 0..1200 {
            let chunks = sizes(n);
            assert_eq!(chunks.iter().sum::<usize>(), n);
            distinct.extend(chunks);
        }
        assert_eq!(distinct.len(), 9, "{distinct:?}");
    }

    #[tokio::test]
    async fn append_ack_pending_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        assert_eq!(spool.depth(), 0);
        assert!(spool.pending().await.unwrap().is_empty());

        let big = vec![0xa5; 64_000];
        let v6: SocketAddr = "[fe80::1%3]:8200".parse().unwrap();
        let a = spool.append(sender(1), at(1_700_000_000_123_456_789), datagram(1));
        let a = a.await.unwrap();
        let b = spool.append(v6, at(-5), big.clone()).await.unwrap();
        let c = spool.append(sender(3), at(0), Vec::new()).await.unwrap();
        assert!(a < b && b < c);
        assert_eq!(spool.depth(), 3);

        let records = spool.pending().await.unwrap();
        assert_eq!(
            records,
            vec![
                SpooledRecord {
                    id: a,
                    received_at: at(1_700_000_000_123_456_789),
                    sender: sender(1),
                    datagram: datagram(1),
                },
                SpooledRecord {
                    id: b,
                    received_at: at(-5),
                    sender: v6,
                    datagram: big.into(),
                },
                SpooledRecord {
                    id: c,
                    received_at: at(0),
                    sender: sender(3),
                    datagram: Arc::from([]),
                },
            ]
        );

        // Unknown ids (never handed out, beyond i64, already gone) are ignored.
        spool
            .ack(&[b, SpoolId(c.0 + 100), SpoolId(u64::MAX), b])
            .await
            .unwrap();
        spool.ack(&[b]).await.unwrap();
        spool.ack(&[]).await.unwrap();
        assert_eq!(spool.depth(), 2);
        assert_eq!(pending_ids(&spool).await, vec![a.0, c.0]);

        let many = spool
            .append_many(
                (10..15)
                    .map(|n| (sender(n), at(n.into()), datagram(n.into())))
                    .collect(),
            )
            .await
            .unwrap();
        assert_eq!(many.len(), 5);
        assert!(many.windows(2).all(|w| w[1].0 == w[0].0 + 1), "{many:?}");
        assert!(many[0] > c);
        assert!(spool.append_many(Vec::new()).await.unwrap().is_empty());
        assert_eq!(spool.depth(), 7);
        spool.close().await;
    }

    #[tokio::test]
    async fn first_id_of_this_run_divides_earlier_records_from_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        let earlier = spool.append(sender(1), at(0), datagram(1)).await.unwrap();
        assert!(spool.first_id_of_this_run() <= earlier);
        spool.close().await;
        let spool = open(dir.path()).await;
        let now = spool.append(sender(2), at(0), datagram(2)).await.unwrap();
        assert!(earlier < spool.first_id_of_this_run());
        assert_eq!(spool.first_id_of_this_run(), now);
        // Past the largest id there is nothing, and that page is the last.
        let from = SpoolCursor::from_id(SpoolId(now.0 + 1));
        let page = spool.read_page(from, 10).await.unwrap();
        assert_eq!(
            page,
            SpoolPage {
                records: vec![],
                next: from,
                is_last: true
            }
        );
        spool.close().await;
    }

    #[tokio::test]
    async fn ids_are_monotonic_across_reopen_even_when_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for round in 0..3 {
            let spool = open(dir.path()).await;
            let ids = spool
                .append_many(
                    (0..300)
                        .map(|n| (sender(n), at(0), datagram(n.into())))
                        .collect(),
                )
                .await
                .unwrap();
            let single = spool.append(sender(9), at(0), datagram(9)).await.unwrap();
            assert!(ids[0].0 > last, "round {round}: {} after {last}", ids[0]);
            assert!(single > ids[299]);
            last = single.0;
            // Everything acknowledged: an empty table must not restart the ids.
            let mut all = ids;
            all.push(single);
            spool.ack(&all).await.unwrap();
            assert_eq!(spool.depth(), 0);
            spool.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn depth_is_exact_under_concurrent_appends_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        let mut tasks = Vec::new();
        for task in 0..8u16 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let mut kept = Vec::new();
                for n in 0..250u16 {
                    let id = spool.append(sender(task), at(0), datagram(n.into())).await;
                    let id = id.unwrap();
                    // This task's own unacknowledged records are all counted.
                    assert!(spool.depth() > kept.len() as u64);
                    if n % 2 == 0 {
                        spool.ack(&[id]).await.unwrap();
                    } else {
                        kept.push(id);
                    }
                    assert!(spool.depth() >= kept.len() as u64);
                }
                kept
            }));
        }
        let mut kept = Vec::new();
        for task in tasks {
            kept.extend(task.await.unwrap());
        }
        kept.sort();
        assert_eq!(spool.depth(), 8 * 125);
        assert_eq!(spool.depth(), kept.len() as u64);
        let pending: Vec<SpoolId> = spool
            .pending()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(pending, kept);
        spool.close().await;

        let spool = open(dir.path()).await;
        assert_eq!(spool.depth(), 8 * 125);
        spool.close().await;
    }

    #[tokio::test]
    async fn acked_records_never_come_back_and_the_rest_do_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        let ids = spool
            .append_many(
                (0..1000)
                    .map(|n| (sender(n), at(n.into()), datagram(n.into())))
                    .collect(),
            )
            .await
            .unwrap();
        let (acked, kept): (Vec<SpoolId>, Vec<SpoolId>) = ids.iter().partition(|id| id.0 % 3 != 0);
        spool.ack(&acked).await.unwrap();
        // Not closed: the file is left as a killed process leaves it.
        drop(spool);
        tokio::task::yield_now().await;

        let spool = open(dir.path()).await;
        assert_eq!(spool.depth(), kept.len() as u64);
        let records = spool.pending().await.unwrap();
        let got: Vec<SpoolId> = records.iter().map(|r| r.id).collect();
        assert_eq!(got, kept);
        for record in &records {
            let n = u16::try_from(ids.iter().position(|id| *id == record.id).unwrap()).unwrap();
            assert_eq!(record.sender, sender(n));
            assert_eq!(record.received_at, at(n.into()));
            assert_eq!(record.datagram, datagram(n.into()));
        }
        spool.close().await;
    }

    #[tokio::test]
    async fn closed_spool_finishes_queued_writes_and_rejects_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        let appends: Vec<_> = (0..50u16)
            .map(|n| {
                let spool = spool.clone();
                tokio::spawn(
                    async move { spool.append(sender(n), at(0), datagram(n.into())).await },
                )
            })
            .collect();
        tokio::task::yield_now().await;
        spool.close().await;
        spool.close().await;
        let mut stored = 0;
        for append in appends {
            match append.await.unwrap() {
                Ok(_) => stored += 1,
                Err(SpoolError::Closed { operation, .. }) => assert_eq!(operation, "append to"),
                Err(other) => panic!("unexpected {other}"),
            }
        }
        let err = spool
            .append(sender(1), at(0), datagram(1))
            .await
            .unwrap_err();
        assert!(matches!(err, SpoolError::Closed { .. }), "{err}");
        assert!(err.to_string().contains("spool.db"), "{err}");
        assert!(matches!(
            spool.pending().await,
            Err(SpoolError::Closed { .. })
        ));

        let spool = open(dir.path()).await;
        assert_eq!(spool.pending().await.unwrap().len(), stored);
        spool.close().await;
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_spool_fails() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).await;
        let second = Spool::open_with(dir.path(), |options| {
            options.busy_timeout(Duration::from_millis(100))
        })
        .await;
        let err = second.expect_err("the file is locked by the first spool");
        assert!(matches!(err, SpoolError::Open { .. }), "{err}");
        // The first one is unaffected.
        first.append(sender(1), at(0), datagram(1)).await.unwrap();
        first.close().await;
        let again = open(dir.path()).await;
        assert_eq!(again.depth(), 1);
        again.close().await;
    }

    #[tokio::test]
    async fn times_beyond_292_years_are_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        let far = UNIX_EPOCH + Duration::from_secs(300 * 366 * 86_400);
        let err = spool.append(sender(1), far, datagram(1)).await.unwrap_err();
        assert!(matches!(err, SpoolError::TimeOutOfRange { .. }), "{err}");
        let batch = vec![
            (sender(1), at(0), datagram(1)),
            (sender(2), far, datagram(2)),
        ];
        assert!(spool.append_many(batch).await.is_err());
        assert_eq!(spool.depth(), 0);
        spool.close().await;
    }

    #[tokio::test]
    async fn corrupt_rows_are_skipped_and_the_others_replay() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        let good = spool
            .append_many(
                (0..4)
                    .map(|n| (sender(n), at(n.into()), datagram(n.into())))
                    .collect(),
            )
            .await
            .unwrap();
        spool.close().await;

        let path = dir.path().join(FILE_NAME);
        let mut raw = connect_options(&path, LOCK_WAIT).connect().await.unwrap();
        let next = good[3].0 as i64;
        for (id, time, sender, datagram) in [
            (i64::MIN, "1", "127.0.0.2:1", "never handed out"),
            (0, "1", "127.0.0.2:1", "never handed out"),
            (next + 1, "1", "not an address", "x"),
            (next + 2, "yesterday", "127.0.0.2:1", "x"),
            (next + 3, "1", "127.0.0.2:1", "valid"),
        ] {
            // Column affinity stores a non-numeric text as text.
            sqlx::query(
                "INSERT INTO spool (id, received_at_ns, sender, datagram) VALUES (?,?,?,?)",
            )
            .bind(id)
            .bind(time)
            .bind(sender)
            .bind(datagram.as_bytes())
            .execute(&mut raw)
            .await
            .unwrap();
        }
        sqlx::query("UPDATE spool SET sender = X'FF00' WHERE id = ?")
            .bind(good[1].0 as i64)
            .execute(&mut raw)
            .await
            .unwrap();
        raw.close().await.unwrap();

        let spool = open(dir.path()).await;
        assert_eq!(spool.depth(), 9);
        let ids = pending_ids(&spool).await;
        assert_eq!(ids, vec![good[0].0, good[2].0, good[3].0, good[3].0 + 3]);
        assert_eq!(spool.corrupt_records_skipped(), 5);
        // Skipping again does not count the same records twice.
        assert_eq!(pending_ids(&spool).await.len(), 4);
        assert_eq!(spool.corrupt_records_skipped(), 5);
        // Pages of two: a page of corrupt records is empty but still moves
        // the reader past them.
        let mut pages = Vec::new();
        let mut from = SpoolCursor::START;
        loop {
            let page = spool.read_page(from, 2).await.unwrap();
            let ids: Vec<u64> = page.records.iter().map(|r| r.id.0).collect();
            pages.push((ids, page.next, page.is_last));
            if page.is_last {
                break;
            }
            from = page.next;
        }
        let n = next as u64;
        let past = |id: u64| SpoolCursor::from_id(SpoolId(id + 1));
        assert_eq!(
            pages,
            vec![
                (vec![], past(0), false),
                (vec![good[0].0], past(good[1].0), false),
                (vec![good[2].0, good[3].0], past(n), false),
                (vec![], past(n + 2), false),
                (vec![n + 3], past(n + 3), true),
            ]
        );
        // A corrupt record goes away when acknowledged by id.
        spool.ack(&[SpoolId(next as u64 + 1)]).await.unwrap();
        assert_eq!(spool.depth(), 8);
        spool.close().await;
    }

    #[tokio::test]
    async fn disk_full_is_an_error_and_the_spool_recovers_when_space_is_freed() {
        let dir = tempfile::tempdir().unwrap();
        // 4 KiB pages: a 256 KiB database stands for a full disk.
        let spool = Spool::open_with(dir.path(), |options| options.pragma("max_page_count", "64"))
            .await
            .unwrap();
        let big = vec![7; 30_000];
        let mut stored = Vec::new();
        let err = loop {
            match spool.append(sender(1), at(0), big.clone()).await {
                Ok(id) => stored.push(id),
                Err(err) => break err,
            }
            assert!(stored.len() < 100, "the size limit is not enforced");
        };
        assert!(matches!(err, SpoolError::Append { .. }), "{err}");
        assert!(err.to_string().contains("spool.db"), "{err}");
        assert_eq!(spool.depth(), stored.len() as u64);
        // A batch fails as a whole.
        let batch = vec![(sender(2), at(0), Arc::from(big.as_slice())); 3];
        assert!(spool.append_many(batch).await.is_err());
        assert_eq!(spool.depth(), stored.len() as u64);

        // Acks still work on a full file, and free room for new appends.
        spool.ack(&stored[..3]).await.unwrap();
        let id = spool.append(sender(3), at(0), big.clone()).await.unwrap();
        assert!(id > *stored.last().unwrap());
        let mut expected: Vec<SpoolId> = stored[3..].to_vec();
        expected.push(id);
        let pending: Vec<SpoolId> = spool
            .pending()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(pending, expected);
        assert_eq!(spool.depth(), expected.len() as u64);
        spool.close().await;
    }

    /// Set (to a spool directory) for the child of `kill_9_loses_nothing_acknowledged`.
    const KILL_CHILD_ENV: &str = "MONITOR_CORE_SPOOL_KILL_CHILD";

    /// Not a test on its own: without [`KILL_CHILD_ENV`] it returns at once.
    /// With it, it appends (and acknowledges every third record) from four
    /// tasks until killed, writing `appended <id> .` after each append and
    /// `acked <id> .` after each ack to the real stdout.
    #[test]
    fn kill_child_appends_until_killed() {
        let Some(dir) = std::env::var_os(KILL_CHILD_ENV) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let spool = open(Path::new(&dir)).await;
            let tasks: Vec<_> = (0..4u16)
                .map(|task| {
                    let spool = spool.clone();
                    tokio::spawn(async move {
                        // Bounded in case the parent dies without killing us.
                        for n in 0..1_000_000u32 {
                            let id = spool
                                .append(sender(task), SystemTime::now(), datagram(n as usize))
                                .await
                                .unwrap();
                            // One write per line: whole lines reach the pipe.
                            let line = format!("appended {id} .\n");
                            if std::io::stdout().write_all(line.as_bytes()).is_err() {
                                return;
                            }
                            if id.0 % 3 == 0 {
                                spool.ack(&[id]).await.unwrap();
                                let line = format!("acked {id} .\n");
                                if std::io::stdout().write_all(line.as_bytes()).is_err() {
                                    return;
                                }
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
    }

    #[test]
    fn kill_9_loses_nothing_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "spool::tests::kill_child_appends_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });

        let mut appended = HashSet::new();
        let mut acked = HashSet::new();
        let mut record = |line: String, appended: &mut HashSet<u64>| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["appended", id, "."] => assert!(appended.insert(id.parse().unwrap())),
                ["acked", id, "."] => assert!(acked.insert(id.parse::<u64>().unwrap())),
                _ => {} // libtest's own output
            }
        };
        let mut killed = false;
        while !killed {
            let line = received
                .recv_timeout(Duration::from_secs(60))
                .expect("the child keeps appending");
            record(line, &mut appended);
            if appended.len() >= 2000 {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        child.wait().unwrap();
        // What the child wrote before it died is still in the pipe.
        for line in received.iter() {
            record(line, &mut appended);
        }
        reader.join().unwrap();
        assert!(appended.len() >= 2000);
        assert!(!acked.is_empty());

        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let spool = open(dir.path()).await;
            let pending = pending_ids(&spool).await;
            assert!(pending.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(spool.depth(), pending.len() as u64);
            let pending: HashSet<u64> = pending.into_iter().collect();
            for id in &appended {
                if acked.contains(id) {
                    assert!(!pending.contains(id), "acked {id} came back");
                } else if id % 3 != 0 {
                    assert!(pending.contains(id), "appended {id} was lost");
                }
                // else: killed between its ack and the report of it; either
                // state is right.
            }
            let never_acked = appended.iter().filter(|id| *id % 3 != 0).count();
            assert!(never_acked >= 1000, "{never_acked}");
            // And new ids continue after everything the child handed out.
            let max = appended.iter().max().copied().unwrap_or(0);
            let next = spool.append(sender(1), at(0), datagram(1)).await.unwrap();
            assert!(next.0 > max);
            spool.close().await;
        });
    }

    fn any_record() -> impl Strategy<Value = (SocketAddr, i64, Vec<u8>)> {
        (
            any::<SocketAddr>(),
            any::<i64>().prop_filter("i64::MIN has no positive twin", |n| *n != i64::MIN),
            prop::collection::vec(any::<u8>(), 0..2048),
        )
    }

    /// The flow label is not stored (see [`SpooledRecord::sender`]).
    fn stored_sender(mut sender: SocketAddr) -> SocketAddr {
        if let SocketAddr::V6(v6) = &mut sender {
            v6.set_flowinfo(0);
        }
        sender
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn arbitrary_records_round_trip(records in prop::collection::vec(any_record(), 1..12)) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let spool = open(dir.path()).await;
                let (first, rest) = records.split_first().unwrap();
                let mut ids = vec![spool.append(first.0, at(first.1), first.2.clone()).await.unwrap()];
                let batch = rest.iter().map(|(s, t, d)| (*s, at(*t), d.as_slice().into())).collect();
                ids.extend(spool.append_many(batch).await.unwrap());
                spool.close().await;

                let spool = open(dir.path()).await;
                let pending = spool.pending().await.unwrap();
                let expected: Vec<SpooledRecord> = ids
                    .iter()
                    .zip(&records)
                    .map(|(id, (s, t, d))| SpooledRecord {
                        id: *id,
                        received_at: at(*t),
                        sender: stored_sender(*s),
                        datagram: d.as_slice().into(),
                    })
                    .collect();
                assert_eq!(pending, expected);
                spool.close().await;
            });
        }
    }

    /// The receive journal's mark moves with the appends that cover it,
    /// never down, also with no record, and survives a reopen; a failed
    /// append leaves it.
    #[tokio::test]
    async fn the_journal_mark_is_committed_with_its_append() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path()).await;
        assert_eq!(spool.journal_mark(), 0);
        let record = |n| (sender(1), at(0), datagram(n));
        spool
            .append_covering(vec![record(1), record(2)], 40)
            .await
            .unwrap();
        assert_eq!(spool.journal_mark(), 40);
        spool.append_covering(vec![record(3)], 7).await.unwrap();
        assert_eq!(spool.journal_mark(), 40, "never lowered");
        spool.append_covering(Vec::new(), 41).await.unwrap();
        assert_eq!(spool.journal_mark(), 41);
        spool.append_many(vec![record(4)]).await.unwrap();
        spool.close().await;

        let spool = open(dir.path()).await;
        assert_eq!(spool.journal_mark(), 41);
        assert_eq!(spool.depth(), 4);
        spool.close().await;
        let limited = Spool::open_with(dir.path(), |o| o.pragma("max_page_count", "1"))
            .await
            .unwrap();
        let big = Arc::<[u8]>::from(vec![1u8; 100_000]);
        assert!(limited
            .append_covering(vec![(sender(1), at(0), big)], 99)
            .await
            .is_err());
        assert_eq!(limited.journal_mark(), 41);
        limited.close().await;
        assert_eq!(open(dir.path()).await.journal_mark(), 41);
    }
}
