//! Tasks and processes: their registry, their runs, and the two procedures every agent
//! registers: the ops handler `{addr}.ops` (spec §5) and the management handler `{addr}`
//! (spec §9).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::access::{rejection_message, Caller};
use crate::agent::Shared;
use crate::params::{prescreen, Param};
use crate::session::{OpCode, Session, Status};

/// The parameters an op is started with (a JSON object; `null` or `[]` from a client is `{}`).
pub type Params = Map<String, Value>;

/// What an op body returns: its final message on success, or an [`OpError`] (the session ends
/// with `success: false`). A panic in the body also ends it with `success: false` and a
/// `CRASH: ...` message, as an exception does in OCS.
pub type OpResult = Result<String, OpError>;

pub(crate) type OpFuture = Pin<Box<dyn Future<Output = OpResult> + Send>>;
pub(crate) type OpBody = Arc<dyn Fn(Session, Params) -> OpFuture + Send + Sync>;

/// The failure message of an op. Any `std::error::Error` converts into it with `?` (its
/// message includes the chain of causes); use [`OpError::new`] for a plain message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    message: String,
}

impl OpError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> OpError {
        OpError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for OpError {
    fn from(e: E) -> OpError {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        OpError { message }
    }
}

/// How an op is described and started.
///
/// ```
/// use ocs_feed::OpOptions;
/// let opts = OpOptions::new()
///     .doc("acq(rate=1.0)\n\n**Process** - acquire.")
///     .startup(serde_json::json!({"rate": 2.0}));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct OpOptions {
    pub(crate) docstring: Option<String>,
    pub(crate) startup: Option<Params>,
    pub(crate) blocking: bool,
    pub(crate) abortable: bool,
    pub(crate) params: Vec<Param>,
    /// Whether any `@param`-like declaration was made (then params are prescreened).
    pub(crate) prescreen: bool,
    pub(crate) check_strays: bool,
    pub(crate) min_privs: u8,
}

impl Default for OpOptions {
    fn default() -> Self {
        OpOptions {
            docstring: None,
            startup: None,
            blocking: false,
            abortable: true,
            params: Vec::new(),
            prescreen: false,
            check_strays: true,
            min_privs: 1,
        }
    }
}

impl OpOptions {
    /// Defaults: no docstring, not started at startup, `blocking: false`, tasks abortable.
    pub fn new() -> OpOptions {
        OpOptions::default()
    }

    /// The docstring clients show (OCSClient prints it as the op's help).
    pub fn doc(mut self, docstring: impl Into<String>) -> OpOptions {
        self.docstring = Some(docstring.into());
        self
    }

    /// Start the op on the agent's first join with these params (an object; anything else
    /// is `{}`, as OCS's `startup=True`).
    pub fn startup(mut self, params: Value) -> OpOptions {
        self.startup = Some(match params {
            Value::Object(m) => m,
            _ => Map::new(),
        });
        self
    }

    /// Whether a task may be aborted (default true; reported to clients as `abortable`). An
    /// abort of a non-abortable task answers OK and does nothing, as in OCS.
    pub fn abortable(mut self, abortable: bool) -> OpOptions {
        self.abortable = abortable;
        self
    }

    /// The `blocking` flag reported to clients (informational; bodies are always async).
    pub fn blocking(mut self, blocking: bool) -> OpOptions {
        self.blocking = blocking;
        self
    }

    /// Declares a parameter, as ocs's `@ocs_agent.param` does. Once an op declares any, every
    /// `start` is checked before a session is made: a failure is refused with
    /// `[-1, <ocs's text>, {}]`, keys not declared are refused (see
    /// [`OpOptions::allow_stray_params`]), and the body gets the processed params (defaults
    /// filled in, casts applied) in declaration order. Python applies decorators bottom-up,
    /// so ocs's order is that of the `@param` lines read from the function upwards.
    ///
    /// ```
    /// use ocs_feed::{OpOptions, Param, ParamType};
    /// let opts = OpOptions::new()
    ///     .param(Param::new("test_mode").default(false).ty(ParamType::Bool))
    ///     .param(Param::new("delay").default(1.0).ty(ParamType::Float));
    /// # let _ = opts;
    /// ```
    pub fn param(mut self, param: Param) -> OpOptions {
        self.params.push(param);
        self.prescreen = true;
        self
    }

