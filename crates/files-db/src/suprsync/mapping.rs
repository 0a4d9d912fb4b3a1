//! From a registration to the `supersync_v0` row socs 0.6.4 writes for it:
//! `create_remote_path`, the `deletable` rule and `check_timecode`, each a
//! transcription of socs's Python (`socs/agents/pysmurf_monitor/agent.py`,
//! `socs/db/suprsync.py`) including its quirks.

use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::row::FileRow;

/// The archive of pysmurf's ancillary files (outputs and plots), and of a
/// registration that names none.
pub const SMURF_ARCHIVE: &str = "smurf";

/// The archive of the smurf-streamer's `.g3` timestreams.
pub const TIMESTREAMS_ARCHIVE: &str = "timestreams";

/// A registration whose archive socs 0.6.4 cannot place: its
/// `create_remote_path` knows only `smurf` and `timestreams`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown archive name {archive:?} for {path:?}: SupRsync's remote paths are defined only for \
     \"smurf\" and \"timestreams\""
)]
pub struct UnknownArchive {
    /// The archive name as the payload gave it.
    pub archive: String,
    /// The file's path.
    pub path: String,
}

/// One row of SupRsync's `supersync_v0` table as the monitor writes it:
/// `id` is assigned by SQLite, `remote_md5sum`, `copied` and `removed` are
/// `NULL`, `failed_copy_attempts` 0 and `ignore` false.
#[derive(Debug, Clone, PartialEq)]
pub struct SuprsyncFile {
    /// Absolute path of the local file (with the `.npy` rule applied by the
    /// caller, as for `pysmurf_files_v1`'s `path`).
    pub local_path: String,
    /// The file's md5, 32 lowercase hex digits (what `hashlib`'s
    /// `hexdigest()` gives).
    pub local_md5sum: String,
    /// `smurf` or `timestreams`.
    pub archive_name: String,
    /// Where SupRsync copies it, relative to its `--remote-basedir`
    /// ([`remote_path`]).
    pub remote_path: String,
    /// When the file was registered, Unix seconds.
    pub timestamp: f64,
    /// Whether SupRsync may delete the local copy once it is archived
    /// ([`is_deletable`]).
    pub deletable: bool,
}

impl SuprsyncFile {
    /// The row socs 0.6.4's `PysmurfMonitor` writes for the registration
    /// `row` (built from a datagram as for `pysmurf_files_v1`, with
    /// `archive_name` and `registered_at` set).
    pub fn from_row(row: &FileRow) -> Result<Self, UnknownArchive> {
        let archive = row.archive_name.as_deref().unwrap_or(SMURF_ARCHIVE);
        let remote_path = remote_path(row, archive)?;
        Ok(Self {
            local_path: row.path.clone(),
            local_md5sum: hex(&row.md5sum),
            archive_name: archive.to_owned(),
            remote_path,
            timestamp: epoch_seconds(
                row.registered_at
                    .unwrap_or_else(|| SystemTime::now().into()),
            ),
            deletable: is_deletable(&row.path, archive),
        })
    }

    /// The `timecode_dirs_v0` key this file belongs to, as SupRsync's
    /// `add_file` finds it ([`timecode`]).
    pub fn timecode_dir(&self) -> Option<(i64, &str)> {
        timecode(&self.remote_path).map(|code| (code, self.archive_name.as_str()))
    }
}

/// socs 0.6.4's `create_remote_path`.
///
/// For `smurf`: `os.path.join(f"{str(ts):.5}", pub_id,
/// f"{action_ts}_{action}", "plots" if plot else "outputs", basename)`,
/// Python's `None` printed as `None` where a value is missing. For
/// `timestreams`: the last three components of the normalised path. Any
/// other archive is refused.
///
/// The first five characters of `str(ts)` are taken from the whole seconds
/// of `row.timestamp`, which equals Python's for every timestamp of five or
/// more digits (after 1970-01-01 02:46:40); `action_ts` is printed as an
/// integer (socs prints whatever JSON value pysmurf sent; pysmurf sends
/// integers).
pub fn remote_path(row: &FileRow, archive: &str) -> Result<String, UnknownArchive> {
    match archive {
        SMURF_ARCHIVE => {
            let ts = match row.timestamp {
                Some(time) => python_prefix5(time),
                None => "None".to_owned(),
            };
            let action_ts = row
                .action_timestamp
                .map_or_else(|| "None".to_owned(), |ts| ts.to_string());
            let action = row.action.as_deref().unwrap_or("None");
            let dir_type = if row.plot == Some(true) {
                "plots"
            } else {
                "outputs"
            };
            let basename = row.path.rsplit('/').next().unwrap_or_default();
            Ok(posix_join(&[
                &ts,
                row.pub_id.as_deref().unwrap_or("None"),
                &format!("{action_ts}_{action}"),
                dir_type,
                basename,
            ]))
        }
        TIMESTREAMS_ARCHIVE => {
            let normal = posix_normpath(&row.path);
            let parts: Vec<&str> = normal.split('/').collect();
            Ok(posix_join(&parts[parts.len().saturating_sub(3)..]))
        }
        other => Err(UnknownArchive {
            archive: other.to_owned(),
            path: row.path.clone(),
        }),
    }
}

