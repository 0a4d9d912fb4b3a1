//! The receive journal: every datagram the receiver admits is appended here,
//! one `write` per received batch, before it is handed on, so that a
//! `kill -9` loses at most the batch being read (≤ 64 datagrams) instead of
//! everything between the socket and the spool.
//!
//! What it owns: the directory `<spool-dir>/journal/`, its segment files and
//! their record format. It does not decide what is replayed (the spool keeps
//! the highest sequence number it covers, [`crate::Spool::journal_mark`]),
//! never parses datagrams and never fsyncs: a record is in the page cache
//! when [`JournalWriter::append`] returns, which survives the death of the
//! process (not a power loss, as the spool's `synchronous=NORMAL`).
//!
//! Format: segment files named `<first sequence, 20 digits>.journal`, each a
//! run of records
//!
//! ```text
//! magic u32 "PSJ1" | body length u32 | CRC-32C of the body u32 |
//! body: sequence u64 | received_at ns since 1970 i64 | sender | datagram bytes
//! sender: 4, IPv4 (4 bytes), port u16 | 6, IPv6 (16 bytes), port u16, scope id u32
//! ```
//!
//! (integers little-endian). Sequence numbers start at 1 and grow by one per
//! record across segments and restarts (a failed write leaves a gap, never a
//! reuse). A record whose magic, length or checksum does not hold ends the
//! segment for the reader: a write torn by a kill, or a corrupt tail, is
//! ignored, never replayed half. Each run of the writer starts a new segment,
//! so nothing is ever appended after a torn record; a segment is closed
//! after [`SEGMENT_BYTES`] and deleted once the spool covers its last record.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::spool::{nanos_since_epoch, time_from_nanos};

/// A segment is closed once it holds this many bytes (a batch may go past).
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;

/// The journal's directory inside the spool directory.
pub(crate) const DIR_NAME: &str = "journal";

const SUFFIX: &str = ".journal";
const MAGIC: [u8; 4] = *b"PSJ1";
/// Magic, body length, checksum.
const HEADER: usize = 12;
/// Sequence number and receive time.
const FIXED_BODY: usize = 16;
/// CRC-32C, slice-by-16 (about 8 times the speed of the byte-wise table:
/// the receiver computes it over every datagram).
static CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// Why the journal could not be written or read; each names the file or
/// directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum JournalError {
    /// The journal directory could not be created or listed.
    #[error("cannot use the journal directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A segment could not be created or written (disk full, I/O error).
    #[error("cannot write the journal segment {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A segment could not be read.
    #[error("cannot read the journal segment {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One journal record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalRecord {
    pub(crate) seq: u64,
    pub(crate) received_at: SystemTime,
    pub(crate) sender: SocketAddr,
    pub(crate) datagram: Arc<[u8]>,
}

/// A segment file: its first sequence number and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
}

/// What [`read_segment`] found.
#[derive(Debug, Default)]
pub(crate) struct SegmentContents {
    /// The records above the asked sequence, in order.
    pub(crate) records: Vec<JournalRecord>,
    /// The highest sequence number of the segment's whole records.
    pub(crate) last_seq: Option<u64>,
    /// Where a torn or corrupt record ended the segment (its offset).
    pub(crate) torn_at: Option<u64>,
}

