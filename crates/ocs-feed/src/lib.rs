//! `ocs-feed`: being an [OCS](https://github.com/simonsobs/ocs) agent, in Rust.
//!
//! OCS (the Simons Observatory control system) agents join a crossbar WAMP router, expose
//! *tasks* and *processes* ("ops") that clients start, stop and wait on, and publish *feeds*.
//! This crate lets a Rust program be such an agent, wire-compatible with ocs 0.12.1, so the
//! Python `OCSClient`, ocs-web, the registry and the aggregator work with it unchanged.
//!
//! It owns:
//! * site configuration and arguments: the site YAML ([`SiteFile`]), the standard flags
//!   ([`SiteArgs`], to `#[command(flatten)]` into an agent's clap parser) and their merge with
//!   the instance's `arguments` ([`parse_args`]), giving a [`SiteConfig`];
//! * the WAMP session (WebSocket, `wamp.2.json`) and its reconnection with backoff, with a
//!   watchdog against a hung router;
//! * ops and their sessions ([`Agent::register_task`], [`Agent::register_process`],
//!   [`Session`]), the ops and management procedures and their exact OCS replies;
//! * feeds ([`Agent::register_feed`], [`Agent::publish_to_feed`]) with OCS's message
//!   structure and name rules ([`check_field_name`], [`enforce_field_name_rules`]), and the
//!   bounded queue that holds them while the router is away (oldest dropped and counted,
//!   [`FeedStats`]);
//! * the heartbeat feed;
//! * ocs 0.12.1's parameter checks ([`OpOptions::param`], [`Param`], [`ParamHandler`]) and
//!   access control ([`AccessPolicy`]);
//! * the client side: subscriptions to other agents' feeds ([`Agent::subscribe_to_feed`]),
//!   calls ([`Agent::call`]) and other agents' ops ([`OcsClient`]).
//!
//! What differs from ocs on purpose is listed in `docs/ocs-compatibility.md`.
//!
//! It knows nothing of pysmurf or databases.
//!
//! The shape is a handle plus a driver: [`Agent`] is a cheap cloneable handle, and
//! [`Agent::run`] is the one task that owns the socket, until a
//! [`CancellationToken`](tokio_util::sync::CancellationToken) is cancelled.
//!
//! ```no_run
//! use clap::Parser;
//! use ocs_feed::{Agent, FeedOptions, HasSiteArgs, OpOptions, SiteArgs};
//! use serde_json::json;
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     site: SiteArgs,
//! }
//! impl HasSiteArgs for Args {
//!     fn site_args(&self) -> &SiteArgs { &self.site }
//! }
//!
//! # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
//! let (_args, site) = ocs_feed::parse_args::<Args>("CounterAgent")?;
//! let agent = Agent::new("CounterAgent", site);
//! agent.register_feed("counts", FeedOptions::recorded(json!({}), 0.0))?;
//! let feed = agent.clone();
//! agent.register_process("count", OpOptions::new(), move |session, _params| {
//!     let feed = feed.clone();
//!     async move {
//!         let mut n = 0;
//!         while !session.stop_requested() {
//!             n += 1;
//!             session.update_data(|d| { d.insert("n".into(), json!(n)); });
//!             let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
//!             feed.publish_to_feed("counts", json!({"block_name": "n", "timestamp": t, "data": {"n": n}}))?;
//!             tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//!         }
//!         Ok(format!("counted to {n}"))
//!     }
//! })?;
//! agent.run(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod access;
mod agent;
mod args;
mod client;
mod feed;
mod ops;
mod params;
mod session;
mod site;
#[cfg(feature = "test-support")]
pub mod testing;
mod wamp;

pub use access::{AccessPolicy, AccessPolicyError};
pub use agent::{
    Agent, AgentBuilder, AgentError, CallError, FeedStats, DEFAULT_FEED_QUEUE_CAPACITY,
};
pub use args::{parse_args, parse_args_from, HasSiteArgs, SiteArgs, SiteArgsOnly, SiteConfig};
pub use client::{OcsClient, OcsReply};
pub use feed::{check_field_name, enforce_field_name_rules, FeedError, FeedOptions};
pub use ops::{OpError, OpOptions, OpResult, Params};
pub use params::{Cast, Param, ParamError, ParamHandler, ParamType};
pub use session::{OpCode, Session, Status};
pub use site::{HostConfig, HubConfig, InstanceConfig, SiteError, SiteFile};
