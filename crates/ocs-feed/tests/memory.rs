//! Memory stays flat over 100,000 feed publishes through a real router: every PUBLISH is
//! acknowledged and forgotten (wamp_async 0.3.1 kept one entry per unacknowledged publish
//! forever). A binary of its own, so that no other test's allocations move this process's RSS.

use ocs_feed::testing as support;

use std::time::Duration;

use ocs_feed::{Agent, FeedOptions, SiteConfig};
use serde_json::json;
use support::{wait_for, REALM, ROOT};
use tokio_util::sync::CancellationToken;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_flat_over_100k_feed_publishes() {
    let Some(cb) = tokio::task::spawn_blocking(support::shared_crossbar)
        .await
        .unwrap()
    else {
        return;
    };
    let agent = Agent::new(
        "MemoryAgent",
        SiteConfig::new(&cb.ws_url(), REALM, ROOT, "memory1"),
    );
    agent.register_feed("bulk", FeedOptions::default()).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        async move { agent.run(shutdown).await }
    });
    let a = agent.clone();
    wait_for("join", Duration::from_secs(20), move || a.is_connected()).await;

    const TOTAL: u64 = 100_000;
    const BATCH: u64 = 2_000;
    const WARM_UP: u64 = 20_000;
    let pad = "x".repeat(300);
    let mut warm_rss = 0;
    let mut sent = 0;
    while sent < TOTAL {
        for _ in 0..BATCH {
            agent
                .publish_to_feed("bulk", json!({"i": sent, "pad": pad}))
                .unwrap();
            sent += 1;
        }
        let a = agent.clone();
        wait_for(
            "the batch to be acknowledged",
            Duration::from_secs(60),
            move || a.feed_stats().published == sent,
        )
        .await;
        if sent == WARM_UP {
            warm_rss = rss_kib();
        }
    }
    let end_rss = rss_kib();
    let stats = agent.feed_stats();
    assert_eq!(
        (stats.published, stats.dropped, stats.queued, stats.refused),
        (TOTAL, 0, 0, 0)
    );
    // 80,000 leaked messages of ~400 bytes would be 30+ MiB; allow allocator noise.
    let growth = end_rss.saturating_sub(warm_rss);
    eprintln!("RSS after {WARM_UP}: {warm_rss} KiB, after {TOTAL}: {end_rss} KiB");
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} KiB over {} publishes",
        TOTAL - WARM_UP
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
