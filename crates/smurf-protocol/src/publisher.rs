//! Sending datagrams as pysmurf's publisher does, for tests, examples and Rust smurf tools.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use serde::Serialize;
use serde_json::Value;

use crate::payload::unix_now;
use crate::{Envelope, FilePayload, LogPayload, MAX_DATAGRAM_LEN};

/// Who a [`Publisher`] says it is, in every envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Host name sent as `host`.
    pub host: String,
    /// Publisher id sent as `id`; pysmurf reads it from `SMURFPUB_ID`.
    pub pub_id: String,
    /// Script name sent as `script`.
    pub script_id: String,
}

impl PublisherConfig {
    /// A config with this machine's host name (from `/proc/sys/kernel/hostname`, else
    /// `$HOSTNAME`, else `"localhost"`).
    pub fn new(pub_id: impl Into<String>, script_id: impl Into<String>) -> PublisherConfig {
        PublisherConfig {
            host: host_name(),
            pub_id: pub_id.into(),
            script_id: script_id.into(),
        }
    }
}

impl Default for PublisherConfig {
    /// pysmurf's defaults: both ids `"undeclared"`.
    fn default() -> PublisherConfig {
        PublisherConfig::new("undeclared", "undeclared")
    }
}

/// Why a [`Publisher`] could not send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No local UDP socket could be bound.
    #[error("cannot bind a UDP socket to send from")]
    Bind(#[source] io::Error),

    /// The datagram could not be encoded as JSON.
    #[error("cannot encode the datagram as JSON")]
    Encode(#[source] serde_json::Error),

    /// The encoded datagram is longer than [`MAX_DATAGRAM_LEN`]; it was not sent, and a
    /// `backend_error` message saying so was sent in its place, as pysmurf does.
    #[error("datagram of {len} bytes not sent: over the limit of {MAX_DATAGRAM_LEN}")]
    TooLarge {
        /// Length of the encoded datagram in bytes.
        len: usize,
    },

    /// The socket refused the datagram.
    #[error("cannot send datagram to {target}")]
    Send {
        /// Where it was going.
        target: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
}

/// Sends datagrams to one address over UDP, numbering them with `seq_no` from 0, in the
/// envelope pysmurf's `Publisher` uses.
///
/// Unlike pysmurf's, it sends no `start` or `stop` message by itself; publish them when
/// they matter.
///
/// ```
/// use std::net::UdpSocket;
/// use smurf_protocol::{Datagram, FilePayload, Message, Publisher, PublisherConfig};
///
/// let monitor = UdpSocket::bind("127.0.0.1:0")?;
/// let mut publisher = Publisher::new(monitor.local_addr()?, PublisherConfig::default())?;
/// let file = FilePayload::new("/data/smurf_data/tune.npy", "tuning");
/// publisher.register_file(&file)?;
///
/// let mut buf = [0; smurf_protocol::MAX_DATAGRAM_LEN];
/// let len = monitor.recv(&mut buf)?;
/// let datagram = Datagram::parse(&buf[..len])?;
/// assert_eq!(datagram.message(), &Message::DataFile(file));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Publisher {
    socket: UdpSocket,
    target: SocketAddr,
    config: PublisherConfig,
    next_seq_no: u64,
}

impl Publisher {
    /// A publisher sending to `target` from an ephemeral port of the same address family.
    pub fn new(target: SocketAddr, config: PublisherConfig) -> Result<Publisher, PublishError> {
        let local = match target {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let socket = UdpSocket::bind(local).map_err(PublishError::Bind)?;
        Ok(Publisher::with_socket(socket, target, config))
    }

    /// A publisher sending from `socket`, which the caller has bound.
    pub fn with_socket(
        socket: UdpSocket,
        target: SocketAddr,
        config: PublisherConfig,
    ) -> Publisher {
        Publisher {
            socket,
            target,
            config,
            next_seq_no: 0,
        }
    }

    /// Where datagrams go.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The socket datagrams are sent from.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The `seq_no` the next datagram will carry.
    pub fn next_seq_no(&self) -> u64 {
        self.next_seq_no
    }

    /// Sends `payload` as a message of type `kind`, whatever it holds (so tests can send
    /// malformed payloads), and returns the envelope sent.
    ///
    /// A datagram over [`MAX_DATAGRAM_LEN`] is not sent: a `backend_error` goes in its place
    /// and [`PublishError::TooLarge`] is returned. It still uses up a `seq_no`, so the
    /// receiver sees the gap.
    pub fn publish(&mut self, kind: &str, payload: &Value) -> Result<Envelope, PublishError> {
        let (envelope, bytes) = self.encode(kind, payload)?;
        if bytes.len() > MAX_DATAGRAM_LEN {
            let len = bytes.len();
            let notice = LogPayload {
                message: format!("Backend error: dropped large UDP packet ({len} bytes)."),
            };
            // The notice is small; if it cannot be sent either, the caller still learns why
            // its datagram was not sent, which matters more.
            let (_, notice) = self.encode("backend_error", &notice.to_json())?;
            let _ = self.send(&notice);
            return Err(PublishError::TooLarge { len });
        }
        self.send(&bytes)?;
        Ok(envelope)
    }

    /// Sends a `data_file` message registering `file`, and returns the envelope sent.
    pub fn register_file(&mut self, file: &FilePayload) -> Result<Envelope, PublishError> {
        self.publish("data_file", &file.to_json())
    }

    /// Encodes a message of type `kind` as the next datagram (it uses up a `seq_no`)
    /// without sending it, for a sender that prepares its datagrams ahead of time, such as a
    /// load generator; send the bytes through [`Publisher::socket`] to
    /// [`Publisher::target`]. Unlike [`Publisher::publish`], nothing here refuses a datagram
    /// over [`MAX_DATAGRAM_LEN`]: the caller checks the length.
    pub fn prepare(&mut self, kind: &str, payload: &Value) -> Result<Vec<u8>, PublishError> {
        self.encode(kind, payload).map(|(_, bytes)| bytes)
    }

    fn encode(&mut self, kind: &str, payload: &Value) -> Result<(Envelope, Vec<u8>), PublishError> {
        let time = unix_now();
        let seq_no = self.next_seq_no;
        self.next_seq_no += 1;
        let wire = WireDatagram {
            host: &self.config.host,
            id: &self.config.pub_id,
            script: &self.config.script_id,
            time,
            seq_no,
            kind,
            payload,
        };
        let bytes = serde_json::to_vec(&wire).map_err(PublishError::Encode)?;
        let envelope = Envelope {
            host: Some(self.config.host.clone()),
            pub_id: self.config.pub_id.clone(),
            script_id: Some(self.config.script_id.clone()),
            time: Some(time),
            seq_no: Some(seq_no),
            kind: kind.to_owned(),
        };
        Ok((envelope, bytes))
    }

    fn send(&self, bytes: &[u8]) -> Result<(), PublishError> {
        self.socket
            .send_to(bytes, self.target)
            .map(drop)
            .map_err(|source| PublishError::Send {
                target: self.target,
                source,
            })
    }
}

/// The datagram on the wire, fields in pysmurf's order.
#[derive(Serialize)]
struct WireDatagram<'a> {
    host: &'a str,
    id: &'a str,
    script: &'a str,
    time: f64,
    seq_no: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    payload: &'a Value,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{Datagram, Message, MetadataPayload};

    struct Loopback {
        monitor: UdpSocket,
        publisher: Publisher,
    }

    fn loopback() -> Loopback {
        let monitor = UdpSocket::bind("127.0.0.1:0").expect("bind monitor");
        monitor
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        let target = monitor.local_addr().expect("local addr");
        let config = PublisherConfig::new("crate1slot2", "test_script");
        let publisher = Publisher::new(target, config).expect("bind publisher");
        Loopback { monitor, publisher }
    }

    impl Loopback {
        #[track_caller]
        fn receive(&self) -> Datagram {
            let mut buf = vec![0; MAX_DATAGRAM_LEN + 1];
            let len = self.monitor.recv(&mut buf).expect("receive");
            Datagram::parse(&buf[..len]).expect("parse")
        }
    }

    #[test]
    fn register_file_round_trips() {
        let mut link = loopback();
        let file = FilePayload {
            format: Some("npy".to_owned()),
            action: Some("tune".to_owned()),
            action_ts: Some(1_700_000_000),
            pysmurf_version: Some("7.3.0".to_owned()),
            ..FilePayload::new("/data/smurf_data/1700000000_tune.npy", "tuning")
        };
        let sent = link.publisher.register_file(&file).expect("send");
        let received = link.receive();
        assert_eq!(received.envelope(), &sent);
        assert_eq!(received.message(), &Message::DataFile(file));
        assert_eq!(sent.pub_id, "crate1slot2");
        assert_eq!(sent.script_id.as_deref(), Some("test_script"));
        assert_eq!(sent.kind, "data_file");
    }

    #[test]
    fn seq_no_counts_from_zero() {
        let mut link = loopback();
        for expected in 0..3 {
            link.publisher.publish("start", &json!({})).expect("send");
            assert_eq!(link.receive().envelope().seq_no, Some(expected));
        }
        assert_eq!(link.publisher.next_seq_no(), 3);
    }

    #[test]
    fn publish_round_trips_each_kind() {
        let mut link = loopback();
        let metadata = MetadataPayload {
            path: "AMCc.enableStreaming".to_owned(),
            value_type: "int".to_owned(),
            value: json!(1),
        };
        let log = LogPayload {
            message: "tuning band 0".to_owned(),
        };
        let cases = [
            (
                "g3_file",
                json!({"path": "/f.g3", "archive_name": "timestreams"}),
            ),
            ("metadata", metadata.to_json()),
            ("log", log.to_json()),
            ("session_data", json!({"datafile": "/f.dat"})),
            ("session_log", json!("a line")),
            ("general", json!([1, 2])),
        ];
        for (kind, payload) in cases {
            let sent = link.publisher.publish(kind, &payload).expect("send");
            let received = link.receive();
            assert_eq!(received.envelope(), &sent);
            assert_eq!(received.message().kind(), kind);
            assert_eq!(received.payload(), &payload);
        }
    }

    #[test]
    fn a_prepared_datagram_is_what_publish_would_send_and_uses_a_seq_no() {
        let mut link = loopback();
        let bytes = link
            .publisher
            .prepare("session_log", &json!("ahead"))
            .unwrap();
        assert_eq!(link.publisher.next_seq_no(), 1);
        let prepared = Datagram::parse(&bytes).unwrap();
        assert_eq!(prepared.envelope().seq_no, Some(0));
        assert_eq!(prepared.payload(), &json!("ahead"));
        let sent = link
            .publisher
            .publish("session_log", &json!("now"))
            .unwrap();
        assert_eq!(sent.seq_no, Some(1));
    }

    #[test]
    fn refuses_oversized_datagram_and_sends_backend_error() {
        let mut link = loopback();
        let payload = json!({"message": "x".repeat(MAX_DATAGRAM_LEN)});
        let err = link.publisher.publish("log", &payload);
        let Err(PublishError::TooLarge { len }) = err else {
            panic!("expected TooLarge, got {err:?}");
        };
        assert!(len > MAX_DATAGRAM_LEN);
        let notice = link.receive();
        assert_eq!(notice.envelope().seq_no, Some(1));
        let Message::BackendError(LogPayload { message }) = notice.message() else {
            panic!("expected backend_error, got {notice:?}");
        };
        assert_eq!(
            message,
            &format!("Backend error: dropped large UDP packet ({len} bytes).")
        );
    }
}
