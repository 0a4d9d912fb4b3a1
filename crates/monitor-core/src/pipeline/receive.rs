//! The receiver: drains the UDP socket, nothing else, on a thread of its own.

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use smurf_protocol::MAX_DATAGRAM_LEN;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::journaling::Journaling;
use super::sinks::Refusals;
use super::supervise::{panic_message, Supervisor};
use super::{PipelineError, Received};
use crate::guard::AllowList;
use crate::stats::{MonitorStats, RejectReason};

/// Most datagrams read with one system call (`recvmmsg`) and handed to the
/// router at once. Batches form only when datagrams are already queued in
/// the socket: at a low rate each datagram goes on alone, at once.
pub(super) const RECEIVE_BATCH: usize = 64;

/// Bytes of each receive buffer: one more than any UDP payload, so a
/// datagram is never truncated silently and oversize is always detected.
const DATAGRAM_BUFFER: usize = 65_536;

/// How long a receive waits before looking at the stop token again.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Longest the receiver goes on reading what the kernel holds once the
/// pipeline stops (a sender that never pauses must not hold the exit up).
const FINAL_DRAIN: Duration = Duration::from_secs(2);

/// What the receiver touches: the allow-list, the counters it bumps, the
/// refusals it reports, the receive journal it writes, and the supervisor
/// it reports its end to.
pub(super) struct Receiver {
    /// Senders heard (empty: everyone).
    pub(super) allow_from: AllowList,
    pub(super) stats: Arc<MonitorStats>,
    pub(super) refusals: Arc<Refusals>,
    pub(super) journaling: Journaling,
    pub(super) supervisor: Arc<Supervisor>,
}

