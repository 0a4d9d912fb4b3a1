//! The state shared by the [`Agent`](crate::Agent) handle, the driver and the op tasks: the
//! registered ops, feeds and subscriptions, the feed queue and its counters, the access
//! state and the timing settings. It is data and small accessors; what the procedures do
//! with it is in `procedures.rs`, what the driver does with it in `driver.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::access::{AccessPolicy, AccessPolicyError, AccessState};
use crate::args::SiteConfig;
use crate::call::CallRequest;
use crate::feed::{Feed, FeedQueue};
use crate::ops::Op;
use crate::session::now;

/// State shared by the handle, the session task and the op tasks.
pub(crate) struct Shared {
    pub(crate) agent_class: String,
    pub(crate) address: String,
    pub(crate) site: SiteConfig,
    pub(crate) hostname: String,
    pub(crate) process_session_id: String,
    /// The access policy's state; `Err` when the configured policy is invalid (`run` refuses
    /// to start then).
    pub(crate) access: Result<Mutex<AccessState>, AccessPolicyError>,
    pub(crate) ops: Mutex<Vec<Op>>,
    pub(crate) feeds: Mutex<Vec<Feed>>,
    /// Topics this agent subscribes to on every join (only appended to).
    pub(crate) subscriptions: Mutex<Vec<Subscription>>,
    pub(crate) subscriptions_changed: tokio::sync::Notify,
    pub(crate) calls: mpsc::UnboundedSender<CallRequest>,
    /// The receiving end, owned by `run` while it runs.
    pub(crate) calls_rx: Mutex<Option<mpsc::UnboundedReceiver<CallRequest>>>,
    pub(crate) heartbeat: Feed,
    pub(crate) queue: FeedQueue,
    pub(crate) next_session: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) unconfirmed: AtomicU64,
    pub(crate) running: AtomicBool,
    pub(crate) connected: AtomicBool,
    pub(crate) timing: Timing,
}

/// A user's event handler: positional and keyword arguments of each event.
pub(crate) type UserHandler = Arc<dyn Fn(&[Value], &Map<String, Value>) + Send + Sync>;

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

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) heartbeat_period: Duration,
    pub(crate) watchdog_timeout: Duration,
    pub(crate) join_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    pub(crate) fn access_director(&self) -> Option<String> {
        match self.with_access(|a| a.policy.clone()) {
            Some(AccessPolicy::Director { director_id }) => {
                Some(format!("{}.{director_id}", self.site.address_root))
            }
            _ => None,
        }
    }

    pub(crate) fn handle_event(
        &self,
        handler: &EventHandler,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) {
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