/// socs 0.6.4's `deletable` rule for a registered `local_path`.
///
/// Files of the `timestreams` archive are deletable. A `smurf` file is
/// deletable unless (socs's quirks, kept):
/// - the fourth `/`-separated part of the path (`/data/smurf_data/<here>/…`)
///   is not all digits: a file outside a timecode directory is kept;
/// - `iv`, `channel_assignment` or `tune` appears anywhere in the path, as a
///   substring: `/data/smurf_data/archive/…` ("arch**iv**e") and
///   `…_tuneup…` are kept too.
///
/// Differences from socs, on paths socs cannot handle: a path with fewer
/// than four parts (`/data/x.npy`) makes socs raise `IndexError` and drop
/// the registration; here it is registered, not deletable. Python's
/// `isdigit` also accepts non-ASCII digits (`²`, `٣`); here only ASCII
/// digits count, so such a file is kept rather than deleted.
pub fn is_deletable(local_path: &str, archive: &str) -> bool {
    if archive != SMURF_ARCHIVE {
        return true;
    }
    let in_timecode_dir = local_path
        .split('/')
        .nth(3)
        .is_some_and(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    in_timecode_dir
        && !["iv", "channel_assignment", "tune"]
            .iter()
            .any(|key| local_path.contains(key))
}

/// socs 0.6.4's `check_timecode`: the first component of the normalised
/// `remote_path` read as a Python `int`, if that integer prints as five
/// characters (`17000`, and also socs's `-1700`), else `None`.
///
/// ```
/// use files_db::suprsync::timecode;
///
/// assert_eq!(timecode("17000/crate1slot2/1700000100_tune/outputs/x.npy"), Some(17000));
/// assert_eq!(timecode("/17000//x.g3"), Some(17000));
/// assert_eq!(timecode("1700/x.g3"), None);
/// assert_eq!(timecode("ufm/x.g3"), None);
/// ```
pub fn timecode(remote_path: &str) -> Option<i64> {
    let normal = posix_normpath(remote_path);
    let first = normal.trim_matches('/').split('/').next()?;
    let value = python_int(first)?;
    (value.to_string().len() == 5).then_some(value)
}

/// Python's `int(text)` for ASCII text: surrounding whitespace, an
/// optional sign, digits with single underscores between them.
fn python_int(text: &str) -> Option<i64> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b' || c == '\x0c');
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let value: i64 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -value } else { value })
}

/// The first five characters of Python's `str()` of a Unix time.
fn python_prefix5(time: DateTime<Utc>) -> String {
    let whole = time.timestamp().to_string();
    let text = if whole.len() >= 5 {
        whole
    } else {
        // Python's repr of a float; only short (pre-1970-01-01T02:46:40)
        // times get here.
        format!("{:?}", epoch_seconds(time))
    };
    text.chars().take(5).collect()
}

/// Python's `posixpath.join`.
fn posix_join(parts: &[&str]) -> String {
    let mut path = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 || part.starts_with('/') {
            path = (*part).to_owned();
        } else if path.is_empty() || path.ends_with('/') {
            path.push_str(part);
        } else {
            path.push('/');
            path.push_str(part);
        }
    }
    path
}

/// Python's `posixpath.normpath`.
fn posix_normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let initial_slashes = if path.starts_with("//") && !path.starts_with("///") {
        2
    } else if path.starts_with('/') {
        1
    } else {
        0
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        if part.is_empty() || part == "." {
            continue;
        }
        if part != ".." || (initial_slashes == 0 && parts.is_empty()) || parts.last() == Some(&"..")
        {
            parts.push(part);
        } else if !parts.is_empty() {
            parts.pop();
        }
    }
    let joined = format!("{}{}", "/".repeat(initial_slashes), parts.join("/"));
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