    /// Accepts keys that were not declared (ocs's `@param('_no_check_strays')`); they are
    /// dropped from the params the body gets, as in ocs.
    pub fn allow_stray_params(mut self) -> OpOptions {
        self.check_strays = false;
        self.prescreen = true;
        self
    }

    /// The credential level needed to start, stop or abort the op (ocs's `min_privs`: 1 to
    /// 4; values below 1 are 1, as in ocs). Levels only matter under an access policy other
    /// than `none`.
    pub fn min_privs(mut self, level: u8) -> OpOptions {
        self.min_privs = level.clamp(1, 4);
        self
    }
}

/// Task or process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Task,
    Process,
}

impl OpKind {
    fn as_str(self) -> &'static str {
        match self {
            OpKind::Task => "task",
            OpKind::Process => "process",
        }
    }
}

pub(crate) struct Op {
    pub(crate) name: String,
    pub(crate) kind: OpKind,
    pub(crate) options: OpOptions,
    pub(crate) body: OpBody,
    pub(crate) current: Option<Session>,
}

impl Op {
    fn info(&self) -> Value {
        match self.kind {
            OpKind::Task => json!({
                "blocking": self.options.blocking,
                "abortable": self.options.abortable,
                "docstring": self.options.docstring,
                "op_type": "task",
                "min_privs": self.options.min_privs,
            }),
            OpKind::Process => json!({
                "blocking": self.options.blocking,
                "docstring": self.options.docstring,
                "op_type": "process",
                "min_privs": self.options.min_privs,
            }),
        }
    }

    fn session_or_stub(&self) -> Value {
        match &self.current {
            Some(s) => s.encode(),
            None => json!({"op_name": self.name, "status": "no_history"}),
        }
    }

    pub(crate) fn op_code(&self) -> OpCode {
        self.current
            .as_ref()
            .map(Session::op_code)
            .unwrap_or(OpCode::None)
    }
}

const OK: i64 = 0;
const ERROR: i64 = -1;
const TIMEOUT: i64 = 1;

fn reply(code: i64, message: String, session: Value) -> Value {
    json!([code, message, session])
}

