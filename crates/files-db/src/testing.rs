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

    /// Runs one SQL statement as the test user in this database and returns
    /// the first column of every row as text (e.g. `SHOW CREATE TABLE`).
    pub async fn query_text(&self, sql: &str) -> Vec<Vec<String>> {
        use sqlx::Row;
        let mut conn = MySqlConnection::connect_with(&self.admin.clone().database(&self.name))
            .await
            .expect("connect to the test database");
        let rows = sqlx::query(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        row.try_get::<String, _>(i)
                            .or_else(|_| {
                                row.try_get::<Vec<u8>, _>(i)
                                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                            })
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
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
