//! `pysmurf-monitor`: the pysmurf monitor OCS agent.
//!
//! Not written yet: the pipeline (`monitor-core`) and the OCS agent runtime
//! (`ocs-feed`) come first. Until then this binary refuses to run rather than
//! pretend to record files; use the Python agent (socs) in production.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "error: pysmurf-monitor {} cannot record files yet: the agent is still being built \
         (see docs/architecture.md, \"State of the code\"); keep running socs' PysmurfMonitor",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
