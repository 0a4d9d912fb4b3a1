//! Calls to other agents' procedures: what [`Agent::call`](crate::Agent::call) queues for the
//! driver, and how it can fail.

use serde_json::{Map, Value};

/// Why [`Agent::call`](crate::Agent::call) got no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The callee raised, or the router refused the call (e.g.
    /// `wamp.error.no_such_procedure` when the agent is not running).
    #[error("{procedure}: {error} {args:?}")]
    Remote {
        /// The procedure called.
        procedure: String,
        /// The WAMP error URI, e.g. `wamp.error.runtime_error`.
        error: String,
        /// The error's arguments (for a runtime error, the exception's text).
        args: Vec<Value>,
    },
    /// The connection to the router was lost before the result came (the call may or may
    /// not have run).
    #[error("{procedure}: the router connection was lost before the result")]
    ConnectionLost {
        /// The procedure called.
        procedure: String,
    },
    /// [`Agent::run`](crate::Agent::run) ended (or never ran) while the call waited.
    #[error("{procedure}: the agent is not running")]
    NotRunning {
        /// The procedure called.
        procedure: String,
    },
}

/// A call's result: the RESULT's positional and keyword arguments.
pub(crate) type CallResult = Result<(Vec<Value>, Map<String, Value>), CallError>;

/// A call waiting for the session task.
pub(crate) struct CallRequest {
    pub(crate) procedure: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Map<String, Value>,
    pub(crate) reply: tokio::sync::oneshot::Sender<CallResult>,
}
