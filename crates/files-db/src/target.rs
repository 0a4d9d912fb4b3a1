//! Which database to use: a URL, the `MYSQL_*` environment, or an SQLite file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::error::ConfigError;

/// Database name used when `MYSQL_DATABASE` is not set, as in socs.
pub(crate) const DEFAULT_DATABASE: &str = "files";

/// The environment variables that select MariaDB, as in the seed's
/// docker-compose entry. Setting any one of them selects MariaDB.
pub const MYSQL_ENV_VARS: [&str; 5] = [
    "MYSQL_HOST",
    "MYSQL_PORT",
    "MYSQL_DATABASE",
    "MYSQL_USER",
    "MYSQL_PASSWORD",
];

/// Where the `pysmurf_files` table lives: a MariaDB/MySQL server or an SQLite
/// file.
///
/// Built from a URL ([`DbTarget::from_url`]), from the `MYSQL_*` environment
/// ([`DbTarget::from_env`]), or directly ([`DbTarget::sqlite`]);
/// [`DbTarget::resolve`] applies the rule both binaries share. Its
/// [`Display`](fmt::Display) form never contains the password, so it is safe
/// to log and to put in error messages.
///
/// ```
/// use files_db::DbTarget;
///
/// let target = DbTarget::from_url("mysql://monitor:s3cret@127.0.0.1:3306/files").unwrap();
/// assert_eq!(target.to_string(), "mysql://monitor@127.0.0.1:3306/files");
/// assert!(target.has_password());
///
/// let embedded = DbTarget::sqlite("/tmp/pysmurf_files.db");
/// assert_eq!(embedded.to_string(), "sqlite:///tmp/pysmurf_files.db");
/// ```
#[derive(Clone)]
pub struct DbTarget {
    pub(crate) kind: TargetKind,
}

#[derive(Clone)]
pub(crate) enum TargetKind {
    MySql {
        // Boxed: the options are large and the SQLite variant is one path.
        // Host and port are those of the first node.
        options: Box<MySqlConnectOptions>,
        has_password: bool,
        // Every node, in the order given (at least one; the first is `options`').
        nodes: Vec<Node>,
    },
    Sqlite {
        path: PathBuf,
    },
    /// SupRsync's SQLite database (socs 0.6): see [`crate::suprsync`].
    Suprsync {
        path: PathBuf,
        /// Log every SQL statement at info (`--echo-sql`).
        echo_sql: bool,
    },
}

/// One server of a MariaDB target: host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Default MariaDB port, for list entries without one.
const DEFAULT_PORT: u16 = 3306;

/// Splits `h1[:p1],h2[:p2],...` into nodes; entries without a port get
/// `default_port`. IPv6 addresses go in brackets (`[::1]:3306`).
fn parse_node_list(list: &str, default_port: u16) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err("an empty entry in the list of hosts".into());
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{entry:?}: unclosed '['"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("{entry:?}: expected :PORT after ']'")),
                },
            }
        } else if entry.matches(':').count() > 1 {
            // A bare IPv6 address: no port.
            (entry, None)
        } else {
            match entry.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (entry, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{entry:?}: no host"));
        }
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse()
                .map_err(|_| format!("{entry:?}: {port:?} is not a port number"))?,
        };
        nodes.push(Node {
            host: host.to_owned(),
            port,
        });
    }
    Ok(nodes)
}

/// The kind of server behind a [`DbTarget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// MariaDB or MySQL (production).
    MySql,
    /// An SQLite file (the embedded default).
    Sqlite,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::MySql => "MariaDB/MySQL",
            Backend::Sqlite => "SQLite",
        })
    }
}