/// Binds INVOCATION arguments to Python parameter names, as Python would. With
/// `var_kwargs` (a Python `**kwargs`), unknown keyword arguments are accepted and ignored.
fn bind(
    func: &str,
    names: &[&str],
    required: usize,
    var_kwargs: bool,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<Vec<Option<Value>>, String> {
    if args.len() > names.len() {
        // Counts include `self`, as Python's messages do.
        let takes = if required == names.len() {
            format!("{}", names.len() + 1)
        } else {
            format!("from {} to {}", required + 1, names.len() + 1)
        };
        return Err(format!(
            "{func}() takes {takes} positional arguments but {} were given",
            args.len() + 1
        ));
    }
    let mut bound: Vec<Option<Value>> = names.iter().map(|_| None).collect();
    for (slot, a) in bound.iter_mut().zip(args) {
        *slot = Some(a.clone());
    }
    for (k, v) in kwargs {
        let Some(i) = names.iter().position(|n| n == k) else {
            if var_kwargs {
                continue;
            }
            return Err(format!("{func}() got an unexpected keyword argument '{k}'"));
        };
        if bound[i].is_some() {
            return Err(format!("{func}() got multiple values for argument '{k}'"));
        }
        bound[i] = Some(v.clone());
    }
    let missing: Vec<String> = names[..required]
        .iter()
        .zip(&bound)
        .filter(|(_, b)| b.is_none())
        .map(|(n, _)| format!("'{n}'"))
        .collect();
    if !missing.is_empty() {
        let s = if missing.len() == 1 { "" } else { "s" };
        return Err(format!(
            "{func}() missing {} required positional argument{s}: {}",
            missing.len(),
            missing.join(" and ")
        ));
    }
    Ok(bound)
}

/// The ops handler. `Err` is a handler exception: the caller gets `wamp.error.runtime_error`.
pub(crate) async fn handle_ops(
    shared: &Arc<Shared>,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<Value, String> {
    let bound = bind(
        "OCSAgent._ops_handler",
        &["action", "op_name", "params", "timeout", "password"],
        2,
        false,
        args,
        kwargs,
    )?;
    let text = |v: &Option<Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let action = text(&bound[0]);
    let op_name = text(&bound[1]);
    let password = Caller::Client(bound[4].as_ref());
    Ok(match action.as_str() {
        "start" => start(shared, &op_name, bound[2].clone(), password),
        "wait" => {
            let timeout = match &bound[3] {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_f64()
                        .ok_or_else(|| format!("timeout must be a number, not {v}"))?,
                ),
            };
            wait(shared, &op_name, timeout).await
        }
        "stop" => stop(shared, &op_name, OpKind::Process, password),
        "abort" => stop(shared, &op_name, OpKind::Task, password),
        "status" => status(shared, &op_name),
        _ => reply(
            ERROR,
            format!("No implementation for \"{op_name}\""),
            json!({}),
        ),
    })
}

/// Starts `op_name` with `params`; used by the ops handler and for startup ops.
pub(crate) fn start(
    shared: &Arc<Shared>,
    op_name: &str,
    params: Option<Value>,
    caller: Caller<'_>,
) -> Value {
    match try_start(shared, op_name, params, caller) {
        Ok(started) => reply(
            OK,
            format!("Started {} \"{op_name}\".", started.kind.as_str()),
            started.encoded,
        ),
        Err(refused) => reply(ERROR, refused.message, refused.session),
    }
}

/// A refused start: the message and the session (or `{}`) the ops handler replies with.
pub(crate) struct Refused {
    pub(crate) message: String,
    pub(crate) session: Value,
}

/// A started op: its kind, its session and that session as it was before the body could
/// run (status `starting`, as ocs replies).
pub(crate) struct Started {
    pub(crate) kind: OpKind,
    pub(crate) session: Session,
    pub(crate) encoded: Value,
}

fn python_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

pub(crate) fn try_start(
    shared: &Arc<Shared>,
    op_name: &str,
    params: Option<Value>,
    caller: Caller<'_>,
) -> Result<Started, Refused> {
    let mut ops = shared.lock_ops();
    let Some(op) = ops.iter_mut().find(|o| o.name == op_name) else {
        return Err(Refused {
            message: format!("No task or process called \"{op_name}\""),
            session: json!({}),
        });
    };
    if let Some(s) = &op.current {
        if !s.is_done() {
            return Err(Refused {
                message: format!("Operation \"{op_name}\" already in progress."),
                session: s.encode(),
            });
        }
    }
    // As in OCS, a done session is discarded here even if a later check fails.
    op.current = None;
    let (cred_level, detail) = creds(shared, caller);
    if cred_level < op.options.min_privs {
        tracing::info!(op = op_name, "Rejected underprivileged \"start\" request.");
        return Err(Refused {
            message: rejection_message(cred_level, op.options.min_privs, &detail),
            session: json!({}),
        });
    }
    let mut params = match params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if a.is_empty() && !op.options.prescreen => Map::new(),
        Some(other) => {
            // ocs's ParamHandler calls params.get(...) on what the client sent.
            let message = if op.options.prescreen {
                format!(
                    "CRASH: during param pre-processing: '{}' object has no attribute 'get'",
                    python_type_name(&other)
                )
            } else {
                format!("CRASH: during param pre-processing: params must be a dict, not {other}")
            };
            return Err(Refused {
                message,
                session: json!({}),
            });
        }
    };
    if op.options.prescreen {
        params = prescreen(&op.options.params, &params, op.options.check_strays).map_err(|e| {
            tracing::error!(op = op_name, error = %e, "Caught ParamError during start call");
            Refused {
                message: e.message().to_owned(),
                session: json!({}),
            }
        })?;
    }
    let session = Session::new(shared.next_session_id(), op_name, cred_level);
    op.current = Some(session.clone());
    let body = op.body.clone();
    let kind = op.kind;
    drop(ops);
    tracing::info!(op = op_name, session_id = session.id(), "starting op");
    let encoded = session.encode();
    tokio::spawn(run_op(session.clone(), body, params));
    Ok(Started {
        kind,
        session,
        encoded,
    })
}

async fn run_op(session: Session, body: OpBody, params: Params) {
    session.set_status(Status::Running);
    let fut = body(session.clone(), params);
    // The body runs in its own task so that a panic is caught and reported like an exception.
    let (success, message) = match tokio::spawn(fut).await {
        Ok(Ok(message)) => (true, message),
        Ok(Err(e)) => (false, e.message),
        Err(join) => {
            let what = match join.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_owned()),
                Err(e) => e.to_string(),
            };
            (false, format!("CRASH: {what}"))
        }
    };
    tracing::info!(op = session.op_name(), session_id = session.id(), success, %message, "op done");
    session.finish(success, Some(message));
}

