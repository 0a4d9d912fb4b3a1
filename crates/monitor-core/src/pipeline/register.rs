//! From an accepted file datagram to a hashed row: the spool, then md5.
//!
//! Memory stays bounded however large the burst or however long the
//! database is away: at most [`IN_MEMORY`] registrations are held past the
//! spool (being hashed, or hashed and waiting for the batcher), plus at most
//! [`WAITING`] whose file does not exist yet. When every slot is taken, new
//! registrations are only appended to the spool and dropped from memory;
//! they are read back from the spool, in order, as slots free up. Replay
//! at start-up is the same path: the spool starts as one long backlog.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use file_registration::{file_row, registered_path, FileHasher, HashError, Recorder};
use smurf_protocol::{Datagram, Message};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::sinks::{DeadLetterSink, Refusals};
use super::supervise::Supervisor;
use super::{ack, Hashed, Received, Registration, SPOOL_GROUP};
use crate::spool::{Spool, SpoolCursor, SpoolId, SpooledRecord};
use crate::stats::{MonitorStats, RejectReason};

/// Registrations held in memory between the spool and the database.
pub(super) const IN_MEMORY: usize = 4_096;

/// Registrations whose file does not exist yet, waiting in memory without
/// holding one of the [`IN_MEMORY`] slots (so that files that never appear
/// do not stall the others). Beyond this many, a waiting registration keeps
/// its slot.
const WAITING: usize = 16_384;

/// Spool records read back per query while hashing is behind.
const READ_BACK_PAGE: usize = 512;

/// Registrations whose files one blocking job reads: the hand-off to a
/// blocking thread, not md5, is most of the cost of a small file, so it is
/// paid once per chunk; several chunks still hash at once.
const HASH_CHUNK: usize = 32;

/// What the spool stage and its hashing tasks touch: the spool, the
/// hasher, the recorder stamped on rows, the counters, refusals and dead
/// letters of files that cannot be hashed, and the supervisor that runs the
/// hashing tasks.
pub(super) struct Spooler {
    pub(super) spool: Spool,
    pub(super) hasher: FileHasher,
    pub(super) recorder: Recorder,
    pub(super) stats: Arc<MonitorStats>,
    pub(super) refusals: Arc<Refusals>,
    pub(super) dead_letters: Arc<DeadLetterSink>,
    pub(super) supervisor: Arc<Supervisor>,
}

impl Spooler {
    /// Appends registrations to the spool in groups (one transaction for all
    /// that are queued, without waiting for more) and starts their hashing
    /// while there are free slots; otherwise they wait in the spool, read
    /// back in order when slots free up.
    pub(super) async fn run(
        self,
        mut incoming: mpsc::Receiver<Registration>,
        to_batch: mpsc::Sender<Hashed>,
        drain: CancellationToken,
    ) {
        let stage = Arc::new(self);
        let hashing = Hashing {
            stage: stage.clone(),
            slots: Arc::new(Semaphore::new(IN_MEMORY)),
            waiting: Arc::new(Semaphore::new(WAITING)),
            to_batch,
            drain,
        };
        let left = stage.spool.depth();
        if left > 0 {
            tracing::info!(count = left, "replaying spooled registrations");
        }
        // Where reading back resumes (past the last record handed to hashing
        // or skipped): `Some` while registrations wait in the spool only. At
        // start-up, everything an earlier run left is waiting.
        let mut behind = Some(SpoolCursor::START);
        let mut group = Vec::with_capacity(SPOOL_GROUP);
        loop {
            tokio::select! {
                received = incoming.recv_many(&mut group, SPOOL_GROUP) => {
                    // Closed: the receiver stopped. What is behind stays spooled.
                    if received == 0 {
                        break;
                    }
                    crate::fault::stage_item("spooler");
                    crate::fault::stall("spooler").await;
                    let ids = stage.append(&group).await;
                    stage.stats.unspooled_sub(group.len() as u64);
                    let mut ready = Vec::with_capacity(group.len());
                    for (registration, id) in group.drain(..).zip(ids) {
                        match (id, &behind) {
                            // Not durable, but not lost while the process lives.
                            (None, _) => ready.push(registration),
                            (Some(id), None) => match hashing.slots.clone().try_acquire_owned() {
                                Ok(slot) => ready.push(Registration {
                                    spool_id: Some(id),
                                    slot: Some(slot),
                                    ..registration
                                }),
                                Err(_) => {
                                    behind = Some(SpoolCursor::from_id(id));
                                }
                            },
                            // Safe in the spool; read back when its turn comes.
                            (Some(_), Some(_)) => {}
                        }
                    }
                    hashing.start(ready);
                }
                slot = hashing.slots.clone().acquire_owned(), if behind.is_some() => {
                    let Some(read_back) = behind.as_mut() else { continue };
                    let Ok(slot) = slot else { break };
                    if hashing.read_back(read_back, slot).await {
                        behind = None;
                    }
                }
            }
        }
    }
}

