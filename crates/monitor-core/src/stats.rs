//! Live counters of the pipeline, shown in the `run` session's data and
//! published on the `monitor_stats` feed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// Why a datagram was refused before or while it was parsed. Each has its
/// own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Larger than the publisher's 64000-byte limit.
    TooLarge,
    /// From a sender outside `--allow-from`.
    NotAllowed,
    /// Not a datagram `smurf_protocol` can parse (not UTF-8, not JSON, wrong shape).
    Malformed,
    /// A file path refused by the guard rails (empty, relative, outside `--data-root`).
    PathRefused,
    /// A file of an archive SupRsync's database has no remote path for
    /// (only `smurf` and `timestreams`; SupRsync target only).
    ArchiveRefused,
    /// A `metadata` datagram whose stream id cannot name a feed
    /// (`<stream-id>_meta` must be one WAMP URI component: no `.`, `#` or
    /// whitespace).
    StreamIdRefused,
}

impl RejectReason {
    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::Malformed => "malformed",
            RejectReason::PathRefused => "path_refused",
            RejectReason::ArchiveRefused => "archive_refused",
            RejectReason::StreamIdRefused => "stream_id_refused",
        }
    }

    const ALL: [RejectReason; 6] = [
        RejectReason::TooLarge,
        RejectReason::NotAllowed,
        RejectReason::Malformed,
        RejectReason::PathRefused,
        RejectReason::ArchiveRefused,
        RejectReason::StreamIdRefused,
    ];
}

/// Counters shared by every stage; all updates are lock-free but the last
/// file registered.
#[derive(Debug, Default)]
pub struct MonitorStats {
    pub(crate) datagrams_received: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    pub(crate) files_accepted: AtomicU64,
    pub(crate) files_registered: AtomicU64,
    pub(crate) files_already_present: AtomicU64,
    pub(crate) pending_md5: AtomicU64,
    pub(crate) pending_insert: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    /// Dead letters that could not be written (their registrations stay
    /// in the spool).
    pub(crate) dead_letter_errors: AtomicU64,
    pub(crate) session_messages: AtomicU64,
    pub(crate) metadata_messages: AtomicU64,
    pub(crate) feed_errors: AtomicU64,
    pub(crate) other_messages: AtomicU64,
    pub(crate) spool_errors: AtomicU64,
    /// Receive-journal writes that failed (their batches were handed on
    /// without being on disk first).
    pub(crate) journal_errors: AtomicU64,
    /// The last receive-journal write failed.
    pub(crate) journal_failing: AtomicBool,
    pub(crate) database_up: AtomicBool,
    pub(crate) spool_depth: AtomicU64,
    /// Datagrams read from the socket and not yet through the spool stage
    /// (or routed elsewhere): what a `kill -9` now would leave to the
    /// receive journal's replay.
    unspooled: AtomicU64,
    /// The highest `unspooled` since start.
    unspooled_peak: AtomicU64,
    last_file: Mutex<Option<String>>,
    last_database_error: Mutex<Option<String>>,
    /// Why the pipeline stopped on its own (`None` while it runs).
    pipeline_error: Mutex<Option<String>>,
    /// Wakes whoever shows the state (the `run` op) when the pipeline fails.
    pub(crate) pipeline_failed: tokio::sync::Notify,
}

impl MonitorStats {
    pub(crate) fn reject(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many datagrams were refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    /// Rows committed to the database so far.
    pub fn files_registered(&self) -> u64 {
        self.files_registered.load(Ordering::Relaxed)
    }

    /// Registrations moved to the dead-letter file so far.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// Whether the last database operation succeeded.
    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }

    /// Whether the last receive-journal write succeeded (or none was made).
    pub fn journal_up(&self) -> bool {
        !self.journal_failing.load(Ordering::Relaxed)
    }

