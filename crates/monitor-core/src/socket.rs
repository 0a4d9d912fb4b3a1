//! The monitor's UDP socket, set up for bursts.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Receive buffer asked of the kernel: room for a burst of several thousand
/// datagrams while the receiver is busy. Linux caps the request at
/// `net.core.rmem_max`; raise it (`sysctl -w net.core.rmem_max=33554432`)
/// for the full size. The monitor logs a warning when it got less.
pub const RECEIVE_BUFFER_BYTES: usize = 32 << 20;

/// Binds the monitor's UDP socket on `addr` with a large receive buffer.
/// An IPv6 wildcard address (`[::]`) also receives IPv4 datagrams.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let socket = monitor_core::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
/// assert!(socket.local_addr().unwrap().port() > 0);
/// # });
/// ```
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER_BYTES)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Linux reports twice the granted size (it counts its bookkeeping).
    let granted = socket.recv_buffer_size().unwrap_or_default() / 2;
    if granted < RECEIVE_BUFFER_BYTES {
        tracing::warn!(
            requested = RECEIVE_BUFFER_BYTES,
            granted,
            "UDP receive buffer smaller than asked; raise net.core.rmem_max for burst safety"
        );
    }
    UdpSocket::from_std(socket.into())
}
