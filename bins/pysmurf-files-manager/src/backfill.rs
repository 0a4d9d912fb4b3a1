//! `backfill`: record files the monitor missed.
//!
//! [`walk`] lists the regular files under the directories given (symbolic
//! links are never followed, so a link cannot make a loop or lead outside
//! them); [`LayoutColumns`] reads the columns pysmurf's directory layout encodes;
//! [`record`] hashes the files in batches, skips those already stored with the
//! same (path, md5sum), and inserts the rest batch by batch, so an
//! interrupted run keeps what it committed and a second run adds nothing.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use file_registration::{FileHasher, HashError, LayoutColumns, Recorder, WaitPolicy};
use files_db::{FailureKind, FileRow, FilesDb};

/// Files checked against the table, hashed and inserted together.
const BATCH: usize = 500;

/// What [`walk`] found.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Regular files, sorted, each once.
    files: Vec<Found>,
    /// Entries that cannot be recorded, each with the reason (naming it).
    failed: Vec<String>,
    /// Symbolic links left alone.
    symlinks: u64,
}

#[derive(Debug)]
struct Found {
    path: String,
    modified: Option<DateTime<Utc>>,
}

/// Lists the regular files under `roots` (a root may also be a file). A
/// root that cannot be read is an error; anything below that cannot be read
/// is a failed entry, and the walk goes on.
pub(crate) fn walk(roots: &[PathBuf]) -> Result<Walk> {
    let mut walk = Walk::default();
    let mut dirs = Vec::new();
    for root in roots {
        let absolute = std::path::absolute(root)
            .map(|path| without_dot_dot(&path))
            .with_context(|| format!("cannot resolve {}", root.display()))?;
        // A root named on the command line is followed even if it is a link.
        let meta = std::fs::metadata(&absolute)
            .with_context(|| format!("cannot read {}", absolute.display()))?;
        if meta.is_dir() {
            dirs.push(absolute);
        } else {
            walk.add(absolute, &meta);
        }
    }
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) => {
                walk.failed.push(format!(
                    "{}: cannot read the directory: {err}",
                    dir.display()
                ));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    walk.failed.push(format!(
                        "{}: cannot read the directory: {err}",
                        dir.display()
                    ));
                    break;
                }
            };
            let path = entry.path();
            // DirEntry::metadata does not follow a symbolic link.
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => dirs.push(path),
                Ok(meta) if meta.file_type().is_symlink() => walk.symlinks += 1,
                Ok(meta) => walk.add(path, &meta),
                Err(err) => walk.failed.push(format!("{}: {err}", path.display())),
            }
        }
    }
    walk.files.sort_by(|a, b| a.path.cmp(&b.path));
    walk.files.dedup_by(|a, b| a.path == b.path);
    // Overlapping roots meet the same entries twice.
    walk.failed.sort();
    walk.failed.dedup();
    Ok(walk)
}

/// `path` with `.` and `..` removed by reading them, not by resolving links:
/// rows must carry the path pysmurf announces (`/data/x`), never
/// `/home/me/../../data/x` nor where a link points.
fn without_dot_dot(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Walk {
    fn add(&mut self, path: PathBuf, meta: &std::fs::Metadata) {
        if !meta.is_file() {
            self.failed.push(format!(
                "{}: not a regular file ({})",
                path.display(),
                kind_of(meta)
            ));
            return;
        }
        match path.into_os_string().into_string() {
            Ok(path) => self.files.push(Found {
                path,
                modified: meta.modified().ok().map(DateTime::<Utc>::from),
            }),
            Err(path) => self.failed.push(format!(
                "{}: the path is not UTF-8, which the path column cannot hold",
                Path::new(&path).display()
            )),
        }
    }
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// The row backfill records for `path`.
fn row_for(found: &Found, md5sum: [u8; 16], recorder: &Recorder) -> FileRow {
    let columns = LayoutColumns::of(Path::new(&found.path));
    let mut row = FileRow::new(found.path.clone(), md5sum);
    row.action = columns.action;
    row.action_timestamp = columns.action_timestamp;
    row.plot = columns.plot;
    row.pub_id = columns.pub_id;
    row.format = columns.format;
    row.timestamp = found.modified;
    row.site = Some(recorder.site.clone());
    row.instance_id = Some(recorder.instance_id.clone());
    row.socs_version = Some(recorder.program.clone());
    row
}

/// How [`record`] runs.
pub(crate) struct Options<'a> {
    pub(crate) recorder: &'a Recorder,
    /// Files hashed at once.
    pub(crate) jobs: usize,
    /// Check and report only; insert nothing.
    pub(crate) dry_run: bool,
    /// Show a progress line on stderr.
    pub(crate) progress: bool,
    /// SupRsync's database: the archive of the rows (`None`: a
    /// `pysmurf_files_v1` target).
    pub(crate) archive: Option<String>,
}

/// What [`record`] did.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Files found.
    pub(crate) found: u64,
    /// Rows added.
    pub(crate) added: u64,
    /// In a dry run, the paths that would be added.
    pub(crate) would_add: Vec<String>,
    /// Already recorded with the same path and md5sum.
    pub(crate) skipped: u64,
    /// Could not be recorded, each with its reason (naming the file).
    pub(crate) failed: Vec<String>,
    /// Symbolic links not followed.
    pub(crate) symlinks: u64,
}

