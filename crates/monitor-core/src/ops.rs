//! The monitor's OCS operations: the `init` task and the `run` process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use files_db::{CreateOutcome, FilesDb};
use ocs_feed::{Agent, AgentError, OpError, OpOptions, Param, ParamType, Params};
use serde_json::{json, Value};

use crate::pipeline::{OpsConfig, DEGRADED_SPOOL_DEPTH};
use crate::stats::MonitorStats;

/// How often the `run` session's data is refreshed.
const RUN_REFRESH: Duration = Duration::from_secs(1);

/// How often `run(test_mode=True)` checks whether everything is processed.
const TEST_MODE_POLL: Duration = Duration::from_millis(50);

/// Registrations not yet settled (spooled, being hashed, or waiting for
/// the database).
pub(crate) type Pending = Arc<dyn Fn() -> u64 + Send + Sync>;

pub(crate) fn register(
    db: FilesDb,
    stats: Arc<MonitorStats>,
    agent: &Agent,
    ops: OpsConfig,
    pending: Pending,
) -> Result<(), AgentError> {
    let create_table_default = ops.create_table;
    agent.register_task(
        "init",
        OpOptions::new()
            .doc(
                "init(create_table=True)\n\n**Task** - Checks the files database and, when \
                 create_table is true, creates the pysmurf_files table if it is missing.",
            )
            // Checked as ocs's `@param('create_table', default=True, type=bool)` would: the
            // checked params reach the body, so a missing key is the default.
            .param(
                Param::new("create_table")
                    .default(create_table_default)
                    .ty(ParamType::Bool),
            )
            .startup(json!({ "create_table": create_table_default })),
        move |session, params| {
            let db = db.clone();
            async move {
                let create = bool_param(&params, "create_table", create_table_default);
                let table = db.table().to_owned();
                let (created, message) = if create {
                    match db.create_table().await? {
                        CreateOutcome::Created => (true, format!("created table {table}")),
                        CreateOutcome::AlreadyPresent => {
                            (false, format!("table {table} already present"))
                        }
                    }
                } else {
                    let status = db.status().await?;
                    match status.current_table() {
                        Some(t) => (false, format!("table {table} present with {} rows", t.rows)),
                        None => {
                            return Err(OpError::new(format!(
                                "table {table} is missing and create_table is false"
                            )))
                        }
                    }
                };
                session.add_message(message.clone());
                session.set_data(json!({
                    "table": table,
                    "created": created,
                    "database": db.target().to_string(),
                }));
                Ok(message)
            }
        },
    )?;
    let run_options = OpOptions::new().doc(
        "run(test_mode=False)\n\n**Process** - Reports the monitor's counters in session.data \
         every second and sets degraded while the database fails, the spool grows, the \
         receive journal cannot be written or the pipeline has stopped \
         (session.data.pipeline_error says why). The monitor records files whether or not \
         this process runs.\n\nParameters:\n    test_mode (bool, \
         optional): stop once every registration received so far is processed (committed or \
         dead-lettered). Meant for testing. Default is False.",
    );
    // As socs 0.6.4's `@ocs_agent.param('test_mode', default=False, type=bool)`.
    let run_options = run_options.param(Param::new("test_mode").default(false).ty(ParamType::Bool));
    // socs's --test-mode: `run` is not started at startup.
    let run_options = if ops.test_mode {
        run_options
    } else {
        run_options.startup(json!({}))
    };
    agent.register_process("run", run_options, move |session, params| {
        let stats = stats.clone();
        let pending = pending.clone();
        async move {
            let test_mode = bool_param(&params, "test_mode", false);
            let mut reported_failure = false;
            let mut next_report = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= next_report || test_mode {
                    let data = stats.session_data();
                    let spool_depth = data.get("spool_depth").and_then(Value::as_u64).unwrap_or(0);
                    let failure = stats.pipeline_error();
                    session.set_degraded(
                        !stats.database_up()
                            || spool_depth > DEGRADED_SPOOL_DEPTH
                            || failure.is_some()
                            // Datagrams read are at risk until it works again.
                            || !stats.journal_up()
                            // Such registrations wait in the spool for a restart.
                            || stats.dead_letter_errors.load(Ordering::Relaxed) > 0,
                    );
                    session.set_data(Value::Object(data));
                    if let (Some(reason), false) = (failure, reported_failure) {
                        session.add_message(format!("pipeline stopped: {reason}"));
                        reported_failure = true;
                    }
                    next_report = tokio::time::Instant::now() + RUN_REFRESH;
                }
                if test_mode && pending() == 0 && stats.database_up() {
                    return Ok(
                        "Monitor exited cleanly: every registration received is processed."
                            .to_owned(),
                    );
                }
                let wait = if test_mode {
                    TEST_MODE_POLL
                } else {
                    RUN_REFRESH
                };
                tokio::select! {
                    _ = session.stopped() => break,
                    _ = tokio::time::sleep(wait) => {}
                    // A failure shows at once, not up to a second later.
                    _ = stats.pipeline_failed.notified() => {
                        next_report = tokio::time::Instant::now();
                    }
                }
            }
            Ok("Monitor reports stopped; files are still recorded.".to_owned())
        }
    })
}

/// A boolean op param, already checked against its declaration (a bool, or
/// absent when it has no default).
fn bool_param(params: &Params, name: &str, default: bool) -> bool {
    params.get(name).and_then(Value::as_bool).unwrap_or(default)
}
