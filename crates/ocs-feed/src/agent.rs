//! The [`Agent`] handle and its session task (the driver).
//!
//! The handle registers ops and feeds and queues feed messages; it never touches the socket.
//! [`Agent::run`] is the one task that owns the WAMP connection: it joins, registers the two
//! procedures, heartbeats, sends queued feed messages, answers invocations, and on any loss of
//! the router (closed socket, refused connection, or a router that stops acknowledging: the
//! watchdog) drops the connection and reconnects with a capped, doubling backoff, until its
//! shutdown token is cancelled — forever, unless a crossbar timeout is set (then, as ocs, ops
//! are stopped and `run` ends after that long without the router). Ops keep running meanwhile.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::access::{AccessPolicy, AccessPolicyError, AccessState, Caller};
use crate::args::SiteConfig;
use crate::feed::{Feed, FeedError, FeedOptions, FeedQueue, Outgoing};
use crate::ops::{self, Op, OpKind, OpOptions, OpResult, Params};
use crate::session::{now, Session};
use crate::wamp::{Connection, Incoming, WampError};

/// Feed messages waiting for the router; when full, the oldest is dropped and counted (see
/// [`FeedStats::dropped`]). At the monitor's rates this is minutes of feed data.
pub const DEFAULT_FEED_QUEUE_CAPACITY: usize = 10_000;
/// PUBLISHes sent but not yet acknowledged, per connection. Bounds memory while the router is
/// slow; beyond it, messages wait in the queue.
const MAX_IN_FLIGHT: usize = 256;
/// How long ocs waits for running ops at shutdown before leaving the realm.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

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
    /// [`Agent::start_op`] was refused (unknown op, or a session still running).
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
    /// [`Agent::run`] was called while another `run` of the same agent is active.
    #[error("this agent is already running (Agent::run was called twice)")]
    RunTwice,
}

/// Why [`Agent::call`] got no result.
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
    /// [`Agent::run`] ended (or never ran) while the call waited.
    #[error("{procedure}: the agent is not running")]
    NotRunning {
        /// The procedure called.
        procedure: String,
    },
}

/// A call's result: the RESULT's positional and keyword arguments.
type CallResult = Result<(Vec<Value>, Map<String, Value>), CallError>;

/// A call waiting for the session task.
struct CallRequest {
    procedure: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    reply: tokio::sync::oneshot::Sender<CallResult>,
}

/// Counters of the feed queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedStats {
    /// Messages waiting for the router.
    pub queued: usize,
    /// Messages dropped because the queue was full (oldest first), since the agent started.
    pub dropped: u64,
    /// Messages the router refused (e.g. not authorized), since the agent started.
    pub refused: u64,
    /// Messages the router acknowledged, since the agent started.
    pub published: u64,
    /// Messages sent when the router was lost, before it acknowledged them: perhaps
    /// delivered, perhaps not. They are not sent again (a feed message is never published
    /// twice), so each is counted here, since the agent started.
    pub unconfirmed: u64,
}

/// State shared by the handle, the session task and the op tasks.
pub(crate) struct Shared {
    pub(crate) agent_class: String,
    pub(crate) address: String,
    pub(crate) site: SiteConfig,
    pub(crate) hostname: String,
    process_session_id: String,
    /// The access policy's state; `Err` when the configured policy is invalid (`run` refuses
    /// to start then).
    access: Result<Mutex<AccessState>, AccessPolicyError>,
    ops: Mutex<Vec<Op>>,
    feeds: Mutex<Vec<Feed>>,
    /// Topics this agent subscribes to on every join (only appended to).
    subscriptions: Mutex<Vec<Subscription>>,
    subscriptions_changed: tokio::sync::Notify,
    calls: mpsc::UnboundedSender<CallRequest>,
    /// The receiving end, owned by `run` while it runs.
    calls_rx: Mutex<Option<mpsc::UnboundedReceiver<CallRequest>>>,
    heartbeat: Feed,
    pub(crate) queue: FeedQueue,
    next_session: AtomicU64,
    refused: AtomicU64,
    published: AtomicU64,
    unconfirmed: AtomicU64,
    running: AtomicBool,
    connected: AtomicBool,
    timing: Timing,
}

/// A user's event handler: positional and keyword arguments of each event.
type UserHandler = Arc<dyn Fn(&[Value], &Map<String, Value>) + Send + Sync>;

/// What to do with the events of a subscription.
#[derive(Clone)]
pub(crate) enum EventHandler {
    /// The Access Director's `controls` feed (policy `director`).
    AccessDirector,
    /// A user handler: positional and keyword arguments of each event.
    User(UserHandler),
}

/// A subscription made on every join (ocs's `subscribe_on_start`).
#[derive(Clone)]
pub(crate) struct Subscription {
    pub(crate) topic: String,
    pub(crate) options: Value,
    pub(crate) handler: EventHandler,
}