impl DbTarget {
    /// Parses a database URL: `mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    /// (`mariadb://` is accepted as a synonym; the database defaults to
    /// `files`), or `sqlite://PATH` / `sqlite:PATH` for an SQLite file.
    ///
    /// Prefer giving the password through `MYSQL_PASSWORD` rather than in a
    /// URL on a command line, where other users can read it.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let redacted = redact_url(url);
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err(ConfigError::BadUrl {
                    url: redacted,
                    reason: "an SQLite URL needs a file path (sqlite://PATH)".into(),
                });
            }
            return Ok(Self::sqlite(path));
        }
        let mysql_url = if let Some(rest) = url.strip_prefix("mariadb://") {
            format!("mysql://{rest}")
        } else if url.starts_with("mysql://") {
            url.to_owned()
        } else {
            return Err(ConfigError::BadUrl {
                url: redacted,
                reason: "expected a URL starting with mysql://, mariadb:// or sqlite:".into(),
            });
        };
        // Several nodes (`host1:port1,host2:port2`): sqlx parses the URL with
        // the first; the list is kept beside it.
        let mut nodes = None;
        let mysql_url = match host_list(&mysql_url) {
            Some((start, end)) if mysql_url[start..end].contains(',') => {
                let list =
                    parse_node_list(&mysql_url[start..end], DEFAULT_PORT).map_err(|reason| {
                        ConfigError::BadUrl {
                            url: redacted.clone(),
                            reason,
                        }
                    })?;
                let first = list[0].to_string();
                nodes = Some(list);
                format!("{}{first}{}", &mysql_url[..start], &mysql_url[end..])
            }
            _ => mysql_url,
        };
        let options = MySqlConnectOptions::from_str(&mysql_url).map_err(|err| {
            ConfigError::BadUrl {
                url: redacted,
                // sqlx's message may quote the URL; say only what kind of problem it was.
                reason: describe_url_error(&err),
            }
        })?;
        let options = match &nodes {
            // The url crate keeps IPv6 brackets in the host; sqlx wants them off.
            Some(list) => options.host(&list[0].host).port(list[0].port),
            None => options,
        };
        let options = if options.get_database().is_none() {
            options.database(DEFAULT_DATABASE)
        } else {
            options
        };
        let has_password = url_has_password(&mysql_url);
        Ok(Self::mysql_from_options(options, has_password, nodes))
    }

    /// Reads the `MYSQL_*` environment of the seed's docker-compose entry:
    /// `MYSQL_HOST` (default `localhost`), `MYSQL_PORT` (default 3306),
    /// `MYSQL_DATABASE` (default `files`), `MYSQL_USER` (default `root`) and
    /// `MYSQL_PASSWORD`. Returns `Ok(None)` when none of them is set.
    ///
    /// `MYSQL_HOST` may list several nodes of one cluster (e.g. Galera),
    /// comma-separated, each `HOST` or `HOST:PORT` (`MYSQL_PORT` for those
    /// without a port): `db1,db2:3307,[fd00::3]`.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`DbTarget::from_env`] with the variables read through `lookup`
    /// (tests and embedders that keep their own environment).
    pub fn from_env_with(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let value = |name: &str| lookup(name).filter(|value| !value.is_empty());
        if MYSQL_ENV_VARS.iter().all(|name| value(name).is_none()) {
            return Ok(None);
        }
        let port = match value("MYSQL_PORT") {
            Some(port) => port.parse().map_err(|_| ConfigError::BadEnv {
                name: "MYSQL_PORT",
                reason: format!("{port:?} is not a port number"),
            })?,
            None => DEFAULT_PORT,
        };
        let hosts = value("MYSQL_HOST").unwrap_or_else(|| "localhost".to_owned());
        let nodes = parse_node_list(&hosts, port).map_err(|reason| ConfigError::BadEnv {
            name: "MYSQL_HOST",
            reason,
        })?;
        let mut options = MySqlConnectOptions::new()
            .host(&nodes[0].host)
            .port(nodes[0].port)
            .database(
                value("MYSQL_DATABASE")
                    .as_deref()
                    .unwrap_or(DEFAULT_DATABASE),
            );
        if let Some(user) = value("MYSQL_USER") {
            options = options.username(&user);
        }
        let password = value("MYSQL_PASSWORD");
        if let Some(password) = &password {
            options = options.password(password);
        }
        Ok(Some(Self::mysql_from_options(
            options,
            password.is_some(),
            Some(nodes),
        )))
    }

    /// The rule both binaries follow: an explicit URL wins; otherwise the
    /// `MYSQL_*` environment selects MariaDB; otherwise the SQLite file
    /// `default_sqlite`.
    pub fn resolve(url: Option<&str>, default_sqlite: &Path) -> Result<Self, ConfigError> {
        if let Some(url) = url {
            return Self::from_url(url);
        }
        Ok(Self::from_env()?.unwrap_or_else(|| Self::sqlite(default_sqlite)))
    }

    /// An SQLite file at `path` (created by [`FilesDb::connect`](crate::FilesDb::connect)
    /// when missing).
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self {
            kind: TargetKind::Sqlite { path: path.into() },
        }
    }

    /// SupRsync's SQLite database at `path` (socs 0.6's `--db-path`): rows
    /// go to its `supersync_v0` table, see [`crate::suprsync`]. With
    /// `echo_sql`, every SQL statement is logged at info (socs's
    /// `--echo-sql`).
    pub fn suprsync(path: impl Into<PathBuf>, echo_sql: bool) -> Self {
        Self {
            kind: TargetKind::Suprsync {
                path: path.into(),
                echo_sql,
            },
        }
    }

    /// Whether this is SupRsync's database ([`DbTarget::suprsync`]).
    pub fn is_suprsync(&self) -> bool {
        matches!(self.kind, TargetKind::Suprsync { .. })
    }

    fn mysql_from_options(
        options: MySqlConnectOptions,
        has_password: bool,
        nodes: Option<Vec<Node>>,
    ) -> Self {
        let nodes = nodes.unwrap_or_else(|| {
            vec![Node {
                host: options.get_host().to_owned(),
                port: options.get_port(),
            }]
        });
        Self {
            kind: TargetKind::MySql {
                // Rows store UTC whatever the server's zone (sqlx's default, stated here
                // because correctness depends on it).
                options: Box::new(options.timezone(Some("+00:00".to_owned()))),
                has_password,
                nodes,
            },
        }
    }

    /// How many servers the target names: the nodes of a MariaDB cluster
    /// listed in `MYSQL_HOST` or the URL, 1 for a single server or SQLite.
    pub fn node_count(&self) -> usize {
        match &self.kind {
            TargetKind::MySql { nodes, .. } => nodes.len(),
            TargetKind::Sqlite { .. } | TargetKind::Suprsync { .. } => 1,
        }
    }

    /// The connection options of node `index` (MariaDB only): the target's
    /// options with that node's host and port.
    pub(crate) fn node_options(&self, index: usize) -> Option<MySqlConnectOptions> {
        match &self.kind {
            TargetKind::MySql { options, nodes, .. } => nodes
                .get(index)
                .map(|node| options.as_ref().clone().host(&node.host).port(node.port)),
            TargetKind::Sqlite { .. } | TargetKind::Suprsync { .. } => None,
        }
    }

    /// `HOST:PORT` of node `index` (MariaDB), for logs.
    pub(crate) fn node_name(&self, index: usize) -> String {
        match &self.kind {
            TargetKind::MySql { nodes, .. } => nodes
                .get(index)
                .map(ToString::to_string)
                .unwrap_or_default(),
            TargetKind::Sqlite { path } | TargetKind::Suprsync { path, .. } => {
                path.display().to_string()
            }
        }
    }

    /// Which backend this target is (SupRsync's database is SQLite).
    pub fn backend(&self) -> Backend {
        match self.kind {
            TargetKind::MySql { .. } => Backend::MySql,
            TargetKind::Sqlite { .. } | TargetKind::Suprsync { .. } => Backend::Sqlite,
        }
    }

    /// Whether a password was given (always `false` for SQLite, which has
    /// none). A command-line tool may prompt for one when this is `false`.
    pub fn has_password(&self) -> bool {
        matches!(
            self.kind,
            TargetKind::MySql {
                has_password: true,
                ..
            }
        )
    }

    /// The same MariaDB target with `password` set (e.g. one read from a
    /// prompt). SQLite targets are returned unchanged.
    pub fn with_password(self, password: &str) -> Self {
        match self.kind {
            TargetKind::MySql { options, nodes, .. } => Self {
                kind: TargetKind::MySql {
                    options: Box::new(options.password(password)),
                    has_password: true,
                    nodes,
                },
            },
            sqlite @ (TargetKind::Sqlite { .. } | TargetKind::Suprsync { .. }) => {
                Self { kind: sqlite }
            }
        }
    }

    /// `USER@HOST:PORT` for MariaDB (`USER@HOST1:PORT1,HOST2:PORT2` for
    /// several nodes), the file path for SQLite: what an error message needs
    /// to name.
    pub fn endpoint(&self) -> String {
        match &self.kind {
            TargetKind::MySql { options, nodes, .. } => format!(
                "{}@{}",
                options.get_username(),
                nodes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            TargetKind::Sqlite { path } | TargetKind::Suprsync { path, .. } => {
                path.display().to_string()
            }
        }
    }

    /// The database name (MariaDB) or `None` (SQLite).
    pub fn database(&self) -> Option<&str> {
        match &self.kind {
            TargetKind::MySql { options, .. } => options.get_database(),
            TargetKind::Sqlite { .. } | TargetKind::Suprsync { .. } => None,
        }
    }
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TargetKind::MySql { options, .. } => write!(
                f,
                "mysql://{}/{}",
                self.endpoint(),
                options.get_database().unwrap_or_default()
            ),
            TargetKind::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            TargetKind::Suprsync { path, .. } => write!(f, "suprsync:{}", path.display()),
        }
    }
}

