//! md5 of registered files, computed off the async threads with bounded
//! concurrency, waiting for files that do not exist yet.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Read size for hashing: large enough that syscalls do not dominate.
const READ_CHUNK: usize = 1 << 20;

/// How long to wait for a registered file that does not exist yet.
///
/// pysmurf may announce a file before its writer has closed it (or before
/// a network filesystem shows it); the hasher retries with doubling delays
/// from `first_delay` up to `max_delay`, and gives up after `give_up_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Delay before the first retry.
    pub first_delay: Duration,
    /// Longest delay between retries.
    pub max_delay: Duration,
    /// Total time after which a still-missing file is given up on.
    pub give_up_after: Duration,
}

impl Default for WaitPolicy {
    /// 0.5 s doubling to 30 s, giving up after 10 minutes.
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            give_up_after: Duration::from_secs(600),
        }
    }
}

/// Why a file could not be hashed. A made-up md5 is never returned instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// The file did not appear within the [`WaitPolicy`].
    #[error("{path} still does not exist after waiting {waited:?}")]
    NeverAppeared {
        /// The file.
        path: PathBuf,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The file resolves (symlinks and `..` followed) to a place outside
    /// every data root, so it is not read.
    #[error("{path} resolves to {resolved}, outside the data roots")]
    OutsideDataRoots {
        /// The file as registered.
        path: PathBuf,
        /// Where it really is.
        resolved: PathBuf,
    },
    /// The file exists but cannot be read (permissions, a directory, an I/O
    /// error); waiting would not help.
    #[error("cannot read {path}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// Computes md5s on tokio's blocking threads, at most `concurrency` at once.
/// Cheap to clone; clones share the limit.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use file_registration::{FileHasher, WaitPolicy};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("a.txt");
/// std::fs::write(&path, b"hello\n").unwrap();
/// let hasher = FileHasher::new(2, WaitPolicy::default());
/// let md5 = hasher.md5(&path).await.unwrap();
/// assert_eq!(md5[..4], [0xb1, 0x94, 0x6a, 0xc9]);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct FileHasher {
    permits: Arc<Semaphore>,
    policy: WaitPolicy,
    data_roots: Arc<Vec<PathBuf>>,
}

impl FileHasher {
    /// A hasher running at most `concurrency` (at least 1) reads at once.
    pub fn new(concurrency: usize, policy: WaitPolicy) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            policy,
            data_roots: Arc::new(Vec::new()),
        }
    }

    /// Only files under one of `roots` (after resolving symlinks and `..`)
    /// are read; others fail with [`HashError::OutsideDataRoots`]. No roots
    /// means no restriction. Each root must exist: it is resolved now.
    pub fn with_data_roots(mut self, roots: &[PathBuf]) -> io::Result<Self> {
        let resolved = roots
            .iter()
            .map(|root| {
                root.canonicalize()
                    .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", root.display())))
            })
            .collect::<io::Result<Vec<_>>>()?;
        self.data_roots = Arc::new(resolved);
        Ok(self)
    }

    /// How long [`md5`](Self::md5) waits for files that do not exist yet.
    pub fn wait_policy(&self) -> WaitPolicy {
        self.policy
    }

    /// The md5 of the file at `path`, waiting for it to appear as the
    /// [`WaitPolicy`] allows.
    pub async fn md5(&self, path: &Path) -> Result<[u8; 16], HashError> {
        self.md5_waiting(path, || {}).await
    }

    /// [`md5`](Self::md5), calling `before_wait` each time the file is not
    /// there yet, before waiting for it (the monitor's pipeline gives back
    /// its in-memory slot then).
    pub async fn md5_waiting(
        &self,
        path: &Path,
        mut before_wait: impl FnMut(),
    ) -> Result<[u8; 16], HashError> {
        let started = Instant::now();
        let mut delay = self.policy.first_delay;
        loop {
            if let Some(digest) = self.md5_if_present(path).await? {
                return Ok(digest);
            }
            let waited = started.elapsed();
            if waited >= self.policy.give_up_after {
                return Err(HashError::NeverAppeared {
                    path: path.to_owned(),
                    waited,
                });
            }
            before_wait();
            tracing::debug!(path = %path.display(), ?delay, "file not there yet; waiting");
            let remaining = self.policy.give_up_after - waited;
            tokio::time::sleep(delay.min(remaining)).await;
            delay = (delay * 2).min(self.policy.max_delay);
        }
    }

    /// The md5 of the file at `path`, or `None` if it does not exist (yet):
    /// one attempt, no waiting. For callers that wait their own way.
    pub async fn md5_if_present(&self, path: &Path) -> Result<Option<[u8; 16]>, HashError> {
        let mut results = self.md5_many_if_present(vec![path.to_owned()]).await;
        results.pop().expect("one result per path")
    }

    /// [`md5_if_present`](Self::md5_if_present) of each path, in order, read
    /// one after the other by one blocking job (one of the `concurrency`
    /// allowed at once). Many small files cost one hand-off to a blocking
    /// thread instead of one each, which is most of the cost of hashing a
    /// small file.
    pub async fn md5_many_if_present(
        &self,
        paths: Vec<PathBuf>,
    ) -> Vec<Result<Option<[u8; 16]>, HashError>> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let roots = self.data_roots.clone();
        let paths = Arc::new(paths);
        let job = tokio::task::spawn_blocking({
            let paths = paths.clone();
            move || {
                paths
                    .iter()
                    .map(|path| classify(path, md5_within(path, &roots)))
                    .collect()
            }
        });
        job.await.unwrap_or_else(|join| {
            // Only if the runtime shuts down before the job starts.
            paths
                .iter()
                .map(|path| classify(path, Err(io::Error::other(join.to_string()))))
                .collect()
        })
    }
}