impl Summary {
    /// What an operator reads: the files a dry run would add, the counts,
    /// and every failure with its reason.
    pub(crate) fn render(&self, dry_run: bool) -> String {
        let mut out = String::new();
        if dry_run {
            for path in &self.would_add {
                out.push_str(&format!("would add {path}\n"));
            }
        }
        out.push_str(&format!(
            "{}: {} files found, {} {}, {} skipped (already recorded), {} failed\n",
            if dry_run {
                "dry run, nothing written"
            } else {
                "backfill"
            },
            self.found,
            if dry_run {
                self.would_add.len() as u64
            } else {
                self.added
            },
            if dry_run { "would be added" } else { "added" },
            self.skipped,
            self.failed.len(),
        ));
        if self.symlinks > 0 {
            out.push_str(&format!("{} symbolic links not followed\n", self.symlinks));
        }
        for reason in &self.failed {
            out.push_str(&format!("failed: {reason}\n"));
        }
        out
    }
}

/// Hashes the files of `walk`, skips those stored with the same path and
/// md5sum and (unless a dry run) inserts the rest, a batch at a time. A
/// database that cannot be read or written ends the run with an error (what
/// was committed stays); a row the database refuses is a failed file.
pub(crate) async fn record(db: &FilesDb, walk: Walk, options: &Options<'_>) -> Result<Summary> {
    let mut summary = Summary {
        found: walk.files.len() as u64,
        failed: walk.failed,
        symlinks: walk.symlinks,
        ..Summary::default()
    };
    // Files were just listed: one that is gone now is reported, not waited for.
    let hasher = FileHasher::new(
        options.jobs,
        WaitPolicy {
            first_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            give_up_after: Duration::ZERO,
        },
    );
    let mut progress = Progress::new(options.progress, walk.files.len());
    for batch in walk.files.chunks(BATCH) {
        let paths: Vec<&str> = batch.iter().map(|f| f.path.as_str()).collect();
        let stored = db.stored_md5s(&paths).await?;
        let digests = hash_all(&hasher, batch, options.jobs, &mut progress).await;
        let mut rows = Vec::new();
        for (found, digest) in batch.iter().zip(digests) {
            match digest {
                Ok(md5) if stored.contains(&(found.path.clone(), md5)) => summary.skipped += 1,
                Ok(md5) => {
                    let mut row = row_for(found, md5, options.recorder);
                    row.archive_name = options.archive.clone();
                    rows.push(row);
                }
                Err(HashError::NeverAppeared { .. }) => summary
                    .failed
                    .push(format!("{}: vanished before it was read", found.path)),
                Err(err) => summary
                    .failed
                    .push(format!("{:#}", anyhow::Error::new(err))),
            }
        }
        if options.dry_run {
            summary
                .would_add
                .extend(rows.into_iter().map(|row| row.path));
        } else {
            insert(db, rows, &mut summary).await?;
        }
        progress.show(summary.added as usize + summary.would_add.len(), true);
    }
    progress.finish();
    Ok(summary)
}

