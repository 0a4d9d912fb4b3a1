//! The router: parses each datagram and sends it where its type says.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use files_db::suprsync::{SMURF_ARCHIVE, TIMESTREAMS_ARCHIVE};
use ocs_feed::enforce_field_name_rules;
use serde_json::{json, Value};
use smurf_protocol::{Datagram, Envelope, Message};
use tokio::sync::mpsc;

use super::sinks::{DeadLetterSink, Feeds, Refusals};
use super::{Received, Registration, SESSION_FEED};
use crate::stats::{MonitorStats, RejectReason};
use file_registration::epoch_seconds;

/// What the router touches: the counters, refusals, dead letters of
/// datagrams it refuses, and the feeds it publishes on.
pub(super) struct Router {
    pub(super) stats: Arc<MonitorStats>,
    pub(super) refusals: Arc<Refusals>,
    pub(super) dead_letters: Arc<DeadLetterSink>,
    pub(super) feeds: Arc<Feeds>,
    /// The database is SupRsync's: only its known archive names are taken.
    pub(super) suprsync: bool,
}

impl Router {
    /// Parses each datagram and sends it where its type says, in arrival
    /// order.
    pub(super) async fn run(
        self,
        mut received: mpsc::Receiver<Vec<Received>>,
        to_spool: mpsc::Sender<Registration>,
    ) {
        while let Some(batch) = received.recv().await {
            for datagram in batch {
                if !self.route(datagram, &to_spool).await {
                    return;
                }
            }
        }
    }

    /// Routes one datagram; `false` once the spool stage is gone.
    async fn route(&self, datagram: Received, to_spool: &mpsc::Sender<Registration>) -> bool {
        crate::fault::stage_item("router");
        let is_registration = self.route_one(datagram, to_spool).await;
        match is_registration {
            None => false,
            Some(true) => true,
            Some(false) => {
                // Not for the spool: no longer at risk of a kill -9.
                self.stats.unspooled_sub(1);
                true
            }
        }
    }

    /// Routes one datagram: `Some(true)` if it went to the spool stage,
    /// `Some(false)` if anywhere else, `None` once the spool stage is gone.
    async fn route_one(
        &self,
        datagram: Received,
        to_spool: &mpsc::Sender<Registration>,
    ) -> Option<bool> {
        let parsed = match Datagram::parse(&datagram.bytes) {
            Ok(parsed) => parsed,
            Err(err) => {
                if !datagram.replayed {
                    self.refusals.refuse(
                        datagram.sender,
                        RejectReason::Malformed,
                        &err.to_string(),
                    );
                }
                return Some(false);
            }
        };
        let is_file = matches!(parsed.message(), Message::DataFile(_) | Message::G3File(_));
        if datagram.replayed && !is_file {
            // Routed by the run that read it (at most once): not again.
            return Some(false);
        }
        match parsed.message() {
            Message::DataFile(_) | Message::G3File(_) => {
                let envelope = parsed.envelope().clone();
                let (Message::DataFile(file) | Message::G3File(file)) = parsed.into_message()
                else {
                    unreachable!("matched above");
                };
                if let Err(reason) = check_path(&file.path) {
                    self.refusals
                        .refuse(datagram.sender, RejectReason::PathRefused, reason);
                    self.dead_letters
                        .write_later(&datagram, format!("path refused: {reason}"))
                        .await;
                    return Some(false);
                }
                if self.suprsync {
                    let archive = file.archive_name.as_deref().unwrap_or(SMURF_ARCHIVE);
                    if ![SMURF_ARCHIVE, TIMESTREAMS_ARCHIVE].contains(&archive) {
                        let reason = format!(
                            "unknown archive name {archive:?}: SupRsync's remote paths are defined \
                             only for \"{SMURF_ARCHIVE}\" and \"{TIMESTREAMS_ARCHIVE}\""
                        );
                        self.refusals.refuse(
                            datagram.sender,
                            RejectReason::ArchiveRefused,
                            &reason,
                        );
                        self.dead_letters.write_later(&datagram, reason).await;
                        return Some(false);
                    }
                }
                self.stats.files_accepted.fetch_add(1, Ordering::Relaxed);
                let registration = Registration {
                    spool_id: None,
                    // From the journal: without a spool, its row may be committed.
                    replayed: datagram.replayed,
                    received: datagram,
                    envelope,
                    file,
                    slot: None,
                };
                if to_spool.send(registration).await.is_err() {
                    return None;
                }
                return Some(true);
            }
            Message::SessionData | Message::SessionLog => {
                self.stats.session_messages.fetch_add(1, Ordering::Relaxed);
                self.feeds
                    .publish(SESSION_FEED, Value::Object(parsed.into_json()));
            }
            Message::Metadata(metadata) => {
                self.stats.metadata_messages.fetch_add(1, Ordering::Relaxed);
                self.publish_metadata(
                    datagram.sender,
                    parsed.envelope(),
                    &metadata.path,
                    &metadata.value,
                );
            }
            other => {
                self.stats.other_messages.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(kind = other.kind(), sender = %datagram.sender, "datagram ignored");
            }
        }
        Some(false)
    }