/// The segments in `dir` (created if missing), oldest first. Files that
/// are not segments are left alone.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<Segment>, JournalError> {
    let dir_error = |source| JournalError::Dir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_error)? {
        let entry = entry.map_err(dir_error)?;
        let name = entry.file_name();
        let Some(first_seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        segments.push(Segment {
            first_seq,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Reads a segment's records with sequence numbers above `above`; stops at
/// the first torn or corrupt record (see the module documentation).
pub(crate) fn read_segment(path: &Path, above: u64) -> Result<SegmentContents, JournalError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut contents = SegmentContents::default();
    let mut offset = 0;
    while offset < bytes.len() {
        let Some((record, len)) = decode(&bytes[offset..]) else {
            contents.torn_at = Some(offset as u64);
            break;
        };
        contents.last_seq = Some(record.seq);
        if record.seq > above {
            contents.records.push(record);
        }
        offset += len;
    }
    Ok(contents)
}

/// One record from the start of `bytes` and its length, if whole and intact.
fn decode(bytes: &[u8]) -> Option<(JournalRecord, usize)> {
    let header = bytes.get(..HEADER)?;
    if header[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let body = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    if CRC.checksum(body) != crc || body.len() < FIXED_BODY {
        return None;
    }
    let seq = u64::from_le_bytes(body[..8].try_into().ok()?);
    let received_at = time_from_nanos(i64::from_le_bytes(body[8..16].try_into().ok()?))?;
    let (sender, datagram) = decode_sender(&body[FIXED_BODY..])?;
    Some((
        JournalRecord {
            seq,
            received_at,
            sender,
            datagram: Arc::from(datagram),
        },
        HEADER + len,
    ))
}

fn encode_sender(buffer: &mut Vec<u8>, sender: SocketAddr) {
    match sender {
        SocketAddr::V4(v4) => {
            buffer.push(4);
            buffer.extend_from_slice(&v4.ip().octets());
            buffer.extend_from_slice(&v4.port().to_le_bytes());
        }
        SocketAddr::V6(v6) => {
            buffer.push(6);
            buffer.extend_from_slice(&v6.ip().octets());
            buffer.extend_from_slice(&v6.port().to_le_bytes());
            buffer.extend_from_slice(&v6.scope_id().to_le_bytes());
        }
    }
}

/// The sender from the start of `bytes`, and the bytes after it.
fn decode_sender(bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&family, rest) = bytes.split_first()?;
    match family {
        4 => {
            let ip: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            let port = u16::from_le_bytes(rest.get(4..6)?.try_into().ok()?);
            Some((
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
                &rest[6..],
            ))
        }
        6 => {
            let ip: [u8; 16] = rest.get(..16)?.try_into().ok()?;
            let port = u16::from_le_bytes(rest.get(16..18)?.try_into().ok()?);
            let scope = u32::from_le_bytes(rest.get(18..22)?.try_into().ok()?);
            let v6 = SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope);
            Some((SocketAddr::V6(v6), &rest[22..]))
        }
        _ => None,
    }
}

/// Appends records to the journal; lives on the receiver thread. Opens its
/// segment at the first append (a new one at each start: see the module
/// documentation) and closes it after [`SEGMENT_BYTES`].
#[derive(Debug)]
pub(crate) struct JournalWriter {
    dir: PathBuf,
    next_seq: u64,
    /// The open segment, its first sequence number and its length.
    current: Option<(File, Segment, u64)>,
    /// First sequence numbers and paths of the closed segments, oldest first.
    closed: VecDeque<Segment>,
    /// One batch's records, encoded: reused by every append.
    buffer: Vec<u8>,
}

impl JournalWriter {
    /// A writer whose first record gets `next_seq` (≥ 1), in `dir`, where
    /// `closed` are the segments an earlier run left (oldest first; deleted
    /// by [`delete_covered`](Self::delete_covered) once covered).
    pub(crate) fn new(dir: PathBuf, next_seq: u64, closed: Vec<Segment>) -> Self {
        Self {
            dir,
            next_seq: next_seq.max(1),
            current: None,
            closed: closed.into(),
            buffer: Vec::new(),
        }
    }

    /// Appends one batch of datagrams received at `received_at` with one
    /// `write`; returns the sequence number of the first (the others follow
    /// in order). The numbers are used up even when the write fails: the
    /// segment is then cut back to its last whole record (or, if that fails
    /// too, abandoned for a new one), so a failed batch never leaves a torn
    /// record in front of later ones.
    pub(crate) fn append<'a>(
        &mut self,
        received_at: SystemTime,
        records: impl IntoIterator<Item = (SocketAddr, &'a [u8])>,
    ) -> Result<u64, JournalError> {
        let first = self.next_seq;
        // A clock 292 years off is not worth an error on the receiver thread.
        let received_at = nanos_since_epoch(received_at).unwrap_or(0).to_le_bytes();
        self.buffer.clear();
        for (sender, datagram) in records {
            let start = self.buffer.len();
            self.buffer.extend_from_slice(&[0; HEADER]);
            self.buffer.extend_from_slice(&self.next_seq.to_le_bytes());
            self.buffer.extend_from_slice(&received_at);
            encode_sender(&mut self.buffer, sender);
            self.buffer.extend_from_slice(datagram);
            let body = &self.buffer[start + HEADER..];
            let (len, crc) = (body.len() as u32, CRC.checksum(body));
            self.buffer[start..start + 4].copy_from_slice(&MAGIC);
            self.buffer[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
            self.buffer[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
            self.next_seq += 1;
        }
        if self.buffer.is_empty() {
            return Ok(first);
        }
        self.write(first)?;
        Ok(first)
    }

    /// Writes the buffer to the open segment (opening one starting at
    /// `first` if none is), closing the segment when it is full.
    fn write(&mut self, first: u64) -> Result<(), JournalError> {
        if self.current.is_none() {
            let segment = Segment {
                first_seq: first,
                path: self.dir.join(format!("{first:020}{SUFFIX}")),
            };
            let file = std::fs::create_dir_all(&self.dir)
                .and_then(|()| {
                    OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .open(&segment.path)
                })
                .map_err(|source| JournalError::Write {
                    path: segment.path.clone(),
                    source,
                })?;
            // A segment of an earlier run by that name held nothing whole.
            self.closed.retain(|closed| closed.path != segment.path);
            self.current = Some((file, segment, 0));
        }
        let Some((file, segment, len)) = self.current.as_mut() else {
            unreachable!("opened above");
        };
        match file.write_all(&self.buffer) {
            Ok(()) => {
                *len += self.buffer.len() as u64;
                if *len >= SEGMENT_BYTES {
                    self.close();
                }
                Ok(())
            }
            Err(source) => {
                let good = *len;
                let path = segment.path.clone();
                let cut_back = file
                    .set_len(good)
                    .and_then(|()| file.seek(SeekFrom::Start(good)));
                if cut_back.is_err() {
                    self.close();
                }
                Err(JournalError::Write { path, source })
            }
        }
    }

    /// Closes the open segment, if any; the next append opens a new one.
    fn close(&mut self) {
        if let Some((_, segment, _)) = self.current.take() {
            self.closed.push_back(segment);
        }
    }

    /// Deletes the closed segments whose every record has a sequence number
    /// up to `covered` (the spool's mark), oldest first; stops at the first
    /// that cannot be deleted (tried again at the next call).
    pub(crate) fn delete_covered(&mut self, covered: u64) -> Result<(), JournalError> {
        while let Some(oldest) = self.closed.front() {
            // A segment ends where the next one starts.
            let next_first = match (self.closed.get(1), &self.current) {
                (Some(next), _) => next.first_seq,
                (None, Some((_, current, _))) => current.first_seq,
                (None, None) => self.next_seq,
            };
            if next_first.saturating_sub(1) > covered {
                break;
            }
            match std::fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(JournalError::Write {
                        path: oldest.path.clone(),
                        source,
                    })
                }
            }
            self.closed.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn sender(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn segment_sizes(dir: &Path) -> Vec<(u64, u64)> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|s| (s.first_seq, std::fs::metadata(&s.path).unwrap().len()))
            .collect()
    }

    fn read_all(dir: &Path, above: u64) -> Vec<JournalRecord> {
        list_segments(dir)
            .unwrap()
            .iter()
            .flat_map(|s| read_segment(&s.path, above).unwrap().records)
            .collect()
    }

    #[test]
    fn records_read_back_as_written_above_a_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = JournalWriter::new(dir.path().to_owned(), 1, Vec::new());
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let v6: SocketAddr = "[fe80::1%3]:9".parse().unwrap();
        let first = writer
            .append(at, [(sender(1), &b"one"[..]), (v6, &b""[..])])
            .unwrap();
        assert_eq!(first, 1);
        assert_eq!(writer.append(at, [(sender(3), &b"three"[..])]).unwrap(), 3);
        let records = read_all(dir.path(), 0);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].received_at, at);
        assert_eq!(records[0].sender, sender(1));
        assert_eq!(&*records[0].datagram, b"one");
        assert_eq!(records[1].sender, v6);
        assert_eq!(&*records[1].datagram, b"");
        assert_eq!(&*records[2].datagram, b"three");
        let above: Vec<u64> = read_all(dir.path(), 2).iter().map(|r| r.seq).collect();
        assert_eq!(above, [3]);
    }

    /// A record cut short by a kill, or with a flipped bit, ends the
    /// segment: the whole records before it are read, nothing after.
    #[test]
    fn a_torn_or_corrupt_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = JournalWriter::new(dir.path().to_owned(), 10, Vec::new());
        for i in 0..3u8 {
            writer
                .append(SystemTime::now(), [(sender(1), &[i; 100][..])])
                .unwrap();
        }
        drop(writer);
        let segment = &list_segments(dir.path()).unwrap()[0];
        assert_eq!(segment.first_seq, 10);
        let whole = std::fs::read(&segment.path).unwrap();
        let record = whole.len() / 3;

        std::fs::write(&segment.path, &whole[..whole.len() - 7]).unwrap();
        let contents = read_segment(&segment.path, 0).unwrap();
        let seqs: Vec<u64> = contents.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [10, 11]);
        assert_eq!(contents.last_seq, Some(11));
        assert_eq!(contents.torn_at, Some(2 * record as u64));

        let mut flipped = whole.clone();
        flipped[record + HEADER + 20] ^= 1;
        std::fs::write(&segment.path, &flipped).unwrap();
        let contents = read_segment(&segment.path, 0).unwrap();
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.torn_at, Some(record as u64));
    }

    /// Segments close after SEGMENT_BYTES; each start begins a new one; a
    /// closed segment is deleted once the mark covers its last record, not
    /// before.
    #[test]
    fn segments_rotate_and_are_deleted_once_covered() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 60_000];
        let batch = |n| vec![(sender(1), &big[..]); n];
        let mut writer = JournalWriter::new(dir.path().to_owned(), 1, Vec::new());
        // 64 records of about 60 kB: just under 4 MB per batch.
        let per_segment = (SEGMENT_BYTES as usize).div_ceil(64 * 60_000);
        for _ in 0..per_segment + 1 {
            writer.append(SystemTime::now(), batch(64)).unwrap();
        }
        let sizes = segment_sizes(dir.path());
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert!(sizes[0].1 >= SEGMENT_BYTES);
        let second = (per_segment * 64 + 1) as u64;
        assert_eq!(sizes[1].0, second);

        writer.delete_covered(second - 2).unwrap();
        assert_eq!(segment_sizes(dir.path()).len(), 2, "one record not covered");
        writer.delete_covered(second - 1).unwrap();
        assert_eq!(segment_sizes(dir.path())[0].0, second);
        drop(writer);

        // A restart: a new segment from the next sequence; the old one is
        // deleted once covered.
        let segments = list_segments(dir.path()).unwrap();
        let last = read_segment(&segments[0].path, 0)
            .unwrap()
            .last_seq
            .unwrap();
        let mut writer = JournalWriter::new(dir.path().to_owned(), last + 1, segments);
        writer.append(SystemTime::now(), batch(1)).unwrap();
        let sizes = segment_sizes(dir.path());
        assert_eq!(
            sizes.iter().map(|s| s.0).collect::<Vec<_>>(),
            [second, last + 1]
        );
        writer.delete_covered(last).unwrap();
        assert_eq!(segment_sizes(dir.path()).len(), 1);
        assert_eq!(read_all(dir.path(), 0).len(), 1);
    }

    /// A write that fails (here: the segment's directory is gone) is an
    /// error, uses up its sequence numbers, and the next write works again
    /// when it can, in a segment of its own.
    #[test]
    fn a_failed_write_is_reported_and_the_next_one_recovers() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("journal");
        std::fs::write(&dir, b"a file where the directory should be").unwrap();
        let mut writer = JournalWriter::new(dir.clone(), 1, Vec::new());
        let err = writer
            .append(SystemTime::now(), [(sender(1), &b"lost"[..])])
            .unwrap_err();
        assert!(matches!(err, JournalError::Write { .. }), "{err}");
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            writer
                .append(SystemTime::now(), [(sender(1), &b"kept"[..])])
                .unwrap(),
            2
        );
        let records = read_all(&dir, 0);
        assert_eq!(records.len(), 1);
        assert_eq!(&*records[0].datagram, b"kept");
    }
}
