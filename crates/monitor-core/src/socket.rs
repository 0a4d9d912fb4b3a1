//! The monitor's UDP socket, set up for bursts.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Receive buffer asked of the kernel: room for a burst of several thousand
/// datagrams while the receiver is busy. Linux caps the request at
/// `net.core.rmem_max`; the monitor then asks again with `SO_RCVBUFFORCE`,
/// which a process with `CAP_NET_ADMIN` (e.g. root) may, and logs a warning
/// when it may not: raise `net.core.rmem_max`
/// (`sysctl -w net.core.rmem_max=33554432`) for the full size.
pub(crate) const RECEIVE_BUFFER_BYTES: usize = 32 << 20;

/// Binds the monitor's UDP socket on `addr` with a large receive buffer.
/// An IPv6 wildcard address (`[::]`) also receives IPv4 datagrams.
///
/// The port is bound exclusively (no `SO_REUSEADDR`, no `SO_REUSEPORT`): if
/// another process already receives on it, e.g. a second monitor started
/// with the same `--udp-port`, this fails with
/// [`io::ErrorKind::AddrInUse`] and a message naming the port, instead of
/// silently taking the datagrams away from the first one.
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
    socket.set_recv_buffer_size(RECEIVE_BUFFER_BYTES)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|err| {
        if err.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "UDP port {} is already in use by another process (another \
                     pysmurf-monitor?); refusing to share it: {err}",
                    addr.port()
                ),
            )
        } else {
            err
        }
    })?;
    // Linux reports twice the granted size (it counts its bookkeeping).
    let mut granted = socket.recv_buffer_size().unwrap_or_default() / 2;
    if granted < RECEIVE_BUFFER_BYTES {
        // Beyond net.core.rmem_max: allowed with CAP_NET_ADMIN (root, or
        // the capability given to the service).
        match nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &RECEIVE_BUFFER_BYTES,
        ) {
            Ok(()) => {
                granted = socket.recv_buffer_size().unwrap_or_default() / 2;
                tracing::info!(
                    granted,
                    "UDP receive buffer forced past net.core.rmem_max (SO_RCVBUFFORCE)"
                );
            }
            Err(errno) => tracing::warn!(
                error = %errno,
                requested = RECEIVE_BUFFER_BYTES,
                granted,
                "UDP receive buffer capped by net.core.rmem_max and SO_RCVBUFFORCE not \
                 permitted (needs CAP_NET_ADMIN): raise net.core.rmem_max for burst safety"
            ),
        }
    }
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_in_use_is_refused_with_an_error_naming_it() {
        let first = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = first.local_addr().unwrap().port();
        let err = bind_udp(format!("127.0.0.1:{port}").parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(
            err.to_string().contains(&format!("UDP port {port} ")),
            "{err}"
        );
        assert!(err.to_string().contains("another process"), "{err}");
    }
}
