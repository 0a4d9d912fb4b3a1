//! The spool's reader against corrupt records.
//!
//! Each run appends some valid records to a fresh spool through its public API, closes it,
//! then edits the SQLite file behind its back: values of the wrong type, NULLs (after
//! rebuilding the table without its `NOT NULL` and type declarations, as an old or foreign
//! writer might have left it), garbage senders, text that is not UTF-8, truncated datagrams,
//! odd ids (0, negative, near `i64::MAX`), deleted rows, a moved `sqlite_sequence`. It then
//! reopens the spool and reads every pending record, and checks:
//!
//! - nothing panics and the read succeeds;
//! - what is returned is exactly the rows a strict reading of the file decodes (see
//!   [`expected_record`]), in id order;
//! - every record the edits did not touch comes back unchanged;
//! - every row not returned is counted in `corrupt_records_skipped`, once, and `depth` counts
//!   all rows;
//! - afterwards a new append gets an id above every id in the file and reads back, and
//!   acknowledging every returned and skipped id empties the spool, except rows with negative
//!   ids, which no `SpoolId` can name.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use monitor_core::{Spool, SpoolError, SpoolId, SpooledRecord};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

// --- The spool API this target uses, all here, to adapt when it changes. ---

/// The spool's file inside its directory.
const SPOOL_FILE: &str = "spool.db";

/// Opens the spool in `dir`.
async fn open(dir: &Path) -> Spool {
    Spool::open(dir).await.expect("the spool opens")
}

/// Appends `records` in one transaction.
async fn append(
    spool: &Spool,
    records: Vec<(SocketAddr, SystemTime, Vec<u8>)>,
) -> Result<Vec<SpoolId>, SpoolError> {
    let records = records
        .into_iter()
        .map(|(sender, at, datagram)| (sender, at, datagram.into()))
        .collect();
    spool.append_many(records).await
}

/// Every pending record, oldest first; corrupt ones are skipped and counted.
async fn read_all(spool: &Spool) -> Result<Vec<SpooledRecord>, SpoolError> {
    spool.pending().await
}

/// Distinct corrupt records skipped so far, and the spool's depth.
fn counters(spool: &Spool) -> (u64, u64) {
    (spool.corrupt_records_skipped(), spool.depth())
}

async fn ack(spool: &Spool, ids: &[SpoolId]) -> Result<(), SpoolError> {
    spool.ack(ids).await
}

async fn close(spool: Spool) {
    spool.close().await;
}

// --- Input ---

/// Most valid records and edits per run: enough to mix corrupt and valid rows, few enough
/// for hundreds of runs a second.
const MAX_RECORDS: usize = 12;
const MAX_EDITS: usize = 12;

#[derive(Arbitrary, Debug)]
struct Input {
    records: Vec<Record>,
    /// Rebuild the table without types and `NOT NULL` before editing.
    loose_schema: bool,
    edits: Vec<Edit>,
    /// What to append after the first read.
    append_after: Record,
}

#[derive(Arbitrary, Debug, Clone)]
struct Record {
    sender: SocketAddr,
    nanos: i64,
    datagram: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    /// Sets one column of the `row`-th row (by id order, modulo the row count).
    Set {
        row: u8,
        column: Column,
        value: Cell,
    },
    /// Keeps the first `len` bytes of a row's datagram (still a valid record).
    Truncate {
        row: u8,
        len: u16,
    },
    /// Inserts a row of its own.
    Insert {
        id: RawId,
        received_at_ns: Cell,
        sender: Cell,
        datagram: Cell,
    },
    Delete {
        row: u8,
    },
    /// Moves AUTOINCREMENT's high-water mark.
    Sequence(RawId),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Column {
    Id,
    ReceivedAtNs,
    Sender,
    Datagram,
    Replays,
}

#[derive(Arbitrary, Debug)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    /// Bytes stored as TEXT, UTF-8 or not.
    TextBytes(Vec<u8>),
    /// A well-formed sender.
    Sender(SocketAddr),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RawId {
    AfterLast(u8),
    Zero,
    Negative(u8),
    Min,
    MaxMinus(u8),
    Exact(i64),
}

fuzz_target!(|input: Input| {
    runtime().block_on(run(input));
});

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("spool-fuzz-")
        .tempdir_in(shm);
    match builder {
        Ok(dir) if shm.is_dir() => dir,
        _ => tempfile::tempdir().expect("a temporary directory"),
    }
}