/// The subscriptions of one connection.
#[derive(Default)]
struct SubscriptionState {
    /// How many of `Shared::subscriptions` were sent SUBSCRIBE on this connection.
    sent: usize,
    /// SUBSCRIBE request id -> index in `Shared::subscriptions`.
    pending: BTreeMap<u64, usize>,
    /// Router subscription id -> indices (two local subscriptions of one topic share it).
    active: BTreeMap<u64, Vec<usize>>,
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    heartbeat_period: Duration,
    watchdog_timeout: Duration,
    join_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a short update that leaves the data consistent, so a panic
    // elsewhere does not make it unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn lock_ops(&self) -> MutexGuard<'_, Vec<Op>> {
        lock(&self.ops)
    }

    /// Runs `f` on the access state (a valid policy; an invalid one is refused at `run`,
    /// and meanwhile nothing is allowed).
    pub(crate) fn with_access<R>(&self, f: impl FnOnce(&mut AccessState) -> R) -> Option<R> {
        match &self.access {
            Ok(m) => Some(f(&mut lock(m))),
            Err(_) => None,
        }
    }

    /// `get_api`'s `access_control` block.
    pub(crate) fn access_control(&self) -> Value {
        self.with_access(|a| a.encoded()).unwrap_or(Value::Null)
    }

    pub(crate) fn add_subscription(&self, subscription: Subscription) {
        lock(&self.subscriptions).push(subscription);
        self.subscriptions_changed.notify_one();
    }

    /// The Access Director's address, under policy `director`.
    fn access_director(&self) -> Option<String> {
        match self.with_access(|a| a.policy.clone()) {
            Some(AccessPolicy::Director { director_id }) => {
                Some(format!("{}.{director_id}", self.site.address_root))
            }
            _ => None,
        }
    }

    fn handle_event(&self, handler: &EventHandler, args: &[Value], kwargs: &Map<String, Value>) {
        match handler {
            EventHandler::User(f) => f(args, kwargs),
            EventHandler::AccessDirector => {
                // A feed event's one argument is [message, feed descriptor].
                let message = args.first().and_then(|d| d.get(0)).unwrap_or(&Value::Null);
                let instance_id = &self.site.instance_id;
                match self.with_access(|a| a.apply_director_message(message, instance_id, now())) {
                    Some(Ok(true)) => tracing::info!("access rules updated by the Access Director"),
                    Some(Err(e)) => tracing::error!("{e}"),
                    _ => {}
                }
            }
        }
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// `[[name, descriptor], ...]` in registration order, the heartbeat last.
    pub(crate) fn feed_list(&self) -> Value {
        let feeds = lock(&self.feeds);
        Value::Array(
            feeds
                .iter()
                .chain(std::iter::once(&self.heartbeat))
                .map(|f| json!([f.name, f.descriptor]))
                .collect(),
        )
    }

    /// The heartbeat's PUBLISH argument: `[{op: op_code, ...}, descriptor]`.
    pub(crate) fn heartbeat_arg(&self) -> Value {
        let codes: Map<String, Value> = self
            .lock_ops()
            .iter()
            .map(|o| (o.name.clone(), json!(o.op_code() as i64)))
            .collect();
        json!([codes, self.heartbeat.descriptor])
    }
}

/// Builds an [`Agent`]; see [`Agent::builder`].
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    agent_class: String,
    site: SiteConfig,
    access_policy: Option<AccessPolicy>,
    queue_capacity: usize,
    timing: Timing,
}

impl AgentBuilder {
    /// Capacity of the feed queue (default [`DEFAULT_FEED_QUEUE_CAPACITY`]).
    pub fn feed_queue_capacity(mut self, capacity: usize) -> AgentBuilder {
        self.queue_capacity = capacity;
        self
    }

    /// How long heartbeats and feed messages may stay unacknowledged before the router is
    /// considered hung and the connection is dropped and remade (default 5 s).
    pub fn watchdog_timeout(mut self, timeout: Duration) -> AgentBuilder {
        self.timing.watchdog_timeout = timeout;
        self
    }

    /// The longest wait between two connection attempts (default 5 s; the first retry comes
    /// after 250 ms and the wait doubles).
    pub fn max_backoff(mut self, max: Duration) -> AgentBuilder {
        self.timing.backoff_max = max;
        self
    }

    /// The access policy, instead of the one of the site config (`--access-policy` or the
    /// site file's `access_policy`, parsed when the agent is built).
    pub fn access_policy(mut self, policy: AccessPolicy) -> AgentBuilder {
        self.access_policy = Some(policy);
        self
    }

    /// Builds the agent handle. An invalid access policy in the site config makes
    /// [`Agent::run`] fail with [`AgentError::AccessPolicy`] (and nothing can be started).
    pub fn build(self) -> Agent {
        let address = self.site.agent_address();
        let start_time = now();
        let access = match self.access_policy {
            Some(p) => Ok(p),
            None => AccessPolicy::parse(self.site.access_policy.as_deref()),
        }
        .map(|p| Mutex::new(AccessState::new(p, start_time)));
        let director_feed = match &access {
            Ok(m) => match &lock(m).policy {
                AccessPolicy::Director { director_id } => Some(format!(
                    "{}.{director_id}.feeds.controls",
                    self.site.address_root
                )),
                _ => None,
            },
            Err(_) => None,
        };
        let subscriptions = director_feed
            .map(|topic| Subscription {
                topic,
                options: json!({}),
                handler: EventHandler::AccessDirector,
            })
            .into_iter()
            .collect();
        let process_session_id = start_time.to_string();
        let heartbeat = Feed::new(
            "heartbeat",
            &address,
            &self.agent_class,
            &process_session_id,
            FeedOptions::default(),
        )
        .expect("\"heartbeat\" is a valid feed name");
        let hostname = crate::args::hostname().unwrap_or_else(|| "localhost".to_owned());
        let (calls, calls_rx) = mpsc::unbounded_channel();
        Agent {
            shared: Arc::new(Shared {
                agent_class: self.agent_class,
                address,
                site: self.site,
                hostname,
                process_session_id,
                access,
                ops: Mutex::new(Vec::new()),
                feeds: Mutex::new(Vec::new()),
                subscriptions: Mutex::new(subscriptions),
                subscriptions_changed: tokio::sync::Notify::new(),
                calls,
                calls_rx: Mutex::new(Some(calls_rx)),
                heartbeat,
                queue: FeedQueue::new(self.queue_capacity),
                next_session: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                published: AtomicU64::new(0),
                unconfirmed: AtomicU64::new(0),
                running: AtomicBool::new(false),
                connected: AtomicBool::new(false),
                timing: self.timing,
            }),
        }
    }
}

/// An OCS agent: a cheap, cloneable handle. Register ops and feeds on it, publish from any
/// task, and drive it with [`Agent::run`].
///
/// ```no_run
/// use ocs_feed::{Agent, FeedOptions, OpOptions, SiteConfig};
/// use serde_json::json;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let site = SiteConfig::new("ws://127.0.0.1:8001/ws", "test_realm", "observatory", "demo1");
/// let agent = Agent::new("DemoAgent", site);
/// agent.register_feed("values", FeedOptions::default())?;
/// agent.register_task("hello", OpOptions::new(), |session, _params| async move {
///     session.add_message("hello!");
///     Ok("said hello".to_owned())
/// })?;
/// agent.publish_to_feed("values", json!({"x": 1}))?;
/// agent.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_class", &self.shared.agent_class)
            .field("address", &self.shared.address)
            .finish()
    }
}

