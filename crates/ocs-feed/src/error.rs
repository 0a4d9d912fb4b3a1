//! [`AgentError`]: the errors of the agent itself, shared by the handle and the driver.

use crate::access::AccessPolicyError;

/// Errors of the agent itself (not of one op or one feed message).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another callee already holds this agent's procedure on the router.
    #[error(
        "cannot register {procedure} on {router}: the procedure already exists \
         (is this agent already running?)"
    )]
    AlreadyRunning {
        /// The procedure that was taken.
        procedure: String,
        /// The router's URL.
        router: String,
    },
    /// An op of this name is already registered.
    #[error("an op named {op:?} is already registered")]
    DuplicateOp {
        /// The op.
        op: String,
    },
    /// An op name that is not a valid name (empty, or with '.').
    #[error("invalid op name {op:?}: it may not be empty or contain '.'")]
    BadOpName {
        /// The op.
        op: String,
    },
    /// The router URL is not a `ws://` or `wss://` URL: this agent speaks WAMP over
    /// WebSocket only (no RawSocket).
    #[error("unsupported router URL {url:?}: only ws:// and wss:// URLs are supported")]
    BadRouterUrl {
        /// The URL from the site config.
        url: String,
    },
    /// [`Agent::start_op`](crate::Agent::start_op) was refused (unknown op, or a session
    /// still running).
    #[error("cannot start op {op:?}: {message}")]
    StartRefused {
        /// The op.
        op: String,
        /// OCS's reply message, e.g. `Operation "acq" already in progress.`.
        message: String,
    },
    /// A declared parameter whose default does not pass its own checks (ocs's `@param`
    /// raises `ParamError` when the decorator runs).
    #[error("op {op:?}: parameter {param:?} is declared wrongly: {message}")]
    BadParam {
        /// The op.
        op: String,
        /// The parameter.
        param: String,
        /// ocs's error text for the default.
        message: String,
    },
    /// The access policy is not one ocs accepts; the agent does not run unprotected.
    #[error(transparent)]
    AccessPolicy(#[from] AccessPolicyError),
    /// The router was lost and not back within `--crossbar-timeout` seconds (set on the
    /// command line or as the site host's `crossbar_timeout`); ops were stopped, as ocs
    /// does before it exits.
    #[error("no router for {seconds} s (--crossbar-timeout): ops stopped")]
    RouterTimeout {
        /// The timeout.
        seconds: u64,
    },
    /// The private CA file (`--site-ca-file`) cannot be used.
    #[error("cannot use the CA file {path} for wss://: {reason}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// [`Agent::run`](crate::Agent::run) was called while another `run` of the same agent is
    /// active.
    #[error("this agent is already running (Agent::run was called twice)")]
    RunTwice,
}
