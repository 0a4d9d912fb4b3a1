//! Where stages send what is not a row: refusals (counted, logged at a
//! limited rate), dead letters (on the writer thread), and OCS feed
//! messages. Each is one small type a stage holds only if it uses it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ocs_feed::{Agent, FeedOptions};
use serde_json::{json, Value};

use super::Received;
use crate::dead_letter::{DeadLetterWriter, Letter};
use crate::guard::LogLimiter;
use crate::stats::{MonitorStats, RejectReason};

/// Refused datagrams: counted, and logged at most once a minute per sender
/// and reason.
pub(super) struct Refusals {
    stats: Arc<MonitorStats>,
    limiter: LogLimiter,
}

impl Refusals {
    pub(super) fn new(stats: Arc<MonitorStats>) -> Self {
        Self {
            stats,
            limiter: LogLimiter::default(),
        }
    }

    /// Counts a refused datagram and logs it unless its sender was logged
    /// for `reason` within the last minute.
    pub(super) fn refuse(&self, sender: SocketAddr, reason: RejectReason, detail: &str) {
        self.stats.reject(reason);
        if let Some(suppressed) = self.limiter.should_log(sender, reason.name()) {
            tracing::warn!(
                %sender,
                reason = reason.name(),
                detail,
                suppressed_since_last_log = suppressed,
                "datagram refused"
            );
        }
    }
}

/// The dead-letter file, written on its own thread, with the counters of
/// what was written and what could not be.
pub(super) struct DeadLetterSink {
    writer: DeadLetterWriter,
    stats: Arc<MonitorStats>,
}

impl DeadLetterSink {
    pub(super) fn new(writer: DeadLetterWriter, stats: Arc<MonitorStats>) -> Self {
        Self { writer, stats }
    }

    /// Dead-letters a registration on the writer thread; returns once the
    /// letter is written (`true`: the caller may then ack its spool record)
    /// or its write failed (`false`, counted in `dead_letter_errors` and
    /// logged: the caller must leave the record in the spool, so that the
    /// next start dead-letters it again instead of losing it).
    #[must_use]
    pub(super) async fn write(&self, received: &Received, reason: String) -> bool {
        if self.writer.write(letter(received, reason)).await {
            self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.stats
                .dead_letter_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                sender = %received.sender,
                "cannot write the dead letter: the registration stays in the spool for the next start"
            );
            false
        }
    }

    /// Dead-letters a datagram that has no spool record, without waiting for
    /// the write.
    pub(super) async fn write_later(&self, received: &Received, reason: String) {
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        self.writer.write_later(letter(received, reason)).await;
    }

    /// Returns once every letter queued before is written (or lost).
    pub(super) async fn flush(&self) {
        self.writer.flush().await;
    }
}

fn letter(received: &Received, reason: String) -> Letter {
    Letter {
        reason,
        sender: received.sender,
        received_at: received.received_at,
        datagram: received.bytes.clone(),
    }
}

/// The OCS feeds the pipeline publishes on (none without an agent), and the
/// `<stream-id>_meta` feeds registered so far.
pub(super) struct Feeds {
    agent: Option<Agent>,
    stats: Arc<MonitorStats>,
    metadata: Mutex<HashSet<String>>,
}

impl Feeds {
    pub(super) fn new(agent: Option<Agent>, stats: Arc<MonitorStats>) -> Self {
        Self {
            agent,
            stats,
            metadata: Mutex::default(),
        }
    }

    /// Whether there is an agent to publish on.
    pub(super) fn has_agent(&self) -> bool {
        self.agent.is_some()
    }

    /// Publishes `message` on `feed` (counted in `feed_errors` and logged
    /// when the agent refuses it).
    pub(super) fn publish(&self, feed: &str, message: Value) {
        let Some(agent) = &self.agent else {
            return;
        };
        if let Err(err) = agent.publish_to_feed(feed, message) {
            self.stats.feed_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(feed, error = %err, "feed message not published");
        }
    }

    /// Registers the metadata feed `feed` on first use; `false` if there is
    /// no agent or the feed cannot be registered (counted and logged).
    pub(super) fn open_metadata_feed(&self, feed: &str) -> bool {
        let Some(agent) = &self.agent else {
            return false;
        };
        let mut registered = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
        if !registered.contains(feed) {
            if let Err(err) = agent.register_feed(feed, FeedOptions::recorded(json!({}), 1.0)) {
                self.stats.feed_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(feed, error = %err, "cannot register the metadata feed");
                return false;
            }
            registered.insert(feed.to_owned());
        }
        true
    }

    /// Flushes the metadata feeds: OCS sends a recorded feed's buffer only
    /// when the next message comes, so the last value of a quiet stream
    /// would otherwise wait indefinitely.
    pub(super) fn flush_metadata(&self) {
        let Some(agent) = &self.agent else {
            return;
        };
        let feeds: Vec<String> = self
            .metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for feed in feeds {
            if let Err(err) = agent.flush_feed(&feed) {
                tracing::debug!(feed, error = %err, "cannot flush a metadata feed");
            }
        }
    }
}