/// Hashes registrations and hands their rows to the batcher.
#[derive(Clone)]
struct Hashing {
    stage: Arc<Spooler>,
    /// One per registration held in memory past the spool.
    slots: Arc<Semaphore>,
    /// One per registration waiting for its file without a slot.
    waiting: Arc<Semaphore>,
    to_batch: mpsc::Sender<Hashed>,
    drain: CancellationToken,
}

impl Hashing {
    /// Starts hashing `registrations`, [`HASH_CHUNK`] per task.
    fn start(&self, mut registrations: Vec<Registration>) {
        while !registrations.is_empty() {
            let rest = registrations.split_off(registrations.len().min(HASH_CHUNK));
            self.stage.supervisor.spawn(
                "hasher",
                self.clone()
                    .hash_chunk(std::mem::replace(&mut registrations, rest)),
            );
        }
    }

    /// Hands the next page of spooled registrations to hashing, one free
    /// slot each (`slot` and as many more as are free). Returns true when
    /// nothing is left behind in the spool.
    async fn read_back(&self, from: &mut SpoolCursor, slot: OwnedSemaphorePermit) -> bool {
        let stage = &*self.stage;
        // This task is the only one taking slots: those free now stay free.
        let limit = (1 + self.slots.available_permits()).min(READ_BACK_PAGE);
        let page = match stage.spool.read_page(*from, limit).await {
            Ok(page) => page,
            Err(err) => {
                stage.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, "cannot read registrations back from the spool; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return false;
            }
        };
        let first_new = stage.spool.first_id_of_this_run();
        let mut slot = Some(slot);
        let mut ready = Vec::with_capacity(page.records.len());
        for record in page.records {
            let replayed = record.id < first_new;
            let Some(registration) = stage.registration_from(record, replayed).await else {
                continue;
            };
            if replayed {
                stage.stats.files_accepted.fetch_add(1, Ordering::Relaxed);
            }
            let slot = match slot.take() {
                Some(slot) => slot,
                None => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(_) => unreachable!("free slots are only taken here"),
                },
            };
            ready.push(Registration {
                slot: Some(slot),
                ..registration
            });
        }
        self.start(ready);
        *from = page.next;
        page.is_last
    }

    /// Hashes the files of `registrations` in one blocking job; those whose
    /// file is not there yet go on waiting for it, each on its own.
    async fn hash_chunk(self, registrations: Vec<Registration>) {
        crate::fault::stage_item("hasher");
        let stats = &self.stage.stats;
        stats
            .pending_md5
            .fetch_add(registrations.len() as u64, Ordering::Relaxed);
        let paths = registrations
            .iter()
            .map(|r| PathBuf::from(registered_path(&r.file)))
            .collect();
        let results = tokio::select! {
            results = self.stage.hasher.md5_many_if_present(paths) => results,
            _ = self.drain.cancelled() => {
                stats.pending_md5.fetch_sub(registrations.len() as u64, Ordering::Relaxed);
                return;
            }
        };
        for (registration, result) in registrations.into_iter().zip(results) {
            match result {
                Ok(None) => {
                    self.stage
                        .supervisor
                        .spawn("hasher", self.clone().wait_for_file(registration));
                }
                Ok(Some(md5)) => self.finish(registration, Ok(md5)).await,
                Err(err) => self.finish(registration, Err(err)).await,
            }
        }
    }

    /// Waits for a registration's file to appear as the [`WaitPolicy`]
    /// says, on a waiting slot when one is free (giving its own slot back),
    /// then hashes it. Abandoned (left in the spool) when draining ends.
    async fn wait_for_file(self, mut registration: Registration) {
        let path = PathBuf::from(registered_path(&registration.file));
        let mut waiting_slot = None;
        let give_slot_back = || {
            if waiting_slot.is_none() {
                if let Ok(permit) = self.waiting.clone().try_acquire_owned() {
                    waiting_slot = Some(permit);
                    registration.slot = None;
                }
            }
        };
        let result = tokio::select! {
            result = self.stage.hasher.md5_waiting(&path, give_slot_back) => result,
            _ = self.drain.cancelled() => {
                self.stage.stats.pending_md5.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        self.finish(registration, result).await;
    }

    /// Hands a hashed registration's row to the batcher, or dead-letters
    /// (and acks) one whose file could not be hashed.
    async fn finish(&self, registration: Registration, md5: Result<[u8; 16], HashError>) {
        let stage = &*self.stage;
        stage.stats.pending_md5.fetch_sub(1, Ordering::Relaxed);
        match md5 {
            Ok(md5) => {
                let mut row = file_row(
                    &registration.envelope,
                    &registration.file,
                    &stage.recorder,
                    md5,
                );
                // Stable across a replay: the spool keeps the receive time.
                row.registered_at = Some(registration.received.received_at.into());
                stage.stats.pending_insert.fetch_add(1, Ordering::Relaxed);
                let _ = self.to_batch.send(Hashed { row, registration }).await;
            }
            Err(err) => {
                if matches!(err, HashError::OutsideDataRoots { .. }) {
                    stage.refusals.refuse(
                        registration.received.sender,
                        RejectReason::PathRefused,
                        &err.to_string(),
                    );
                }
                let reason = ocs_feed::error_with_causes(&err);
                if stage
                    .dead_letters
                    .write(&registration.received, reason)
                    .await
                {
                    if let Some(id) = registration.spool_id {
                        ack(&stage.spool, &stage.stats, &[id]).await;
                    }
                }
            }
        }
    }
}

impl Spooler {
    /// Appends `group` to the spool in one transaction, raising the receive
    /// journal's mark to their highest sequence number (the router hands them
    /// on in order, so every datagram read before is spooled or was routed
    /// elsewhere): their ids, or `None`s if the spool failed (counted and
    /// logged).
    async fn append(&self, group: &[Registration]) -> Vec<Option<SpoolId>> {
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
        let covers = group
            .iter()
            .map(|r| r.received.journal_seq)
            .max()
            .unwrap_or(0);
        let ids = match self.spool.append_covering(records, covers).await {
            Ok(ids) => ids.into_iter().map(Some).collect(),
            Err(err) => {
                self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, count = group.len(), "cannot spool registrations; continuing without");
                vec![None; group.len()]
            }
        };
        self.stats
            .spool_depth
            .store(self.spool.depth(), Ordering::Relaxed);
        ids
    }

    /// A spooled record back to a registration; a record that is not one (it
    /// can only have been corrupted on disk) is dead-lettered and acked.
    async fn registration_from(
        &self,
        record: SpooledRecord,
        replayed: bool,
    ) -> Option<Registration> {
        let received = Received {
            sender: record.sender,
            received_at: record.received_at,
            bytes: record.datagram,
            // Spooled already: the journal's mark covers it.
            journal_seq: 0,
            replayed: false,
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
            Ok((envelope, file)) => Some(Registration {
                spool_id: Some(record.id),
                received,
                envelope,
                file,
                replayed,
                slot: None,
            }),
            Err(reason) => {
                let reason = format!("spooled record {}: {reason}", record.id);
                if self.dead_letters.write(&received, reason).await {
                    ack(&self.spool, &self.stats, &[record.id]).await;
                }
                None
            }
        }
    }
}
