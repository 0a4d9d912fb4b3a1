//! The line format of the monitor's dead-letter file.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One line of the dead-letter file: the file format shared by the monitor,
/// which appends them (`monitor-core`'s `DeadLetters`), and `pysmurf-files-manager
/// replay-dead-letters`, which reads them and writes the lines that still
/// fail, in the same format, to `FILE.remaining`.
///
/// A line is one JSON object with exactly these keys, in this order:
///
/// ```text
/// {"dead_at":1764748800.25,"reason":"...","sender":"127.0.0.1:5000","received_at":1764748800.0,"datagram":{...}}
/// ```
///
/// Times are seconds since the Unix epoch (see [`epoch_seconds`]). The key
/// order is part of the format (serialized in field order): operators read
/// and `grep` these files.
///
/// ```
/// use file_registration::DeadLetterLine;
/// use std::time::UNIX_EPOCH;
///
/// let sender = "127.0.0.1:5000".parse().unwrap();
/// let line = DeadLetterLine::new("Data too long for column 'path'", sender, UNIX_EPOCH, br#"{"id":"p"}"#);
/// let json = line.to_json();
/// assert!(json.starts_with(r#"{"dead_at":"#));
/// assert!(json.ends_with(r#""sender":"127.0.0.1:5000","received_at":0.0,"datagram":{"id":"p"}}"#));
/// assert_eq!(serde_json::from_str::<DeadLetterLine>(&json).unwrap(), line);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterLine {
    /// When the registration was given up on.
    pub dead_at: f64,
    /// Why, in words an operator can act on.
    pub reason: String,
    /// Who sent the datagram (`ip:port`); `null` in a replay's remaining
    /// line made from a line that was not a dead letter.
    pub sender: Option<String>,
    /// When the monitor received the datagram; `null` as `sender`.
    pub received_at: Option<f64>,
    /// The datagram as received: its JSON object, or (if it was not JSON)
    /// its text, invalid UTF-8 replaced by U+FFFD.
    pub datagram: Value,
}

impl DeadLetterLine {
    /// The line of a registration given up on now: `datagram` (as received
    /// from `sender` at `received_at`) could not be recorded because of
    /// `reason`.
    pub fn new(
        reason: impl Into<String>,
        sender: SocketAddr,
        received_at: SystemTime,
        datagram: &[u8],
    ) -> Self {
        let datagram = serde_json::from_slice::<Value>(datagram)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(datagram).into()));
        Self {
            dead_at: epoch_seconds(SystemTime::now()),
            reason: reason.into(),
            sender: Some(sender.to_string()),
            received_at: Some(epoch_seconds(received_at)),
            datagram,
        }
    }

    /// The line as its JSON text, without the newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a dead-letter line always serializes")
    }
}

/// Seconds since the Unix epoch (0 for earlier times), as the dead-letter
/// file ([`DeadLetterLine`]) and the monitor's OCS feeds write times.
pub fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line is byte for byte what the monitor wrote before the type
    /// existed (`json!` with the keys in this order), and reads back.
    #[test]
    fn a_line_keeps_its_keys_in_order_and_round_trips() {
        let datagram = br#"{"id":"p","type":"data_file","payload":{"path":"/x"}}"#;
        let line = DeadLetterLine::new(
            "r",
            "127.0.0.1:5000".parse().unwrap(),
            UNIX_EPOCH + std::time::Duration::from_millis(1500),
            datagram,
        );
        let old = serde_json::json!({
            "dead_at": line.dead_at,
            "reason": "r",
            "sender": "127.0.0.1:5000",
            "received_at": 1.5,
            "datagram": serde_json::from_slice::<Value>(datagram).unwrap(),
        })
        .to_string();
        assert_eq!(line.to_json(), old);
        assert!(old.starts_with("{\"dead_at\":"), "{old}");
        let back: DeadLetterLine = serde_json::from_str(&old).unwrap();
        assert_eq!(back, line);
    }

    #[test]
    fn a_datagram_that_is_not_json_is_kept_as_its_text() {
        let line = DeadLetterLine::new(
            "not JSON",
            "127.0.0.1:5000".parse().unwrap(),
            UNIX_EPOCH,
            b"\xffnot json",
        );
        assert_eq!(line.datagram, Value::String("\u{fffd}not json".into()));
    }

    #[test]
    fn times_before_the_epoch_are_zero() {
        assert_eq!(epoch_seconds(UNIX_EPOCH), 0.0);
        assert_eq!(
            epoch_seconds(UNIX_EPOCH - std::time::Duration::from_secs(1)),
            0.0
        );
        assert_eq!(
            epoch_seconds(UNIX_EPOCH + std::time::Duration::from_millis(2500)),
            2.5
        );
    }
}
