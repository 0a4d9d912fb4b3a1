//! Tasks and processes: what an op is (its options, body, kind and current session) and
//! what it returns. Starting, stopping and querying them is in `procedures.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::params::Param;
use crate::session::{OpCode, Session};

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
        OpError {
            message: crate::error_with_causes(&e),
        }
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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn info(&self) -> Value {
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

    pub(crate) fn session_or_stub(&self) -> Value {
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
