//! `list --db-path`: the rows of SupRsync's `supersync_v0` as an aligned
//! table or as JSON lines.

use chrono::{DateTime, SecondsFormat};
use files_db::suprsync::SuprsyncStoredFile;
use serde_json::json;

/// One row as a JSON object on one line: every column under its own name,
/// as stored (times in Unix seconds).
pub(crate) fn json_line(file: &SuprsyncStoredFile) -> String {
    json!({
        "id": file.id,
        "local_path": file.local_path,
        "local_md5sum": file.local_md5sum,
        "archive_name": file.archive_name,
        "remote_path": file.remote_path,
        "timestamp": file.timestamp,
        "remote_md5sum": file.remote_md5sum,
        "copied": file.copied,
        "removed": file.removed,
        "failed_copy_attempts": file.failed_copy_attempts,
        "deletable": file.deletable,
        "ignore": file.ignore,
    })
    .to_string()
}

/// The rows as a table: id, registration time (UTC), archive, whether
/// SupRsync has archived it (remote md5 equal), deletable, removed, local
/// and remote path (the paths last).
pub(crate) fn table(files: &[SuprsyncStoredFile]) -> String {
    const HEADER: [&str; 8] = [
        "ID",
        "REGISTERED (UTC)",
        "ARCHIVE",
        "ARCHIVED",
        "DELETABLE",
        "REMOVED",
        "LOCAL_PATH",
        "REMOTE_PATH",
    ];
    let yes_no = |value: Option<bool>| match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let mut cells: Vec<[String; 8]> = vec![HEADER.map(str::to_owned)];
    for file in files {
        let registered = DateTime::from_timestamp(
            file.timestamp.floor() as i64,
            ((file.timestamp - file.timestamp.floor()) * 1e9) as u32,
        )
        .map_or_else(
            || file.timestamp.to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        cells.push([
            file.id.to_string(),
            registered,
            file.archive_name.clone(),
            yes_no(Some(file.archived())).to_owned(),
            yes_no(file.deletable).to_owned(),
            yes_no(file.removed.map(|_| true)).to_owned(),
            file.local_path.clone(),
            file.remote_path.clone(),
        ]);
    }
    crate::list::columns(&cells)
}
