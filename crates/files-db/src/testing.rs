//! Test helpers (feature `test-support`): a throw-away MariaDB database per
//! test, so runs never collide.
//!
//! The MariaDB server comes from [`TEST_MYSQL_URL_ENV`], a URL of a user who
//! may create and drop databases named `pysmurf_t_*` (the project's
//! `scripts/test` creates that user and sets the variable). When it is not set,
//! tests that need MariaDB print `skipped: …` and pass, unless
//! [`REQUIRE_SERVICES_ENV`] is `1` (as `scripts/test` and CI set it), in which
//! case they fail.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection};

use crate::DbTarget;

/// URL of the MariaDB server and user for tests, e.g.
/// `mysql://pysmurf_test:PASSWORD@127.0.0.1:3306`.
pub const TEST_MYSQL_URL_ENV: &str = "PYSMURF_TEST_MYSQL_URL";

/// When `1`, a missing test service is a failure instead of a skip.
pub const REQUIRE_SERVICES_ENV: &str = "PYSMURF_TEST_REQUIRE_SERVICES";

/// Prefix of every database [`TestDatabase`] creates.
pub const TEST_DATABASE_PREFIX: &str = "pysmurf_t_";

/// Databases of earlier runs older than this are dropped at the next run's start.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// Whether missing services must fail tests (see [`REQUIRE_SERVICES_ENV`]).
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_ENV).is_ok_and(|v| v == "1")
}

/// Reports that a test cannot run for `reason`: panics when services are
/// required, otherwise prints `skipped: …` to stderr so the test passes visibly.
#[track_caller]
pub fn skip_or_fail(test: &str, reason: &str) {
    if services_required() {
        panic!("{test}: {reason} ({REQUIRE_SERVICES_ENV}=1, so this is a failure)");
    }
    eprintln!("skipped: {test}: {reason}");
}