fn time_from_nanos(nanos: i64) -> SystemTime {
    let offset = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + offset
    } else {
        UNIX_EPOCH - offset
    }
}

/// What the spool stores of a sender: the text form, which has no IPv6 flow label.
fn stored_sender(mut sender: SocketAddr) -> SocketAddr {
    if let SocketAddr::V6(v6) = &mut sender {
        v6.set_flowinfo(0);
    }
    sender
}

impl Record {
    fn to_append(&self) -> (SocketAddr, SystemTime, Vec<u8>) {
        // i64::MIN nanoseconds has no positive twin and is refused by `append`.
        let nanos = self.nanos.max(i64::MIN + 1);
        (self.sender, time_from_nanos(nanos), self.datagram.clone())
    }
}

async fn run(mut input: Input) {
    input.records.truncate(MAX_RECORDS);
    input.edits.truncate(MAX_EDITS);
    let dir = scratch_dir();

    // Valid records through the API.
    let spool = open(dir.path()).await;
    let batch: Vec<_> = input.records.iter().map(Record::to_append).collect();
    let ids = append(&spool, batch.clone())
        .await
        .expect("valid records append");
    assert_eq!(ids.len(), batch.len());
    close(spool).await;
    let originals: Vec<(i64, SpooledRecord)> = ids
        .iter()
        .zip(batch)
        .map(|(id, (sender, received_at, datagram))| {
            let record = SpooledRecord {
                id: *id,
                received_at,
                sender: stored_sender(sender),
                datagram: datagram.into(),
            };
            (i64::try_from(id.get()).expect("ids fit in i64"), record)
        })
        .collect();

    // Corruption behind the spool's back.
    let path = dir.path().join(SPOOL_FILE);
    let mut raw = SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .expect("the spool file opens");
    if input.loose_schema {
        loosen_schema(&mut raw).await;
    }
    let mut touched = BTreeSet::new();
    for edit in &input.edits {
        apply(&mut raw, edit, &mut touched).await;
    }
    let rows = raw_rows(&mut raw).await;
    let high_water: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'spool'",
    )
    .fetch_one(&mut raw)
    .await
    .unwrap_or(0);
    raw.close().await.expect("the raw connection closes");

    // Read back.
    let spool = open(dir.path()).await;
    let read = read_all(&spool)
        .await
        .expect("corrupt rows do not fail the read");
    let expected: Vec<SpooledRecord> = rows.iter().filter_map(expected_record).collect();
    assert_eq!(read, expected, "rows: {rows:#?}");
    assert!(read.windows(2).all(|w| w[0].id < w[1].id));
    for (id, original) in &originals {
        if !touched.contains(id) {
            assert!(read.contains(original), "untouched record {id} lost");
        }
    }
    let skipped = (rows.len() - read.len()) as u64;
    assert_eq!(
        counters(&spool),
        (skipped, rows.len() as u64),
        "rows: {rows:#?}"
    );
    // A second read skips the same records without counting them again.
    assert_eq!(read_all(&spool).await.expect("second read"), read);
    assert_eq!(counters(&spool), (skipped, rows.len() as u64));

    // New ids continue above everything in the file.
    let max_id = rows
        .iter()
        .map(|row| row.id)
        .max()
        .unwrap_or(0)
        .max(high_water);
    let record = input.append_after.to_append();
    match append(&spool, vec![record.clone()]).await {
        Ok(new) => {
            assert_eq!(new.len(), 1);
            let new_id = i64::try_from(new[0].get()).expect("new id fits in i64");
            assert!(new_id > max_id, "new id {new_id} not above {max_id}");
            let again = read_all(&spool).await.expect("read after append");
            let last = again.last().expect("the new record is pending");
            assert_eq!(last.id, new[0]);
            assert_eq!(*last.datagram, *record.2);
        }
        // Only when the ids are used up (i64::MAX itself is never handed out).
        Err(err) => assert!(max_id >= i64::MAX - 1, "append failed: {err}"),
    }

    // Acknowledging every id empties the spool but for ids no `SpoolId` can name.
    let all: Vec<SpoolId> = read_all(&spool)
        .await
        .expect("read before ack")
        .iter()
        .map(|record| record.id)
        .chain(
            rows.iter()
                .filter_map(|row| u64::try_from(row.id).ok().map(SpoolId::new)),
        )
        .collect();
    ack(&spool, &all).await.expect("ack");
    let unnameable = rows.iter().filter(|row| row.id < 0).count() as u64;
    assert_eq!(counters(&spool).1, unnameable);
    assert!(read_all(&spool).await.expect("read after ack").is_empty());
    close(spool).await;
}