impl Receiver {
    /// Starts the receiver on a dedicated OS thread that does blocking batch
    /// receives (`recvmmsg`, up to [`RECEIVE_BATCH`] datagrams a call), so
    /// that draining the socket never waits for a worker thread busy parsing,
    /// spooling or hashing, and costs one system call per batch: during a
    /// burst the datagrams move from the kernel's buffer into the router's
    /// channel as fast as they arrive. The thread ends when `shutdown` is
    /// cancelled (within [`STOP_POLL`]) or the router is gone; dropping its
    /// sender then closes the router's input. A failing socket or a panic on
    /// the thread fails the pipeline ([`Supervisor::fail`]).
    pub(super) fn start(
        mut self,
        socket: UdpSocket,
        to_router: mpsc::Sender<Vec<Received>>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        crate::fault::receiver_start()?;
        // Leaves the caller's reactor: this thread blocks on the socket.
        let socket = socket.into_std()?;
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(STOP_POLL))?;
        std::thread::Builder::new()
            .name("udp-receiver".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.receive(&socket, &to_router, &shutdown)
                }));
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => self.supervisor.fail(PipelineError::Socket(err)),
                    Err(panic) => self.supervisor.fail(PipelineError::Panicked {
                        stage: "receiver",
                        message: panic_message(panic.as_ref()),
                    }),
                }
            })?;
        Ok(())
    }

    /// Drains the socket into the router's channel, a batch of what is queued
    /// per system call, each batch written to the receive journal first; never
    /// parses, never waits on anything but the socket, the journal's `write`
    /// and that channel. At `shutdown`, or when the router is gone, it reads
    /// what the kernel still holds ([`Receiver::drain`]) and ends with `Ok`;
    /// it ends with the error when the socket fails.
    fn receive(
        &mut self,
        socket: &std::net::UdpSocket,
        to_router: &mpsc::Sender<Vec<Received>>,
        shutdown: &CancellationToken,
    ) -> std::io::Result<()> {
        let mut buffers = vec![0u8; DATAGRAM_BUFFER * RECEIVE_BATCH];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(RECEIVE_BATCH, None);
        while crate::fault::stalled("receiver") && !shutdown.is_cancelled() {
            std::thread::sleep(STOP_POLL);
        }
        while !shutdown.is_cancelled() {
            // Blocks for the first datagram (up to STOP_POLL), then takes what
            // is queued without waiting.
            let flags = MsgFlags::MSG_WAITFORONE;
            let Some(batch) = self.read_batch(socket, &mut buffers, &mut headers, flags)? else {
                continue;
            };
            if batch.is_empty() {
                continue;
            }
            self.stats.unspooled_add(batch.len() as u64);
            if to_router.blocking_send(batch).is_err() {
                // The router is gone: its own failure is what stops the pipeline.
                break;
            }
        }
        self.drain(socket, &mut buffers, &mut headers, to_router)
    }

    /// At stop, reads what the kernel still holds for the socket (for at most
    /// [`FINAL_DRAIN`]) into the journal, so that a restart replays it instead
    /// of the datagrams vanishing with the socket. Batches go on to the router
    /// while its channel has room (a graceful stop then records them now); from
    /// the first that does not fit, the journal alone keeps them, in order.
    fn drain(
        &mut self,
        socket: &std::net::UdpSocket,
        buffers: &mut [u8],
        headers: &mut MultiHeaders<SockaddrStorage>,
        to_router: &mpsc::Sender<Vec<Received>>,
    ) -> std::io::Result<()> {
        let deadline = Instant::now() + FINAL_DRAIN;
        let mut hand_on = true;
        while Instant::now() < deadline {
            let Some(batch) = self.read_batch(socket, buffers, headers, MsgFlags::MSG_DONTWAIT)?
            else {
                break;
            };
            if batch.is_empty() || !hand_on {
                continue;
            }
            let count = batch.len() as u64;
            match to_router.try_send(batch) {
                Ok(()) => self.stats.unspooled_add(count),
                Err(_) => hand_on = false,
            }
        }
        Ok(())
    }

    /// One `recvmmsg`: the admitted datagrams of the batch read, already in the
    /// journal (empty when all were refused or the error was transient), or
    /// `None` when nothing was queued.
    fn read_batch(
        &mut self,
        socket: &std::net::UdpSocket,
        buffers: &mut [u8],
        headers: &mut MultiHeaders<SockaddrStorage>,
        flags: MsgFlags,
    ) -> std::io::Result<Option<Vec<Received>>> {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
            .chunks_mut(DATAGRAM_BUFFER)
            .map(|buffer| [IoSliceMut::new(buffer)])
            .collect();
        let received = match recvmmsg(socket.as_raw_fd(), headers, slices.iter_mut(), flags, None) {
            Ok(received) => received,
            // Nothing queued (STOP_POLL elapsed, or a non-blocking read).
            Err(Errno::EAGAIN) => return Ok(None),
            Err(errno) if is_transient(errno) => {
                // E.g. ICMP errors reported on the socket; nothing to lose.
                tracing::debug!(error = %errno, "UDP receive error");
                return Ok(Some(Vec::new()));
            }
            Err(errno) => return Err(errno.into()),
        };
        crate::fault::socket(self.stats.datagrams_received.load(Ordering::Relaxed))?;
        // One clock reading per batch: they all arrived by now.
        let received_at = SystemTime::now();
        let mut batch = Vec::with_capacity(RECEIVE_BATCH);
        let mut count = 0;
        for message in received {
            count += 1;
            let bytes = message.iovs().next().unwrap_or_default();
            let Some(sender) = message.address.as_ref().and_then(socket_addr) else {
                continue;
            };
            if let Some(datagram) = self.admit(bytes, sender, received_at) {
                batch.push(datagram);
            }
        }
        self.stats
            .datagrams_received
            .fetch_add(count, Ordering::Relaxed);
        if !batch.is_empty() {
            // On disk (page cache) before it is handed on: a kill -9 loses at
            // most the batch being read.
            self.journaling.write(received_at, &mut batch);
        }
        Ok(Some(batch))
    }

    /// Keeps a datagram if its sender is allowed and its size is (counting a
    /// refusal).
    fn admit(&self, bytes: &[u8], sender: SocketAddr, received_at: SystemTime) -> Option<Received> {
        if !self.allow_from.allows(sender.ip()) {
            self.refusals.refuse(
                sender,
                RejectReason::NotAllowed,
                "sender not in --allow-from",
            );
            return None;
        }
        if bytes.len() > MAX_DATAGRAM_LEN {
            self.refusals.refuse(
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
            received_at,
            bytes: Arc::from(bytes),
            journal_seq: 0,
            replayed: false,
        })
    }
}

/// The sender of a datagram (IPv4 or IPv6).
fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    address.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// Receive errors after which the socket still works: ICMP reports of an
/// earlier send, interruptions, a momentary lack of kernel memory. Any
/// other (a closed or invalid descriptor, …) means no more datagrams.
fn is_transient(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EINTR
            | Errno::ECONNREFUSED
            | Errno::ECONNRESET
            | Errno::EHOSTUNREACH
            | Errno::ENETUNREACH
            | Errno::ENOMEM
            | Errno::ENOBUFS
            | Errno::ETIMEDOUT
    )
}
