//! `list`: the rows of `FilesDb::recent_files` as an aligned table or as
//! JSON lines.

use chrono::SecondsFormat;
use files_db::StoredFile;
use serde_json::json;

/// One row as a JSON object on one line: every column under its own name,
/// `md5sum` as 32 hex digits, `timestamp` as RFC 3339 UTC.
pub(crate) fn json_line(stored: &StoredFile) -> String {
    let row = &stored.row;
    json!({
        "id": stored.id,
        "path": row.path,
        "action": row.action,
        "timestamp": row.timestamp.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        "action_timestamp": row.action_timestamp,
        "format": row.format,
        "plot": row.plot,
        "site": row.site,
        "pub_id": row.pub_id,
        "script_id": row.script_id,
        "instance_id": row.instance_id,
        "copied": row.copied,
        "failed_copy_attempts": row.failed_copy_attempts,
        "md5sum": hex(&row.md5sum),
        "pysmurf_version": row.pysmurf_version,
        "socs_version": row.socs_version,
    })
    .to_string()
}

/// The rows as a table with a header, columns padded to their widest cell,
/// `-` for NULL, the path last so long paths do not push the rest apart.
pub(crate) fn table(rows: &[StoredFile]) -> String {
    const HEADER: [&str; 8] = [
        "ID",
        "TIMESTAMP (UTC)",
        "ACTION",
        "PUB_ID",
        "FORMAT",
        "PLOT",
        "MD5SUM",
        "PATH",
    ];
    let or_dash = |value: Option<&str>| value.unwrap_or("-").to_owned();
    let mut cells: Vec<[String; 8]> = vec![HEADER.map(str::to_owned)];
    for stored in rows {
        let row = &stored.row;
        cells.push([
            stored.id.to_string(),
            or_dash(
                row.timestamp
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                    .as_deref(),
            ),
            or_dash(row.action.as_deref()),
            or_dash(row.pub_id.as_deref()),
            or_dash(row.format.as_deref()),
            or_dash(row.plot.map(|p| if p { "yes" } else { "no" })),
            hex(&row.md5sum),
            row.path.clone(),
        ]);
    }
    columns(&cells)
}

/// Lines of left-aligned columns two spaces apart, each as wide as its widest
/// cell (the last column unpadded).
pub(crate) fn columns<const N: usize>(cells: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for line in cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in cells {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Lower-case hex, as `md5sum` prints it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use files_db::FileRow;

    fn stored(id: i64, path: &str) -> StoredFile {
        let mut row = FileRow::new(path, [0xab; 16]);
        row.md5sum[0] = 0x01;
        row.action = Some("tune".into());
        row.timestamp = Some(Utc.timestamp_opt(1_700_000_123, 0).unwrap());
        row.plot = Some(true);
        StoredFile { id, row }
    }

    #[test]
    fn json_lines_have_every_column_hex_md5_and_rfc3339_utc() {
        let line = json_line(&stored(7, "/data/a.png"));
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["id"], 7);
        assert_eq!(value["md5sum"], format!("01{}", "ab".repeat(15)));
        assert_eq!(value["timestamp"], "2023-11-14T22:15:23Z");
        assert_eq!(value["plot"], true);
        assert_eq!(value["pub_id"], serde_json::Value::Null);
        // In the table's column order (serde_json's preserve_order, set for the workspace).
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys, files_db::COLUMNS.to_vec());
    }

    #[test]
    fn the_table_is_aligned_with_dashes_for_null() {
        let mut second = stored(10, "/b");
        second.row.action = None;
        second.row.timestamp = None;
        let text = table(&[stored(9, "/data/a.png"), second]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let md5_column = lines[0].find("MD5SUM").unwrap();
        let path_column = lines[0].find("PATH").unwrap();
        assert_eq!(&lines[1][md5_column..md5_column + 4], "01ab");
        assert_eq!(&lines[2][path_column..], "/b");
        assert_eq!(&lines[1][path_column..], "/data/a.png");
        assert!(lines[1].contains("2023-11-14T22:15:23Z  tune"), "{text}");
        assert!(lines[2].starts_with("10  -"), "{text}");
    }
}
