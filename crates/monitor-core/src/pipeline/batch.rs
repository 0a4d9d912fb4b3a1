//! The batcher: rows into transactions, rejected rows out to the dead
//! letters, an unreachable database probed until it answers (then retried at
//! once), other failures retried with backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use files_db::{FailureKind, FileRow, FilesDb};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sinks::DeadLetterSink;
use super::{ack, Hashed, MAX_RETRY_DELAY, PROBE_INTERVAL};
use crate::spool::Spool;
use crate::stats::MonitorStats;

/// What the batcher touches: the database, the spool it acks, the
/// counters, the dead letters of rejected rows, and its tuning.
pub(super) struct Batcher {
    pub(super) db: FilesDb,
    pub(super) spool: Spool,
    pub(super) stats: Arc<MonitorStats>,
    pub(super) dead_letters: Arc<DeadLetterSink>,
    /// [`PipelineOptions::batch_rows`](super::PipelineOptions::batch_rows).
    pub(super) batch_rows: usize,
    /// [`PipelineOptions::batch_delay`](super::PipelineOptions::batch_delay).
    pub(super) batch_delay: Duration,
    /// [`PipelineOptions::create_missing_table`](super::PipelineOptions::create_missing_table).
    pub(super) create_missing_table: bool,
}

impl Batcher {
    /// Collects rows into batches (what is queued, up to `batch_rows`, waiting
    /// up to `batch_delay` for more) and commits
    /// each, retrying a failing database with backoff for as long as it takes.
    pub(super) async fn run(self, mut incoming: mpsc::Receiver<Hashed>, drain: CancellationToken) {
        let limit = self.batch_rows.max(1);
        let mut batch: Vec<Hashed> = Vec::with_capacity(limit);
        loop {
            if incoming.recv_many(&mut batch, limit).await == 0 {
                break;
            }
            let deadline = tokio::time::Instant::now() + self.batch_delay;
            while batch.len() < limit {
                let room = limit - batch.len();
                match tokio::time::timeout_at(deadline, incoming.recv_many(&mut batch, room)).await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            crate::fault::stage_item("batcher");
            if !self.commit(&mut batch, &drain).await {
                break;
            }
        }
    }

    /// Commits `batch` (emptying it): committed and rejected rows are settled
    /// (rejected ones dead-lettered) and acked; the rest is retried with backoff
    /// while the database fails. Returns `false` when draining ended first; the
    /// uncommitted rows stay in the spool.
    async fn commit(&self, batch: &mut Vec<Hashed>, drain: &CancellationToken) -> bool {
        let mut delay = Duration::from_secs(1);
        // Before the first probe after an unreachable failure; doubles while the
        // database answers probes but the writes keep failing.
        let mut first_probe = PROBE_INTERVAL;
        loop {
            let (fates, error) = self.insert_isolating_rejects(batch).await;
            let mut settled = Vec::new();
            let mut unsettled = Vec::new();
            let mut left_in_spool = 0u64;
            for (hashed, fate) in batch.drain(..).zip(fates) {
                match fate {
                    Fate::Pending => unsettled.push(hashed),
                    Fate::Uncertain => {
                        // The commit may have happened with its answer lost: the
                        // retry must not write these rows a second time.
                        let mut hashed = hashed;
                        hashed.registration.replayed = true;
                        unsettled.push(hashed);
                    }
                    Fate::Committed => settled.extend(hashed.registration.spool_id),
                    Fate::Rejected(reason) => {
                        let reason = format!("rejected by the database: {reason}");
                        if self
                            .dead_letters
                            .write(&hashed.registration.received, reason)
                            .await
                        {
                            settled.extend(hashed.registration.spool_id);
                        } else {
                            // Left in the spool (not acked) for the next start.
                            left_in_spool += 1;
                        }
                    }
                }
            }
            *batch = unsettled;
            self.stats
                .pending_insert
                .fetch_sub(settled.len() as u64 + left_in_spool, Ordering::Relaxed);
            ack(&self.spool, &self.stats, &settled).await;
            let Some(err) = error else {
                self.stats.set_database_error(None);
                return true;
            };
            self.stats.set_database_error(Some(err.to_string()));
            tracing::error!(error = %err, rows = batch.len(), node = %self.db.active_node(), "database write failed; rows stay spooled");
            if err.kind() == FailureKind::TableMissing && self.create_missing_table {
                match self.db.create_table().await {
                    Ok(outcome) => tracing::warn!(
                        ?outcome,
                        table = self.db.table(),
                        "table was missing; created it"
                    ),
                    Err(err) => tracing::error!(error = %err, "cannot create the missing table"),
                }
            }
            if err.kind() == FailureKind::Unreachable {
                // Retried as soon as a cheap probe finds the database (or another
                // of its nodes) taking writes again.
                if !self.wait_until_reachable(first_probe, drain).await {
                    return false;
                }
                first_probe = (first_probe * 2).min(MAX_RETRY_DELAY);
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = drain.cancelled() => return false,
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Probes the database, first after `first` and then every
    /// [`PROBE_INTERVAL`], until it takes writes (moving to another node of a
    /// cluster that does). Returns `false` when draining ended first.
    async fn wait_until_reachable(&self, first: Duration, drain: &CancellationToken) -> bool {
        let mut wait = first;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = drain.cancelled() => return false,
            }
            wait = PROBE_INTERVAL;
            match self.db.probe().await {
                Ok(()) => return true,
                Err(err) => self.stats.set_database_error(Some(err.to_string())),
            }
        }
    }

    /// Inserts `batch`, finding rows the database rejects by bisection so that
    /// one bad row never blocks the others. Stops at the first failure that
    /// retrying may cure and returns it with each row's fate so far.
    async fn insert_isolating_rejects(
        &self,
        batch: &[Hashed],
    ) -> (Vec<Fate>, Option<files_db::DbError>) {
        let mut fates: Vec<Fate> = batch.iter().map(|_| Fate::Pending).collect();
        // Ranges still to insert; a rejected range is split in two.
        let mut ranges = Vec::with_capacity(16);
        ranges.push(0..batch.len());
        while let Some(range) = ranges.pop() {
            if range.is_empty() {
                continue;
            }
            match self.insert(&batch[range.clone()]).await {
                Ok(()) => range.for_each(|i| fates[i] = Fate::Committed),
                Err(err) if err.kind() == FailureKind::Rejected && range.len() == 1 => {
                    fates[range.start] = Fate::Rejected(err.database_message().to_owned());
                }
                Err(err) if err.kind() == FailureKind::Rejected => {
                    let middle = range.start + range.len() / 2;
                    ranges.push(middle..range.end);
                    ranges.push(range.start..middle);
                }
                Err(err) => {
                    range.for_each(|i| fates[i] = Fate::Uncertain);
                    return (fates, Some(err));
                }
            }
        }
        (fates, None)
    }

    /// One transaction; replayed rows (and rows of an attempt whose outcome is
    /// unknown) skip what is already committed.
    async fn insert(&self, hashed: &[Hashed]) -> Result<(), files_db::DbError> {
        let rows: Vec<FileRow> = hashed.iter().map(|h| h.row.clone()).collect();
        let stats = &self.stats;
        if hashed.iter().any(|h| h.registration.replayed) {
            let summary = self.db.insert_new_files(&rows).await?;
            stats
                .files_registered
                .fetch_add(summary.inserted, Ordering::Relaxed);
            stats
                .files_already_present
                .fetch_add(summary.skipped, Ordering::Relaxed);
        } else {
            let inserted = self.db.insert_files(&rows).await?;
            stats
                .files_registered
                .fetch_add(inserted, Ordering::Relaxed);
        }
        if let Some(last) = rows.last() {
            stats.set_last_file(&last.path);
        }
        Ok(())
    }
}

/// What became of one row of a batch.
enum Fate {
    /// Not written yet (the database failed before its turn).
    Pending,
    /// Written by the transaction that failed without a rejection (e.g. the
    /// connection broke): committed or not, nobody knows, since a commit
    /// whose answer is lost has still happened.
    Uncertain,
    /// In the table.
    Committed,
    /// Refused by the database, with its message.
    Rejected(String),
}