    /// Why the pipeline stopped on its own, if it did: the monitor is then
    /// draining what it holds to the spool and about to exit non-zero.
    pub fn pipeline_error(&self) -> Option<String> {
        self.pipeline_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_pipeline_error(&self, reason: String) {
        *self
            .pipeline_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.pipeline_failed.notify_waiters();
    }

    /// `count` datagrams read from the socket, not yet spooled.
    pub(crate) fn unspooled_add(&self, count: u64) {
        let now = self.unspooled.fetch_add(count, Ordering::Relaxed) + count;
        self.unspooled_peak.fetch_max(now, Ordering::Relaxed);
    }

    /// `count` of them spooled, or routed elsewhere (not registrations).
    pub(crate) fn unspooled_sub(&self, count: u64) {
        self.unspooled.fetch_sub(count, Ordering::Relaxed);
    }

    pub(crate) fn set_last_file(&self, path: &str) {
        *self.last_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.to_owned());
    }

    pub(crate) fn set_database_error(&self, error: Option<String>) {
        self.database_up.store(error.is_none(), Ordering::Relaxed);
        *self
            .last_database_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Every counter as a JSON object of valid OCS field names, for the `run`
    /// session's data and the `monitor_stats` feed.
    pub fn snapshot(&self) -> Map<String, Value> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut map = Map::new();
        map.insert(
            "datagrams_received".into(),
            json!(load(&self.datagrams_received)),
        );
        for reason in RejectReason::ALL {
            map.insert(
                format!("rejected_{}", reason.name()),
                json!(self.rejected(reason)),
            );
        }
        for (name, counter) in [
            ("files_accepted", &self.files_accepted),
            ("files_registered", &self.files_registered),
            ("files_already_present", &self.files_already_present),
            ("pending_md5", &self.pending_md5),
            ("pending_insert", &self.pending_insert),
            ("spool_depth", &self.spool_depth),
            ("dead_letters", &self.dead_letters),
            ("dead_letter_errors", &self.dead_letter_errors),
            ("session_messages", &self.session_messages),
            ("metadata_messages", &self.metadata_messages),
            ("feed_errors", &self.feed_errors),
            ("other_messages", &self.other_messages),
            ("spool_errors", &self.spool_errors),
            ("journal_errors", &self.journal_errors),
            ("unspooled", &self.unspooled),
            ("unspooled_peak", &self.unspooled_peak),
        ] {
            map.insert(name.into(), json!(load(counter)));
        }
        map.insert("database_up".into(), json!(self.database_up()));
        map.insert("journal_up".into(), json!(self.journal_up()));
        map.insert("pipeline_up".into(), json!(self.pipeline_error().is_none()));
        map
    }

    /// [`MonitorStats::snapshot`] plus the texts (last file, last database
    /// error) that only the session data shows (feeds take numbers).
    pub fn session_data(&self) -> Map<String, Value> {
        let mut map = self.snapshot();
        let last_file = self
            .last_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        map.insert("last_file_registered".into(), json!(last_file));
        let error = self
            .last_database_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        map.insert("last_database_error".into(), json!(error));
        map.insert("pipeline_error".into(), json!(self.pipeline_error()));
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_valid_ocs_fields_and_counts_move() {
        let stats = MonitorStats::default();
        stats.reject(RejectReason::Malformed);
        stats.reject(RejectReason::Malformed);
        stats.files_registered.fetch_add(3, Ordering::Relaxed);
        stats.set_database_error(None);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot["rejected_malformed"], 2);
        assert_eq!(snapshot["files_registered"], 3);
        assert_eq!(snapshot["database_up"], true);
        assert_eq!(snapshot["journal_up"], true);
        assert_eq!(snapshot["journal_errors"], 0);
        for key in snapshot.keys() {
            assert!(ocs_feed::check_field_name(key).is_ok(), "{key}");
        }
        stats.set_database_error(Some("gone".into()));
        stats.set_last_file("/data/a.npy");
        let data = stats.session_data();
        assert_eq!(data["database_up"], false);
        assert_eq!(data["last_database_error"], "gone");
        assert_eq!(data["last_file_registered"], "/data/a.npy");
        assert_eq!(data["pipeline_up"], true);
        assert_eq!(data["pipeline_error"], Value::Null);
        stats.set_pipeline_error("the router stage panicked".into());
        let data = stats.session_data();
        assert_eq!(data["pipeline_up"], false);
        assert_eq!(data["pipeline_error"], "the router stage panicked");
    }
}