async fn wait(shared: &Arc<Shared>, op_name: &str, timeout: Option<f64>) -> Value {
    let session = {
        let ops = shared.lock_ops();
        let Some(op) = ops.iter().find(|o| o.name == op_name) else {
            return reply(
                ERROR,
                format!("Unknown operation \"{op_name}\"."),
                json!({}),
            );
        };
        match &op.current {
            None => return reply(OK, "Idle.".into(), json!({})),
            Some(s) => s.clone(),
        }
    };
    match timeout {
        None => session.wait_done().await,
        Some(t) if t > 0.0 => {
            let limit = Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX);
            let _ = tokio::time::timeout(limit, session.wait_done()).await;
        }
        Some(_) => {}
    }
    if session.is_done() {
        reply(
            OK,
            format!(
                "Operation \"{op_name}\" is currently not running ({}).",
                session.op_code().name()
            ),
            session.encode(),
        )
    } else {
        reply(
            TIMEOUT,
            format!("Operation \"{op_name}\" still running; wait timed out."),
            session.encode(),
        )
    }
}

/// The caller's credential level and ocs's detail text; level 0 while the configured policy
/// is invalid (the agent refuses to run then, but a handle can still be used).
fn creds(shared: &Arc<Shared>, caller: Caller<'_>) -> (u8, String) {
    shared
        .with_access(|a| a.creds(caller, &shared.agent_class, &shared.site.instance_id))
        .unwrap_or((0, "Invalid access policy.".into()))
}

/// `stop` (processes, `kind` = Process) and `abort` (tasks, `kind` = Task).
fn stop(shared: &Arc<Shared>, op_name: &str, kind: OpKind, caller: Caller<'_>) -> Value {
    let action = match kind {
        OpKind::Process => "stop",
        OpKind::Task => "abort",
    };
    let ops = shared.lock_ops();
    let Some(op) = ops.iter().find(|o| o.name == op_name) else {
        return reply(
            ERROR,
            format!("No operation called \"{op_name}\"."),
            json!({}),
        );
    };
    if op.kind != kind {
        // The literal "{op_type}" is what ocs 0.12.1 sends (a formatting bug kept for parity).
        return reply(
            ERROR,
            format!("Cannot \"{action}\" \"{op_name}\" because it is a \"{{op_type}}\"."),
            json!({}),
        );
    }
    let (cred_level, _) = creds(shared, caller);
    if cred_level < op.options.min_privs {
        tracing::info!(
            op = op_name,
            "Rejected underprivileged \"{action}\" request."
        );
        // ocs gives no detail text here.
        return reply(
            ERROR,
            rejection_message(cred_level, op.options.min_privs, ""),
            json!({}),
        );
    }
    let Some(session) = &op.current else {
        return reply(ERROR, "No session active.".into(), json!({}));
    };
    match session.status() {
        Status::Stopping => {
            return reply(ERROR, "The operation is already stopping".into(), json!({}))
        }
        Status::Done => return reply(ERROR, "The operation is already done".into(), json!({})),
        _ => {}
    }
    if kind == OpKind::Process || op.options.abortable {
        session.request_stop();
    }
    // The stray '"' is ocs 0.12.1's.
    reply(
        OK,
        format!("Requested {action} on {} {op_name}\".", kind.as_str()),
        session.encode(),
    )
}

fn status(shared: &Arc<Shared>, op_name: &str) -> Value {
    let ops = shared.lock_ops();
    let Some(op) = ops.iter().find(|o| o.name == op_name) else {
        return reply(
            ERROR,
            format!("No task or process called \"{op_name}\""),
            json!({}),
        );
    };
    match &op.current {
        None => reply(OK, "No session active.".into(), json!({})),
        Some(s) => reply(OK, "Session active.".into(), s.encode()),
    }
}