/// A uniquely named MariaDB database that exists for one test.
///
/// Create it with [`TestDatabase::create`]; drop it with
/// [`TestDatabase::drop_database`] at the end of the test. A test that panics
/// first leaves it behind; the next run drops leftovers older than an hour.
pub struct TestDatabase {
    target: DbTarget,
    admin: MySqlConnectOptions,
    name: String,
    url_env: Vec<(&'static str, String)>,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the test server, or returns `None`
    /// (after [`skip_or_fail`]) when no server is configured.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var(TEST_MYSQL_URL_ENV) else {
            skip_or_fail(
                test,
                &format!("{TEST_MYSQL_URL_ENV} is not set (run scripts/test)"),
            );
            return None;
        };
        let admin: MySqlConnectOptions = url
            .parse::<MySqlConnectOptions>()
            .unwrap_or_else(|e| panic!("{TEST_MYSQL_URL_ENV} is not a MySQL URL: {e}"));
        let admin = admin.disable_statement_logging();
        let mut conn = MySqlConnection::connect_with(&admin)
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot connect to the test MariaDB server: {e}"));
        drop_leftovers(&mut conn).await;

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{TEST_DATABASE_PREFIX}{}_{}_{}",
            now_secs(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(&format!("CREATE DATABASE `{name}`"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot create database {name}: {e}"));
        conn.close().await.ok();

        let target = DbTarget::from_url(&format!("{}/{name}", url.trim_end_matches('/')))
            .unwrap_or_else(|e| panic!("{test}: {e}"));
        let url_env = vec![
            ("MYSQL_HOST", admin.get_host().to_owned()),
            ("MYSQL_PORT", admin.get_port().to_string()),
            ("MYSQL_USER", admin.get_username().to_owned()),
            ("MYSQL_PASSWORD", password_of(&url)),
            ("MYSQL_DATABASE", name.clone()),
        ];
        Some(Self {
            target,
            admin,
            name,
            url_env,
        })
    }

    /// The target of this database, for [`FilesDb::connect`](crate::FilesDb::connect).
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `MYSQL_HOST`, `MYSQL_PORT`, `MYSQL_USER`, `MYSQL_PASSWORD` and
    /// `MYSQL_DATABASE` selecting this database, for a child process's
    /// environment (never its argv).
    pub fn env(&self) -> &[(&'static str, String)] {
        &self.url_env
    }

    /// The test server's port.
    pub fn server_port(&self) -> u16 {
        self.admin.get_port()
    }

    /// [`env`](Self::env) with `MYSQL_HOST` and `MYSQL_PORT` naming
    /// `127.0.0.1:port` instead: a proxy in front of the test server.
    pub fn env_through(&self, port: u16) -> Vec<(&'static str, String)> {
        self.url_env
            .iter()
            .map(|(name, value)| match *name {
                "MYSQL_HOST" => (*name, "127.0.0.1".to_owned()),
                "MYSQL_PORT" => (*name, port.to_string()),
                _ => (*name, value.clone()),
            })
            .collect()
    }

    /// Runs one SQL statement as the test user in this database and returns
    /// the first column of every row as text (e.g. `SHOW CREATE TABLE`).
    pub async fn query_text(&self, sql: &str) -> Vec<Vec<String>> {
        let mut conn = MySqlConnection::connect_with(&self.admin.clone().database(&self.name))
            .await
            .expect("connect to the test database");
        let rows = sqlx::query(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows_as_text(&rows)
    }

    /// Drops the database.
    pub async fn drop_database(self) {
        let mut conn = MySqlConnection::connect_with(&self.admin)
            .await
            .expect("connect to the test MariaDB server");
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", self.name))
            .execute(&mut conn)
            .await
            .expect("drop the test database");
        conn.close().await.ok();
    }
}

/// Every column of every row as text (strings, bytes and integers; anything
/// else empty).
fn rows_as_text(rows: &[sqlx::mysql::MySqlRow]) -> Vec<Vec<String>> {
    use sqlx::Row;
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|c| {
                    row.try_get::<String, _>(c)
                        .or_else(|_| {
                            row.try_get::<Vec<u8>, _>(c)
                                .map(|b| String::from_utf8_lossy(&b).into_owned())
                        })
                        .or_else(|_| row.try_get::<i64, _>(c).map(|n| n.to_string()))
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn password_of(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .unwrap_or_default()
}

/// Drops `pysmurf_t_<epoch>_…` databases whose epoch is over an hour old.
async fn drop_leftovers(conn: &mut MySqlConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'pysmurf\\_t\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    let cutoff = now_secs().saturating_sub(LEFTOVER_AGE.as_secs());
    for name in names {
        let created: Option<u64> = name
            .strip_prefix(TEST_DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|epoch| epoch.parse().ok());
        if created.is_some_and(|epoch| epoch < cutoff) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .execute(&mut *conn)
                .await;
        }
    }
}

/// A temporary directory whose path has none of socs's `deletable` keywords
/// (`iv`, `tune`, `channel_assignment`: a random name could contain `iv`),
/// for SupRsync tests whose rows' `deletable` must not depend on it.
pub fn suprsync_tempdir() -> tempfile::TempDir {
    loop {
        let dir = tempfile::Builder::new().prefix("sr").tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        if !["iv", "tune", "channel_assignment"]
            .iter()
            .any(|k| path.contains(k))
        {
            return dir;
        }
    }
}

/// Options of every [`PrivateMariaDb`] server (after `--no-defaults`): small,
/// loopback only, everything inside its own directory.
const PRIVATE_SERVER_OPTIONS: &[&str] = &[
    "--bind-address=127.0.0.1",
    "--skip-name-resolve",
    "--innodb-log-file-size=4M",
    "--innodb-buffer-pool-size=16M",
    "--innodb-use-native-aio=0",
    "--skip-log-bin",
    "--performance-schema=OFF",
];

/// How long a [`PrivateMariaDb`] may take to start or to shut down.
const PRIVATE_SERVER_LIMIT: Duration = Duration::from_secs(60);

/// A MariaDB server of one test's own, in a temporary data directory on a
/// free loopback port, that the test may stop (cleanly, SIGTERM) and start
/// again on the same data and port: a real database outage without touching
/// the server other tests share. `root` has an empty password, over TCP on
/// 127.0.0.1 only.
///
/// Needs Debian's `mariadb-server` (`mariadbd`, `mariadb-install-db`), which
/// `scripts/ensure-mariadb` installs. Without it, [`PrivateMariaDb::start`]
/// skips (or fails when [`REQUIRE_SERVICES_ENV`] is `1`).
pub struct PrivateMariaDb {
    dir: tempfile::TempDir,
    mariadbd: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateMariaDb {
    /// Initialises a data directory and starts the server; `None` (after
    /// [`skip_or_fail`]) when the MariaDB programs are missing or the server
    /// does not come up.
    pub fn start(test: &str) -> Option<Self> {
        let (Some(mariadbd), Some(install_db)) = (
            find_program(&["mariadbd", "mysqld"]),
            find_program(&["mariadb-install-db", "mysql_install_db"]),
        ) else {
            skip_or_fail(
                test,
                "no mariadbd / mariadb-install-db for a private MariaDB server \
                 (install mariadb-server, e.g. with scripts/ensure-mariadb)",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pysmurf-mariadb-")
            .tempdir()
            .expect("a temporary directory");
        if let Err(reason) = install_data_dir(
            &install_db,
            dir.path(),
            &dir.path().join("data"),
            user_option(),
        ) {
            skip_or_fail(test, &reason);
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = PrivateMariaDb {
            dir,
            mariadbd,
            port,
            child: None,
        };
        if let Err(reason) = server.spawn() {
            skip_or_fail(test, &reason);
            return None;
        }
        Some(server)
    }

    /// The server's loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:PORT/DATABASE`: what `--db-url` takes.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// The target of `database` on this server.
    pub fn target(&self, database: &str) -> DbTarget {
        DbTarget::from_url(&self.url(database)).expect("a valid URL")
    }

    /// Runs `sql` as root (in `database` when given).
    pub async fn execute(&self, database: Option<&str>, sql: &str) {
        let mut conn = MySqlConnection::connect_with(&root_options(self.port, database))
            .await
            .unwrap_or_else(|e| panic!("connect to the private MariaDB server: {e}"));
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.ok();
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Shuts the server down cleanly (SIGTERM) and waits until it has exited.
    /// Clients' connections are closed; new ones are refused until
    /// [`PrivateMariaDb::restart`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM mariadbd");
        let deadline = std::time::Instant::now() + PRIVATE_SERVER_LIMIT;
        loop {
            if child.try_wait().expect("wait for mariadbd").is_some() {
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mariadbd did not shut down within {PRIVATE_SERVER_LIMIT:?}:\n{}",
                    self.error_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same data directory and port after
    /// [`PrivateMariaDb::stop`]; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after stop");
        self.spawn().unwrap_or_else(|reason| panic!("{reason}"));
    }

    /// The server's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = server_command(&self.mariadbd, self.dir.path(), self.port, user_option())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.mariadbd.display()))?;
        watch_child(child.id())?;
        self.child = Some(child);
        let port = self.port;
        wait_until_up(&mut self.child, PRIVATE_SERVER_LIMIT, || answers(port)).map_err(|exited| {
            format!(
                "the private MariaDB server did not come up on 127.0.0.1:{} ({exited:?}):\n{}",
                self.port,
                self.error_log()
            )
        })
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Where Debian's `galera-4` puts the Galera provider.
const GALERA_PROVIDERS: &[&str] = &[
    "/usr/lib/galera/libgalera_smm.so",
    "/usr/lib/libgalera_smm.so",
    "/usr/lib64/galera-4/libgalera_smm.so",
];

/// How long a Galera node may take to start, join (with a state transfer)
/// and be synced.
const GALERA_NODE_LIMIT: Duration = Duration::from_secs(90);

/// A Galera cluster of the test's own: `nodes` MariaDB servers on loopback,
/// each with its own data directory and free ports (client, group
/// communication, incremental and full state transfer), replicating
/// synchronously. A node can be killed (`SIGKILL`, as a crash) and
/// restarted; it then rejoins with a state transfer from the others.
/// `root` has an empty password, over TCP on 127.0.0.1.
///
/// Needs Debian's `galera-4` (the provider) and `mariadb-server` with
/// `rsync` (the state transfer), which `scripts/ensure-mariadb` installs.
/// Without them, [`GaleraCluster::start`] skips (or fails when
/// [`REQUIRE_SERVICES_ENV`] is `1`).
pub struct GaleraCluster {
    dir: tempfile::TempDir,
    mariadbd: std::path::PathBuf,
    provider: std::path::PathBuf,
    nodes: Vec<GaleraNode>,
}

struct GaleraNode {
    port: u16,
    gcomm_port: u16,
    ist_port: u16,
    sst_port: u16,
    child: Option<std::process::Child>,
}

impl GaleraCluster {
    /// Bootstraps the first node, then starts the others; returns once every
    /// node is synced. `None` (after [`skip_or_fail`]) when the programs are
    /// missing or the cluster does not form.
    pub fn start(test: &str, nodes: usize) -> Option<Self> {
        let programs = (
            find_program(&["mariadbd", "mysqld"]),
            find_program(&["mariadb-install-db", "mysql_install_db"]),
            GALERA_PROVIDERS
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.is_file()),
            find_program(&["rsync"]),
        );
        let (Some(mariadbd), Some(install_db), Some(provider), Some(_)) = programs else {
            skip_or_fail(
                test,
                "no mariadbd / mariadb-install-db / Galera provider / rsync for a private \
                 Galera cluster (install mariadb-server, galera-4 and rsync, e.g. with \
                 scripts/ensure-mariadb)",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pysmurf-galera-")
            .tempdir()
            .expect("a temporary directory");
        // One system database, copied to every node: joiners replace theirs by
        // a state transfer anyway.
        let first_data = dir.path().join("node0/data");
        std::fs::create_dir_all(dir.path().join("node0")).unwrap();
        if let Err(reason) =
            install_data_dir(&install_db, dir.path(), &first_data, galera_user_option())
        {
            skip_or_fail(test, &reason);
            return None;
        }
        for i in 1..nodes {
            std::fs::create_dir_all(dir.path().join(format!("node{i}"))).unwrap();
            let copied = std::process::Command::new("cp")
                .arg("-a")
                .arg(&first_data)
                .arg(dir.path().join(format!("node{i}/data")))
                .status();
            assert!(copied.is_ok_and(|s| s.success()), "copy the data directory");
        }
        if let Some(user) = galera_user_option() {
            // The servers (and the rsync daemon of a state transfer) run as
            // that user: it must own everything.
            let user = user.trim_start_matches("--user=");
            let owned = std::process::Command::new("chown")
                .args(["-R", &format!("{user}:")])
                .arg(dir.path())
                .status();
            assert!(
                owned.is_ok_and(|s| s.success()),
                "chown the cluster's directory"
            );
        }
        // Free ports, all held until every one is chosen so none repeats.
        let listeners: Vec<std::net::TcpListener> = (0..4 * nodes)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let mut cluster = GaleraCluster {
            dir,
            mariadbd,
            provider,
            nodes: ports
                .chunks(4)
                .map(|p| GaleraNode {
                    port: p[0],
                    gcomm_port: p[1],
                    ist_port: p[2],
                    sst_port: p[3],
                    child: None,
                })
                .collect(),
        };
        let mut started = cluster.spawn(0, true);
        for i in 1..nodes {
            if started.is_ok() {
                started = cluster.spawn(i, false);
            }
        }
        if let Err(reason) = started {
            skip_or_fail(test, &reason);
            return None;
        }
        Some(cluster)
    }

    /// The client port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never, once started).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `mysql://root@127.0.0.1:P1,127.0.0.1:P2,.../DATABASE` with the nodes
    /// in `order` (indices): what `--db-url` takes for a cluster.
    pub fn url(&self, order: &[usize], database: &str) -> String {
        let hosts: Vec<String> = order
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.nodes[i].port))
            .collect();
        format!("mysql://root@{}/{database}", hosts.join(","))
    }

    /// The target of `database` on node `i` alone.
    pub fn target(&self, i: usize, database: &str) -> DbTarget {
        DbTarget::from_url(&self.url(&[i], database)).expect("a valid URL")
    }

    /// Runs `sql` as root on node `i` (in `database` when given).
    pub async fn execute(&self, i: usize, database: Option<&str>, sql: &str) {
        let mut conn = self.connect(i, database).await;
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.ok();
    }

    /// Runs one query as root on node `i`, after the node has applied every
    /// write the cluster committed before it (`wsrep_sync_wait`), and
    /// returns each row's columns as text.
    pub async fn query_text(&self, i: usize, database: &str, sql: &str) -> Vec<Vec<String>> {
        let mut conn = self.connect(i, Some(database)).await;
        sqlx::query("SET SESSION wsrep_sync_wait = 1")
            .execute(&mut conn)
            .await
            .expect("set wsrep_sync_wait");
        let rows = sqlx::query(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.ok();
        rows_as_text(&rows)
    }

    async fn connect(&self, i: usize, database: Option<&str>) -> MySqlConnection {
        MySqlConnection::connect_with(&root_options(self.nodes[i].port, database))
            .await
            .unwrap_or_else(|e| panic!("connect to Galera node {i}: {e}"))
    }

    /// Kills node `i` with `SIGKILL` (a crash: no shutdown, no goodbye to
    /// the cluster) and waits until it has exited.
    pub fn kill(&mut self, i: usize) {
        kill_child(&mut self.nodes[i].child);
    }

    /// Starts node `i` again after [`GaleraCluster::kill`]; returns once it
    /// has rejoined and is synced.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "restart after kill");
        self.spawn(i, false)
            .unwrap_or_else(|reason| panic!("{reason}"));
    }

    /// Node `i`'s error log so far.
    pub fn error_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("error.log")).unwrap_or_default()
    }

    fn node_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    fn spawn(&mut self, i: usize, bootstrap: bool) -> Result<(), String> {
        let dir = self.node_dir(i);
        let node = &self.nodes[i];
        let members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.gcomm_port))
            .collect();
        let mut command = server_command(&self.mariadbd, &dir, node.port, galera_user_option());
        command
            .args([
                "--wsrep-on=ON",
                "--binlog-format=ROW",
                "--default-storage-engine=InnoDB",
                "--innodb-autoinc-lock-mode=2",
                "--wsrep-sst-method=rsync",
                "--wsrep-slave-threads=2",
            ])
            .arg(format!("--wsrep-provider={}", self.provider.display()))
            .arg(format!(
                "--wsrep-cluster-name=pysmurf_t_{}",
                std::process::id()
            ))
            .arg(format!("--wsrep-node-name=node{i}"))
            .arg(format!(
                "--wsrep-node-address=127.0.0.1:{}",
                node.gcomm_port
            ))
            .arg(format!(
                "--wsrep-node-incoming-address=127.0.0.1:{}",
                node.port
            ))
            .arg(format!(
                "--wsrep-sst-receive-address=127.0.0.1:{}",
                node.sst_port
            ))
            .arg(format!(
                "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{};\
                 ist.recv_addr=127.0.0.1:{};gcache.size=64M;evs.suspect_timeout=PT3S;\
                 evs.inactive_timeout=PT6S;evs.install_timeout=PT6S",
                node.gcomm_port, node.ist_port
            ))
            .arg(format!(
                "--wsrep-cluster-address=gcomm://{}",
                members.join(",")
            ));
        if bootstrap {
            command.arg("--wsrep-new-cluster");
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.mariadbd.display()))?;
        watch_child(child.id())?;
        let port = node.port;
        self.nodes[i].child = Some(child);
        wait_until_up(&mut self.nodes[i].child, GALERA_NODE_LIMIT, || synced(port)).map_err(|exited| {
            let others: String = (0..self.nodes.len())
                    .filter(|&n| n != i)
                    .map(|n| {
                        let log = self.error_log(n);
                        let tail: Vec<&str> = log.lines().rev().take(25).collect();
                        format!(
                            "\n--- node {n}, last lines ---\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                .collect();
            format!(
                "Galera node {i} did not come up synced on 127.0.0.1:{port} ({exited:?}):\n{}{others}",
                self.error_log(i)
            )
        })
    }
}

impl Drop for GaleraCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill_child(&mut node.child);
        }
    }
}

/// Initialises a server's data directory `data` with `install_db`, logging
/// to `<dir>/install.log`, with its temporary files in `dir` (in a shared
/// `/tmp`, two installs at once can remove each other's temporary tables);
/// the log when it fails.
fn install_data_dir(
    install_db: &std::path::Path,
    dir: &std::path::Path,
    data: &std::path::Path,
    user: Option<&str>,
) -> Result<(), String> {
    let log_path = dir.join("install.log");
    let log = std::fs::File::create(&log_path).unwrap();
    if let Some(user) = user {
        // The install runs as that user: its temporary files go in `dir`.
        let user = user.trim_start_matches("--user=");
        let owned = std::process::Command::new("chown")
            .arg(format!("{user}:"))
            .arg(dir)
            .status();
        if !owned.is_ok_and(|s| s.success()) {
            return Err(format!("cannot chown {} to {user}", dir.display()));
        }
    }
    let installed = std::process::Command::new(install_db)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .args(PRIVATE_SERVER_OPTIONS)
        .args(user)
        .arg(format!("--tmpdir={}", dir.display()))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status();
    if installed.as_ref().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    Err(format!(
        "{} failed ({installed:?}):\n{}",
        install_db.display(),
        std::fs::read_to_string(&log_path).unwrap_or_default()
    ))
}

/// `mariadbd` on `<dir>/data`, listening on 127.0.0.1:`port`, with its
/// socket, pid file, error log and temporary files in `dir`; in a process
/// group of its own, its standard streams closed.
fn server_command(
    mariadbd: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    user: Option<&str>,
) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(mariadbd);
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
        .arg(format!("--log-error={}", dir.join("error.log").display()))
        .arg(format!("--tmpdir={}", dir.display()))
        .args(PRIVATE_SERVER_OPTIONS)
        .args(user)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    command
}

/// Waits (at most `limit`) until `up` says the server in `child` is ready;
/// when it exits or the time is up, kills it and returns how it exited.
fn wait_until_up(
    child: &mut Option<std::process::Child>,
    limit: Duration,
    up: impl Fn() -> bool,
) -> Result<(), Option<std::process::ExitStatus>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if up() {
            return Ok(());
        }
        let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if exited.is_some() || std::time::Instant::now() > deadline {
            kill_child(child);
            return Err(exited);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the server process, if any, and reaps it.
fn kill_child(child: &mut Option<std::process::Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Root on 127.0.0.1:`port` (in `database` when given), no statement log.
fn root_options(port: u16, database: Option<&str>) -> MySqlConnectOptions {
    let options = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("root")
        .disable_statement_logging();
    match database {
        Some(database) => options.database(database),
        None => options,
    }
}

/// Whether the server on 127.0.0.1:`port` sends a protocol-10 greeting (not
/// an error packet).
fn answers(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && head[4] == 10
}

/// Whether the Galera node on 127.0.0.1:`port` answers and reports
/// `wsrep_local_state_comment = Synced`.
fn synced(port: u16) -> bool {
    let Some(client) = find_program(&["mariadb", "mysql"]) else {
        return false;
    };
    std::process::Command::new(client)
        .args([
            "--no-defaults",
            "--protocol=tcp",
            "-h127.0.0.1",
            "-uroot",
            "-N",
            "-B",
        ])
        .arg(format!("-P{port}"))
        .args(["--connect-timeout=2", "-e"])
        .arg("SHOW STATUS LIKE 'wsrep_local_state_comment'")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("Synced"))
}

/// Run as root, the cluster's servers run as `mysql` (the user Debian's
/// `mariadb-server` creates): an rsync daemon started by root, as the
/// state transfer does, switches to `nobody` and cannot write the data
/// directory. Anyone else runs them as themselves.
fn galera_user_option() -> Option<&'static str> {
    user_option()?;
    let exists = std::process::Command::new("id")
        .arg("mysql")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Some(if exists {
        "--user=mysql"
    } else {
        "--user=root"
    })
}

/// Kills process `pid` (SIGKILL) once this test process is gone, however it ends.
fn watch_child(pid: u32) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do kill -0 {pid} 2>/dev/null || exit 0; \
             sleep 0.5; done; kill -KILL {pid} 2>/dev/null",
            me = std::process::id(),
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start a watcher shell: {e}"))
}

/// The first of `names` on `PATH` or in the sbin directories (not on every
/// user's `PATH`).
fn find_program(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(Into::into))
        .collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// `--user=root` when running as root (mariadbd refuses root otherwise);
/// nothing for anyone else (the server runs as the caller).
fn user_option() -> Option<&'static str> {
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    (String::from_utf8_lossy(&uid.stdout).trim() == "0").then_some("--user=root")
}

/// A write lock on the files table held by a connection of the test's own,
/// as a long transaction or a backup would hold it: a monitor's inserts wait
/// (MariaDB's `LOCK TABLES … WRITE`) or fail busy and are retried (SQLite's
/// `BEGIN IMMEDIATE`) until [`WriteLock::release`]. On MariaDB, reading the
/// table from another connection waits too.
pub struct WriteLock {
    conn: LockConnection,
}

enum LockConnection {
    MySql(MySqlConnection),
    Sqlite(sqlx::sqlite::SqliteConnection),
}

impl WriteLock {
    /// Takes the lock on `table` (which must exist) of `target`.
    pub async fn acquire(target: &DbTarget, table: &str) -> WriteLock {
        use crate::target::TargetKind;
        let conn = match &target.kind {
            TargetKind::MySql { options, .. } => {
                let mut conn = MySqlConnection::connect_with(options)
                    .await
                    .unwrap_or_else(|e| panic!("connect to {target}: {e}"));
                // Not a prepared statement: MySQL does not prepare LOCK TABLES.
                sqlx::raw_sql(&format!("LOCK TABLES {table} WRITE"))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("lock {table}: {e}"));
                LockConnection::MySql(conn)
            }
            TargetKind::Sqlite { path } | TargetKind::Suprsync { path, .. } => {
                let mut conn = sqlx::sqlite::SqliteConnection::connect_with(
                    &crate::target::sqlite_options(path, false),
                )
                .await
                .unwrap_or_else(|e| panic!("open {target}: {e}"));
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("lock {target}: {e}"));
                LockConnection::Sqlite(conn)
            }
        };
        WriteLock { conn }
    }

    /// Releases the lock and closes its connection.
    pub async fn release(self) {
        match self.conn {
            LockConnection::MySql(mut conn) => {
                sqlx::raw_sql("UNLOCK TABLES")
                    .execute(&mut conn)
                    .await
                    .expect("unlock tables");
                conn.close().await.ok();
            }
            LockConnection::Sqlite(mut conn) => {
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("end the locking transaction");
                conn.close().await.ok();
            }
        }
    }
}