/// Debug shows the same redacted form as Display: a target is often logged.
impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbTarget({self})")
    }
}

/// Byte range of the host part (`HOST[:PORT]`, possibly a comma-separated
/// list) of `scheme://[userinfo@]HOSTS/...`.
fn host_list(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let authority_len = url[start..].find(['/', '?']).unwrap_or(url.len() - start);
    let authority = &url[start..start + authority_len];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    Some((start + host_start, start + authority_len))
}

fn url_has_password(url: &str) -> bool {
    authority_userinfo(url).is_some_and(|userinfo| userinfo.contains(':'))
}

/// The `user:password` part of `scheme://user:password@host/...`, if any.
fn authority_userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// The URL with any password replaced by `***`, for error messages.
fn redact_url(url: &str) -> String {
    match authority_userinfo(url) {
        Some(userinfo) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            url.replacen(userinfo, &format!("{user}:***"), 1)
        }
        _ => url.to_owned(),
    }
}

fn describe_url_error(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Configuration(_) => "the URL is malformed or has an unknown option".into(),
        other => format!("unusable URL ({})", error_kind_name(other)),
    }
}

fn error_kind_name(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::Configuration(_) => "configuration",
        sqlx::Error::Io(_) => "I/O",
        sqlx::Error::Tls(_) => "TLS",
        _ => "other",
    }
}

