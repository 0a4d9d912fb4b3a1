//! The receive journal in the pipeline: written by the receiver before it
//! hands a batch on, replayed through the router at start-up (before the
//! receiver runs) from the spool's mark on. The format and the files are
//! [`crate::journal`]'s.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::{receive, Received};
use crate::journal::{self, JournalError, JournalWriter};
use crate::spool::Spool;
use crate::stats::MonitorStats;

/// The receiver's side of the journal: appends each batch, and keeps going
/// without it while it cannot (counted in `journal_errors`, logged once per
/// episode, `run` degraded meanwhile).
pub(super) struct Journaling {
    writer: JournalWriter,
    /// Whose mark says which segments are covered.
    spool: Spool,
    stats: Arc<MonitorStats>,
    /// The last append failed.
    failing: bool,
    /// The last deletion of a covered segment failed.
    delete_failing: bool,
}

impl Journaling {
    /// Appends `batch` (received at `received_at`) to the journal with one
    /// write and gives each datagram its sequence number; on failure the
    /// batch goes on without (sequence 0).
    pub(super) fn write(&mut self, received_at: SystemTime, batch: &mut [Received]) {
        let appended = self
            .writer
            .append(received_at, batch.iter().map(|d| (d.sender, &*d.bytes)));
        match appended {
            Ok(first) => {
                for (datagram, seq) in batch.iter_mut().zip(first..) {
                    datagram.journal_seq = seq;
                }
                if self.failing {
                    tracing::info!("the receive journal is written again");
                    self.failing = false;
                    self.stats.journal_failing.store(false, Ordering::Relaxed);
                }
            }
            Err(err) => {
                self.stats.journal_errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(
                        error = %ocs_feed::error_with_causes(&err),
                        "cannot write the receive journal: datagrams are handed on without it \
                         (a kill -9 loses those not yet spooled) until a write succeeds again"
                    );
                    self.failing = true;
                    self.stats.journal_failing.store(true, Ordering::Relaxed);
                }
            }
        }
        self.delete_covered();
    }

    /// Deletes the segments the spool's mark covers (a failure is logged
    /// once until a deletion succeeds again, and retried).
    fn delete_covered(&mut self) {
        match self.writer.delete_covered(self.spool.journal_mark()) {
            Ok(()) => self.delete_failing = false,
            Err(err) => {
                if !self.delete_failing {
                    tracing::warn!(
                        error = %ocs_feed::error_with_causes(&err),
                        "cannot delete a receive-journal segment the spool covers"
                    );
                    self.delete_failing = true;
                }
            }
        }
    }
}

/// Hands the journal's records above the spool's mark to the router as
/// *replayed* datagrams (read by an earlier run, perhaps not spooled: a
/// registration is spooled, anything else was handled already and is not
/// published again), then returns the writer for the receiver, starting a
/// new segment after the last record found. Segments the mark wholly
/// covers are left for [`Journaling`] to delete; one without a whole record
/// is deleted at once. A journal that cannot be read is logged and counted,
/// never fatal.
pub(super) async fn replay_journal(
    dir: PathBuf,
    spool: Spool,
    stats: Arc<MonitorStats>,
    to_router: &mpsc::Sender<Vec<Received>>,
) -> Journaling {
    let covered = spool.journal_mark();
    let failed = |err: &JournalError| {
        stats.journal_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            error = %ocs_feed::error_with_causes(err),
            "cannot read the receive journal: what it holds is not replayed"
        );
    };
    let segments = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || journal::list_segments(&dir)).await
    };
    let segments = match segments {
        Ok(Ok(segments)) => segments,
        Ok(Err(err)) => {
            failed(&err);
            Vec::new()
        }
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    let mut last_seq = covered;
    let mut replayed = 0u64;
    let mut closed = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        // A segment ends where the next one starts.
        let wholly_covered = segments
            .get(i + 1)
            .is_some_and(|next| next.first_seq.saturating_sub(1) <= covered);
        if wholly_covered {
            closed.push(segment.clone());
            continue;
        }
        let path = segment.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let contents = journal::read_segment(&path, covered);
            if let Ok(contents) = &contents {
                if contents.last_seq.is_none() {
                    // Nothing whole in it: nothing to keep.
                    let _ = std::fs::remove_file(&path);
                }
            }
            contents
        })
        .await;
        let contents = match read {
            Ok(Ok(contents)) => contents,
            Ok(Err(err)) => {
                failed(&err);
                closed.push(segment.clone());
                continue;
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        if let Some(offset) = contents.torn_at {
            tracing::warn!(
                segment = %segment.path.display(),
                offset,
                "a receive-journal segment ends in a torn or corrupt record, ignored \
                 (a write cut short by a kill)"
            );
        }
        let Some(segment_last) = contents.last_seq else {
            continue;
        };
        last_seq = last_seq.max(segment_last);
        closed.push(segment.clone());
        if !contents.records.is_empty() && replayed == 0 {
            tracing::info!(
                above = covered,
                "replaying the receive journal: datagrams an earlier run read and did not spool"
            );
        }
        let mut records = contents.records.into_iter().peekable();
        while records.peek().is_some() {
            let batch: Vec<Received> = records
                .by_ref()
                .take(receive::RECEIVE_BATCH)
                .map(|record| Received {
                    sender: record.sender,
                    received_at: record.received_at,
                    bytes: record.datagram,
                    journal_seq: record.seq,
                    replayed: true,
                })
                .collect();
            replayed += batch.len() as u64;
            stats.unspooled_add(batch.len() as u64);
            if to_router.send(batch).await.is_err() {
                // The router is gone: its failure stops the pipeline.
                break;
            }
        }
    }
    if replayed > 0 {
        tracing::info!(count = replayed, "receive journal replayed");
    }
    Journaling {
        writer: JournalWriter::new(dir, last_seq + 1, closed),
        spool,
        stats,
        failing: false,
        delete_failing: false,
    }
}
