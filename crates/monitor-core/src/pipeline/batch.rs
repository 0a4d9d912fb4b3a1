//! The batcher: rows into transactions, rejected rows out to the dead
//! letters, an unreachable database probed until it answers (then retried at
//! once), other failures retried with backoff.

use super::*;

/// Collects rows into batches (what is queued, up to `batch_rows`, waiting
/// up to `batch_delay` for more) and commits
/// each, retrying a failing database with backoff for as long as it takes.
pub(super) async fn batch_stage(
    shared: Arc<Shared>,
    mut incoming: mpsc::Receiver<Hashed>,
    drain: CancellationToken,
) {
    let limit = shared.options.batch_rows.max(1);
    let mut batch: Vec<Hashed> = Vec::with_capacity(limit);
    loop {
        if incoming.recv_many(&mut batch, limit).await == 0 {
            break;
        }
        let deadline = tokio::time::Instant::now() + shared.options.batch_delay;
        while batch.len() < limit {
            let room = limit - batch.len();
            match tokio::time::timeout_at(deadline, incoming.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        crate::fault::stage_item("batcher");
        if !commit(&shared, &mut batch, &drain).await {
            break;
        }
    }
}

/// Commits `batch` (emptying it): committed and rejected rows are settled
/// (rejected ones dead-lettered) and acked; the rest is retried with backoff
/// while the database fails. Returns `false` when draining ended first; the
/// uncommitted rows stay in the spool.
async fn commit(shared: &Shared, batch: &mut Vec<Hashed>, drain: &CancellationToken) -> bool {
    let mut delay = Duration::from_secs(1);
    // Before the first probe after an unreachable failure; doubles while the
    // database answers probes but the writes keep failing.
    let mut first_probe = PROBE_INTERVAL;
    loop {
        let (fates, error) = insert_isolating_rejects(shared, batch).await;
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
                    if dead_letter(shared, &hashed.registration.received, reason).await {
                        settled.extend(hashed.registration.spool_id);
                    } else {
                        // Left in the spool (not acked) for the next start.
                        left_in_spool += 1;
                    }
                }
            }
        }
        *batch = unsettled;
        shared
            .stats
            .pending_insert
            .fetch_sub(settled.len() as u64 + left_in_spool, Ordering::Relaxed);
        ack(shared, &settled).await;
        let Some(err) = error else {
            shared.stats.set_database_error(None);
            return true;
        };
        shared.stats.set_database_error(Some(err.to_string()));
        tracing::error!(error = %err, rows = batch.len(), node = %shared.db.active_node(), "database write failed; rows stay spooled");
        if err.kind() == FailureKind::TableMissing && shared.options.create_missing_table {
            match shared.db.create_table().await {
                Ok(outcome) => tracing::warn!(
                    ?outcome,
                    table = shared.db.table(),
                    "table was missing; created it"
                ),
                Err(err) => tracing::error!(error = %err, "cannot create the missing table"),
            }
        }
        if err.kind() == FailureKind::Unreachable {
            // Retried as soon as a cheap probe finds the database (or another
            // of its nodes) taking writes again.
            if !wait_until_reachable(shared, first_probe, drain).await {
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
async fn wait_until_reachable(shared: &Shared, first: Duration, drain: &CancellationToken) -> bool {
    let mut wait = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = drain.cancelled() => return false,
        }
        wait = PROBE_INTERVAL;
        match shared.db.probe().await {
            Ok(()) => return true,
            Err(err) => shared.stats.set_database_error(Some(err.to_string())),
        }
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

/// Inserts `batch`, finding rows the database rejects by bisection so that
/// one bad row never blocks the others. Stops at the first failure that
/// retrying may cure and returns it with each row's fate so far.
async fn insert_isolating_rejects(
    shared: &Shared,
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
        match insert(shared, &batch[range.clone()]).await {
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
async fn insert(shared: &Shared, hashed: &[Hashed]) -> Result<(), files_db::DbError> {
    let rows: Vec<FileRow> = hashed.iter().map(|h| h.row.clone()).collect();
    let stats = &shared.stats;
    if hashed.iter().any(|h| h.registration.replayed) {
        let summary = shared.db.insert_new_files(&rows).await?;
        stats
            .files_registered
            .fetch_add(summary.inserted, Ordering::Relaxed);
        stats
            .files_already_present
            .fetch_add(summary.skipped, Ordering::Relaxed);
    } else {
        let inserted = shared.db.insert_files(&rows).await?;
        stats
            .files_registered
            .fetch_add(inserted, Ordering::Relaxed);
    }
    if let Some(last) = rows.last() {
        stats.set_last_file(&last.path);
    }
    Ok(())
}
