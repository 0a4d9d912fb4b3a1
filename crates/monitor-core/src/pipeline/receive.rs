//! The receiver: drains the UDP socket, nothing else, on a thread of its own.

use super::*;

/// Most datagrams handed to the router at once. Batches form only when
/// datagrams are already queued in the socket: at a low rate each datagram
/// goes on alone, at once.
pub(super) const RECEIVE_BATCH: usize = 64;

/// Starts the receiver on a dedicated OS thread with a current-thread
/// runtime of its own, so that draining the socket never waits for a
/// worker thread busy parsing, spooling or hashing: during a burst the
/// datagrams move from the kernel's buffer into the router's channel as fast
/// as they arrive. The thread ends when `shutdown` is cancelled or the
/// router is gone; dropping its sender then closes the router's input.
/// A failing socket or a panic on the thread fails the pipeline
/// ([`Shared::fail`]).
pub(super) fn start_receiver(
    shared: Arc<Shared>,
    socket: UdpSocket,
    to_router: mpsc::Sender<Vec<Received>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    crate::fault::receiver_start()?;
    // Leaves the caller's reactor; registered again on the thread's own.
    let socket = socket.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("udp-receiver".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(async {
                    let socket = UdpSocket::from_std(socket)?;
                    receive(&shared, &socket, &to_router, &shutdown).await
                })
            }));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) => shared.fail(PipelineError::Socket(err)),
                Err(panic) => shared.fail(PipelineError::Panicked {
                    stage: "receiver",
                    message: panic_message(panic.as_ref()),
                }),
            }
        })?;
    Ok(())
}

/// Drains the socket into the router's channel, in batches of what is
/// queued; never parses, never waits on anything but that channel. Ends
/// with `Ok` at `shutdown` or when the router is gone, with the error when
/// the socket fails.
async fn receive(
    shared: &Shared,
    socket: &UdpSocket,
    to_router: &mpsc::Sender<Vec<Received>>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    // One byte more than any UDP payload: a datagram is never truncated
    // silently, so oversize is always detected.
    let mut buffer = vec![0u8; 65_536];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ready = socket.readable() => ready?,
        }
        crate::fault::socket(shared.stats.datagrams_received.load(Ordering::Relaxed))?;
        let mut batch = Vec::new();
        while batch.len() < RECEIVE_BATCH {
            let (len, sender) = match socket.try_recv_from(&mut buffer) {
                Ok(received) => received,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) if is_transient(&err) => {
                    // E.g. ICMP errors reported on the socket; nothing to lose.
                    tracing::debug!(error = %err, "UDP receive error");
                    break;
                }
                Err(err) => return Err(err),
            };
            if let Some(received) = admit(shared, &buffer[..len], sender) {
                batch.push(received);
            }
        }
        if !batch.is_empty() && to_router.send(batch).await.is_err() {
            // The router is gone: its own failure is what stops the pipeline.
            return Ok(());
        }
    }
}

/// Receive errors after which the socket still works: ICMP reports of an
/// earlier send, interruptions, a momentary lack of kernel memory. Any
/// other (a closed or invalid descriptor, …) means no more datagrams.
fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        Interrupted
            | ConnectionRefused
            | ConnectionReset
            | HostUnreachable
            | NetworkUnreachable
            | OutOfMemory
            | TimedOut
    ) || err.raw_os_error() == Some(105) // ENOBUFS
}

/// Counts a datagram and keeps it if its sender is allowed and its size is.
fn admit(shared: &Shared, bytes: &[u8], sender: SocketAddr) -> Option<Received> {
    shared
        .stats
        .datagrams_received
        .fetch_add(1, Ordering::Relaxed);
    if !shared.options.allow_from.allows(sender.ip()) {
        refuse(
            shared,
            sender,
            RejectReason::NotAllowed,
            "sender not in --allow-from",
        );
        return None;
    }
    if bytes.len() > MAX_DATAGRAM_LEN {
        refuse(
            shared,
            sender,
            RejectReason::TooLarge,
            &format!(
                "{} bytes, over the {MAX_DATAGRAM_LEN}-byte limit",
                bytes.len()
            ),
        );
        return None;
    }
    Some(Received {
        sender,
        received_at: SystemTime::now(),
        bytes: Arc::from(bytes),
    })
}