impl Agent {
    /// An agent of class `agent_class` (e.g. `"PysmurfMonitor"`) for this site instance,
    /// with default settings.
    pub fn new(agent_class: &str, site: SiteConfig) -> Agent {
        Agent::builder(agent_class, site).build()
    }

    /// A builder, to change the defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// let agent = ocs_feed::Agent::builder("MyAgent", site)
    ///     .feed_queue_capacity(1000)
    ///     .watchdog_timeout(Duration::from_secs(3))
    ///     .build();
    /// assert_eq!(agent.address(), "observatory.a1");
    /// ```
    pub fn builder(agent_class: &str, site: SiteConfig) -> AgentBuilder {
        AgentBuilder {
            agent_class: agent_class.to_owned(),
            site,
            access_policy: None,
            queue_capacity: DEFAULT_FEED_QUEUE_CAPACITY,
            timing: Timing {
                heartbeat_period: Duration::from_secs(1),
                watchdog_timeout: Duration::from_secs(5),
                join_timeout: Duration::from_secs(5),
                backoff_initial: Duration::from_millis(250),
                backoff_max: Duration::from_secs(5),
            },
        }
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// `{address_root}.{instance_id}`.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// The agent class.
    pub fn agent_class(&self) -> &str {
        &self.shared.agent_class
    }

    /// The site settings the agent was built with.
    pub fn site(&self) -> &SiteConfig {
        &self.shared.site
    }

    /// The access-control block `get_api` shows (`version`, `policy`, `update_timestamp`,
    /// `update_count`, `step`); `update_count` counts rule updates from the Access Director.
    pub fn access_control(&self) -> Value {
        self.shared.access_control()
    }

    /// Whether the agent is joined to the router and registered right now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    fn register_op<F, Fut>(
        &self,
        name: &str,
        kind: OpKind,
        options: OpOptions,
        body: F,
    ) -> Result<(), AgentError>
    where
        F: Fn(Session, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = OpResult> + Send + 'static,
    {
        if name.is_empty() || name.contains('.') {
            return Err(AgentError::BadOpName {
                op: name.to_owned(),
            });
        }
        for param in &options.params {
            crate::params::validate_spec(param).map_err(|e| AgentError::BadParam {
                op: name.to_owned(),
                param: param.key().to_owned(),
                message: e.message().to_owned(),
            })?;
        }
        let mut ops = self.shared.lock_ops();
        if ops.iter().any(|o| o.name == name) {
            return Err(AgentError::DuplicateOp {
                op: name.to_owned(),
            });
        }
        ops.push(Op {
            name: name.to_owned(),
            kind,
            options,
            body: Arc::new(move |session, params| Box::pin(body(session, params))),
            current: None,
        });
        Ok(())
    }

    /// Registers a task: a body that runs to completion once per `start`. It may watch
    /// [`Session::stopped`] to honour `abort`.
    ///
    /// ```
    /// # let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// # let agent = ocs_feed::Agent::new("MyAgent", site);
    /// agent.register_task("delay", ocs_feed::OpOptions::new(), |session, params| async move {
    ///     let delay = params.get("delay").and_then(|v| v.as_f64()).unwrap_or(1.0);
    ///     tokio::select! {
    ///         _ = tokio::time::sleep(std::time::Duration::from_secs_f64(delay)) => {}
    ///         _ = session.stopped() => return Err(ocs_feed::OpError::new("aborted")),
    ///     }
    ///     session.update_data(|d| { d.insert("slept".into(), delay.into()); });
    ///     Ok(format!("slept {delay} s"))
    /// })?;
    /// # Ok::<(), ocs_feed::AgentError>(())
    /// ```
    pub fn register_task<F, Fut>(
        &self,
        name: &str,
        options: OpOptions,
        body: F,
    ) -> Result<(), AgentError>
    where
        F: Fn(Session, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = OpResult> + Send + 'static,
    {
        self.register_op(name, OpKind::Task, options, body)
    }

    /// Registers a process: a body that runs until `stop`, which it learns of through
    /// [`Session::stopped`] or [`Session::stop_requested`] (the stopper sets the status to
    /// `stopping` and fires that signal).
    ///
    /// ```
    /// # let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// # let agent = ocs_feed::Agent::new("MyAgent", site);
    /// agent.register_process("acq", ocs_feed::OpOptions::new(), |session, _params| async move {
    ///     let mut n = 0u64;
    ///     while !session.stop_requested() {
    ///         n += 1;
    ///         session.update_data(|d| { d.insert("count".into(), n.into()); });
    ///         tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     }
    ///     Ok("stopped".to_owned())
    /// })?;
    /// # Ok::<(), ocs_feed::AgentError>(())
    /// ```
    pub fn register_process<F, Fut>(
        &self,
        name: &str,
        options: OpOptions,
        body: F,
    ) -> Result<(), AgentError>
    where
        F: Fn(Session, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = OpResult> + Send + 'static,
    {
        self.register_op(name, OpKind::Process, options, body)
    }

    /// Subscribes to a WAMP topic on every join, from now on (ocs's `subscribe_on_start`,
    /// and `subscribe` while joined): after a reconnect the subscription is made again.
    /// `options` are WAMP SUBSCRIBE options, e.g. `{}` or `{"match": "prefix"}` /
    /// `{"match": "wildcard"}` as ocs's aggregator uses. The handler gets each event's
    /// positional and keyword arguments; it runs on the agent's session task, so it must be
    /// quick (hand work to a channel).
    ///
    /// ```
    /// # let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// # let agent = ocs_feed::Agent::new("MyAgent", site);
    /// let (tx, _rx) = std::sync::mpsc::channel();
    /// agent.subscribe("observatory..feeds.heartbeat", serde_json::json!({"match": "wildcard"}),
    ///     move |args, _kwargs| { let _ = tx.send(args.to_vec()); });
    /// ```
    pub fn subscribe(
        &self,
        topic: &str,
        options: Value,
        handler: impl Fn(&[Value], &Map<String, Value>) + Send + Sync + 'static,
    ) {
        self.shared.add_subscription(Subscription {
            topic: topic.to_owned(),
            options,
            handler: EventHandler::User(Arc::new(handler)),
        });
    }

    /// Subscribes to another agent's feed `{agent_address}.feeds.{feed_name}` (ocs's
    /// `subscribe_to_feed`), made again after every reconnect. The handler gets each
    /// message and the publishing feed's descriptor (`agent_address`, `feed_name`,
    /// `record`, ...). Recorded feeds deliver blocks: `{block_name: {block_name, data,
    /// influxdb_tags, timestamps}}`.
    ///
    /// ```
    /// # let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// # let agent = ocs_feed::Agent::new("MyAgent", site);
    /// agent.subscribe_to_feed("observatory.fake-data1", "false_temperatures", |message, feed| {
    ///     println!("{} sent {message}", feed["agent_address"]);
    /// });
    /// ```
    pub fn subscribe_to_feed(
        &self,
        agent_address: &str,
        feed_name: &str,
        handler: impl Fn(&Value, &Value) + Send + Sync + 'static,
    ) {
        self.subscribe(
            &format!("{agent_address}.feeds.{feed_name}"),
            json!({}),
            move |args, _| {
                // ocs publishes one argument: [message, feed descriptor].
                let pair = args.first().unwrap_or(&Value::Null);
                handler(
                    pair.get(0).unwrap_or(&Value::Null),
                    pair.get(1).unwrap_or(&Value::Null),
                );
            },
        );
    }

    /// Calls a WAMP procedure on the router, e.g. another agent's `{address}.ops` or its
    /// management procedure `{address}` (ocs's `call`; see [`crate::OcsClient`] for the
    /// OCS op API). The call goes out once [`Agent::run`] is joined; it waits meanwhile, so
    /// put a timeout around it. Returns the result's positional and keyword arguments.
    ///
    /// ```no_run
    /// # async fn f(agent: ocs_feed::Agent) -> Result<(), ocs_feed::CallError> {
    /// let (args, _kwargs) = agent
    ///     .call("observatory.fake-data1", vec!["get_agent_class".into()], Default::default())
    ///     .await?;
    /// assert_eq!(args[0], "FakeDataAgent");
    /// # Ok(()) }
    /// ```
    pub async fn call(
        &self,
        procedure: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<(Vec<Value>, Map<String, Value>), CallError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let not_running = || CallError::NotRunning {
            procedure: procedure.to_owned(),
        };
        self.shared
            .calls
            .send(CallRequest {
                procedure: procedure.to_owned(),
                args,
                kwargs,
                reply,
            })
            .map_err(|_| not_running())?;
        rx.await.map_err(|_| not_running())?
    }

    /// Registers a feed, published on `{address}.feeds.{name}`.
    ///
    /// ```
    /// # let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// # let agent = ocs_feed::Agent::new("MyAgent", site);
    /// use ocs_feed::FeedOptions;
    /// agent.register_feed("temps", FeedOptions::recorded(serde_json::json!({"frame_length": 60}), 0.0))?;
    /// assert!(agent.register_feed("bad.name", FeedOptions::default()).is_err());
    /// # Ok::<(), ocs_feed::FeedError>(())
    /// ```
    pub fn register_feed(&self, name: &str, options: FeedOptions) -> Result<(), FeedError> {
        let mut feeds = lock(&self.shared.feeds);
        if name == "heartbeat" || feeds.iter().any(|f| f.name == name) {
            return Err(FeedError::BadName {
                feed: name.to_owned(),
                reason: "a feed of this name is already registered".into(),
            });
        }
        feeds.push(Feed::new(
            name,
            &self.shared.address,
            &self.shared.agent_class,
            &self.shared.process_session_id,
            options,
        )?);
        Ok(())
    }

    /// Publishes `message` to feed `name`. Never waits for the router: the message is queued
    /// and sent in order once connected; if the queue is full the oldest message is dropped and
    /// counted. Delivery is at most once: a message is sent once; one that was sent but not
    /// acknowledged when the router was lost may or may not have reached subscribers and is
    /// not sent again (counted in [`FeedStats::unconfirmed`]). Messages queued while the router
    /// is away go out, in order, on the next connection.
    ///
    /// A non-recorded feed takes any JSON. A recorded feed takes OCS's block forms,
    /// `{"block_name", "timestamp": t, "data": {field: value}}` or
    /// `{"block_name", "timestamps": [..], "data": {field: [values]}}` (optionally with
    /// `"influxdb_tags"`), checked as OCS checks them (field names, value types, tags, a fixed
    /// field set per block) and buffered for the feed's `buffer_time`.
    ///
    /// ```
    /// # let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// # let agent = ocs_feed::Agent::new("MyAgent", site);
    /// use serde_json::json;
    /// agent.register_feed("temps", ocs_feed::FeedOptions::recorded(json!({}), 0.0))?;
    /// agent.publish_to_feed("temps", json!({"block_name": "b", "timestamp": 1.0, "data": {"t": 4.2}}))?;
    /// assert!(agent.publish_to_feed("temps", json!({"block_name": "b", "timestamp": 2.0, "data": {"bad-name": 1}})).is_err());
    /// assert_eq!(agent.feed_stats().queued, 1);
    /// # Ok::<(), ocs_feed::FeedError>(())
    /// ```
    pub fn publish_to_feed(&self, name: &str, message: Value) -> Result<(), FeedError> {
        {
            let mut feeds = lock(&self.shared.feeds);
            let feed = feeds.iter_mut().find(|f| f.name == name).ok_or_else(|| {
                FeedError::UnknownFeed {
                    feed: name.to_owned(),
                }
            })?;
            let args = feed.accept(message, now())?;
            let topic = feed.address.clone();
            // Queue under the feeds lock so messages of one feed keep their order.
            for arg in args {
                self.shared.queue.push(Outgoing {
                    topic: topic.clone(),
                    arg,
                });
            }
            Ok(())
        }
    }

    /// Sends what a recorded feed has buffered now (OCS's `flush_buffer`); ops call it when
    /// they end.
    pub fn flush_feed(&self, name: &str) -> Result<(), FeedError> {
        let mut feeds = lock(&self.shared.feeds);
        let feed =
            feeds
                .iter_mut()
                .find(|f| f.name == name)
                .ok_or_else(|| FeedError::UnknownFeed {
                    feed: name.to_owned(),
                })?;
        for arg in feed.flush() {
            self.shared.queue.push(Outgoing {
                topic: feed.address.clone(),
                arg,
            });
        }
        Ok(())
    }

    /// Starts an op from inside the agent, as a client's `start` would (OCS's
    /// `OCSAgent.start`), with the agent's own credentials (the super-user key of startup
    /// ops); returns its new session. Must be called within a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), ocs_feed::AgentError> {
    /// # let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "a1");
    /// # let agent = ocs_feed::Agent::new("MyAgent", site);
    /// agent.register_task("hello", ocs_feed::OpOptions::new(), |_s, _p| async { Ok("hi".to_owned()) })?;
    /// let session = agent.start_op("hello", serde_json::json!({}))?;
    /// assert_eq!(session.op_name(), "hello");
    /// assert!(agent.start_op("nope", serde_json::Value::Null).is_err());
    /// # Ok(()) }
    /// ```
    pub fn start_op(&self, op_name: &str, params: Value) -> Result<Session, AgentError> {
        ops::try_start(&self.shared, op_name, Some(params), Caller::Agent)
            .map(|started| started.session)
            .map_err(|refused| AgentError::StartRefused {
                op: op_name.to_owned(),
                message: refused.message,
            })
    }

    /// The current (or last) session of an op, as `status` would show it; `None` if the op
    /// never ran or does not exist.
    pub fn session(&self, op_name: &str) -> Option<Session> {
        self.shared
            .lock_ops()
            .iter()
            .find(|o| o.name == op_name)
            .and_then(|o| o.current.clone())
    }

    /// Counters of the feed queue.
    pub fn feed_stats(&self) -> FeedStats {
        FeedStats {
            queued: self.shared.queue.len(),
            dropped: self.shared.queue.dropped(),
            refused: self.shared.refused.load(Ordering::Relaxed),
            published: self.shared.published.load(Ordering::Relaxed),
            unconfirmed: self.shared.unconfirmed.load(Ordering::Relaxed),
        }
    }

    /// Connects to the router and serves until `shutdown` is cancelled, reconnecting with
    /// backoff whenever the router is lost. Startup ops start on the first join. On shutdown it
    /// stops every process and aborts every task, waits up to 3 s for them while still
    /// heartbeating, and leaves the realm with `wamp.close.normal`.
    ///
    /// Fails if the router URL is not `ws://` ([`AgentError::BadRouterUrl`]), if the access
    /// policy is invalid ([`AgentError::AccessPolicy`]), if on the first join the agent's
    /// address is already registered ([`AgentError::AlreadyRunning`]), if called twice at
    /// once, or, when [`SiteConfig::crossbar_timeout`] is set (and not 0), when the router is
    /// lost for that long ([`AgentError::RouterTimeout`], after stopping every op).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let url = &self.shared.site.hub_url;
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(AgentError::BadRouterUrl { url: url.clone() });
        }
        if let Err(e) = &self.shared.access {
            return Err(AgentError::AccessPolicy(e.clone()));
        }
        if self.shared.running.swap(true, Ordering::SeqCst) {
            return Err(AgentError::RunTwice);
        }
        let calls = lock(&self.shared.calls_rx).take();
        let tls = match &self.shared.site.ca_file {
            Some(path) => match tls_connector(path) {
                Ok(t) => Some(t),
                Err(reason) => {
                    self.shared.running.store(false, Ordering::SeqCst);
                    return Err(AgentError::Tls {
                        path: path.clone(),
                        reason,
                    });
                }
            },
            None => None,
        };
        let mut driver = Driver {
            shared: self.shared.clone(),
            shutdown,
            tls,
            calls: calls.unwrap_or_else(|| mpsc::unbounded_channel().1),
        };
        let result = driver.run().await;
        // Calls still waiting get NotRunning (their reply senders are dropped).
        while let Ok(call) = driver.calls.try_recv() {
            drop(call);
        }
        *lock(&self.shared.calls_rx) = Some(driver.calls);
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.running.store(false, Ordering::SeqCst);
        result
    }
}

/// A TLS connector trusting the system's roots and the PEM certificates of `path`.
fn tls_connector(path: &std::path::Path) -> Result<native_tls::TlsConnector, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut builder = native_tls::TlsConnector::builder();
    let mut found = 0;
    // A PEM file may hold several certificates (a CA bundle).
    let text = String::from_utf8_lossy(&pem);
    for block in text.split_inclusive("-----END CERTIFICATE-----") {
        if let Some(start) = block.find("-----BEGIN CERTIFICATE-----") {
            let cert = native_tls::Certificate::from_pem(&block.as_bytes()[start..])
                .map_err(|e| e.to_string())?;
            builder.add_root_certificate(cert);
            found += 1;
        }
    }
    if found == 0 {
        return Err("no PEM certificate in the file".into());
    }
    builder.build().map_err(|e| e.to_string())
}

