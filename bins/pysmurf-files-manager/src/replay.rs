//! `replay-dead-letters`: record the file registrations of a monitor
//! dead-letter file.
//!
//! Each line is a [`DeadLetterLine`] (`{"dead_at", "reason", "sender",
//! "received_at", "datagram"}`), the type the monitor writes them with. A `data_file` / `g3_file` datagram's row
//! is rebuilt as the monitor builds it, with the file's md5sum as it is now,
//! and inserted unless the same registration is already stored. The lines
//! that still fail are written, with the new reason, to `FILE.remaining`;
//! the dead-letter file itself is only read.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use file_registration::{
    epoch_seconds, file_row, registered_path, DeadLetterLine, FileHasher, HashError, Recorder,
    WaitPolicy,
};
use files_db::{FailureKind, FilesDb};
use serde_json::Value;
use smurf_protocol::{Datagram, Message};

/// One line of the dead-letter file.
#[derive(Debug)]
pub(crate) struct Letter {
    /// 1-based line number.
    line: usize,
    /// The dead letter, or the line itself with why it is not one.
    content: Result<DeadLetterLine, (String, String)>,
}

/// Reads every non-blank line of `file`.
pub(crate) fn read(file: &Path) -> Result<Vec<Letter>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the dead-letter file {}", file.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Letter {
            line: i + 1,
            content: match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(object)) => {
                    serde_json::from_value(Value::Object(object)).map_err(|err| {
                        (
                            line.to_owned(),
                            format!("line {} is not a dead letter: {err}", i + 1),
                        )
                    })
                }
                _ => Err((
                    line.to_owned(),
                    format!("line {} is not a JSON object", i + 1),
                )),
            },
        })
        .collect())
}

/// What [`replay`] did.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Rows inserted.
    pub(crate) replayed: u64,
    /// Registrations already stored (by the monitor or an earlier replay).
    pub(crate) already_present: u64,
    /// The lines that still fail, as JSON lines with the new reason.
    pub(crate) remaining: Vec<String>,
}

impl Summary {
    pub(crate) fn render(&self, remaining: &Path) -> String {
        format!(
            "replayed {}, already present {}, still failing {} (written to {})\n",
            self.replayed,
            self.already_present,
            self.remaining.len(),
            remaining.display()
        )
    }
}

/// The hasher for replayed files: one at a time, without waiting (the
/// monitor already waited for them), and only under `data_roots` when any
/// are given.
pub(crate) fn hasher(data_roots: &[PathBuf]) -> Result<FileHasher> {
    let policy = WaitPolicy {
        first_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        give_up_after: Duration::ZERO,
    };
    FileHasher::new(1, policy)
        .with_data_roots(data_roots)
        .context("cannot use --data-root")
}

/// Replays `letters` in order. A row the database refuses, a file that
/// cannot be read and a line that registers no file stay dead letters; a
/// database that cannot be reached ends the replay with an error (what was
/// inserted stays, and a second replay does not double it).
pub(crate) async fn replay(
    db: &FilesDb,
    hasher: &FileHasher,
    letters: &[Letter],
    recorder: &Recorder,
) -> Result<Summary> {
    let mut summary = Summary::default();
    for letter in letters {
        let mut dead = match &letter.content {
            Ok(dead) => dead.clone(),
            Err((raw, reason)) => {
                let line = DeadLetterLine {
                    dead_at: epoch_seconds(SystemTime::now()),
                    reason: reason.clone(),
                    sender: None,
                    received_at: None,
                    datagram: Value::String(raw.clone()),
                };
                summary.remaining.push(line.to_json());
                continue;
            }
        };
        match replay_one(db, hasher, &dead, recorder).await {
            Ok(Replayed::Inserted) => summary.replayed += 1,
            Ok(Replayed::AlreadyPresent) => summary.already_present += 1,
            Ok(Replayed::StillFailing(reason)) => {
                dead.reason = reason;
                summary.remaining.push(dead.to_json());
            }
            Err(err) => return Err(err.context(format!("replay line {}", letter.line))),
        }
    }
    Ok(summary)
}

enum Replayed {
    Inserted,
    AlreadyPresent,
    StillFailing(String),
}

