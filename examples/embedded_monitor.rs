//! The pysmurf monitor pipeline inside another Rust OCS agent: the agent
//! keeps its own ops and feeds, and gains the monitor's `init` and `run`,
//! its feeds, and file registration from UDP.
//!
//! ```sh
//! cargo run -p pysmurf-examples --example embedded_monitor
//! # then, in another terminal:
//! cargo run -p pysmurf-examples --example publish_file -- 127.0.0.1:8200
//! ```
//!
//! It records into `embedded_files.db` (SQLite) in the current directory and
//! joins the router at ws://127.0.0.1:8001/ws when one runs there (it works
//! without one). Ctrl-C stops it; uncommitted registrations stay in
//! `embedded_spool/` for the next start.

use file_registration::Recorder;
use files_db::{DbTarget, FilesDb};
use monitor_core::{bind_udp, Monitor, OpsConfig, PipelineOptions};
use ocs_feed::{Agent, OpOptions, SiteConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let site = SiteConfig::new(
        "ws://127.0.0.1:8001/ws",
        "test_realm",
        "observatory",
        "smurf-host-agent",
    );
    let agent = Agent::new("SmurfHostAgent", site.clone());
    // The host agent's own operation.
    agent.register_task(
        "ping",
        OpOptions::new().doc("ping()\n\nAnswers pong."),
        |_, _| async { Ok("pong".to_owned()) },
    )?;

    let db = FilesDb::connect_lazy(&DbTarget::sqlite("embedded_files.db")).await?;
    db.create_table().await?;
    let recorder = Recorder::this_program(&site.address_root, &site.instance_id);
    let monitor = Monitor::builder(db, recorder, "embedded_spool")
        .options(PipelineOptions::default())
        .ocs_agent(&agent, OpsConfig::default())
        .build()
        .await?;

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    let agent_task = tokio::spawn({
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        async move { agent.run(shutdown).await }
    });
    let pipeline = monitor
        .run(bind_udp("127.0.0.1:8200".parse()?)?, shutdown.clone())
        .await;
    // A pipeline that failed stops the agent too; the error is the exit's.
    shutdown.cancel();
    agent_task.await??;
    pipeline?;
    Ok(())
}
