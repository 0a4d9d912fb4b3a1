//! A complete OCS agent in a few dozen lines: the shape an embedding agent copies.
//!
//! It registers a task (`delay_task`), a process (`acq`) that counts into its session data and
//! into a recorded feed (`counts`), and runs until Ctrl-C. Run it against a router with e.g.
//!
//! ```text
//! cargo run -p pysmurf-examples --example ocs_agent -- --site-hub ws://127.0.0.1:8001/ws \
//!     --site-realm test_realm --address-root observatory --instance-id example1
//! ```
//!
//! or with `--site-file site.yaml` and an `ExampleAgent` instance in it.

use std::time::Duration;

use clap::Parser;
use ocs_feed::{Agent, FeedOptions, HasSiteArgs, OpError, OpOptions, SiteArgs, SiteConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The agent class, as site files name it.
pub const AGENT_CLASS: &str = "ExampleAgent";

/// An example OCS agent written in Rust: a task, a process and a feed.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    site: SiteArgs,
}

impl HasSiteArgs for Args {
    fn site_args(&self) -> &SiteArgs {
        &self.site
    }
}

/// Builds the agent: one task, one process, one feed.
pub fn build_agent(site: SiteConfig) -> Result<Agent, Box<dyn std::error::Error>> {
    let agent = Agent::new(AGENT_CLASS, site);
    agent.register_feed(
        "counts",
        FeedOptions::recorded(json!({"frame_length": 60}), 0.0),
    )?;

    let doc = "delay_task(delay=1.0)\n\n**Task** - Sleep for `delay` seconds (abortable).";
    agent.register_task(
        "delay_task",
        OpOptions::new().doc(doc),
        |session, params| async move {
            let delay = params.get("delay").and_then(|v| v.as_f64()).unwrap_or(1.0);
            session.update_data(|d| {
                d.insert("requested_delay".into(), json!(delay));
            });
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(delay.max(0.0))) => {}
                _ = session.stopped() => return Err(OpError::new("Aborted.")),
            }
            Ok(format!("Exited after {delay} seconds"))
        },
    )?;

    let feed = agent.clone();
    let doc = "acq(interval=1.0)\n\n**Process** - Count every `interval` seconds.";
    agent.register_process("acq", OpOptions::new().doc(doc), move |session, params| {
        let feed = feed.clone();
        async move {
            let interval = params
                .get("interval")
                .and_then(|v| v.as_f64())
                .unwrap_or(1.0);
            let mut count = 0u64;
            while !session.stop_requested() {
                count += 1;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                session.set_data(json!({"count": count, "timestamp": now.as_secs_f64()}));
                let sample = json!({"block_name": "counts", "timestamp": now.as_secs_f64(),
                                    "data": {"count": count}});
                feed.publish_to_feed("counts", sample)?;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(interval.max(0.01))) => {}
                    _ = session.stopped() => {}
                }
            }
            Ok(format!("Stopped after {count} counts."))
        }
    })?;
    Ok(agent)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let (_args, site) = ocs_feed::parse_args::<Args>(AGENT_CLASS)?;
    let agent = build_agent(site)?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trigger.cancel();
    });
    agent.run(shutdown).await?;
    Ok(())
}
