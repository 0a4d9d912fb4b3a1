//! Table versions and their DDL, embedded from the workspace's `migrations/`.

use crate::target::Backend;

/// The table version this build writes: rows go to
/// `pysmurf_files_v{SCHEMA_VERSION}`.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// Every table version is named `{TABLE_PREFIX}{version}`.
pub(crate) const TABLE_PREFIX: &str = "pysmurf_files_v";

/// The columns of the current version, in table order. The archiver and
/// other tools read them by these names.
pub const COLUMNS: [&str; 16] = [
    "id",
    "path",
    "action",
    "timestamp",
    "action_timestamp",
    "format",
    "plot",
    "site",
    "pub_id",
    "script_id",
    "instance_id",
    "copied",
    "failed_copy_attempts",
    "md5sum",
    "pysmurf_version",
    "socs_version",
];

/// The most characters a text column holds (its `VARCHAR(n)`), or `None`
/// for a column that is not text. A longer value is refused by the database
/// (by MariaDB's strict mode and SQLite's `CHECK`s alike).
///
/// ```
/// assert_eq!(files_db::max_chars("instance_id"), Some(32));
/// assert_eq!(files_db::max_chars("md5sum"), None);
/// ```
pub fn max_chars(column: &str) -> Option<usize> {
    match column {
        "path" => Some(260),
        "action" | "format" | "site" | "pub_id" | "script_id" | "instance_id" => Some(32),
        "pysmurf_version" | "socs_version" => Some(64),
        _ => None,
    }
}

/// The table name of `version`, e.g. `pysmurf_files_v1`.
pub(crate) fn table_name(version: u32) -> String {
    format!("{TABLE_PREFIX}{version}")
}

/// The version of a table called `name`, if it is a `pysmurf_files_v<N>` table.
pub(crate) fn version_of(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(TABLE_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The DDL that creates version `version` on `backend`, or `None` for a
/// version this build does not know.
fn ddl(backend: Backend, version: u32) -> Option<&'static str> {
    match (backend, version) {
        (Backend::MySql, 1) => Some(include_str!("../../../migrations/mysql/v1.sql")),
        (Backend::Sqlite, 1) => Some(include_str!("../../../migrations/sqlite/v1.sql")),
        _ => None,
    }
}

/// The statements of the current version's DDL, comments removed.
pub(crate) fn create_statements(backend: Backend) -> Vec<String> {
    let ddl = ddl(backend, SCHEMA_VERSION).expect("the current schema version has DDL");
    let without_comments: String = ddl
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_table_name_of_a_version() {
        assert_eq!(table_name(SCHEMA_VERSION), "pysmurf_files_v1");
    }
    use super::*;

    #[test]
    fn versions_parse_only_exact_names() {
        assert_eq!(version_of("pysmurf_files_v1"), Some(1));
        assert_eq!(version_of("pysmurf_files_v12"), Some(12));
        for name in [
            "pysmurf_files_v",
            "pysmurf_files_v1x",
            "pysmurf_files_v1; DROP",
            "other",
        ] {
            assert_eq!(version_of(name), None, "{name}");
        }
    }

    /// [`max_chars`] says what the MariaDB DDL declares, for every column.
    #[test]
    fn max_chars_matches_the_ddl() {
        let create = &create_statements(Backend::MySql)[0];
        for column in COLUMNS {
            let line = create
                .lines()
                .map(str::trim)
                .find(|line| line.split_whitespace().next() == Some(column))
                .unwrap();
            let declared = line
                .split_once("VARCHAR(")
                .map(|(_, rest)| rest.split_once(')').unwrap().0.parse().unwrap());
            assert_eq!(max_chars(column), declared, "{line}");
        }
    }

    /// Both backends' DDL declare exactly [`COLUMNS`], in order.
    #[test]
    fn ddl_declares_the_columns_in_order() {
        for backend in [Backend::MySql, Backend::Sqlite] {
            let statements = create_statements(backend);
            let create = &statements[0];
            assert!(create.starts_with("CREATE TABLE IF NOT EXISTS pysmurf_files_v1 ("));
            let body = create.split_once('(').unwrap().1;
            let columns: Vec<&str> = body
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with("KEY") && *line != ")")
                .map(|line| line.split_whitespace().next().unwrap())
                .collect();
            assert_eq!(columns, COLUMNS, "{backend}");
            assert!(statements[1..]
                .iter()
                .all(|s| s.starts_with("CREATE INDEX")));
        }
    }
}
