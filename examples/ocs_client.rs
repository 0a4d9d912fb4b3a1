//! A Rust agent as a client of another OCS agent: it subscribes to the other agent's feed
//! and drives its ops with [`ocs_feed::OcsClient`], getting ocs's reply triples.
//!
//! Run ocs's own FakeDataAgent (Python), then this against it:
//!
//! ```text
//! python -m ocs.agents.fake_data.agent --site-file site.yaml --instance-id fake-data1 &
//! cargo run -p pysmurf-examples --example ocs_client -- --site-file site.yaml \
//!     --instance-id client1 --target fake-data1
//! ```
#![allow(clippy::print_stdout)] // An example's output is its point.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ocs_feed::{Agent, CallError, HasSiteArgs, OcsClient, OcsReply, SiteArgs};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The agent class, as site files name it.
pub const AGENT_CLASS: &str = "OcsClientExample";

/// Drives another agent's `delay_task` and `acq`.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    site: SiteArgs,
    /// The instance-id of the agent to drive (a FakeDataAgent).
    #[arg(long, default_value = "fake-data1")]
    target: String,
}

impl HasSiteArgs for Args {
    fn site_args(&self) -> &SiteArgs {
        &self.site
    }
}

/// What [`drive`] saw.
#[derive(Debug)]
pub struct Summary {
    /// `delay_task(delay=0.2)` run to its end.
    pub delay_task: OcsReply,
    /// `acq` started.
    pub acq_start: OcsReply,
    /// `acq` stopped.
    pub acq_stop: OcsReply,
    /// `acq` waited for after the stop.
    pub acq_done: OcsReply,
    /// Messages received on the target's `false_temperatures` feed meanwhile.
    pub feed_messages: u64,
}

/// Subscribes `agent` (running) to the target's `false_temperatures` feed, runs its
/// `delay_task`, then its `acq` for `acq_for`, and stops it.
pub async fn drive(agent: &Agent, target: &str, acq_for: Duration) -> Result<Summary, CallError> {
    let received = Arc::new(AtomicU64::new(0));
    let address = format!("{}.{target}", agent.site().address_root);
    let counter = received.clone();
    agent.subscribe_to_feed(&address, "false_temperatures", move |message, _feed| {
        if message.is_object() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let fake = OcsClient::new(agent, target);
    let delay_task = fake.run_task("delay_task", json!({"delay": 0.2})).await?;
    let acq_start = fake.start("acq", json!({})).await?;
    tokio::time::sleep(acq_for).await;
    let acq_stop = fake.stop("acq").await?;
    let acq_done = fake.wait("acq", Some(Duration::from_secs(10))).await?;
    Ok(Summary {
        delay_task,
        acq_start,
        acq_stop,
        acq_done,
        feed_messages: received.load(Ordering::Relaxed),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let (args, site) = ocs_feed::parse_args::<Args>(AGENT_CLASS)?;
    let agent = Agent::new(AGENT_CLASS, site);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        async move { agent.run(shutdown).await }
    });
    let summary = drive(&agent, &args.target, Duration::from_secs(3)).await?;
    println!(
        "delay_task: {} ({})",
        summary.delay_task.msg, summary.delay_task.session["success"]
    );
    println!("acq: {} / {}", summary.acq_start.msg, summary.acq_done.msg);
    println!("feed messages received: {}", summary.feed_messages);
    shutdown.cancel();
    run.await??;
    Ok(())
}
