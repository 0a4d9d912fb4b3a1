//! The [`Agent`] handle: what an agent program registers, publishes and starts.
//!
//! The handle registers ops and feeds and queues feed messages; it never touches the socket.
//! [`Agent::run`] hands the connection to the driver (`driver.rs`), the one task that owns it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::{AccessPolicy, AccessState, Caller};
use crate::args::SiteConfig;
use crate::call::{CallError, CallRequest};
use crate::driver::{tls_connector, Driver};
use crate::error::AgentError;
use crate::feed::{Feed, FeedError, FeedOptions, FeedQueue, Outgoing};
use crate::ops::{Op, OpKind, OpOptions, OpResult, Params};
use crate::procedures;
use crate::session::{now, Session};
use crate::state::{lock, EventHandler, Shared, Subscription, Timing};

/// Feed messages waiting for the router; when full, the oldest is dropped and counted (see
/// [`FeedStats::dropped`]). At the monitor's rates this is minutes of feed data.
pub const DEFAULT_FEED_QUEUE_CAPACITY: usize = 10_000;

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
        procedures::try_start(&self.shared, op_name, Some(params), Caller::Agent)
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
        let calls = calls.unwrap_or_else(|| mpsc::unbounded_channel().1);
        let mut driver = Driver::new(self.shared.clone(), shutdown, tls, calls);
        let result = driver.run().await;
        *lock(&self.shared.calls_rx) = Some(driver.into_calls());
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.running.store(false, Ordering::SeqCst);
        result
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