async fn replay_one(
    db: &FilesDb,
    hasher: &FileHasher,
    letter: &DeadLetterLine,
    recorder: &Recorder,
) -> Result<Replayed> {
    let parsed = match &letter.datagram {
        Value::Object(datagram) => Datagram::from_json(datagram.clone()),
        Value::String(text) => Datagram::parse(text.as_bytes()),
        _ => {
            return Ok(Replayed::StillFailing(
                "the line has no datagram object".into(),
            ))
        }
    };
    let datagram = match parsed {
        Ok(datagram) => datagram,
        Err(err) => {
            return Ok(Replayed::StillFailing(format!(
                "the datagram cannot be parsed: {err}"
            )))
        }
    };
    let envelope = datagram.envelope().clone();
    let file = match datagram.into_message() {
        Message::DataFile(file) | Message::G3File(file) => file,
        other => {
            return Ok(Replayed::StillFailing(format!(
                "a {} datagram registers no file",
                other.kind()
            )))
        }
    };
    let path = registered_path(&file);
    // As the monitor: a relative path names no file (it depends on the reader's directory).
    if !Path::new(&path).is_absolute() {
        return Ok(Replayed::StillFailing(format!(
            "the path {path:?} is empty or relative"
        )));
    }
    let md5 = match hasher.md5(Path::new(&path)).await {
        Ok(md5) => md5,
        Err(HashError::NeverAppeared { .. }) => {
            return Ok(Replayed::StillFailing(format!("{path} does not exist")))
        }
        Err(err) => {
            return Ok(Replayed::StillFailing(format!(
                "{:#}",
                anyhow::Error::new(err)
            )))
        }
    };
    let row = file_row(&envelope, &file, recorder, md5);
    match db.insert_new_files(std::slice::from_ref(&row)).await {
        Ok(done) if done.inserted == 1 => Ok(Replayed::Inserted),
        Ok(_) => Ok(Replayed::AlreadyPresent),
        Err(err) if err.kind() == FailureKind::Rejected => Ok(Replayed::StillFailing(format!(
            "{:#}",
            anyhow::Error::new(err)
        ))),
        Err(err) => Err(err.into()),
    }
}

/// Writes `lines` to `FILE.remaining` (replacing an earlier one, through a
/// temporary file so a reader never sees half of it) and returns its path.
pub(crate) fn write_remaining(file: &Path, lines: &[String]) -> Result<PathBuf> {
    let mut name = file.as_os_str().to_owned();
    name.push(".remaining");
    let remaining = PathBuf::from(name);
    let mut temporary = remaining.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, &remaining))
        .with_context(|| format!("cannot write {}", remaining.display()))?;
    Ok(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_objects_or_kept_as_text_and_blank_lines_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dead.jsonl");
        let letter = r#"{"dead_at":1.5,"reason":"x","sender":"127.0.0.1:1","received_at":1.0,"datagram":{}}"#;
        std::fs::write(
            &file,
            format!("{letter}\n\n  \nnot json\n[1]\n{{\"reason\":\"x\"}}\n"),
        )
        .unwrap();
        let letters = read(&file).unwrap();
        let lines: Vec<usize> = letters.iter().map(|l| l.line).collect();
        assert_eq!(lines, [1, 4, 5, 6]);
        assert_eq!(letters[0].content.as_ref().unwrap().reason, "x");
        let (raw, reason) = letters[1].content.as_ref().unwrap_err();
        assert_eq!(raw, "not json");
        assert_eq!(reason, "line 4 is not a JSON object");
        assert!(letters[2].content.is_err());
        let (_, reason) = letters[3].content.as_ref().unwrap_err();
        assert!(
            reason.starts_with("line 6 is not a dead letter"),
            "{reason}"
        );
        let err = read(&dir.path().join("absent")).unwrap_err();
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
    }

    #[test]
    fn remaining_goes_beside_the_file_and_replaces_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dead.jsonl");
        std::fs::write(dir.path().join("dead.jsonl.remaining"), "old\nold\n").unwrap();
        let path = write_remaining(&file, &["{\"a\":1}".into()]).unwrap();
        assert_eq!(path, dir.path().join("dead.jsonl.remaining"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n");
        assert!(!dir.path().join("dead.jsonl.remaining.tmp").exists());
    }
}