/// Why a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

enum ConnectError {
    AlreadyRunning { procedure: String },
    Other(String),
}

/// A reply computed by an op-handler task, for the session task to send.
enum Reply {
    Result(Value),
    RuntimeError(String),
}

struct Driver {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// For `wss://` with a private CA (`--site-ca-file`).
    tls: Option<native_tls::TlsConnector>,
    calls: mpsc::UnboundedReceiver<CallRequest>,
}

impl Driver {
    async fn run(&mut self) -> Result<(), AgentError> {
        let timing = self.shared.timing;
        let url = self.shared.site.hub_url.clone();
        let mut first_join = true;
        let mut backoff = timing.backoff_initial;
        // ocs's --crossbar-timeout: after losing the router, give up after this long.
        let router_timeout = self
            .shared
            .site
            .crossbar_timeout
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let mut lost_at: Option<Instant> = None;
        loop {
            if self.shutdown.is_cancelled() {
                self.stop_all_ops();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.all_ops_done()).await;
                return Ok(());
            }
            let give_up_at = lost_at.zip(router_timeout).map(|(t, d)| t + d);
            let connected = tokio::select! {
                c = self.connect() => c,
                _ = self.shutdown.cancelled() => continue,
                _ = sleep_until_opt(give_up_at) => return self.give_up(router_timeout).await,
            };
            match connected {
                Ok((conn, ops_reg, mgmt_reg, early)) => {
                    tracing::info!(router = %url, session = conn.session_id, address = %self.shared.address, "joined and registered");
                    backoff = timing.backoff_initial;
                    self.shared.connected.store(true, Ordering::Relaxed);
                    let end = self.serve(conn, ops_reg, mgmt_reg, early, first_join).await;
                    self.shared.connected.store(false, Ordering::Relaxed);
                    first_join = false;
                    match end {
                        End::Shutdown => return Ok(()),
                        End::Lost(reason) => {
                            tracing::warn!(router = %url, %reason, "lost the router; reconnecting");
                            lost_at = Some(Instant::now());
                            continue;
                        }
                    }
                }
                Err(ConnectError::AlreadyRunning { procedure }) if first_join => {
                    return Err(AgentError::AlreadyRunning {
                        procedure,
                        router: url,
                    });
                }
                Err(ConnectError::AlreadyRunning { procedure }) => {
                    // After a reconnect the router may not yet have dropped our old session.
                    tracing::warn!(%procedure, "procedure still registered by an old session; retrying");
                }
                Err(ConnectError::Other(reason)) => {
                    tracing::warn!(router = %url, %reason, retry_in = ?backoff, "cannot join the router");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.cancelled() => {}
                _ = sleep_until_opt(give_up_at) => return self.give_up(router_timeout).await,
            }
            backoff = (backoff * 2).min(timing.backoff_max);
        }
    }