fn hex(bytes: &[u8; 16]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

fn epoch_seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp() as f64 + f64::from(time.timestamp_subsec_nanos()) / 1e9
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_row_becomes_the_file_socs_writes() {
        let mut row = FileRow::new(
            "/data/smurf_data/1700000000/crate1slot2/1700000123_tune.npy",
            [0xab; 16],
        );
        row.timestamp = chrono::DateTime::from_timestamp(1_700_000_123, 0);
        row.action = Some("tune".into());
        row.action_timestamp = Some(1_700_000_100);
        row.plot = Some(false);
        row.pub_id = Some("crate1slot2".into());
        let file = SuprsyncFile::from_row(&row).unwrap();
        assert_eq!(
            file.remote_path,
            "17000/crate1slot2/1700000100_tune/outputs/1700000123_tune.npy"
        );
        assert_eq!(file.archive_name, "smurf");
        assert_eq!(file.local_md5sum, "ab".repeat(16));
        assert!(!file.deletable); // "tune" is in the path
    }

    #[test]
    fn deletable_as_socs_decides() {
        assert!(is_deletable(
            "/data/smurf_data/1700000000/crate1slot2/outputs/x.dat",
            "smurf"
        ));
        assert!(!is_deletable(
            "/data/smurf_data/tune/1700000000_tune.npy",
            "smurf"
        ));
        assert!(!is_deletable(
            "/data/smurf_data/1700000000/p/1700000000_iv_info.npy",
            "smurf"
        ));
        assert!(!is_deletable("/data/x.npy", "smurf"));
        assert!(is_deletable(
            "/data/so/timestreams/17000/ufm/1700000000_000.g3",
            "timestreams"
        ));
    }
    use super::*;

    fn smurf_row(path: &str) -> FileRow {
        let mut row = FileRow::new(path, [0; 16]);
        row.timestamp = DateTime::from_timestamp(1_700_000_123, 250_000_000);
        row.action = Some("tune_band".into());
        row.action_timestamp = Some(1_700_000_100);
        row.plot = Some(true);
        row.pub_id = Some("crate1slot2".into());
        row
    }

    #[test]
    fn smurf_remote_paths_follow_create_remote_path() {
        let row = smurf_row("/data/smurf_data/1700000000/crate1slot2/plots/a.png");
        assert_eq!(
            remote_path(&row, "smurf").unwrap(),
            "17000/crate1slot2/1700000100_tune_band/plots/a.png"
        );
        let mut row = smurf_row("/data/x");
        row.plot = None;
        row.action = None;
        row.action_timestamp = None;
        row.timestamp = None;
        assert_eq!(
            remote_path(&row, "smurf").unwrap(),
            "None/crate1slot2/None_None/outputs/x"
        );
        // An absolute component restarts os.path.join, as in Python.
        let mut row = smurf_row("/data/x");
        row.pub_id = Some("/abs".into());
        assert!(remote_path(&row, "smurf").unwrap().starts_with("/abs/"));
        // Short timestamps print as Python's float repr.
        let mut row = smurf_row("/data/x");
        row.timestamp = DateTime::from_timestamp(5, 0);
        assert!(remote_path(&row, "smurf").unwrap().starts_with("5.0/"));
    }

    #[test]
    fn timestream_remote_paths_are_the_last_three_components() {
        let row = FileRow::new(
            "/data/so/timestreams/17000/ufm_mv5/1700000000_000.g3",
            [0; 16],
        );
        assert_eq!(
            remote_path(&row, "timestreams").unwrap(),
            "17000/ufm_mv5/1700000000_000.g3"
        );
        for (path, expected) in [
            ("/a/./b//c/../d.g3", "a/b/d.g3"),
            ("/d.g3", "d.g3"),
            ("/x/d.g3", "x/d.g3"),
            ("//x/y/z/d.g3", "y/z/d.g3"),
        ] {
            let row = FileRow::new(path, [0; 16]);
            assert_eq!(
                remote_path(&row, "timestreams").unwrap(),
                expected,
                "{path}"
            );
        }
    }

    #[test]
    fn unknown_archives_are_refused() {
        let mut row = smurf_row("/data/x");
        row.archive_name = Some("books".into());
        let err = SuprsyncFile::from_row(&row).unwrap_err();
        assert_eq!(err.archive, "books");
        assert!(err.to_string().contains("\"books\""), "{err}");
    }

    #[test]
    fn normpath_matches_python() {
        for (path, expected) in [
            ("", "."),
            ("/", "/"),
            ("//", "//"),
            ("///a", "/a"),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("./a/", "a"),
        ] {
            assert_eq!(posix_normpath(path), expected, "{path:?}");
        }
    }

    #[test]
    fn timecodes_follow_python_int() {
        assert_eq!(timecode("-1700/x"), Some(-1700));
        assert_eq!(timecode("17_000/x"), Some(17000));
        assert_eq!(timecode("017000/x"), Some(17000));
        assert_eq!(timecode("170000/x"), None);
        assert_eq!(timecode("1_/x"), None);
        assert_eq!(timecode(""), None);
    }

    #[test]
    fn deletable_quirks() {
        assert!(!is_deletable("/data/smurf_data/archive/1/x", "smurf"));
        assert!(!is_deletable(
            "/data/smurf_data/1700000000/p/channel_assignment_b0.txt",
            "smurf"
        ));
        assert!(!is_deletable("/", "smurf"));
        assert!(is_deletable("/tune/iv", "timestreams"));
    }
}