async fn loosen_schema(raw: &mut SqliteConnection) {
    let mut tx = raw.begin().await.expect("begin");
    for sql in [
        "CREATE TABLE spool_loose (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at_ns, \
         sender, datagram, replays DEFAULT 0)",
        "INSERT INTO spool_loose SELECT id, received_at_ns, sender, datagram, replays FROM spool",
        "DROP TABLE spool",
        "ALTER TABLE spool_loose RENAME TO spool",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.expect(sql);
    }
    tx.commit().await.expect("commit");
}

/// The id of the `row`-th row in id order, if there are rows.
async fn nth_id(raw: &mut SqliteConnection, row: u8) -> Option<i64> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM spool")
        .fetch_one(&mut *raw)
        .await
        .expect("count");
    if count == 0 {
        return None;
    }
    sqlx::query_scalar("SELECT id FROM spool ORDER BY id LIMIT 1 OFFSET ?")
        .bind(i64::from(row) % count)
        .fetch_one(&mut *raw)
        .await
        .ok()
}

async fn raw_id(raw: &mut SqliteConnection, id: RawId) -> i64 {
    match id {
        RawId::AfterLast(n) => {
            let max: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM spool")
                .fetch_one(&mut *raw)
                .await
                .expect("max id");
            max.saturating_add(1 + i64::from(n))
        }
        RawId::Zero => 0,
        RawId::Negative(n) => -1 - i64::from(n),
        RawId::Min => i64::MIN,
        RawId::MaxMinus(n) => i64::MAX - i64::from(n),
        RawId::Exact(id) => id,
    }
}

/// `?` for a cell: the SQL expression and its parameter.
fn bind_cell<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    cell: &'q Cell,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    match cell {
        Cell::Null => query.bind(None::<i64>),
        Cell::Int(n) => query.bind(*n),
        Cell::Real(x) => query.bind(*x),
        Cell::Text(s) => query.bind(s.as_str()),
        Cell::Blob(b) | Cell::TextBytes(b) => query.bind(b.as_slice()),
        Cell::Sender(s) => query.bind(s.to_string()),
    }
}

fn cell_sql(cell: &Cell) -> &'static str {
    match cell {
        Cell::TextBytes(_) => "CAST(? AS TEXT)",
        _ => "?",
    }
}

