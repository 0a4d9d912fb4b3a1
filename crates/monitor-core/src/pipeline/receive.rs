//! The receiver: drains the UDP socket, nothing else.

use super::*;

/// Drains the socket into the router's channel; never parses or waits on
/// anything but that channel.
pub(super) async fn receive_stage(
    shared: Arc<Shared>,
    socket: UdpSocket,
    to_router: mpsc::Sender<Received>,
    shutdown: CancellationToken,
) {
    // One byte more than any UDP payload: a datagram is never truncated
    // silently, so oversize is always detected.
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (len, sender) = tokio::select! {
            _ = shutdown.cancelled() => break,
            result = socket.recv_from(&mut buffer) => match result {
                Ok(received) => received,
                Err(err) => {
                    // E.g. ICMP errors reported on the socket; nothing to lose.
                    tracing::debug!(error = %err, "UDP receive error");
                    continue;
                }
            },
        };
        let stats = &shared.stats;
        stats.datagrams_received.fetch_add(1, Ordering::Relaxed);
        if !shared.options.allow_from.allows(sender.ip()) {
            refuse(
                &shared,
                sender,
                RejectReason::NotAllowed,
                "sender not in --allow-from",
            );
            continue;
        }
        if len > MAX_DATAGRAM_LEN {
            refuse(
                &shared,
                sender,
                RejectReason::TooLarge,
                &format!("{len} bytes, over the {MAX_DATAGRAM_LEN}-byte limit"),
            );
            continue;
        }
        let received = Received {
            sender,
            received_at: SystemTime::now(),
            bytes: buffer[..len].to_vec(),
        };
        if to_router.send(received).await.is_err() {
            break;
        }
    }
}
