//! The dead-letter file: registrations the monitor could not record, kept
//! with the reason so an operator can fix and replay them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Why a registration could not be written (the [`DeadLetters`] file could
/// not be opened or appended to).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the dead-letter file {path}")]
pub struct DeadLetterError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// One registration given up on.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Why, in words an operator can act on (the database's message, the
    /// file error, the refused path).
    pub reason: String,
    /// Who sent the datagram.
    pub sender: SocketAddr,
    /// When the monitor received it.
    pub received_at: SystemTime,
    /// The datagram as received.
    pub datagram: &'a [u8],
}

/// An append-only JSON-lines file of [`DeadLetter`]s, one object a line:
/// `{"dead_at", "reason", "sender", "received_at", "datagram"}` where
/// `datagram` is the original JSON object (or, if it was not JSON, its text).
/// Cheap to clone; clones append to the same file.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    path: PathBuf,
    file: Arc<Mutex<Option<std::fs::File>>>,
}

impl DeadLetters {
    /// Dead letters appended to `path`, created (with its directory) on the
    /// first letter.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            file: Arc::new(Mutex::new(None)),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `letter` as one line, written to the OS before returning.
    pub fn record(&self, letter: &DeadLetter<'_>) -> Result<(), DeadLetterError> {
        let datagram = serde_json::from_slice::<Value>(letter.datagram)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(letter.datagram).into()));
        let mut line = json!({
            "dead_at": epoch_seconds(SystemTime::now()),
            "reason": letter.reason,
            "sender": letter.sender.to_string(),
            "received_at": epoch_seconds(letter.received_at),
            "datagram": datagram,
        })
        .to_string();
        line.push('\n');
        let fail = |source| DeadLetterError {
            path: self.path.clone(),
            source,
        };
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(fail)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(fail)?;
            *guard = Some(file);
        }
        let file = guard.as_mut().expect("opened above");
        file.write_all(line.as_bytes()).map_err(fail)?;
        tracing::warn!(
            path = %self.path.display(),
            reason = %letter.reason,
            "registration moved to the dead-letter file"
        );
        Ok(())
    }
}

/// Seconds since the Unix epoch (0 for earlier times).
pub(crate) fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_json_lines_with_the_original_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::new(dir.path().join("sub/dead_letters.jsonl"));
        let sender: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        letters
            .record(&DeadLetter {
                reason: "Data too long for column 'path'".into(),
                sender,
                received_at: UNIX_EPOCH,
                datagram: br#"{"id":"p","type":"data_file","payload":{"path":"/x"}}"#,
            })
            .unwrap();
        letters
            .clone()
            .record(&DeadLetter {
                reason: "not JSON".into(),
                sender,
                received_at: UNIX_EPOCH,
                datagram: b"\xffnot json",
            })
            .unwrap();
        let text = std::fs::read_to_string(letters.path()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "Data too long for column 'path'");
        assert_eq!(lines[0]["datagram"]["payload"]["path"], "/x");
        assert_eq!(lines[0]["sender"], "127.0.0.1:5000");
        assert_eq!(lines[1]["datagram"], "\u{fffd}not json");
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let letters = DeadLetters::new(dir.path().join("file/dead.jsonl"));
        let err = letters
            .record(&DeadLetter {
                reason: "x".into(),
                sender: "127.0.0.1:1".parse().unwrap(),
                received_at: UNIX_EPOCH,
                datagram: b"{}",
            })
            .unwrap_err();
        assert!(err.to_string().contains("file/dead.jsonl"), "{err}");
    }
}
