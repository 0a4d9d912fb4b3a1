//! The pipeline's one failure reporter: every stage runs under it, and a
//! stage that cannot go on (a panic, a failing socket) reports here.

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::PipelineError;
use crate::stats::MonitorStats;

/// Runs the stages' tasks and keeps the first failure of the pipeline:
/// shown in the counters (the `run` session turns `degraded`), logged, and
/// returned by [`Monitor::run`](super::Monitor::run).
pub(super) struct Supervisor {
    stats: Arc<MonitorStats>,
    /// Every stage task; [`Monitor::run`](super::Monitor::run) waits for them.
    tracker: TaskTracker,
    /// Stops the receiver: cancelled by the caller's shutdown or by a
    /// failure of the pipeline itself.
    stop: CancellationToken,
    /// The first failure ([`Supervisor::fail`]).
    failure: Mutex<Option<PipelineError>>,
}

impl Supervisor {
    pub(super) fn new(stats: Arc<MonitorStats>) -> Self {
        Self {
            stats,
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            failure: Mutex::new(None),
        }
    }

    /// The pipeline cannot go on: keeps the first reason, shows it (log,
    /// `run` session) and stops receiving; the stages then drain to the
    /// spool as at a shutdown and [`Monitor::run`](super::Monitor::run)
    /// returns the error.
    pub(super) fn fail(&self, failure: PipelineError) {
        let mut first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::error!(
                reason = %failure,
                "pipeline failed: draining what it holds to the spool, then exiting \
                 non-zero so that the service manager restarts the monitor"
            );
            self.stats.set_pipeline_error(failure.to_string());
            *first = Some(failure);
        }
        drop(first);
        self.stop.cancel();
    }

    /// Runs `task` as the `stage` stage; a panic in it fails the pipeline
    /// ([`PipelineError::Panicked`]) instead of going unseen.
    pub(super) fn spawn(
        self: &Arc<Self>,
        stage: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let inner = tokio::spawn(task);
        let supervisor = self.clone();
        self.tracker.spawn(async move {
            if let Err(err) = inner.await {
                if err.is_panic() {
                    let message = panic_message(err.into_panic().as_ref());
                    supervisor.fail(PipelineError::Panicked { stage, message });
                }
            }
        });
    }

    /// Cancelled once the receiver must stop (shutdown or failure).
    pub(super) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// The stage tasks, to close and wait for.
    pub(super) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// The first failure, if any (taken: asked once, at the end of the run).
    pub(super) fn take_failure(&self) -> Option<PipelineError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
