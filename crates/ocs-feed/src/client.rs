//! The client side: another agent's ops, as ocs's `OCSClient` / `OperationClient` see them,
//! over this agent's own router connection.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::agent::{Agent, CallError};

/// ocs's reply triple `(status, msg, session)` (`OCSReply`): `status` is 0 (OK), -1
/// (ERROR) or 1 (TIMEOUT); `session` is the op's session dict, `{}` when there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct OcsReply {
    /// 0 = OK, -1 = ERROR, 1 = TIMEOUT (ocs's `ResponseCode`).
    pub status: i64,
    /// The agent's message, e.g. `Started task "delay_task".`.
    pub msg: String,
    /// The session (`session_id`, `op_name`, `op_code`, `status`, `success`, `data`,
    /// `messages`, ...), or `{}`.
    pub session: Value,
}

impl OcsReply {
    /// Whether `status` is 0 (OK).
    pub fn is_ok(&self) -> bool {
        self.status == 0
    }

    fn from_result(procedure: &str, args: &[Value]) -> Result<OcsReply, CallError> {
        let bad = || CallError::Remote {
            procedure: procedure.to_owned(),
            error: "ocs_feed.error.bad_reply".into(),
            args: args.to_vec(),
        };
        let triple = args.first().and_then(Value::as_array).ok_or_else(bad)?;
        match triple.as_slice() {
            [status, msg, session] => Ok(OcsReply {
                status: status.as_i64().ok_or_else(bad)?,
                msg: msg.as_str().ok_or_else(bad)?.to_owned(),
                session: session.clone(),
            }),
            _ => Err(bad()),
        }
    }
}

/// Another agent's ops and API, called through this agent's router connection (ocs's
/// `OCSClient`; the agent must be running, see [`Agent::run`]). Each method returns ocs's
/// reply triple as the agent sent it; an error only when the call itself failed (agent not
/// on the router: `wamp.error.no_such_procedure`; a handler exception:
/// `wamp.error.runtime_error`; the connection lost).
///
/// ```no_run
/// # async fn f(agent: ocs_feed::Agent) -> Result<(), ocs_feed::CallError> {
/// use serde_json::json;
/// let fake = ocs_feed::OcsClient::new(&agent, "fake-data1");
/// let reply = fake.start("delay_task", json!({"delay": 0.5})).await?;
/// assert_eq!(reply.status, 0, "{}", reply.msg);
/// let done = fake.wait("delay_task", Some(std::time::Duration::from_secs(5))).await?;
/// println!("{} {}", done.msg, done.session["success"]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OcsClient {
    agent: Agent,
    address: String,
    password: Option<String>,
}

impl OcsClient {
    /// A client of the agent `instance_id` under this agent's address root.
    pub fn new(agent: &Agent, instance_id: &str) -> OcsClient {
        let address = format!("{}.{instance_id}", agent.site().address_root);
        OcsClient::with_address(agent, &address)
    }

    /// A client of the agent at a full address (`observatory.fake-data1`).
    pub fn with_address(agent: &Agent, address: &str) -> OcsClient {
        OcsClient {
            agent: agent.clone(),
            address: address.to_owned(),
            password: None,
        }
    }

    /// Sends this password with every op request (ocs's `OCSClient(privs=...)` under an
    /// access policy).
    pub fn password(mut self, password: impl Into<String>) -> OcsClient {
        self.password = Some(password.into());
        self
    }

    /// The target agent's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    async fn request(
        &self,
        action: &str,
        op_name: &str,
        params: Value,
        timeout: Option<f64>,
    ) -> Result<OcsReply, CallError> {
        let procedure = format!("{}.ops", self.address);
        let mut kwargs = Map::new();
        if let Some(t) = timeout {
            kwargs.insert("timeout".into(), Value::from(t));
        }
        if let Some(p) = &self.password {
            kwargs.insert("password".into(), Value::from(p.clone()));
        }
        let (args, _) = self
            .agent
            .call(
                &procedure,
                vec![action.into(), op_name.into(), params],
                kwargs,
            )
            .await?;
        OcsReply::from_result(&procedure, &args)
    }

    /// `start` with these params (an object).
    pub async fn start(&self, op_name: &str, params: Value) -> Result<OcsReply, CallError> {
        self.request("start", op_name, params, None).await
    }

    /// `wait`: until the op is done, or `timeout` (then status 1); `None` waits for good.
    pub async fn wait(
        &self,
        op_name: &str,
        timeout: Option<Duration>,
    ) -> Result<OcsReply, CallError> {
        let t = timeout.map(|d| d.as_secs_f64());
        self.request("wait", op_name, Value::Object(Map::new()), t)
            .await
    }

    /// `status`.
    pub async fn status(&self, op_name: &str) -> Result<OcsReply, CallError> {
        self.request("status", op_name, Value::Object(Map::new()), None)
            .await
    }

    /// `stop` (a process).
    pub async fn stop(&self, op_name: &str) -> Result<OcsReply, CallError> {
        self.request("stop", op_name, Value::Object(Map::new()), None)
            .await
    }

    /// `abort` (a task).
    pub async fn abort(&self, op_name: &str) -> Result<OcsReply, CallError> {
        self.request("abort", op_name, Value::Object(Map::new()), None)
            .await
    }

    /// Runs a task to its end: `start`, then (if that was OK) `wait` (ocs's
    /// `client.delay_task(delay=1)`).
    pub async fn run_task(&self, op_name: &str, params: Value) -> Result<OcsReply, CallError> {
        let started = self.start(op_name, params).await?;
        if !started.is_ok() {
            return Ok(started);
        }
        self.wait(op_name, None).await
    }

    /// The agent's `get_api` (agent class, ops with sessions and docstrings, feeds, access
    /// control).
    pub async fn get_api(&self) -> Result<Value, CallError> {
        let (args, _) = self
            .agent
            .call(&self.address, vec!["get_api".into()], Map::new())
            .await?;
        Ok(args.into_iter().next().unwrap_or(Value::Null))
    }
}
