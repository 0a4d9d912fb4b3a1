//! The router: parses each datagram and sends it where its type says.

use super::*;

/// Parses each datagram and sends it where its type says, in arrival order.
pub(super) async fn route_stage(
    shared: Arc<Shared>,
    mut received: mpsc::Receiver<Vec<Received>>,
    to_spool: mpsc::Sender<Registration>,
) {
    while let Some(batch) = received.recv().await {
        for datagram in batch {
            if !route(&shared, datagram, &to_spool).await {
                return;
            }
        }
    }
}

/// Routes one datagram; `false` once the spool stage is gone.
async fn route(shared: &Shared, datagram: Received, to_spool: &mpsc::Sender<Registration>) -> bool {
    crate::fault::stage_item("router");
    let is_registration = route_one(shared, datagram, to_spool).await;
    match is_registration {
        None => false,
        Some(true) => true,
        Some(false) => {
            // Not for the spool: no longer at risk of a kill -9.
            shared.stats.unspooled_sub(1);
            true
        }
    }
}

/// Routes one datagram: `Some(true)` if it went to the spool stage,
/// `Some(false)` if anywhere else, `None` once the spool stage is gone.
async fn route_one(
    shared: &Shared,
    datagram: Received,
    to_spool: &mpsc::Sender<Registration>,
) -> Option<bool> {
    let parsed = match Datagram::parse(&datagram.bytes) {
        Ok(parsed) => parsed,
        Err(err) => {
            refuse(
                shared,
                datagram.sender,
                RejectReason::Malformed,
                &err.to_string(),
            );
            return Some(false);
        }
    };
    match parsed.message() {
        Message::DataFile(_) | Message::G3File(_) => {
            let envelope = parsed.envelope().clone();
            let (Message::DataFile(file) | Message::G3File(file)) = parsed.into_message() else {
                unreachable!("matched above");
            };
            if let Err(reason) = check_path(&file.path) {
                refuse(shared, datagram.sender, RejectReason::PathRefused, reason);
                dead_letter_later(shared, &datagram, format!("path refused: {reason}")).await;
                return Some(false);
            }
            shared.stats.files_accepted.fetch_add(1, Ordering::Relaxed);
            let registration = Registration {
                spool_id: None,
                received: datagram,
                envelope,
                file,
                replayed: false,
                slot: None,
            };
            if to_spool.send(registration).await.is_err() {
                return None;
            }
            return Some(true);
        }
        Message::SessionData | Message::SessionLog => {
            shared
                .stats
                .session_messages
                .fetch_add(1, Ordering::Relaxed);
            publish(shared, SESSION_FEED, Value::Object(parsed.into_json()));
        }
        Message::Metadata(metadata) => {
            shared
                .stats
                .metadata_messages
                .fetch_add(1, Ordering::Relaxed);
            publish_metadata(shared, parsed.envelope(), &metadata.path, &metadata.value);
        }
        other => {
            shared.stats.other_messages.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(kind = other.kind(), sender = %datagram.sender, "datagram ignored");
        }
    }
    Some(false)
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

/// `metadata` → feed `<stream-id>_meta`, registered on first use.
fn publish_metadata(shared: &Shared, envelope: &Envelope, path: &str, value: &Value) {
    let Some(agent) = &shared.agent else {
        return;
    };
    // Feed names are URI components: lowercase letters, digits, underscores.
    let feed = format!(
        "{}_meta",
        enforce_field_name_rules(envelope.stream_id()).to_lowercase()
    );
    let mut registered = shared
        .metadata_feeds
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !registered.contains(&feed) {
        if let Err(err) = agent.register_feed(&feed, FeedOptions::recorded(json!({}), 1.0)) {
            shared.stats.feed_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(feed, error = %err, "cannot register the metadata feed");
            return;
        }
        registered.insert(feed.clone());
    }
    drop(registered);
    let field = enforce_field_name_rules(path);
    let timestamp = envelope
        .time
        .unwrap_or_else(|| epoch_seconds(SystemTime::now()));
    publish(
        shared,
        &feed,
        json!({"block_name": field, "timestamp": timestamp, "data": {field.clone(): value}}),
    );
}
