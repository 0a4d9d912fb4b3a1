//! The MariaDB side of [`FilesDb`](crate::FilesDb): one connection pool to
//! one node of the target at a time, moved to another node when the one in
//! use stops answering, and back to the first node once it answers again.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};

use crate::error::DbError;
use crate::target::DbTarget;

/// Connections one monitor opens to the node in use, at most.
pub(crate) const MAX_CONNECTIONS: u32 = 4;

/// How long a pool may wait for a connection before the operation counts as
/// unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one probe of one node may take (connect, two short queries).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// While on another node than the first, how often to look whether the
/// first answers again (by default).
pub(crate) const RETURN_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The nodes of a MariaDB target and the pool of the one in use.
pub(crate) struct MySqlNodes {
    target: DbTarget,
    active: RwLock<Active>,
    /// When the first node was last looked at while another was in use.
    last_return_check: Mutex<Instant>,
    /// How often that is done.
    return_interval: Mutex<Duration>,
}

struct Active {
    index: usize,
    pool: MySqlPool,
}

impl MySqlNodes {
    /// Pools (connecting lazily) to `target`'s nodes, starting with node
    /// `index`.
    pub(crate) fn new(target: &DbTarget, index: usize) -> Self {
        Self {
            target: target.clone(),
            active: RwLock::new(Active {
                index,
                pool: pool_for(node_options(target, index)),
            }),
            last_return_check: Mutex::new(Instant::now()),
            return_interval: Mutex::new(RETURN_CHECK_INTERVAL),
        }
    }

    /// The first node, in list order, that answers a probe; with one node,
    /// its connection error as it is.
    pub(crate) async fn first_answering(target: &DbTarget) -> Result<usize, sqlx::Error> {
        if target.node_count() == 1 {
            node_options(target, 0).connect().await?.close().await.ok();
            return Ok(0);
        }
        let mut last = None;
        for index in 0..target.node_count() {
            match probe_node(node_options(target, index)).await {
                Ok(()) => return Ok(index),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or(sqlx::Error::PoolClosed))
    }

    /// The pool of the node in use. While that is not the first node, looks
    /// (in the background, at most every 30 s) whether the first answers
    /// again, and moves back to it if so.
    pub(crate) fn pool(self: &Arc<Self>) -> MySqlPool {
        let (index, pool) = {
            let active = self.active.read().unwrap_or_else(PoisonError::into_inner);
            (active.index, active.pool.clone())
        };
        if index != 0 {
            self.maybe_check_first_node();
        }
        pool
    }

    /// Index of the node in use.
    pub(crate) fn active_index(&self) -> usize {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .index
    }

    /// Probes the node in use, then each other node in list order; moves to
    /// the first that answers. Fails with the last node's error when none
    /// does.
    pub(crate) async fn probe(&self) -> Result<(), DbError> {
        let current = self.active_index();
        let count = self.target.node_count();
        let order = std::iter::once(current).chain((0..count).filter(|&i| i != current));
        let mut last = None;
        for index in order {
            match probe_node(node_options(&self.target, index)).await {
                Ok(()) => {
                    self.switch_to(index);
                    return Ok(());
                }
                Err(err) => {
                    tracing::debug!(node = %self.target.node_name(index), error = %err, "database node does not answer");
                    last = Some(err);
                }
            }
        }
        let action = if count == 1 {
            format!("reach {}", self.target)
        } else {
            format!("reach any of the {count} nodes of {}", self.target)
        };
        Err(DbError::new(
            action,
            last.unwrap_or(sqlx::Error::PoolClosed),
        ))
    }

    /// Closes the pool in use.
    pub(crate) async fn close(&self) {
        let pool = self
            .active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pool
            .clone();
        pool.close().await;
    }

    fn switch_to(&self, index: usize) {
        let old = {
            let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
            if active.index == index {
                return;
            }
            let from = active.index;
            tracing::warn!(
                from = %self.target.node_name(from),
                to = %self.target.node_name(index),
                "database: moving to another node"
            );
            active.index = index;
            std::mem::replace(
                &mut active.pool,
                pool_for(node_options(&self.target, index)),
            )
        };
        *self
            .last_return_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        // In-flight transactions on the old pool finish (or fail) first.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { old.close().await });
            }
            Err(_) => drop(old),
        }
    }

    /// Sets how often, while on another node, the first is looked at.
    pub(crate) fn set_return_interval(&self, interval: Duration) {
        *self
            .return_interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = interval;
    }

    fn maybe_check_first_node(self: &Arc<Self>) {
        let interval = *self
            .return_interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        {
            let mut last = self
                .last_return_check
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() < interval {
                return;
            }
            *last = Instant::now();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let options = node_options(&self.target, 0);
        let nodes = Arc::downgrade(self);
        runtime.spawn(async move {
            if probe_node(options).await.is_ok() {
                if let Some(nodes) = nodes.upgrade() {
                    nodes.switch_to(0);
                }
            }
        });
    }
}

/// The options of node `index`; the target must be a MariaDB one.
fn node_options(target: &DbTarget, index: usize) -> MySqlConnectOptions {
    target
        .node_options(index)
        .expect("a MariaDB target with this node")
}

/// A pool to one node that connects on first use. Sessions use strict SQL
/// mode (a value too long is an error, not truncated) and, on a Galera node,
/// `wsrep_sync_wait = 1`: a read sees every write committed anywhere in the
/// cluster before it, so rows committed through another node (e.g. just
/// before a move) are never missed when checking what is stored.
fn pool_for(options: MySqlConnectOptions) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
                    .execute(&mut *conn)
                    .await?;
                if is_galera(conn).await {
                    sqlx::query("SET SESSION wsrep_sync_wait = 1")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(options)
}

/// Whether the server is a Galera node with replication on (`@@wsrep_on`;
/// servers without the variable are not).
async fn is_galera(conn: &mut MySqlConnection) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT @@wsrep_on")
        .fetch_one(conn)
        .await
        .is_ok_and(|on| on == 1)
}

/// Whether the node at `options` takes writes now: it accepts a connection,
/// is not read-only, and, if a Galera node, is part of the primary
/// component and ready (`wsrep_ready`). A fresh connection, closed after.
async fn probe_node(options: MySqlConnectOptions) -> Result<(), sqlx::Error> {
    let attempt = async {
        let mut conn = options.disable_statement_logging().connect().await?;
        let result = check_writable(&mut conn).await;
        conn.close().await.ok();
        result
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {PROBE_TIMEOUT:?}"),
        ))),
    }
}

async fn check_writable(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    // Text: a number in MySQL, an enum in newer MariaDB.
    let read_only: String = sqlx::query_scalar("SELECT CAST(@@global.read_only AS CHAR)")
        .fetch_one(&mut *conn)
        .await?;
    if !matches!(read_only.as_str(), "0" | "OFF") {
        return Err(not_writable("the node is read-only (read_only = ON)"));
    }
    if !is_galera(conn).await {
        return Ok(());
    }
    let ready = sqlx::query("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = ready {
        let value: String = row.try_get::<String, _>(1).or_else(|_| {
            row.try_get::<Vec<u8>, _>(1)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        })?;
        if !value.eq_ignore_ascii_case("ON") {
            return Err(not_writable(
                "the Galera node is not ready (wsrep_ready = OFF: not in the primary component or still joining)",
            ));
        }
    }
    Ok(())
}

fn not_writable(reason: &str) -> sqlx::Error {
    // An I/O kind: callers classify it as unreachable and try another node.
    sqlx::Error::Io(std::io::Error::other(reason.to_owned()))
}
