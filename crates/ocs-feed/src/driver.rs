//! The driver: the one task that owns the WAMP connection while [`Agent::run`](crate::Agent::run)
//! runs.
//!
//! [`Driver::run`] joins, registers the two procedures and serves the connection; on any loss
//! of the router (closed socket, refused connection, or a router that stops acknowledging: the
//! watchdog) it drops the connection and reconnects with a capped, doubling backoff, until its
//! shutdown token is cancelled — forever, unless a crossbar timeout is set (then, as ocs, ops
//! are stopped and `run` ends after that long without the router). Ops keep running meanwhile.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::call::{CallError, CallRequest, CallResult};
use crate::error::AgentError;
use crate::feed::Outgoing;
use crate::ops::Params;
use crate::procedures;
use crate::session::Session;
use crate::state::{lock, EventHandler, Shared, Subscription};
use crate::wamp::{Connection, Incoming, Request, WampError};

/// PUBLISHes sent but not yet acknowledged, per connection. Bounds memory while the router is
/// slow; beyond it, messages wait in the queue.
const MAX_IN_FLIGHT: usize = 256;
/// How long ocs waits for running ops at shutdown before leaving the realm.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

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

/// A TLS client configuration trusting the system's roots and the PEM certificates of `path`.
pub(crate) fn tls_connector(
    path: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    // The system's roots, as for a wss:// URL without a private CA; one unreadable system
    // certificate must not stop the agent.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    // A PEM file may hold several certificates (a CA bundle).
    let mut found = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
        found += 1;
    }
    if found == 0 {
        return Err("no PEM certificate in the file".into());
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Why a connection ended.
enum End {
    Shutdown,
    /// The router was lost; the reason, with its causes.
    Lost(String),
}

impl From<WampError> for End {
    fn from(e: WampError) -> End {
        End::Lost(e.describe())
    }
}

/// A connection joined to the realm with both procedures registered.
struct Joined {
    conn: Connection,
    /// The router's registration id of `{address}.ops`.
    ops_registration: u64,
    /// The router's registration id of `{address}` (management).
    management_registration: u64,
    /// Messages that came before both REGISTERED.
    early: Vec<Incoming>,
}

/// One connection being served, and what is pending on it; dropped when it ends.
struct Link {
    conn: Connection,
    ops_registration: u64,
    management_registration: u64,
    heartbeat_topic: String,
    /// Feed messages sent and not yet acknowledged, by request id (= sending order).
    in_flight: BTreeMap<u64, (Outgoing, Instant)>,
    /// Heartbeats sent and not yet acknowledged.
    heartbeats: BTreeMap<u64, Instant>,
    subs: SubscriptionState,
    /// Calls sent and not yet answered: the procedure and who waits.
    calls: BTreeMap<u64, (String, oneshot::Sender<CallResult>)>,
    /// The Access Director's `agent_poll` call (policy director).
    poll_request: Option<u64>,
    /// Op-handler tasks send their replies here.
    reply_tx: mpsc::UnboundedSender<(u64, Reply)>,
    /// Set when shutdown began: then ops are stopping, and the connection ends at this
    /// instant or once no op runs, whichever is first.
    shutdown_deadline: Option<Instant>,
    /// Startup ops start after the first heartbeat of the first join.
    startup_pending: bool,
}

/// Why joining failed.
enum ConnectError {
    AlreadyRunning { procedure: String },
    Other(String),
}

/// A reply computed by an op-handler task, for the session task to send.
enum Reply {
    Result(Value),
    RuntimeError(String),
}

/// The session task of one [`Agent::run`](crate::Agent::run): what it needs across
/// connections (per-connection state is a [`Link`]).
pub(crate) struct Driver {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// For `wss://` with a private CA (`--site-ca-file`).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    calls: mpsc::UnboundedReceiver<CallRequest>,
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        calls: mpsc::UnboundedReceiver<CallRequest>,
    ) -> Driver {
        Driver {
            shared,
            shutdown,
            tls,
            calls,
        }
    }

    /// The calls' receiver, for the next `run`; calls still waiting get
    /// [`CallError::NotRunning`] (their reply senders are dropped).
    pub(crate) fn into_calls(mut self) -> mpsc::UnboundedReceiver<CallRequest> {
        while let Ok(call) = self.calls.try_recv() {
            drop(call);
        }
        self.calls
    }

    pub(crate) async fn run(&mut self) -> Result<(), AgentError> {
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
                Ok(joined) => {
                    tracing::info!(router = %url, session = joined.conn.session_id, address = %self.shared.address, "joined and registered");
                    backoff = timing.backoff_initial;
                    self.shared.connected.store(true, Ordering::Relaxed);
                    let end = self.serve(joined, first_join).await;
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
    async fn connect(&self) -> Result<Joined, ConnectError> {
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
                    to: Request::Register,
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
        Ok(Joined {
            conn,
            ops_registration: ops_reg.unwrap_or_default(),
            management_registration: mgmt_reg.unwrap_or_default(),
            early,
        })
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

    /// Serves one joined connection until it ends: sets it up as ocs's `onJoin` does, then
    /// handles one [`Event`] at a time, sending queued feed messages between events.
    async fn serve(&mut self, joined: Joined, first_join: bool) -> End {
        let Joined {
            conn,
            ops_registration,
            management_registration,
            early,
        } = joined;
        let (reply_tx, mut replies) = mpsc::unbounded_channel();
        let mut ticker = tokio::time::interval(self.shared.timing.heartbeat_period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut link = Link {
            conn,
            ops_registration,
            management_registration,
            heartbeat_topic: format!("{}.feeds.heartbeat", self.shared.address),
            in_flight: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
            subs: SubscriptionState::default(),
            calls: BTreeMap::new(),
            poll_request: None,
            reply_tx,
            shutdown_deadline: None,
            startup_pending: first_join,
        };
        let end = match self
            .drive(&mut link, early, &mut replies, &mut ticker)
            .await
        {
            Ok(never) => match never {},
            Err(end) => end,
        };
        self.close(link, end).await
    }

    /// The event loop of one connection; returns only how it ended.
    async fn drive(
        &mut self,
        link: &mut Link,
        early: Vec<Incoming>,
        replies: &mut mpsc::UnboundedReceiver<(u64, Reply)>,
        ticker: &mut tokio::time::Interval,
    ) -> Result<Infallible, End> {
        self.on_join(link).await?;
        let mut early = early.into_iter();
        loop {
            self.send_queued(link).await?;
            let event = match early.next() {
                Some(msg) => Event::Wamp(Ok(msg)),
                None => self.next_event(link, replies, ticker).await,
            };
            self.handle(link, event).await?;
        }
    }

    /// As ocs's `onJoin`: subscriptions first, then (policy director) ask the Access Director
    /// to announce this agent's rules.
    async fn on_join(&self, link: &mut Link) -> Result<(), End> {
        self.subscribe_new(link).await?;
        if let Some(director) = self.shared.access_director() {
            let mut kwargs = Map::new();
            kwargs.insert("instance_id".into(), json!(self.shared.site.instance_id));
            kwargs.insert("agent_class".into(), json!(self.shared.agent_class));
            let procedure = format!("{director}.agent_poll");
            link.poll_request = Some(link.conn.call(&procedure, &[], &kwargs).await?);
        }
        Ok(())
    }

    /// Sends queued feed messages, in one write, as long as the in-flight window has room.
    async fn send_queued(&self, link: &mut Link) -> Result<(), End> {
        let mut sent_any = false;
        while link.in_flight.len() < MAX_IN_FLIGHT {
            let Some(item) = self.shared.queue.pop() else {
                break;
            };
            match link.conn.publish_buffered(&item.topic, &item.arg).await {
                Ok(id) => {
                    link.in_flight.insert(id, (item, Instant::now()));
                    sent_any = true;
                }
                Err(e) => {
                    self.shared.queue.requeue_front(vec![item]);
                    return Err(e.into());
                }
            }
        }
        if sent_any {
            link.conn.flush().await?;
        }
        Ok(())
    }

    /// Waits for whatever wakes the session task next.
    async fn next_event(
        &mut self,
        link: &mut Link,
        replies: &mut mpsc::UnboundedReceiver<(u64, Reply)>,
        ticker: &mut tokio::time::Interval,
    ) -> Event {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled(), if link.shutdown_deadline.is_none() => Event::Shutdown,
            _ = sleep_until_opt(link.shutdown_deadline) => Event::ShutdownDeadline,
            msg = link.conn.next() => Event::Wamp(msg),
            Some((request, reply)) = replies.recv() => Event::Reply(request, reply),
            Some(call) = self.calls.recv() => Event::Call(call),
            _ = ticker.tick() => Event::Heartbeat,
            _ = self.shared.queue.ready.notified(), if link.in_flight.len() < MAX_IN_FLIGHT => Event::FeedReady,
            _ = self.shared.subscriptions_changed.notified() => Event::Subscribe,
        }
    }

    /// One handler per event.
    async fn handle(&mut self, link: &mut Link, event: Event) -> Result<(), End> {
        match event {
            Event::Wamp(msg) => self.on_message(link, msg?).await,
            Event::Reply(request, reply) => Ok(send_reply(&mut link.conn, request, reply).await?),
            Event::Call(call) => self.on_call(link, call).await,
            Event::Heartbeat => self.on_heartbeat(link).await,
            // The loop sends queued feed messages before it waits again.
            Event::FeedReady => Ok(()),
            Event::Subscribe => self.subscribe_new(link).await,
            Event::Shutdown => {
                tracing::info!("shutting down: stopping ops");
                self.stop_all_ops();
                link.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
                Ok(())
            }
            Event::ShutdownDeadline => Err(End::Shutdown),
        }
    }

    /// A message from the router.
    async fn on_message(&self, link: &mut Link, msg: Incoming) -> Result<(), End> {
        match msg {
            Incoming::Invocation {
                request,
                registration,
                args,
                kwargs,
            } => {
                return self
                    .on_invocation(link, request, registration, args, kwargs)
                    .await
            }
            Incoming::Published { request } => {
                if link.heartbeats.remove(&request).is_none()
                    && link.in_flight.remove(&request).is_some()
                {
                    self.shared.published.fetch_add(1, Ordering::Relaxed);
                }
            }
            Incoming::Error {
                to: Request::Publish,
                request,
                error,
                ..
            } => {
                link.heartbeats.remove(&request);
                if let Some((item, _)) = link.in_flight.remove(&request) {
                    self.shared.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(topic = %item.topic, %error, "router refused a feed message");
                }
            }
            Incoming::Subscribed {
                request,
                subscription,
            } => {
                if let Some(i) = link.subs.pending.remove(&request) {
                    link.subs.active.entry(subscription).or_default().push(i);
                }
            }
            Incoming::Error {
                to: Request::Subscribe,
                request,
                error,
                args,
            } => {
                if let Some(i) = link.subs.pending.remove(&request) {
                    let topic = lock(&self.shared.subscriptions)[i].topic.clone();
                    tracing::error!(%topic, %error, ?args, "Failed to subscribe to a feed or feed pattern; possible configuration problem.");
                }
            }
            Incoming::Event {
                subscription,
                args,
                kwargs,
            } => self.on_event(link, subscription, &args, &kwargs),
            Incoming::Result {
                request,
                args,
                kwargs,
            } => {
                if let Some((_, reply)) = link.calls.remove(&request) {
                    let _ = reply.send(Ok((args, kwargs)));
                }
            }
            Incoming::Error {
                to: Request::Call,
                request,
                error,
                args,
            } => {
                if let Some((procedure, reply)) = link.calls.remove(&request) {
                    let _ = reply.send(Err(CallError::Remote {
                        procedure,
                        error,
                        args,
                    }));
                } else if Some(request) == link.poll_request {
                    tracing::error!(%error, "Failed to request access rules from access director at {}", self.shared.access_director().unwrap_or_default());
                } else {
                    tracing::debug!(request, %error, ?args, "ignored ERROR of an unknown CALL");
                }
            }
            Incoming::Goodbye { reason } | Incoming::Abort { reason } => {
                return Err(End::Lost(format!("router closed the session: {reason}")))
            }
            other => tracing::debug!(?other, "ignored WAMP message"),
        }
        Ok(())
    }

    /// An INVOCATION of one of the two procedures. The ops procedure may wait (`wait`), so
    /// it runs in its own task and its reply comes back as [`Event::Reply`]; the management
    /// procedure answers at once.
    async fn on_invocation(
        &self,
        link: &mut Link,
        request: u64,
        registration: u64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<(), End> {
        if registration == link.ops_registration {
            let shared = self.shared.clone();
            let tx = link.reply_tx.clone();
            tokio::spawn(async move {
                let reply = match procedures::handle_ops(&shared, &args, &kwargs).await {
                    Ok(v) => Reply::Result(v),
                    Err(e) => Reply::RuntimeError(e),
                };
                let _ = tx.send((request, reply));
            });
            return Ok(());
        }
        let reply = if registration == link.management_registration {
            match procedures::handle_management(&self.shared, &args, &kwargs) {
                Ok(v) => Reply::Result(v),
                Err(e) => Reply::RuntimeError(e),
            }
        } else {
            Reply::RuntimeError(format!("no registration {registration}"))
        };
        Ok(send_reply(&mut link.conn, request, reply).await?)
    }

    /// An EVENT: each local subscription of its router subscription gets it.
    fn on_event(
        &self,
        link: &Link,
        subscription: u64,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) {
        let handlers: Vec<EventHandler> = {
            let all = lock(&self.shared.subscriptions);
            link.subs
                .active
                .get(&subscription)
                .into_iter()
                .flatten()
                .map(|i| all[*i].handler.clone())
                .collect()
        };
        for h in &handlers {
            self.shared.handle_event(h, args, kwargs);
        }
    }

    /// A call from [`Agent::call`](crate::Agent::call): sent now, answered by RESULT or ERROR.
    async fn on_call(&self, link: &mut Link, call: CallRequest) -> Result<(), End> {
        match link
            .conn
            .call(&call.procedure, &call.args, &call.kwargs)
            .await
        {
            Ok(id) => {
                link.calls.insert(id, (call.procedure, call.reply));
                Ok(())
            }
            Err(e) => {
                let _ = call.reply.send(Err(CallError::ConnectionLost {
                    procedure: call.procedure,
                }));
                Err(e.into())
            }
        }
    }

    /// The heartbeat tick: the watchdog, the heartbeat, startup ops after the first one, and
    /// the end of a shutdown once no op runs.
    async fn on_heartbeat(&self, link: &mut Link) -> Result<(), End> {
        let watchdog = self.shared.timing.watchdog_timeout;
        let oldest = link
            .heartbeats
            .values()
            .chain(link.in_flight.values().map(|(_, t)| t))
            .min()
            .copied();
        if oldest.is_some_and(|t| t.elapsed() > watchdog) {
            return Err(End::Lost(format!(
                "watchdog: the router acknowledged nothing for {watchdog:?}"
            )));
        }
        let id = link
            .conn
            .publish(&link.heartbeat_topic, &self.shared.heartbeat_arg())
            .await?;
        link.heartbeats.insert(id, Instant::now());
        if link.startup_pending {
            // After registration and the first heartbeat, as in OCS.
            link.startup_pending = false;
            self.launch_startup_ops();
        }
        if link.shutdown_deadline.is_some() && self.no_op_running() {
            return Err(End::Shutdown);
        }
        Ok(())
    }

    /// After the connection ended: calls waiting for a result fail, feed messages in flight
    /// are counted as unconfirmed, and at shutdown the realm is left.
    async fn close(&self, link: Link, end: End) -> End {
        for (_, (procedure, reply)) in link.calls {
            let _ = reply.send(Err(CallError::ConnectionLost { procedure }));
        }
        // What was sent but not acknowledged may have reached subscribers (the aggregator,
        // InfluxDB): it is not sent again. At most once; counted.
        if !link.in_flight.is_empty() {
            self.shared
                .unconfirmed
                .fetch_add(link.in_flight.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                count = link.in_flight.len(),
                "feed messages sent but not acknowledged when the router was lost; not resent"
            );
        }
        if let End::Shutdown = end {
            link.conn.leave(Duration::from_secs(1)).await;
        }
        end
    }

    /// Sends SUBSCRIBE for the subscriptions not yet made on this connection.
    async fn subscribe_new(&self, link: &mut Link) -> Result<(), End> {
        let new: Vec<(usize, Subscription)> = lock(&self.shared.subscriptions)
            .iter()
            .enumerate()
            .skip(link.subs.sent)
            .map(|(i, s)| (i, s.clone()))
            .collect();
        for (i, sub) in new {
            let request = link.conn.subscribe(&sub.topic, &sub.options).await?;
            link.subs.pending.insert(request, i);
            link.subs.sent = i + 1;
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
            let reply = procedures::start(
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

/// Everything that can wake the session task (one handler each, in [`Driver::handle`]).
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