pub(crate) fn sqlite_options(path: &Path, create_if_missing: bool) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create_if_missing)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(std::time::Duration::from_secs(10))
        .foreign_keys(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn url_forms() {
        let t = DbTarget::from_url("mysql://u:p@db.local:3307/other").unwrap();
        assert_eq!(t.backend(), Backend::MySql);
        assert_eq!(t.to_string(), "mysql://u@db.local:3307/other");
        assert!(t.has_password());

        let t = DbTarget::from_url("mariadb://u@127.0.0.1").unwrap();
        assert_eq!(t.to_string(), "mysql://u@127.0.0.1:3306/files");
        assert!(!t.has_password());

        for url in ["sqlite:///tmp/x.db", "sqlite:/tmp/x.db"] {
            let t = DbTarget::from_url(url).unwrap();
            assert_eq!(t.backend(), Backend::Sqlite);
            assert_eq!(t.endpoint(), "/tmp/x.db");
        }
        let t = DbTarget::from_url("sqlite://rel.db").unwrap();
        assert_eq!(t.endpoint(), "rel.db");
    }

    #[test]
    fn bad_urls_are_errors_without_the_password() {
        for url in [
            "postgres://u:hunter2@h/db",
            "sqlite://",
            "sqlite::memory:",
            "mysql://u:hunter2@h:notaport/db",
        ] {
            let err = DbTarget::from_url(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("***") || !url.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn password_never_in_display_or_debug() {
        let t = DbTarget::from_url("mysql://u:hunter2@h/db").unwrap();
        assert!(!t.to_string().contains("hunter2"));
        assert!(!format!("{t:?}").contains("hunter2"));
        let t = DbTarget::from_env_with(env(&[("MYSQL_PASSWORD", "hunter2")]))
            .unwrap()
            .unwrap();
        assert!(!format!("{t:?} {t}").contains("hunter2"));
    }

    #[test]
    fn env_rules() {
        assert!(DbTarget::from_env_with(env(&[])).unwrap().is_none());
        // Empty values count as unset, as in a compose file with `MYSQL_HOST: ${DB_HOST}` unset.
        assert!(DbTarget::from_env_with(env(&[("MYSQL_HOST", "")]))
            .unwrap()
            .is_none());

        let t = DbTarget::from_env_with(env(&[("MYSQL_HOST", "db"), ("MYSQL_USER", "mon")]))
            .unwrap()
            .unwrap();
        assert_eq!(t.to_string(), "mysql://mon@db:3306/files");
        assert!(!t.has_password());

        let t = DbTarget::from_env_with(env(&[
            ("MYSQL_PORT", "3310"),
            ("MYSQL_DATABASE", "f2"),
            ("MYSQL_PASSWORD", "x"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(t.to_string(), "mysql://root@localhost:3310/f2");
        assert!(t.has_password());

        let err = DbTarget::from_env_with(env(&[("MYSQL_PORT", "http")])).unwrap_err();
        assert!(err.to_string().contains("MYSQL_PORT"), "{err}");
    }

    #[test]
    fn several_nodes_in_a_url() {
        let t = DbTarget::from_url("mysql://u:hunter2@db1,db2:3307,[::1]:3308/files").unwrap();
        assert_eq!(t.node_count(), 3);
        assert_eq!(
            t.to_string(),
            "mysql://u@db1:3306,db2:3307,[::1]:3308/files"
        );
        assert!(t.has_password());
        let second = t.node_options(1).unwrap();
        assert_eq!((second.get_host(), second.get_port()), ("db2", 3307));
        assert_eq!(second.get_username(), "u");
        assert_eq!(second.get_database(), Some("files"));
        let third = t.node_options(2).unwrap();
        assert_eq!((third.get_host(), third.get_port()), ("::1", 3308));
        assert!(!format!("{t} {t:?}").contains("hunter2"));

        let v6 = DbTarget::from_url("mysql://u@[::1]:3310/f").unwrap();
        assert_eq!(v6.to_string(), "mysql://u@[::1]:3310/f");

        let one = DbTarget::from_url("mysql://u@db1:3310/f").unwrap();
        assert_eq!(one.node_count(), 1);
        assert_eq!(one.node_name(0), "db1:3310");

        for bad in [
            "mysql://u:hunter2@db1,,db2/f",
            "mysql://u:hunter2@db1,db2:x/f",
        ] {
            let err = DbTarget::from_url(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn several_nodes_in_mysql_host() {
        let t = DbTarget::from_env_with(env(&[
            ("MYSQL_HOST", "db1, db2:3307,[fd00::3]"),
            ("MYSQL_PORT", "3310"),
            ("MYSQL_PASSWORD", "hunter2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            t.to_string(),
            "mysql://root@db1:3310,db2:3307,[fd00::3]:3310/files"
        );
        assert_eq!(t.node_count(), 3);
        let t = DbTarget::from_env_with(env(&[("MYSQL_HOST", "::1")]))
            .unwrap()
            .unwrap();
        assert_eq!(t.to_string(), "mysql://root@[::1]:3306/files");
        let err = DbTarget::from_env_with(env(&[("MYSQL_HOST", "db1,")])).unwrap_err();
        assert!(err.to_string().contains("MYSQL_HOST"), "{err}");
    }

    #[test]
    fn with_password_marks_it_present() {
        let t = DbTarget::from_url("mysql://u@h/db").unwrap();
        assert!(t.with_password("pw").has_password());
        assert!(!DbTarget::sqlite("x.db").with_password("pw").has_password());
    }
}