    /// `metadata` → feed `<stream-id>_meta`, registered on first use; a stream
    /// id that cannot name a feed is refused (counted, logged once a minute per
    /// sender).
    fn publish_metadata(&self, sender: SocketAddr, envelope: &Envelope, path: &str, value: &Value) {
        let feed = metadata_feed(&envelope.pub_id);
        if !is_uri_component(&feed) {
            self.refusals.refuse(
                sender,
                RejectReason::StreamIdRefused,
                &format!(
                    "feed name {feed:?} is not one WAMP URI component (no '.', '#' or whitespace)"
                ),
            );
            return;
        }
        if !self.feeds.open_metadata_feed(&feed) {
            return;
        }
        let field = enforce_field_name_rules(path);
        let timestamp = envelope
            .time
            .unwrap_or_else(|| epoch_seconds(SystemTime::now()));
        self.feeds.publish(
            &feed,
            json!({"block_name": field, "timestamp": timestamp, "data": {field.clone(): value}}),
        );
    }
}

/// Paths the monitor will not even try: they cannot name a data file.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        Err("empty path")
    } else if !path.starts_with('/') {
        Err("relative path")
    } else if path.contains('\0') {
        Err("path contains a NUL byte")
    } else {
        Ok(())
    }
}

/// The feed socs 0.6.4 publishes a streamer's `metadata` on:
/// `<stream-id>_meta`, the stream id being what follows the first `:` of
/// the publisher id up to the next `:` (Python's `pub_id.split(':')[1]`),
/// or the whole id when it has no `:`; neither lower-cased nor rewritten.
fn metadata_feed(pub_id: &str) -> String {
    let stream_id = match pub_id.split(':').nth(1) {
        Some(stream_id) => stream_id,
        None => pub_id,
    };
    format!("{stream_id}_meta")
}

/// Whether `name` can be one component of a WAMP URI, as a feed name must
/// be (the router's loose URI rule: no `.`, `#` or whitespace).
fn is_uri_component(name: &str) -> bool {
    !name.is_empty() && !name.contains(['.', '#']) && !name.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::{is_uri_component, metadata_feed};

    #[test]
    fn metadata_feeds_are_named_as_socs_names_them() {
        assert_eq!(metadata_feed("STREAMER:crate1Slot2"), "crate1Slot2_meta");
        assert_eq!(metadata_feed("unidentified"), "unidentified_meta");
        assert_eq!(metadata_feed("a:b:c"), "b_meta");
        assert_eq!(metadata_feed("a:"), "_meta");
        assert!(is_uri_component("UFM-mv5_meta"));
        for bad in ["a.b_meta", "a b_meta", "x#_meta", ""] {
            assert!(!is_uri_component(bad), "{bad}");
        }
    }
}