    /// `--crossbar-timeout` expired: stop every op, as ocs does, and end `run`.
    async fn give_up(&self, timeout: Option<Duration>) -> Result<(), AgentError> {
        let seconds = timeout.map_or(0, |t| t.as_secs());
        tracing::error!(
            seconds,
            "no router for --crossbar-timeout seconds: stopping all ops and exiting"
        );
        self.stop_all_ops();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.all_ops_done()).await;
        Err(AgentError::RouterTimeout { seconds })
    }

    /// Joins and registers both procedures; returns them and any message that came early.
    async fn connect(&self) -> Result<(Connection, u64, u64, Vec<Incoming>), ConnectError> {
        let timing = self.shared.timing;
        let site = &self.shared.site;
        let other = |e: WampError| ConnectError::Other(e.describe());
        let mut conn = Connection::join(
            &site.hub_url,
            &site.realm,
            timing.join_timeout,
            self.tls.as_ref(),
        )
        .await
        .map_err(other)?;
        let ops_uri = format!("{}.ops", self.shared.address);
        let mgmt_uri = self.shared.address.clone();
        let ops_req = conn.register(&ops_uri).await.map_err(other)?;
        let mgmt_req = conn.register(&mgmt_uri).await.map_err(other)?;
        let (mut ops_reg, mut mgmt_reg) = (None, None);
        let mut early = Vec::new();
        let deadline = Instant::now() + timing.join_timeout;
        while ops_reg.is_none() || mgmt_reg.is_none() {
            let msg = tokio::time::timeout_at(deadline, conn.next())
                .await
                .map_err(|_| ConnectError::Other("no answer to REGISTER".into()))?
                .map_err(other)?;
            match msg {
                Incoming::Registered {
                    request,
                    registration,
                } if request == ops_req => ops_reg = Some(registration),
                Incoming::Registered {
                    request,
                    registration,
                } if request == mgmt_req => mgmt_reg = Some(registration),
                Incoming::Error {
                    request_type: 64,
                    request,
                    error,
                    args,
                } => {
                    let procedure = if request == ops_req {
                        &ops_uri
                    } else {
                        &mgmt_uri
                    };
                    conn.leave(Duration::from_secs(1)).await;
                    if error == "wamp.error.procedure_already_exists" {
                        tracing::error!(%procedure, "procedure already registered: is this agent already running?");
                        return Err(ConnectError::AlreadyRunning {
                            procedure: procedure.clone(),
                        });
                    }
                    return Err(ConnectError::Other(format!(
                        "REGISTER {procedure} failed: {error} {args:?}"
                    )));
                }
                other => early.push(other),
            }
        }
        Ok((
            conn,
            ops_reg.unwrap_or_default(),
            mgmt_reg.unwrap_or_default(),
            early,
        ))
    }

    fn stop_all_ops(&self) {
        for op in self.shared.lock_ops().iter() {
            if let Some(s) = &op.current {
                if !s.is_done() {
                    s.request_stop();
                }
            }
        }
    }

    async fn all_ops_done(&self) {
        let running: Vec<Session> = self
            .shared
            .lock_ops()
            .iter()
            .filter_map(|o| o.current.clone())
            .collect();
        for s in running {
            s.wait_done().await;
        }
    }

    async fn serve(
        &mut self,
        mut conn: Connection,
        ops_reg: u64,
        mgmt_reg: u64,
        early: Vec<Incoming>,
        first_join: bool,
    ) -> End {
        let timing = self.shared.timing;
        let heartbeat_topic = format!("{}.feeds.heartbeat", self.shared.address);
        // Sent and not yet acknowledged, by request id (= sending order).
        let mut in_flight: BTreeMap<u64, (Outgoing, Instant)> = BTreeMap::new();
        let mut heartbeats: BTreeMap<u64, Instant> = BTreeMap::new();
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<(u64, Reply)>();
        let mut ticker = tokio::time::interval(timing.heartbeat_period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown_deadline: Option<Instant> = None;
        let mut startup_pending = first_join;
        let mut pending_msgs = early.into_iter();
        let mut subs = SubscriptionState::default();
        // As ocs's onJoin: subscriptions first, then (policy director) ask the Access
        // Director to announce this agent's rules.
        if let Err(e) = self.subscribe_new(&mut conn, &mut subs).await {
            return End::Lost(e.describe());
        }
        type PendingCall = (String, tokio::sync::oneshot::Sender<CallResult>);
        let mut calls: BTreeMap<u64, PendingCall> = BTreeMap::new();
        let mut poll_request = None;
        if let Some(director) = self.shared.access_director() {
            let mut kwargs = Map::new();
            kwargs.insert("instance_id".into(), json!(self.shared.site.instance_id));
            kwargs.insert("agent_class".into(), json!(self.shared.agent_class));
            match conn
                .call(&format!("{director}.agent_poll"), &[], &kwargs)
                .await
            {
                Ok(id) => poll_request = Some(id),
                Err(e) => return End::Lost(e.describe()),
            }
        }

        let end = loop {
            // Feed messages go out as long as the in-flight window has room.
            let mut send_failed = None;
            let mut sent_any = false;
            while in_flight.len() < MAX_IN_FLIGHT {
                let Some(item) = self.shared.queue.pop() else {
                    break;
                };
                match conn.publish_buffered(&item.topic, &item.arg).await {
                    Ok(id) => {
                        in_flight.insert(id, (item, Instant::now()));
                        sent_any = true;
                    }
                    Err(e) => {
                        self.shared.queue.requeue_front(vec![item]);
                        send_failed = Some(e.describe());
                        break;
                    }
                }
            }
            if sent_any && send_failed.is_none() {
                if let Err(e) = conn.flush().await {
                    send_failed = Some(e.describe());
                }
            }
            if let Some(reason) = send_failed {
                break End::Lost(reason);
            }
            let event = if let Some(m) = pending_msgs.next() {
                Event::Wamp(Ok(m))
            } else {
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled(), if shutdown_deadline.is_none() => Event::Shutdown,
                    _ = sleep_until_opt(shutdown_deadline) => Event::ShutdownDeadline,
                    msg = conn.next() => Event::Wamp(msg),
                    Some((request, reply)) = reply_rx.recv() => Event::Reply(request, reply),
                    Some(call) = self.calls.recv() => Event::Call(call),
                    _ = ticker.tick() => Event::Heartbeat,
                    _ = self.shared.queue.ready.notified(), if in_flight.len() < MAX_IN_FLIGHT => Event::FeedReady,
                    _ = self.shared.subscriptions_changed.notified() => Event::Subscribe,
                }
            };
            match event {
                Event::Shutdown => {
                    tracing::info!("shutting down: stopping ops");
                    self.stop_all_ops();
                    shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
                }
                Event::ShutdownDeadline => break End::Shutdown,
                Event::FeedReady => {}
                Event::Subscribe => {
                    if let Err(e) = self.subscribe_new(&mut conn, &mut subs).await {
                        break End::Lost(e.describe());
                    }
                }
                Event::Wamp(Err(e)) => break End::Lost(e.describe()),
                Event::Wamp(Ok(msg)) => match msg {
                    Incoming::Published { request } => {
                        if heartbeats.remove(&request).is_none()
                            && in_flight.remove(&request).is_some()
                        {
                            self.shared.published.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Incoming::Error {
                        request_type: 16,
                        request,
                        error,
                        ..
                    } => {
                        heartbeats.remove(&request);
                        if let Some((item, _)) = in_flight.remove(&request) {
                            self.shared.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(topic = %item.topic, %error, "router refused a feed message");
                        }
                    }
                    Incoming::Invocation {
                        request,
                        registration,
                        args,
                        kwargs,
                    } => {
                        if registration == ops_reg {
                            let shared = self.shared.clone();
                            let tx = reply_tx.clone();
                            tokio::spawn(async move {
                                let reply = match ops::handle_ops(&shared, &args, &kwargs).await {
                                    Ok(v) => Reply::Result(v),
                                    Err(e) => Reply::RuntimeError(e),
                                };
                                let _ = tx.send((request, reply));
                            });
                        } else {
                            let reply = if registration == mgmt_reg {
                                match ops::handle_management(&self.shared, &args, &kwargs) {
                                    Ok(v) => Reply::Result(v),
                                    Err(e) => Reply::RuntimeError(e),
                                }
                            } else {
                                Reply::RuntimeError(format!("no registration {registration}"))
                            };
                            if let Err(e) = send_reply(&mut conn, request, reply).await {
                                break End::Lost(e.describe());
                            }
                        }
                    }
                    Incoming::Subscribed {
                        request,
                        subscription,
                    } => {
                        if let Some(i) = subs.pending.remove(&request) {
                            subs.active.entry(subscription).or_default().push(i);
                        }
                    }
                    Incoming::Error {
                        request_type: 32,
                        request,
                        error,
                        args,
                    } => {
                        if let Some(i) = subs.pending.remove(&request) {
                            let topic = lock(&self.shared.subscriptions)[i].topic.clone();
                            tracing::error!(%topic, %error, ?args, "Failed to subscribe to a feed or feed pattern; possible configuration problem.");
                        }
                    }
                    Incoming::Event {
                        subscription,
                        args,
                        kwargs,
                    } => {
                        let handlers: Vec<EventHandler> = {
                            let all = lock(&self.shared.subscriptions);
                            subs.active
                                .get(&subscription)
                                .into_iter()
                                .flatten()
                                .map(|i| all[*i].handler.clone())
                                .collect()
                        };
                        for h in &handlers {
                            self.shared.handle_event(h, &args, &kwargs);
                        }
                    }
                    Incoming::Result {
                        request,
                        args,
                        kwargs,
                    } => {
                        if let Some((_, reply)) = calls.remove(&request) {
                            let _ = reply.send(Ok((args, kwargs)));
                        }
                    }
                    Incoming::Error {
                        request_type: 48,
                        request,
                        error,
                        args,
                    } if calls.contains_key(&request) => {
                        if let Some((procedure, reply)) = calls.remove(&request) {
                            let _ = reply.send(Err(CallError::Remote {
                                procedure,
                                error,
                                args,
                            }));
                        }
                    }
                    Incoming::Error {
                        request_type: 48,
                        request,
                        error,
                        ..
                    } if Some(request) == poll_request => {
                        tracing::error!(%error, "Failed to request access rules from access director at {}", self.shared.access_director().unwrap_or_default());
                    }
                    Incoming::Goodbye { reason } | Incoming::Abort { reason } => {
                        break End::Lost(format!("router closed the session: {reason}"))
                    }
                    other => tracing::debug!(?other, "ignored WAMP message"),
                },
                Event::Call(call) => {
                    match conn.call(&call.procedure, &call.args, &call.kwargs).await {
                        Ok(id) => {
                            calls.insert(id, (call.procedure, call.reply));
                        }
                        Err(e) => {
                            let _ = call.reply.send(Err(CallError::ConnectionLost {
                                procedure: call.procedure,
                            }));
                            break End::Lost(e.describe());
                        }
                    }
                }
                Event::Reply(request, reply) => {
                    if let Err(e) = send_reply(&mut conn, request, reply).await {
                        break End::Lost(e.describe());
                    }
                }
                Event::Heartbeat => {
                    let oldest = heartbeats
                        .values()
                        .chain(in_flight.values().map(|(_, t)| t))
                        .min()
                        .copied();
                    if oldest.is_some_and(|t| t.elapsed() > timing.watchdog_timeout) {
                        break End::Lost(format!(
                            "watchdog: the router acknowledged nothing for {:?}",
                            timing.watchdog_timeout
                        ));
                    }
                    match conn
                        .publish(&heartbeat_topic, &self.shared.heartbeat_arg())
                        .await
                    {
                        Ok(id) => {
                            heartbeats.insert(id, Instant::now());
                        }
                        Err(e) => break End::Lost(e.describe()),
                    }
                    if startup_pending {
                        // After registration and the first heartbeat, as in OCS.
                        startup_pending = false;
                        self.launch_startup_ops();
                    }
                    if shutdown_deadline.is_some() && self.no_op_running() {
                        break End::Shutdown;
                    }
                }
            }
        };
        for (_, (procedure, reply)) in std::mem::take(&mut calls) {
            let _ = reply.send(Err(CallError::ConnectionLost { procedure }));
        }
        // What was sent but not acknowledged may have reached subscribers (the aggregator,
        // InfluxDB): it is not sent again. At most once; counted.
        if !in_flight.is_empty() {
            self.shared
                .unconfirmed
                .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                count = in_flight.len(),
                "feed messages sent but not acknowledged when the router was lost; not resent"
            );
        }
        if let End::Shutdown = end {
            conn.leave(Duration::from_secs(1)).await;
        }
        end
    }

    /// Sends SUBSCRIBE for the subscriptions not yet made on this connection.
    async fn subscribe_new(
        &self,
        conn: &mut Connection,
        subs: &mut SubscriptionState,
    ) -> Result<(), WampError> {
        let new: Vec<(usize, Subscription)> = lock(&self.shared.subscriptions)
            .iter()
            .enumerate()
            .skip(subs.sent)
            .map(|(i, s)| (i, s.clone()))
            .collect();
        for (i, sub) in new {
            let request = conn.subscribe(&sub.topic, &sub.options).await?;
            subs.pending.insert(request, i);
            subs.sent = i + 1;
        }
        Ok(())
    }

    fn no_op_running(&self) -> bool {
        !self
            .shared
            .lock_ops()
            .iter()
            .any(|o| matches!(&o.current, Some(s) if !s.is_done()))
    }

    fn launch_startup_ops(&self) {
        let startup: Vec<(String, Params)> = self
            .shared
            .lock_ops()
            .iter()
            .filter_map(|o| o.options.startup.clone().map(|p| (o.name.clone(), p)))
            .collect();
        for (name, params) in startup {
            let reply = ops::start(
                &self.shared,
                &name,
                Some(Value::Object(params)),
                Caller::Agent,
            );
            if reply[0] != 0 {
                tracing::error!(op = %name, ?reply, "startup op did not start");
            }
        }
    }
}