/// One attempt's outcome as [`FileHasher::md5_if_present`] reports it.
fn classify(
    path: &Path,
    attempt: io::Result<Result<[u8; 16], PathBuf>>,
) -> Result<Option<[u8; 16]>, HashError> {
    match attempt {
        Ok(Ok(digest)) => Ok(Some(digest)),
        Ok(Err(resolved)) => Err(HashError::OutsideDataRoots {
            path: path.to_owned(),
            resolved,
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HashError::Unreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The md5 of `path` if it resolves under one of `roots` (or `roots` is
/// empty); `Ok(Err(resolved))` when it resolves elsewhere.
fn md5_within(path: &Path, roots: &[PathBuf]) -> io::Result<Result<[u8; 16], PathBuf>> {
    if !roots.is_empty() {
        let resolved = path.canonicalize()?;
        if !roots.iter().any(|root| resolved.starts_with(root)) {
            return Ok(Err(resolved));
        }
        // Read what was checked, not a path a concurrent rename could redirect.
        return md5_of_file(&resolved).map(Ok);
    }
    md5_of_file(path).map(Ok)
}

/// Reads the whole file; a directory or special file is an error, not a hash.
fn md5_of_file(path: &Path) -> io::Result<[u8; 16]> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK (Linux's value): opening a FIFO for reading would otherwise
    // block until a writer appears, holding a hashing permit forever. It does
    // not change reads of a regular file, the only kind read below.
    const O_NONBLOCK: i32 = 0o4000;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if metadata.len() >= OVERLAP_FROM {
        return md5_overlapped(file);
    }
    thread_local! {
        // One read buffer per blocking thread, allocated once: zeroing a fresh
        // 1 MiB buffer per file cost more CPU than hashing small files.
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
    }
    BUFFER.with_borrow_mut(|buffer| {
        let mut hasher = Md5::new();
        while let Some(n) = read_some(&mut file, buffer)? {
            hasher.update(&buffer[..n]);
        }
        Ok(hasher.finalize().into())
    })
}

/// Files at least this large are read on a second thread while the first
/// hashes: reading (a copy from the page cache, or the disk) then costs no
/// hashing time. Below it, a thread costs more than it saves.
const OVERLAP_FROM: u64 = 8 << 20;

/// [`md5_of_file`] of a large file: a reader thread fills buffers, this one
/// hashes them, three buffers in rotation.
fn md5_overlapped(mut file: std::fs::File) -> io::Result<[u8; 16]> {
    use std::sync::mpsc;
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        // The receiver is alive: sending cannot fail.
        let _ = empty_tx.send(vec![0; READ_CHUNK]);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Ends at the end of the file, on an error, or when the hasher
            // stops taking buffers.
            while let Ok(mut buffer) = empty_rx.recv() {
                let read = read_some(&mut file, &mut buffer);
                let done = !matches!(read, Ok(Some(_)));
                let sent = full_tx.send(read.map(|n| (buffer, n.unwrap_or(0))));
                if done || sent.is_err() {
                    break;
                }
            }
        });
        let mut hasher = Md5::new();
        loop {
            match full_rx.recv() {
                Ok(Ok((_, 0))) => return Ok(hasher.finalize().into()),
                Ok(Ok((buffer, n))) => {
                    hasher.update(&buffer[..n]);
                    let _ = empty_tx.send(buffer);
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(io::Error::other("the reader thread stopped")),
            }
        }
    })
}

/// One `read` into `buffer`: `Some(bytes read)`, or `None` at the end.
fn read_some(file: &mut std::fs::File, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match file.read(buffer) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn quick() -> WaitPolicy {
        WaitPolicy {
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            give_up_after: Duration::from_secs(3),
        }
    }

    /// The digest coreutils' `md5sum` computes, as raw bytes.
    fn md5sum_tool(path: &Path) -> [u8; 16] {
        let out = Command::new("md5sum")
            .arg(path)
            .output()
            .expect("run md5sum");
        let hex = String::from_utf8(out.stdout).unwrap();
        let hex = hex.split_whitespace().next().unwrap();
        let mut digest = [0; 16];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        digest
    }

    #[tokio::test]
    async fn matches_md5sum_for_empty_small_and_multi_chunk_files() {
        let dir = tempfile::tempdir().unwrap();
        let hasher = FileHasher::new(2, quick());
        let large = 2 * OVERLAP_FROM as usize + 12_345;
        for (name, len) in [
            ("empty", 0),
            ("small", 13),
            ("big", 3 * READ_CHUNK + 7),
            ("large, read on a second thread", large),
        ] {
            let path = dir.path().join(name);
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(
                hasher.md5(&path).await.unwrap(),
                md5sum_tool(&path),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn waits_for_a_file_that_appears_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.npy");
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::write(&path, b"late").unwrap();
            })
        };
        let md5 = FileHasher::new(1, quick()).md5(&path).await.unwrap();
        writer.await.unwrap();
        assert_eq!(md5, md5sum_tool(&path));
    }

    #[tokio::test]
    async fn gives_up_on_a_file_that_never_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never");
        let policy = WaitPolicy {
            give_up_after: Duration::from_millis(200),
            ..quick()
        };
        let started = std::time::Instant::now();
        let err = FileHasher::new(1, policy).md5(&path).await.unwrap_err();
        assert!(matches!(err, HashError::NeverAppeared { .. }), "{err}");
        assert!(err.to_string().contains("never"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn data_roots_refuse_escapes_through_dots_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(&outside, b"secret").unwrap();
        std::fs::write(root.join("sub/ok.txt"), b"ok").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let hasher = FileHasher::new(1, quick())
            .with_data_roots(std::slice::from_ref(&root))
            .unwrap();
        assert!(hasher.md5(&root.join("sub/ok.txt")).await.is_ok());
        assert!(hasher.md5(&root.join("sub/../sub/ok.txt")).await.is_ok());
        for escape in [root.join("link"), root.join("sub/../../secret")] {
            let err = hasher.md5(&escape).await.unwrap_err();
            assert!(matches!(err, HashError::OutsideDataRoots { .. }), "{err}");
        }
        assert!(FileHasher::new(1, quick())
            .with_data_roots(&[dir.path().join("missing")])
            .is_err());
    }

    /// A FIFO is refused at once instead of blocking a hashing thread until
    /// someone writes to it.
    #[tokio::test]
    async fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let hasher = FileHasher::new(1, quick());
        let result = tokio::time::timeout(Duration::from_secs(5), hasher.md5(&fifo)).await;
        let err = result.expect("answered without blocking").unwrap_err();
        assert!(matches!(err, HashError::Unreadable { .. }), "{err}");
        // The single permit is free again: a regular file still hashes.
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(hasher.md5(&file).await.is_ok());
    }

    #[tokio::test]
    async fn a_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let policy = WaitPolicy {
            give_up_after: Duration::from_secs(3600),
            ..quick()
        };
        let err = FileHasher::new(1, policy)
            .md5(dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, HashError::Unreadable { .. }), "{err}");
    }
}
