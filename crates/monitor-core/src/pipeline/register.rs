//! From an accepted file datagram to a hashed row: spooling (and replaying
//! the spool at start-up), then md5.

use super::*;

/// Appends registrations to the spool in groups (one transaction for all
/// that are queued, without waiting for more), then starts their hashing.
pub(super) async fn spool_stage(
    shared: Arc<Shared>,
    mut incoming: mpsc::Receiver<Registration>,
    to_batch: mpsc::Sender<Hashed>,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let mut group = Vec::with_capacity(SPOOL_GROUP);
    while incoming.recv_many(&mut group, SPOOL_GROUP).await > 0 {
        let records = group
            .iter()
            .map(|r| {
                (
                    r.received.sender,
                    r.received.received_at,
                    r.received.bytes.clone(),
                )
            })
            .collect();
        match shared.spool.append_many(records).await {
            Ok(ids) => {
                for (registration, id) in group.iter_mut().zip(ids) {
                    registration.spool_id = Some(id);
                }
            }
            Err(err) => {
                // Not durable, but not lost while the process lives: go on.
                shared.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, count = group.len(), "cannot spool registrations; continuing without");
            }
        }
        shared
            .stats
            .spool_depth
            .store(shared.spool.depth(), Ordering::Relaxed);
        for registration in group.drain(..) {
            tracker.spawn(hash_one(
                shared.clone(),
                registration,
                to_batch.clone(),
                drain.clone(),
            ));
        }
    }
}

/// Spooled registrations of an earlier run go through hashing again and are
/// inserted unless an identical row is already there.
pub(super) async fn replay_spool(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    to_batch: &mpsc::Sender<Hashed>,
    drain: &CancellationToken,
) {
    let pending = match shared.spool.pending().await {
        Ok(pending) => pending,
        Err(err) => {
            shared.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %err, "cannot read the spool; its registrations are not replayed");
            return;
        }
    };
    if !pending.is_empty() {
        tracing::info!(count = pending.len(), "replaying spooled registrations");
    }
    for record in pending {
        let received = Received {
            sender: record.sender,
            received_at: record.received_at,
            bytes: record.datagram,
        };
        let parsed = Datagram::parse(&received.bytes)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                let envelope = d.envelope().clone();
                match d.into_message() {
                    Message::DataFile(file) | Message::G3File(file) => Ok((envelope, file)),
                    other => Err(format!("a {} datagram is not a registration", other.kind())),
                }
            });
        match parsed {
            Ok((envelope, file)) => {
                shared.stats.files_accepted.fetch_add(1, Ordering::Relaxed);
                let registration = Registration {
                    spool_id: Some(record.id),
                    received,
                    envelope,
                    file,
                    replayed: true,
                };
                tracker.spawn(hash_one(
                    shared.clone(),
                    registration,
                    to_batch.clone(),
                    drain.clone(),
                ));
            }
            Err(reason) => {
                dead_letter(
                    shared,
                    &received,
                    format!("spooled record {}: {reason}", record.id),
                );
                ack(shared, &[record.id]).await;
            }
        }
    }
}

/// Hashes one registration's file and hands its row to the batcher, or
/// dead-letters it. Abandoned (left in the spool) when draining ends.
pub(super) async fn hash_one(
    shared: Arc<Shared>,
    registration: Registration,
    to_batch: mpsc::Sender<Hashed>,
    drain: CancellationToken,
) {
    let path = PathBuf::from(registered_path(&registration.file));
    shared.stats.pending_md5.fetch_add(1, Ordering::Relaxed);
    let hashed = tokio::select! {
        result = shared.hasher.md5(&path) => Some(result),
        _ = drain.cancelled() => None,
    };
    shared.stats.pending_md5.fetch_sub(1, Ordering::Relaxed);
    match hashed {
        None => {}
        Some(Ok(md5)) => {
            let row = file_row(
                &registration.envelope,
                &registration.file,
                &shared.recorder,
                md5,
            );
            shared.stats.pending_insert.fetch_add(1, Ordering::Relaxed);
            let _ = to_batch.send(Hashed { row, registration }).await;
        }
        Some(Err(err)) => {
            if matches!(err, crate::hasher::HashError::OutsideDataRoots { .. }) {
                refuse(
                    &shared,
                    registration.received.sender,
                    RejectReason::PathRefused,
                    &err.to_string(),
                );
            }
            dead_letter(&shared, &registration.received, err.to_string());
            if let Some(id) = registration.spool_id {
                ack(&shared, &[id]).await;
            }
        }
    }
}
