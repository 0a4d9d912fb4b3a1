//! Errors of `files-db`, each naming the database target (never its password)
//! and what was being done.

use std::fmt;

use sqlx::error::DatabaseError;

/// A database URL or `MYSQL_*` variable that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL is not a `mysql://`, `mariadb://` or `sqlite:` URL, or is malformed.
    /// `url` has its password replaced by `***`.
    #[error("bad database URL {url}: {reason}")]
    BadUrl {
        /// The URL as given, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `MYSQL_*` environment variable has an unusable value.
    #[error("bad environment variable {name}: {reason}")]
    BadEnv {
        /// The variable's name.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// Why a database operation failed, in the terms a caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The server could not be reached or the connection broke (network, server
    /// down, pool timeout, lock timeout, deadlock or Galera certification
    /// failure, a Galera node not ready, a read-only server, SQLite busy).
    /// Retrying later, or on another node, may succeed.
    Unreachable,
    /// The server refused the credentials or the user lacks a privilege.
    AccessDenied,
    /// The database named in the target does not exist on the server.
    UnknownDatabase,
    /// The table does not exist.
    TableMissing,
    /// The SQLite file does not exist or cannot be opened.
    CannotOpen,
    /// The server refused the data itself (a value too long for its column,
    /// out of range, a broken constraint): retrying the same row will fail again.
    Rejected,
    /// Anything else; the source error says more.
    Other,
}

impl FailureKind {
    /// Whether the same operation may succeed if retried later unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, FailureKind::Unreachable)
    }

    pub(crate) fn of(err: &sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => FailureKind::Unreachable,
            sqlx::Error::Database(db) => Self::of_database(db.as_ref()),
            _ => FailureKind::Other,
        }
    }

    fn of_database(db: &dyn DatabaseError) -> Self {
        if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return match mysql.number() {
                // ER_DBACCESS_DENIED, ER_ACCESS_DENIED, ER_TABLEACCESS_DENIED,
                // ER_SPECIFIC_ACCESS_DENIED.
                1044 | 1045 | 1142 | 1227 => FailureKind::AccessDenied,
                1049 => FailureKind::UnknownDatabase,
                1146 => FailureKind::TableMissing,
                // Too many connections, lock wait timeout, server shutting down, a
                // query or connection killed (e.g. by a shutdown), an error during
                // COMMIT.
                1040 | 1205 | 1053 | 1317 | 1927 | 1180 => FailureKind::Unreachable,
                // Deadlock: also how a Galera node reports a transaction that lost
                // certification against a concurrent one on another node.
                1213 => FailureKind::Unreachable,
                // A Galera node outside the primary component or still joining
                // ("WSREP has not yet prepared node for application use"), and a
                // read-only server (--read-only, read-only mode, a read-only
                // transaction): another node, or this one later, takes the rows.
                1047 | 1290 | 1792 | 1836 => FailureKind::Unreachable,
                // SQLSTATE class 22 (data exception) and 23 (integrity constraint).
                _ if mysql
                    .code()
                    .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
                {
                    FailureKind::Rejected
                }
                _ => FailureKind::Other,
            };
        }
        if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
            let code: i64 = sqlite
                .code()
                .and_then(|c| c.parse().ok())
                .unwrap_or_default();
            // Primary result code is the low byte of the extended one.
            return match code & 0xff {
                5 | 6 => FailureKind::Unreachable, // SQLITE_BUSY, SQLITE_LOCKED
                19 | 20 => FailureKind::Rejected,  // SQLITE_CONSTRAINT, SQLITE_MISMATCH
                14 => FailureKind::CannotOpen,     // SQLITE_CANTOPEN
                3 | 8 | 23 => FailureKind::AccessDenied, // SQLITE_PERM, SQLITE_READONLY, SQLITE_AUTH
                1 if sqlite.message().starts_with("no such table") => FailureKind::TableMissing,
                _ => FailureKind::Other,
            };
        }
        FailureKind::Other
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Unreachable => {
                "cannot reach the database (is the server running and reachable?)"
            }
            FailureKind::AccessDenied => {
                "access denied (check MYSQL_USER, MYSQL_PASSWORD and the user's grants, or the file's permissions)"
            }
            FailureKind::UnknownDatabase => {
                "the database does not exist (create it, or set MYSQL_DATABASE)"
            }
            FailureKind::TableMissing => {
                "the table does not exist (create it with `pysmurf-files-manager create`)"
            }
            FailureKind::CannotOpen => {
                "cannot open the SQLite file (check the path, that it exists, and its permissions)"
            }
            FailureKind::Rejected => "the database rejected the data",
            FailureKind::Other => "database error",
        })
    }
}

/// A failed database operation: what was being done and where, why (as a
/// [`FailureKind`]) and the driver's error as the source.
///
/// The message reads like `create table pysmurf_files_v1 in
/// mysql://monitor@db:3306/files: access denied (…)`; the source adds the
/// database's own message.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {kind}")]
pub struct DbError {
    action: String,
    kind: FailureKind,
    #[source]
    source: DriverError,
}

/// The database driver's error, shown once: sqlx's own error repeats the
/// database's message in its source chain.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct DriverError {
    message: String,
    database_message: Option<String>,
}

impl DbError {
    pub(crate) fn new(action: impl Into<String>, source: sqlx::Error) -> Self {
        let kind = FailureKind::of(&source);
        Self::with_kind(action, kind, source)
    }

    pub(crate) fn with_kind(
        action: impl Into<String>,
        kind: FailureKind,
        source: sqlx::Error,
    ) -> Self {
        let (message, database_message) = match &source {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| format!(" [{c}]")).unwrap_or_default();
                (
                    format!("{}{code}", db.message()),
                    Some(db.message().to_owned()),
                )
            }
            other => (other.to_string(), None),
        };
        Self {
            action: action.into(),
            kind,
            source: DriverError {
                message,
                database_message,
            },
        }
    }

    /// A failure found before the database was asked (e.g. a row that
    /// cannot be mapped to the target's table), with `message` as its
    /// database message.
    pub(crate) fn refused(action: impl Into<String>, kind: FailureKind, message: String) -> Self {
        Self {
            action: action.into(),
            kind,
            source: DriverError {
                message: message.clone(),
                database_message: Some(message),
            },
        }
    }

    /// Why it failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether the same operation may succeed if retried later unchanged.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// What was being done and where, e.g. `insert 3 rows (the first
    /// "/data/a.npy") into pysmurf_files_v1 in sqlite://files.db`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The database's own message (e.g. MariaDB's `Data too long for column
    /// 'path' at row 1`), or the driver's when the database said nothing, for
    /// dead-letter records and operators.
    pub fn database_message(&self) -> &str {
        self.source
            .database_message
            .as_deref()
            .unwrap_or(&self.source.message)
    }
}