/// The management handler.
pub(crate) fn handle_management(
    shared: &Arc<Shared>,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<Value, String> {
    let bound = bind(
        "OCSAgent._management_handler",
        &["q"],
        1,
        true,
        args,
        kwargs,
    )?;
    let q = bound[0].as_ref().and_then(Value::as_str).unwrap_or("");
    Ok(match q {
        "get_api" => json!({
            "agent_class": shared.agent_class,
            "instance_hostname": shared.hostname,
            "instance_pid": std::process::id(),
            "feeds": shared.feed_list(),
            "processes": op_list(shared, OpKind::Process),
            "tasks": op_list(shared, OpKind::Task),
            "access_control": shared.access_control(),
        }),
        "get_tasks" => op_list(shared, OpKind::Task),
        "get_processes" => op_list(shared, OpKind::Process),
        "get_feeds" => shared.feed_list(),
        "get_agent_class" => json!(shared.agent_class),
        _ => Value::Null,
    })
}

fn op_list(shared: &Arc<Shared>, kind: OpKind) -> Value {
    let ops = shared.lock_ops();
    let mut list: Vec<&Op> = ops.iter().filter(|o| o.kind == kind).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Value::Array(
        list.into_iter()
            .map(|o| json!([o.name, o.session_or_stub(), o.info()]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{Agent, SiteConfig};

    fn agent() -> Agent {
        let site = SiteConfig::new("ws://127.0.0.1:1/ws", "test_realm", "observatory", "t1");
        let agent = Agent::new("TestAgent", site);
        agent
            .register_task(
                "delay_task",
                OpOptions::new().doc("delay"),
                |s, p| async move {
                    let d = p.get("delay").and_then(Value::as_f64).unwrap_or(0.0);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs_f64(d)) => {}
                        _ = s.stopped() => return Err(OpError::new("Aborted")),
                    }
                    s.update_data(|m| {
                        m.insert("requested_delay".into(), json!(d));
                    });
                    if p.get("succeed") == Some(&json!(false)) {
                        return Err(OpError::new("asked to fail"));
                    }
                    Ok(format!("Exited after {d} seconds"))
                },
            )
            .unwrap();
        agent
            .register_process("acq", OpOptions::new(), |s, _| async move {
                s.stopped().await;
                Ok("Acquisition exited cleanly.".into())
            })
            .unwrap();
        agent
            .register_task("boom", OpOptions::new(), |_, _| async move {
                panic!("kaboom");
            })
            .unwrap();
        agent
    }

    async fn call(agent: &Agent, args: Value, kwargs: Value) -> Value {
        handle_ops(
            agent.shared(),
            args.as_array().unwrap(),
            kwargs.as_object().unwrap(),
        )
        .await
        .unwrap()
    }

    fn head(v: &Value) -> (i64, String) {
        (v[0].as_i64().unwrap(), v[1].as_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn task_life_cycle_replies_match_ocs() {
        let a = agent();
        let r = call(&a, json!(["status", "delay_task", {}]), json!({})).await;
        assert_eq!(r, json!([0, "No session active.", {}]));
        let r = call(&a, json!(["wait", "delay_task", {}]), json!({"timeout": 1})).await;
        assert_eq!(r, json!([0, "Idle.", {}]));
        let r = call(
            &a,
            json!(["start", "delay_task", {"delay": 0.3}]),
            json!({}),
        )
        .await;
        assert_eq!(head(&r), (0, "Started task \"delay_task\".".into()));
        assert_eq!(r[2]["status"], "starting");
        assert_eq!(r[2]["op_code"], 2);
        assert_eq!(r[2]["session_id"], 0);
        let r = call(&a, json!(["start", "delay_task", {}]), json!({})).await;
        assert_eq!(
            head(&r),
            (-1, "Operation \"delay_task\" already in progress.".into())
        );
        let r = call(
            &a,
            json!(["wait", "delay_task", {}]),
            json!({"timeout": 0.01}),
        )
        .await;
        assert_eq!(
            head(&r),
            (
                1,
                "Operation \"delay_task\" still running; wait timed out.".into()
            )
        );
        let r = call(
            &a,
            json!(["wait", "delay_task", {}]),
            json!({"timeout": -1}),
        )
        .await;
        assert_eq!(r[0], 1);
        let r = call(
            &a,
            json!(["wait", "delay_task", {}]),
            json!({"timeout": null}),
        )
        .await;
        assert_eq!(
            head(&r),
            (
                0,
                "Operation \"delay_task\" is currently not running (SUCCEEDED).".into()
            )
        );
        assert_eq!(r[2]["data"], json!({"requested_delay": 0.3}));
        assert_eq!(r[2]["success"], true);
        assert_eq!(r[2]["op_code"], 5);
        let texts: Vec<&str> = r[2]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[1].as_str().unwrap())
            .collect();
        assert_eq!(
            texts,
            [
                "Status is now \"starting\".",
                "Status is now \"running\".",
                "Exited after 0.3 seconds",
                "Status is now \"done\"."
            ]
        );
        let r = call(&a, json!(["abort", "delay_task", {}]), json!({})).await;
        assert_eq!(r, json!([-1, "The operation is already done", {}]));
        let r = call(&a, json!(["status", "delay_task", {}]), json!({})).await;
        assert_eq!(head(&r), (0, "Session active.".into()));

        // Abort, and a second session gets the next id.
        let r = call(&a, json!(["start", "delay_task", {"delay": 10}]), json!({})).await;
        assert_eq!(r[2]["session_id"], 1);
        let r = call(&a, json!(["abort", "delay_task", {}]), json!({})).await;
        assert_eq!(
            head(&r),
            (0, "Requested abort on task delay_task\".".into())
        );
        let r = call(&a, json!(["wait", "delay_task", {}]), json!({"timeout": 5})).await;
        assert_eq!(
            head(&r),
            (
                0,
                "Operation \"delay_task\" is currently not running (FAILED).".into()
            )
        );

        // A failing body: FAILED with its message.
        call(
            &a,
            json!(["start", "delay_task", {"succeed": false}]),
            json!({}),
        )
        .await;
        let r = call(&a, json!(["wait", "delay_task", {}]), json!({})).await;
        assert_eq!(r[2]["success"], false);
        assert_eq!(r[2]["messages"][2][1], "asked to fail");
    }

    #[tokio::test]
    async fn process_life_cycle_and_errors_match_ocs() {
        let a = agent();
        let r = call(&a, json!(["stop", "acq", {}]), json!({})).await;
        assert_eq!(r, json!([-1, "No session active.", {}]));
        let r = call(&a, json!(["start", "acq"]), json!({"params": null})).await;
        assert_eq!(head(&r), (0, "Started process \"acq\".".into()));
        let r = call(&a, json!(["stop", "delay_task", {}]), json!({})).await;
        assert_eq!(
            r,
            json!([
                -1,
                "Cannot \"stop\" \"delay_task\" because it is a \"{op_type}\".",
                {}
            ])
        );
        let r = call(&a, json!(["abort", "acq", []]), json!({})).await;
        assert_eq!(
            r,
            json!([
                -1,
                "Cannot \"abort\" \"acq\" because it is a \"{op_type}\".",
                {}
            ])
        );
        let r = call(&a, json!(["stop", "acq", {}]), json!({"password": "x"})).await;
        assert_eq!(head(&r), (0, "Requested stop on process acq\".".into()));
        let r = call(&a, json!(["wait", "acq", {}]), json!({"timeout": 5})).await;
        assert_eq!(
            head(&r),
            (
                0,
                "Operation \"acq\" is currently not running (SUCCEEDED).".into()
            )
        );
        let r = call(&a, json!(["stop", "acq", {}]), json!({})).await;
        assert_eq!(r, json!([-1, "The operation is already done", {}]));
        for (args, expected) in [
            (
                json!(["start", "nope", {}]),
                json!([-1, "No task or process called \"nope\"", {}]),
            ),
            (
                json!(["status", "nope", {}]),
                json!([-1, "No task or process called \"nope\"", {}]),
            ),
            (
                json!(["wait", "nope", {}]),
                json!([-1, "Unknown operation \"nope\".", {}]),
            ),
            (
                json!(["stop", "nope", {}]),
                json!([-1, "No operation called \"nope\".", {}]),
            ),
            (
                json!(["frobnicate", "acq", {}]),
                json!([-1, "No implementation for \"acq\"", {}]),
            ),
        ] {
            assert_eq!(call(&a, args, json!({})).await, expected);
        }
        let e = handle_ops(a.shared(), &[json!("status")], &Map::new())
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "OCSAgent._ops_handler() missing 1 required positional argument: 'op_name'"
        );
    }

    #[tokio::test]
    async fn a_panicking_body_crashes_its_session_only() {
        let a = agent();
        call(&a, json!(["start", "boom", {}]), json!({})).await;
        let r = call(&a, json!(["wait", "boom", {}]), json!({"timeout": 5})).await;
        assert_eq!(
            head(&r),
            (
                0,
                "Operation \"boom\" is currently not running (FAILED).".into()
            )
        );
        assert!(r[2]["messages"][2][1]
            .as_str()
            .unwrap()
            .starts_with("CRASH: kaboom"));
    }

    #[tokio::test]
    async fn management_queries_have_the_spec_shapes() {
        let a = agent();
        a.register_feed(
            "temps",
            crate::FeedOptions::recorded(json!({"frame_length": 10}), 0.0),
        )
        .unwrap();
        let api = handle_management(a.shared(), &[json!("get_api")], &Map::new()).unwrap();
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "{}/tests/vectors/03-mgmt-get_api.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        let reference = reference["wamp"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["msg"][0] == 70)
            .unwrap()["msg"][3][0]
            .clone();
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&api), keys(&reference));
        assert_eq!(
            keys(&api["access_control"]),
            keys(&reference["access_control"])
        );
        assert_eq!(api["agent_class"], "TestAgent");
        let task_names: Vec<&str> = api["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[0].as_str().unwrap())
            .collect();
        assert_eq!(task_names, ["boom", "delay_task"], "sorted by name");
        assert_eq!(keys(&api["tasks"][1][2]), keys(&reference["tasks"][0][2]));
        assert_eq!(
            keys(&api["processes"][0][2]),
            keys(&reference["processes"][0][2])
        );
        assert_eq!(
            api["processes"][0][1],
            json!({"op_name": "acq", "status": "no_history"})
        );
        let feeds: Vec<&str> = api["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f[0].as_str().unwrap())
            .collect();
        assert_eq!(feeds, ["temps", "heartbeat"]);
        assert_eq!(keys(&api["feeds"][1][1]), keys(&reference["feeds"][1][1]));
        assert_eq!(
            api["feeds"][1][1]["address"],
            "observatory.t1.feeds.heartbeat"
        );
        assert!(api["feeds"][1][1]["session_id"].is_string());
        let q = |q: &str| handle_management(a.shared(), &[json!(q)], &Map::new()).unwrap();
        assert_eq!(q("get_agent_class"), json!("TestAgent"));
        assert_eq!(q("get_tasks"), api["tasks"]);
        assert_eq!(q("get_processes"), api["processes"]);
        assert_eq!(q("get_feeds"), api["feeds"]);
        assert_eq!(q("no_such_query"), Value::Null);
        assert!(handle_management(a.shared(), &[], &Map::new())
            .unwrap_err()
            .contains("'q'"));
    }

    #[tokio::test]
    async fn heartbeat_has_every_op_code_and_the_heartbeat_descriptor() {
        let a = agent();
        let hb = a.shared().heartbeat_arg();
        assert_eq!(hb[0], json!({"delay_task": 1, "acq": 1, "boom": 1}));
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "{}/tests/vectors/01-agent-join.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        let publish = reference["wamp"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["msg"][0] == 16)
            .unwrap()["msg"]
            .clone();
        let mut expected = publish[4][0][1].clone();
        expected["agent_address"] = json!("observatory.t1");
        expected["address"] = json!("observatory.t1.feeds.heartbeat");
        expected["agent_class"] = json!("TestAgent");
        expected["session_id"] = hb[1]["session_id"].clone();
        assert_eq!(hb[1], expected);
        call(&a, json!(["start", "acq", {}]), json!({})).await;
        assert_eq!(a.shared().heartbeat_arg()[0]["acq"], 2);
    }

    #[test]
    fn binding_follows_python() {
        let names = ["action", "op_name", "params", "timeout", "password"];
        let kw = |v: Value| v.as_object().unwrap().clone();
        let b = bind(
            "f",
            &names,
            2,
            false,
            &[json!("wait"), json!("x"), json!({})],
            &kw(json!({"timeout": 1.5})),
        )
        .unwrap();
        assert_eq!(b[3], Some(json!(1.5)));
        let b = bind(
            "f",
            &names,
            2,
            false,
            &[],
            &kw(json!({"action": "start", "op_name": "x", "params": {}})),
        )
        .unwrap();
        assert_eq!(b[0], Some(json!("start")));
        let e = bind("f", &names, 2, false, &[json!("status")], &Map::new()).unwrap_err();
        assert_eq!(e, "f() missing 1 required positional argument: 'op_name'");
        let e = bind(
            "f",
            &names,
            2,
            false,
            &[json!("a"), json!("b")],
            &kw(json!({"bogus": 1})),
        )
        .unwrap_err();
        assert!(e.contains("unexpected keyword argument 'bogus'"), "{e}");
        let e = bind(
            "f",
            &names,
            2,
            false,
            &[json!("a"), json!("b")],
            &kw(json!({"op_name": 1})),
        )
        .unwrap_err();
        assert!(e.contains("multiple values"), "{e}");
    }
}