/// Applies one edit; edits SQLite refuses (a duplicate id, a non-integer id) are no-ops.
async fn apply(raw: &mut SqliteConnection, edit: &Edit, touched: &mut BTreeSet<i64>) {
    match edit {
        Edit::Set { row, column, value } => {
            let Some(id) = nth_id(raw, *row).await else {
                return;
            };
            let name = match column {
                Column::Id => "id",
                Column::ReceivedAtNs => "received_at_ns",
                Column::Sender => "sender",
                Column::Datagram => "datagram",
                Column::Replays => "replays",
            };
            let sql = format!("UPDATE spool SET {name} = {} WHERE id = ?", cell_sql(value));
            let done = bind_cell(sqlx::query(&sql), value)
                .bind(id)
                .execute(&mut *raw)
                .await;
            // `replays` is not read: a record edited only there is still untouched.
            if done.is_ok() && *column != Column::Replays {
                touched.insert(id);
            }
        }
        Edit::Truncate { row, len } => {
            let Some(id) = nth_id(raw, *row).await else {
                return;
            };
            // substr() of a BLOB counts bytes.
            let done = sqlx::query(
                "UPDATE spool SET datagram = substr(CAST(datagram AS BLOB), 1, ?) WHERE id = ?",
            )
            .bind(i64::from(*len))
            .bind(id)
            .execute(&mut *raw)
            .await;
            if done.is_ok() {
                touched.insert(id);
            }
        }
        Edit::Insert {
            id,
            received_at_ns,
            sender,
            datagram,
        } => {
            let id = raw_id(raw, *id).await;
            let sql = format!(
                "INSERT INTO spool (id, received_at_ns, sender, datagram) VALUES (?, {}, {}, {})",
                cell_sql(received_at_ns),
                cell_sql(sender),
                cell_sql(datagram)
            );
            let query = sqlx::query(&sql).bind(id);
            let query = bind_cell(query, received_at_ns);
            let query = bind_cell(query, sender);
            let query = bind_cell(query, datagram);
            // NOT NULL (strict schema) and duplicate ids refuse the row.
            let _ = query.execute(&mut *raw).await;
        }
        Edit::Delete { row } => {
            if let Some(id) = nth_id(raw, *row).await {
                sqlx::query("DELETE FROM spool WHERE id = ?")
                    .bind(id)
                    .execute(&mut *raw)
                    .await
                    .expect("delete");
                touched.insert(id);
            }
        }
        Edit::Sequence(id) => {
            let id = raw_id(raw, *id).await;
            sqlx::query("UPDATE sqlite_sequence SET seq = ? WHERE name = 'spool'")
                .bind(id)
                .execute(&mut *raw)
                .await
                .expect("set the sequence");
        }
    }
}

/// A row as SQLite stores it: each column's storage class and bytes.
#[derive(Debug)]
struct RawRow {
    id: i64,
    received_at_ns: (String, Option<i64>),
    sender: (String, Option<Vec<u8>>),
    datagram: (String, Option<Vec<u8>>),
}

async fn raw_rows(raw: &mut SqliteConnection) -> Vec<RawRow> {
    let rows = sqlx::query(
        "SELECT id, \
         typeof(received_at_ns), \
         CASE WHEN typeof(received_at_ns) = 'integer' THEN received_at_ns END, \
         typeof(sender), CAST(sender AS BLOB), \
         typeof(datagram), CAST(datagram AS BLOB) \
         FROM spool ORDER BY id",
    )
    .fetch_all(&mut *raw)
    .await
    .expect("read the raw rows");
    rows.iter()
        .map(|row| RawRow {
            id: row.get(0),
            received_at_ns: (row.get(1), row.get(2)),
            sender: (row.get(3), row.get(4)),
            datagram: (row.get(5), row.get(6)),
        })
        .collect()
}

/// The record a row holds, read strictly: a positive id, an integer receive time, a
/// TEXT sender that parses as a socket address and a BLOB (or TEXT) datagram. Anything else
/// (NULL included) is corrupt and must be skipped.
fn expected_record(row: &RawRow) -> Option<SpooledRecord> {
    let id = u64::try_from(row.id).ok().filter(|id| *id > 0)?;
    let nanos = match &row.received_at_ns {
        (class, Some(nanos)) if class == "integer" => *nanos,
        _ => return None,
    };
    let sender = match &row.sender {
        (class, Some(bytes)) if class == "text" => std::str::from_utf8(bytes).ok()?.parse().ok()?,
        _ => return None,
    };
    let datagram = match &row.datagram {
        (class, Some(bytes)) if class == "blob" || class == "text" => bytes.clone(),
        _ => return None,
    };
    Some(SpooledRecord {
        id: SpoolId::new(id),
        received_at: time_from_nanos(nanos),
        sender,
        datagram: datagram.into(),
    })
}
