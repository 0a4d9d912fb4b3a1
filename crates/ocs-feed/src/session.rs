//! Op sessions: the state of one run of a task or process, and its OCS encoding (spec §6).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Messages older than this are pruned (but see [`MESSAGES_ALWAYS_KEPT`]).
const MESSAGE_MAX_AGE: f64 = 3600.0;
/// At most this many messages are kept.
const MESSAGES_MAX: usize = 10_000;
/// The newest messages that are kept whatever their age.
const MESSAGES_ALWAYS_KEPT: usize = 5;

/// The status of a session; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Created, body not yet running.
    Starting,
    /// The body is running.
    Running,
    /// A stop or abort was requested.
    Stopping,
    /// The body returned.
    Done,
}

impl Status {
    /// The string OCS uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Done => "done",
        }
    }
}

/// OCS's `OpCode` (spec §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum OpCode {
    /// Never run.
    None = 1,
    /// Starting.
    Starting = 2,
    /// Running.
    Running = 3,
    /// Stopping.
    Stopping = 4,
    /// Done, success.
    Succeeded = 5,
    /// Done, failure.
    Failed = 6,
    /// Used by the registry only.
    Expired = 7,
    /// Running and degraded.
    Degraded = 8,
}

impl OpCode {
    /// Its name, as in `(SUCCEEDED)`.
    pub fn name(self) -> &'static str {
        match self {
            OpCode::None => "NONE",
            OpCode::Starting => "STARTING",
            OpCode::Running => "RUNNING",
            OpCode::Stopping => "STOPPING",
            OpCode::Succeeded => "SUCCEEDED",
            OpCode::Failed => "FAILED",
            OpCode::Expired => "EXPIRED",
            OpCode::Degraded => "DEGRADED",
        }
    }
}

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// A handle on one run of an op, given to its body. Cheap to clone.
///
/// The body reports through it: [`Session::set_data`] / [`Session::update_data`] (the
/// session's `data`, shown by `status` and `wait`), [`Session::add_message`] and
/// [`Session::set_degraded`]. It learns of a stop (process) or abort (task) request through
/// [`Session::stop_requested`] or by awaiting [`Session::stopped`].
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    id: u64,
    cred_level: u8,
    op_name: String,
    state: Mutex<SessionState>,
    done: watch::Sender<bool>,
    stop: CancellationToken,
}

struct SessionState {
    status: Status,
    degraded: bool,
    success: Option<bool>,
    start_time: f64,
    end_time: Option<f64>,
    data: Value,
    messages: VecDeque<(f64, String)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("op_name", &self.inner.op_name)
            .field("status", &self.status())
            .finish()
    }
}

impl Session {
    /// A new session in status `starting`.
    pub(crate) fn new(id: u64, op_name: &str, cred_level: u8) -> Session {
        let t = now();
        let (done, _) = watch::channel(false);
        let session = Session {
            inner: Arc::new(SessionInner {
                id,
                cred_level,
                op_name: op_name.to_owned(),
                state: Mutex::new(SessionState {
                    status: Status::Starting,
                    degraded: false,
                    success: None,
                    start_time: t,
                    end_time: None,
                    data: json!({}),
                    messages: VecDeque::new(),
                }),
                done,
                stop: CancellationToken::new(),
            }),
        };
        session.push_message(&mut session.lock(), t, status_message(Status::Starting));
        session
    }

    fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding this lock cannot leave the state inconsistent (every update is
        // one assignment), so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent-wide session id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The op's name.
    pub fn op_name(&self) -> &str {
        &self.inner.op_name
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.lock().status
    }

    /// Replaces the session's `data`. OCS clients expect a JSON object. NaN cannot occur in a
    /// `serde_json::Value` (serde_json turns it into `null`, as OCS does).
    pub fn set_data(&self, data: Value) {
        self.lock().data = data;
    }

    /// Edits the session's `data` object in place (it is made an object first if it is not).
    pub fn update_data<R>(&self, edit: impl FnOnce(&mut Map<String, Value>) -> R) -> R {
        let mut state = self.lock();
        if !state.data.is_object() {
            state.data = json!({});
        }
        match &mut state.data {
            Value::Object(map) => edit(map),
            _ => unreachable!("data was just made an object"),
        }
    }

    /// A copy of the session's `data`.
    pub fn data(&self) -> Value {
        self.lock().data.clone()
    }

    /// Adds a line to the session's message log.
    pub fn add_message(&self, text: impl Into<String>) {
        self.push_message(&mut self.lock(), now(), text.into());
    }

    /// Sets the `degraded` flag (op code 8 while running). Like OCS, it is not reset at done.
    pub fn set_degraded(&self, degraded: bool) {
        self.lock().degraded = degraded;
    }

    /// Whether a stop (process) or abort (task) was requested.
    pub fn stop_requested(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// Completes when a stop (process) or abort (task) is requested.
    pub async fn stopped(&self) {
        self.inner.stop.cancelled().await
    }

    /// The OCS op code of this session (spec §4).
    pub fn op_code(&self) -> OpCode {
        let s = self.lock();
        op_code_of(s.status, s.success, s.degraded)
    }

    fn push_message(&self, state: &mut SessionState, t: f64, text: String) {
        state.messages.push_back((t, text));
        while state.messages.len() > MESSAGES_ALWAYS_KEPT
            && (state.messages.len() > MESSAGES_MAX
                || state
                    .messages
                    .front()
                    .is_some_and(|m| t - m.0 > MESSAGE_MAX_AGE))
        {
            state.messages.pop_front();
        }
    }

    /// Moves the status forward (never back); returns whether it changed.
    pub(crate) fn set_status(&self, status: Status) -> bool {
        let mut state = self.lock();
        if status <= state.status {
            return false;
        }
        state.status = status;
        let t = now();
        if status == Status::Done {
            state.end_time = Some(t);
        }
        self.push_message(&mut state, t, status_message(status));
        true
    }

    /// Requests a stop or abort: status `stopping` and the body's [`Session::stopped`] fires.
    pub(crate) fn request_stop(&self) {
        self.set_status(Status::Stopping);
        self.inner.stop.cancel();
    }

    /// Records the body's result and moves to `done`.
    pub(crate) fn finish(&self, success: bool, message: Option<String>) {
        {
            let mut state = self.lock();
            if let Some(m) = message {
                self.push_message(&mut state, now(), m);
            }
            state.success = Some(success);
        }
        self.set_status(Status::Done);
        self.inner.done.send_replace(true);
    }

    /// Waits until the session is done.
    pub(crate) async fn wait_done(&self) {
        let mut rx = self.inner.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    pub(crate) fn is_done(&self) -> bool {
        self.status() == Status::Done
    }

    /// The encoded session `S` (spec §6).
    pub(crate) fn encode(&self) -> Value {
        let s = self.lock();
        json!({
            "session_id": self.inner.id,
            "op_name": self.inner.op_name,
            "op_code": op_code_of(s.status, s.success, s.degraded) as i64,
            "cred_level": self.inner.cred_level,
            "status": s.status.as_str(),
            "degraded": s.degraded,
            "success": s.success,
            "start_time": s.start_time,
            "end_time": s.end_time,
            "data": s.data,
            "messages": s.messages.iter().map(|(t, m)| json!([t, m])).collect::<Vec<_>>(),
        })
    }
}

fn status_message(status: Status) -> String {
    format!("Status is now \"{}\".", status.as_str())
}

pub(crate) fn op_code_of(status: Status, success: Option<bool>, degraded: bool) -> OpCode {
    match status {
        Status::Starting => OpCode::Starting,
        Status::Running if degraded => OpCode::Degraded,
        Status::Running => OpCode::Running,
        Status::Stopping => OpCode::Stopping,
        Status::Done if success == Some(true) => OpCode::Succeeded,
        Status::Done => OpCode::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Value {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn encoding_matches_the_done_session_of_the_vectors() {
        // [v16]: status of a done task; the YIELD carries [0, "Session active.", S].
        let v = vector("16-task-status-done.json");
        let yield_msg = v["wamp"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["msg"][0] == 70)
            .unwrap();
        let reference = &yield_msg["msg"][3][0][2];
        let session = Session::new(4, "delay_task", 1);
        session.set_status(Status::Running);
        session.update_data(|d| {
            d.insert("requested_delay".into(), json!(1.5));
            d.insert("delay_so_far".into(), json!(1.5));
        });
        session.add_message("Exited after 1.5 seconds");
        session.finish(true, None);
        let ours = session.encode();
        assert_eq!(keys(&ours), keys(reference));
        for k in ["op_code", "cred_level", "status", "degraded", "success"] {
            assert_eq!(ours[k], reference[k], "{k}");
        }
        let texts = |s: &Value| -> Vec<String> {
            s["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m[1].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(texts(&ours), texts(reference));
        assert!(ours["end_time"].as_f64().unwrap() >= ours["start_time"].as_f64().unwrap());
    }

    #[test]
    fn op_codes_follow_status_success_and_degraded() {
        let s = Session::new(0, "x", 1);
        assert_eq!(s.op_code(), OpCode::Starting);
        s.set_status(Status::Running);
        assert_eq!(s.op_code(), OpCode::Running);
        s.set_degraded(true);
        assert_eq!(s.op_code(), OpCode::Degraded);
        assert!(!s.set_status(Status::Starting), "status never goes back");
        s.request_stop();
        assert_eq!(s.op_code(), OpCode::Stopping);
        assert!(s.stop_requested());
        s.finish(false, Some("gave up".into()));
        assert_eq!(s.op_code(), OpCode::Failed);
        let e = s.encode();
        assert_eq!(e["degraded"], true, "degraded survives done, as in OCS");
        assert_eq!(e["success"], false);
    }

    #[test]
    fn messages_are_capped_but_keep_the_newest() {
        let s = Session::new(0, "x", 1);
        for i in 0..(MESSAGES_MAX + 10) {
            s.add_message(format!("m{i}"));
        }
        let e = s.encode();
        let msgs = e["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), MESSAGES_MAX);
        assert_eq!(msgs.last().unwrap()[1], format!("m{}", MESSAGES_MAX + 9));
    }

    #[test]
    fn nan_in_data_becomes_null() {
        let s = Session::new(0, "x", 1);
        s.update_data(|d| {
            d.insert("v".into(), json!(f64::NAN));
        });
        assert_eq!(s.data()["v"], Value::Null);
    }

    #[tokio::test]
    async fn wait_done_returns_after_finish() {
        let s = Session::new(0, "x", 1);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait_done().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.finish(true, None);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        s.wait_done().await;
    }
}
