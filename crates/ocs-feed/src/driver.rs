//! The driver: the one task that owns the WAMP connection while [`Agent::run`](crate::Agent::run)
//! runs.
//!
//! [`Driver::run`] joins, registers the two procedures and serves the connection; on any loss
//! of the router (closed socket, refused connection, or a router that stops acknowledging: the
//! watchdog) it drops the connection and reconnects with a capped, doubling backoff, until its
//! shutdown token is cancelled — forever, unless a crossbar timeout is set (then, as ocs, ops
//! are stopped and `run` ends after that long without the router). Ops keep running meanwhile.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
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

/// A TLS connector trusting the system's roots and the PEM certificates of `path`.
pub(crate) fn tls_connector(path: &std::path::Path) -> Result<native_tls::TlsConnector, String> {
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

pub(crate) struct Driver {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// For `wss://` with a private CA (`--site-ca-file`).
    tls: Option<native_tls::TlsConnector>,
    calls: mpsc::UnboundedReceiver<CallRequest>,
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        tls: Option<native_tls::TlsConnector>,
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
                        to: Request::Publish,
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
                                let reply =
                                    match procedures::handle_ops(&shared, &args, &kwargs).await {
                                        Ok(v) => Reply::Result(v),
                                        Err(e) => Reply::RuntimeError(e),
                                    };
                                let _ = tx.send((request, reply));
                            });
                        } else {
                            let reply = if registration == mgmt_reg {
                                match procedures::handle_management(&self.shared, &args, &kwargs) {
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
                        to: Request::Subscribe,
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
                        to: Request::Call,
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
                        to: Request::Call,
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
