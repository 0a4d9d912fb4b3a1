//! The dead-letter file: registrations the monitor could not record, kept
//! with the reason so an operator can fix and replay them. Its line format,
//! [`DeadLetterLine`], is `file-registration`'s (the files manager reads it);
//! this module writes it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use file_registration::DeadLetterLine;

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

/// An append-only JSON-lines file of [`DeadLetter`]s, one
/// [`DeadLetterLine`] a line: `{"dead_at", "reason", "sender",
/// "received_at", "datagram"}` where `datagram` is the original JSON object
/// (or, if it was not JSON, its text).
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
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `letter` as one line, written to the OS before returning.
    /// Blocking file I/O: the pipeline goes through [`DeadLetterWriter`]
    /// instead; the tests use it.
    #[cfg(test)]
    pub fn record(&self, letter: &DeadLetter<'_>) -> Result<(), DeadLetterError> {
        self.append(&line_of(letter))?;
        log_moved(&self.path, &letter.reason);
        Ok(())
    }

    /// Appends `text` (whole lines), creating the file and its directory
    /// on first use.
    fn append(&self, text: &str) -> Result<(), DeadLetterError> {
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
        file.write_all(text.as_bytes()).map_err(fail)
    }
}

/// `letter` as its JSON line, newline included.
fn line_of(letter: &DeadLetter<'_>) -> String {
    let mut line = DeadLetterLine::new(
        letter.reason.as_str(),
        letter.sender,
        letter.received_at,
        letter.datagram,
    )
    .to_json();
    line.push('\n');
    line
}

fn log_moved(path: &Path, reason: &str) {
    tracing::warn!(
        path = %path.display(),
        reason,
        "registration moved to the dead-letter file"
    );
}

/// Letters waiting for the writer thread; when full, the stages that
/// dead-letter wait.
const WRITER_QUEUE: usize = 1024;

/// Most letters the writer appends with one write.
const WRITER_GROUP: usize = 256;

/// A dead letter handed to the [`DeadLetterWriter`].
pub(crate) struct Letter {
    pub(crate) reason: String,
    pub(crate) sender: SocketAddr,
    pub(crate) received_at: SystemTime,
    pub(crate) datagram: Arc<[u8]>,
}

/// Writes [`DeadLetters`] from a thread of its own, so that no async stage
/// ever blocks on creating directories, opening or appending to the file.
/// [`DeadLetterWriter::write`] returns once the letter is written (or its
/// write failed, logged): a caller that acks the registration's spool
/// record after it keeps the rule that a registration leaves the spool only
/// once it is committed or dead-lettered. Letters queued together are
/// appended with one write. The thread ends when the writer is dropped.
pub(crate) struct DeadLetterWriter {
    queue: tokio::sync::mpsc::Sender<Job>,
}

/// A letter to write (`None`: only report when everything before is
/// written) and whom to tell when it is.
type Job = (Option<Letter>, Option<tokio::sync::oneshot::Sender<bool>>);

impl DeadLetterWriter {
    /// Starts the writer thread for `letters`.
    pub(crate) fn start(letters: DeadLetters) -> std::io::Result<Self> {
        let (queue, mut jobs) = tokio::sync::mpsc::channel::<Job>(WRITER_QUEUE);
        std::thread::Builder::new()
            .name("dead-letters".into())
            .spawn(move || {
                while let Some(first) = jobs.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < WRITER_GROUP {
                        match jobs.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    let letters_of_group = || group.iter().filter_map(|(letter, _)| letter.as_ref());
                    let text: String = letters_of_group()
                        .map(|letter| {
                            line_of(&DeadLetter {
                                reason: letter.reason.clone(),
                                sender: letter.sender,
                                received_at: letter.received_at,
                                datagram: &letter.datagram,
                            })
                        })
                        .collect();
                    let written = match letters.append(&text) {
                        Ok(()) => {
                            for letter in letters_of_group() {
                                log_moved(&letters.path, &letter.reason);
                            }
                            true
                        }
                        Err(err) => {
                            for letter in letters_of_group() {
                                tracing::error!(error = %err, reason = %letter.reason, "dead letter lost");
                            }
                            false
                        }
                    };
                    for (_, done) in group {
                        if let Some(done) = done {
                            let _ = done.send(written);
                        }
                    }
                }
            })?;
        Ok(Self { queue })
    }

    /// Writes `letter`; returns once it is written (`true`) or its write
    /// failed (`false`, logged).
    pub(crate) async fn write(&self, letter: Letter) -> bool {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.queue.send((Some(letter), Some(done))).await.is_err() {
            return false;
        }
        written.await.unwrap_or(false)
    }

    /// Returns once every letter queued before is written (or lost).
    pub(crate) async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.queue.send((None, Some(done))).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Queues `letter` without waiting for it to be written: for a datagram
    /// that has no spool record to ack.
    pub(crate) async fn write_later(&self, letter: Letter) {
        let _ = self.queue.send((Some(letter), None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::UNIX_EPOCH;

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

    fn letter(reason: &str) -> Letter {
        Letter {
            reason: reason.into(),
            sender: "127.0.0.1:5000".parse().unwrap(),
            received_at: UNIX_EPOCH,
            datagram: Arc::from(&br#"{"id":"p","type":"data_file","payload":{"path":"/x"}}"#[..]),
        }
    }

    #[tokio::test]
    async fn the_writer_has_written_a_letter_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dead_letters.jsonl");
        let writer = DeadLetterWriter::start(DeadLetters::new(&path)).unwrap();
        assert!(writer.write(letter("first")).await);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        writer.write_later(letter("second")).await;
        writer.write_later(letter("third")).await;
        writer.flush().await;
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let reasons: Vec<&str> = lines
            .iter()
            .map(|l| l["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, ["first", "second", "third"]);
        assert_eq!(lines[2]["datagram"]["payload"]["path"], "/x");
    }

    #[tokio::test]
    async fn the_writer_reports_a_letter_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let writer =
            DeadLetterWriter::start(DeadLetters::new(dir.path().join("file/d.jsonl"))).unwrap();
        assert!(!writer.write(letter("x")).await);
    }

    /// A dead-letter file that blocks (here a FIFO nobody reads yet, as a
    /// hung NFS mount would) never blocks the async stages: on a
    /// single-threaded runtime another task still runs while the letter
    /// waits, and the letter is written once the file takes it.
    #[tokio::test]
    async fn a_blocking_dead_letter_file_never_blocks_the_async_runtime() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("dead_letters.jsonl");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let mut line = String::new();
                std::io::BufReader::new(std::fs::File::open(&fifo).unwrap())
                    .read_line(&mut line)
                    .unwrap();
                line
            }
        });
        let writer = DeadLetterWriter::start(DeadLetters::new(&fifo)).unwrap();
        let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let written = written.clone();
            async move {
                let ok = writer.write(letter("blocked")).await;
                written.store(true, std::sync::atomic::Ordering::SeqCst);
                ok
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !written.load(std::sync::atomic::Ordering::SeqCst),
            "the runtime was blocked until the file took the letter"
        );
        assert!(task.await.unwrap());
        let line: Value = serde_json::from_str(&reader.join().unwrap()).unwrap();
        assert_eq!(line["reason"], "blocked");
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
