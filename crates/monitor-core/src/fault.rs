//! Test-only fault injection, compiled in with the `fault-injection` cargo
//! feature only (the end-to-end tests of `bins/pysmurf-monitor` enable it
//! through a dev-dependency; a release build never has it). Without the
//! feature every hook is an empty inline function.
//!
//! The environment variable `PYSMURF_MONITOR_FAULT` chooses one fault:
//!
//! - `receiver-start`: the receiver thread cannot be started;
//! - `socket-after=N`: the UDP socket fails once N datagrams were read;
//! - `panic-in=STAGE@N`: STAGE (`router`, `spooler`, `hasher` or `batcher`)
//!   panics on its N-th item (N ≥ 1);
//! - `stall-in=STAGE`: STAGE (`spooler`) stops at its first item and never
//!   goes on (what is read piles up in front of it until a `kill -9`);
//!   `stall-in=receiver`: the receiver reads nothing until the pipeline
//!   stops (datagrams wait in the kernel's socket buffer).

/// The receiver may start (`Err` when `receiver-start` is injected).
pub(crate) fn receiver_start() -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    if matches!(imp::fault(), Some(imp::Fault::ReceiverStart)) {
        return Err(std::io::Error::other("injected fault: receiver-start"));
    }
    Ok(())
}

/// The socket still works after `received` datagrams (`Err` once
/// `socket-after=N` is injected and `received` ≥ N).
pub(crate) fn socket(_received: u64) -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Some(imp::Fault::SocketAfter(n)) = imp::fault() {
        if _received >= *n {
            return Err(std::io::Error::other("injected fault: socket-after"));
        }
    }
    Ok(())
}

/// Counts one item of `_stage`; panics on the N-th when `panic-in=STAGE@N`
/// names it.
#[inline]
pub(crate) fn stage_item(_stage: &'static str) {
    #[cfg(feature = "fault-injection")]
    if let Some(imp::Fault::PanicIn { stage, at, seen }) = imp::fault() {
        if stage == _stage && seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == *at {
            panic!("injected fault: panic-in={stage}@{at}");
        }
    }
}

/// Never returns when `stall-in=STAGE` names `_stage`; else at once.
#[inline]
pub(crate) async fn stall(_stage: &'static str) {
    #[cfg(feature = "fault-injection")]
    if let Some(imp::Fault::StallIn(stage)) = imp::fault() {
        if stage == _stage {
            std::future::pending::<()>().await;
        }
    }
}

/// True when `stall-in=STAGE` names `_stage`: for a stage on a thread of its
/// own, which then waits for the pipeline to stop instead of working.
pub(crate) fn stalled(_stage: &'static str) -> bool {
    #[cfg(feature = "fault-injection")]
    if let Some(imp::Fault::StallIn(stage)) = imp::fault() {
        return stage == _stage;
    }
    false
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;

    pub(super) enum Fault {
        ReceiverStart,
        SocketAfter(u64),
        PanicIn {
            stage: String,
            at: u64,
            seen: AtomicU64,
        },
        StallIn(String),
    }

    pub(super) fn fault() -> Option<&'static Fault> {
        static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
        FAULT
            .get_or_init(|| {
                let spec = std::env::var("PYSMURF_MONITOR_FAULT").ok()?;
                let fault = if spec == "receiver-start" {
                    Fault::ReceiverStart
                } else if let Some(n) = spec.strip_prefix("socket-after=") {
                    Fault::SocketAfter(n.parse().ok()?)
                } else if let Some(stage) = spec.strip_prefix("stall-in=") {
                    Fault::StallIn(stage.to_owned())
                } else {
                    let (stage, at) = spec.strip_prefix("panic-in=")?.split_once('@')?;
                    Fault::PanicIn {
                        stage: stage.to_owned(),
                        at: at.parse().ok()?,
                        seen: AtomicU64::new(0),
                    }
                };
                tracing::warn!(
                    fault = spec,
                    "PYSMURF_MONITOR_FAULT: a fault will be injected"
                );
                Some(fault)
            })
            .as_ref()
    }
}