/// Everything that can wake the session task.
enum Event {
    Wamp(Result<Incoming, WampError>),
    Reply(u64, Reply),
    Heartbeat,
    FeedReady,
    Subscribe,
    Call(CallRequest),
    Shutdown,
    ShutdownDeadline,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn send_reply(conn: &mut Connection, request: u64, reply: Reply) -> Result<(), WampError> {
    match reply {
        Reply::Result(v) => conn.yield_result(request, v).await,
        Reply::RuntimeError(text) => {
            conn.yield_error(request, "wamp.error.runtime_error", &text)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(url: &str) -> Agent {
        Agent::new("A", SiteConfig::new(url, "r", "observatory", "a1"))
    }

    /// wamp_async's RawSocket transport was unreliable; this agent refuses anything but
    /// ws:// and wss://.
    #[tokio::test]
    async fn only_websocket_urls_are_accepted() {
        for url in ["rs://127.0.0.1:8001", "tcp://127.0.0.1:8001"] {
            let err = agent(url).run(CancellationToken::new()).await.unwrap_err();
            assert!(
                matches!(err, AgentError::BadRouterUrl { .. }),
                "{url}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn run_returns_at_shutdown_while_the_router_is_unreachable() {
        // Port 1 on loopback refuses connections: the agent keeps retrying until shutdown.
        let a = agent("ws://127.0.0.1:1/ws");
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let (a, s) = (a.clone(), shutdown.clone());
            async move { a.run(s).await }
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!run.is_finished(), "retries forever");
        assert!(matches!(
            a.run(CancellationToken::new()).await,
            Err(AgentError::RunTwice)
        ));
        a.register_feed("f", FeedOptions::default()).unwrap();
        a.publish_to_feed("f", json!(1)).unwrap();
        assert_eq!(a.feed_stats().queued, 1, "queued while the router is away");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn ops_and_feeds_names_are_checked() {
        let a = agent("ws://127.0.0.1:1/ws");
        let body = |_s: Session, _p: Params| async { Ok(String::new()) };
        a.register_task("t", OpOptions::new(), body).unwrap();
        assert!(matches!(
            a.register_process("t", OpOptions::new(), body),
            Err(AgentError::DuplicateOp { .. })
        ));
        assert!(matches!(
            a.register_task("a.b", OpOptions::new(), body),
            Err(AgentError::BadOpName { .. })
        ));
        assert!(a
            .register_feed("heartbeat", FeedOptions::default())
            .is_err());
        assert_eq!(
            a.publish_to_feed("nope", json!(1)),
            Err(FeedError::UnknownFeed {
                feed: "nope".into()
            })
        );
    }
}