/// The md5 of every file of `batch`, in order, at most `jobs` at once.
async fn hash_all(
    hasher: &FileHasher,
    batch: &[Found],
    jobs: usize,
    progress: &mut Progress,
) -> Vec<Result<[u8; 16], HashError>> {
    let mut results: Vec<Option<Result<[u8; 16], HashError>>> =
        std::iter::repeat_with(|| None).take(batch.len()).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < batch.len() || !running.is_empty() {
        while next < batch.len() && running.len() < jobs.max(1) * 2 {
            let hasher = hasher.clone();
            let path = PathBuf::from(&batch[next].path);
            let index = next;
            running.spawn(async move { (index, hasher.md5(&path).await) });
            next += 1;
        }
        if let Some(joined) = running.join_next().await {
            let (index, digest) = joined.expect("a hashing task never panics");
            results[index] = Some(digest);
            progress.tick();
        }
    }
    results
        .into_iter()
        .map(|digest| digest.expect("every file was hashed"))
        .collect()
}

/// Inserts `rows` in one transaction; when the database refuses one of them,
/// row by row, so only the refused rows fail. Rows stored meanwhile (by the
/// monitor, with the same identity) count as skipped.
async fn insert(db: &FilesDb, rows: Vec<FileRow>, summary: &mut Summary) -> Result<()> {
    match db.insert_new_files(&rows).await {
        Ok(done) => {
            summary.skipped += done.skipped;
            summary.added += done.inserted;
            Ok(())
        }
        Err(err) if err.kind() == FailureKind::Rejected => {
            for row in rows {
                match db.insert_new_files(std::slice::from_ref(&row)).await {
                    Ok(done) => {
                        summary.added += done.inserted;
                        summary.skipped += done.skipped;
                    }
                    // The error names the row's path.
                    Err(err) if err.kind() == FailureKind::Rejected => summary
                        .failed
                        .push(format!("{:#}", anyhow::Error::new(err))),
                    Err(err) => return Err(err.into()),
                }
            }
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// A one-line progress report on stderr, redrawn at most ten times a second,
/// when stderr is a terminal.
struct Progress {
    enabled: bool,
    total: usize,
    hashed: usize,
    added: usize,
    drawn: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool, total: usize) -> Self {
        Self {
            enabled,
            total,
            hashed: 0,
            added: 0,
            drawn: None,
        }
    }

    fn tick(&mut self) {
        self.hashed += 1;
        self.show(self.added, false);
    }

    fn show(&mut self, added: usize, force: bool) {
        self.added = added;
        if !self.enabled {
            return;
        }
        if !force
            && self
                .drawn
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(Instant::now());
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[Khashed {}/{} files, {} new",
            self.hashed, self.total, self.added
        );
        let _ = stderr.flush();
    }

    fn finish(&mut self) {
        if self.enabled && self.drawn.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_absolute_without_dots() {
        assert_eq!(
            without_dot_dot(Path::new("/home/me/../../data/./smurf/")),
            Path::new("/data/smurf")
        );
        assert_eq!(without_dot_dot(Path::new("/../x")), Path::new("/x"));
    }

    #[test]
    fn the_walk_lists_regular_files_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/one.txt"), b"1").unwrap();
        std::fs::write(root.join("two.npy"), b"2").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("a/b/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("two.npy"), root.join("link.npy")).unwrap();
        let fifo = root.join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());

        // The same file named twice, directly and through its directory, is listed once.
        let walk = walk(&[root.to_owned(), root.join("two.npy")]).unwrap();
        let paths: Vec<&str> = walk.files.iter().map(|f| f.path.as_str()).collect();
        let root_text = root.to_str().unwrap();
        assert_eq!(
            paths,
            [
                format!("{root_text}/a/b/one.txt"),
                format!("{root_text}/two.npy")
            ]
        );
        assert!(walk.files.iter().all(|f| f.modified.is_some()));
        assert_eq!(walk.symlinks, 2);
        assert_eq!(walk.failed.len(), 1, "{:?}", walk.failed);
        assert!(walk.failed[0].contains("pipe: not a regular file (a FIFO)"));

        let missing = super::walk(&[root.join("missing")]).unwrap_err();
        assert!(format!("{missing:#}").contains("missing"), "{missing:#}");
    }
}
