//! Interoperability with the real thing: a crossbar router and the Python ocs 0.12.1 clients
//! from the test virtualenv drive the example agent (`examples/ocs_agent.rs`).
//! Without the virtualenv these tests print `skipped: ...` (or fail when
//! `PYSMURF_TEST_REQUIRE_SERVICES=1`).

use ocs_feed::testing as support;

use std::time::Duration;

use ocs_feed::{Agent, AgentError, SiteConfig};
use serde_json::{json, Value};
use support::{wait_for, Crossbar, Subscriber, REALM, ROOT};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

#[allow(dead_code)] // Only `build_agent` is used; `main` is the example's.
#[path = "../../../examples/ocs_agent.rs"]
mod example;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ocs_feed=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The example agent on `url`, running until the returned token is cancelled.
async fn start_agent(
    url: &str,
    instance_id: &str,
) -> (
    Agent,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), AgentError>>,
) {
    init_tracing();
    let site = SiteConfig::new(url, REALM, ROOT, instance_id);
    let agent = example::build_agent(site).expect("build agent");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        async move { agent.run(shutdown).await }
    });
    let a = agent.clone();
    wait_for("the agent to join", Duration::from_secs(20), move || {
        a.is_connected()
    })
    .await;
    (agent, shutdown, task)
}

fn vector(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocs_client_drives_the_example_agent() {
    let Some(cb) = tokio::task::spawn_blocking(support::shared_crossbar)
        .await
        .unwrap()
    else {
        return;
    };
    let (agent, shutdown, task) = start_agent(&cb.ws_url(), "example-ocsclient").await;
    let dir = tempfile::tempdir().unwrap();
    let site_file = cb.site_file(dir.path());
    let out = Command::new(support::venv().unwrap().join("bin/python"))
        .arg(support::script("ocs_client_check.py"))
        .arg(&site_file)
        .arg("example-ocsclient")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ocs_client_check.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    let msg = |k: &str| {
        (
            r[k]["status"].as_i64().unwrap(),
            r[k]["msg"].as_str().unwrap().to_owned(),
        )
    };

    assert_eq!(r["agent_class"], "ExampleAgent");
    assert_eq!(r["tasks"], json!(["delay_task"]));
    assert_eq!(r["processes"], json!(["acq"]));
    assert_eq!(r["feeds"], json!(["counts", "heartbeat"]));
    assert!(r["docstring"]
        .as_str()
        .unwrap()
        .starts_with("delay_task(delay=1.0)"));
    assert_eq!(msg("status_never_run"), (0, "No session active.".into()));

    assert_eq!(
        msg("task_start"),
        (0, "Started task \"delay_task\".".into())
    );
    assert_eq!(r["task_start"]["session"]["status"], "starting");
    assert_eq!(
        msg("task_wait_short"),
        (
            1,
            "Operation \"delay_task\" still running; wait timed out.".into()
        )
    );
    assert_eq!(
        msg("task_wait"),
        (
            0,
            "Operation \"delay_task\" is currently not running (SUCCEEDED).".into()
        )
    );
    let s = &r["task_wait"]["session"];
    assert_eq!(s["data"], json!({"requested_delay": 0.5}));
    assert_eq!(s["success"], true);
    assert_eq!(s["op_code"], 5);
    let texts: Vec<&str> = s["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[1].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "Status is now \"starting\".",
            "Status is now \"running\".",
            "Exited after 0.5 seconds",
            "Status is now \"done\"."
        ]
    );
    assert_eq!(
        sorted_keys(s),
        sorted_keys(&vector("16-task-status-done.json")["wamp"][1]["msg"][3][0][2])
    );
    assert_eq!(
        msg("task_call"),
        (
            0,
            "Operation \"delay_task\" is currently not running (SUCCEEDED).".into()
        )
    );

    assert_eq!(
        msg("abort"),
        (0, "Requested abort on task delay_task\".".into())
    );
    assert_eq!(
        msg("abort_wait"),
        (
            0,
            "Operation \"delay_task\" is currently not running (FAILED).".into()
        )
    );

    assert_eq!(msg("proc_start"), (0, "Started process \"acq\".".into()));
    assert_eq!(msg("proc_status"), (0, "Session active.".into()));
    assert_eq!(r["proc_status"]["session"]["status"], "running");
    assert!(
        r["proc_status"]["session"]["data"]["count"]
            .as_u64()
            .unwrap()
            >= 2,
        "{}",
        r["proc_status"]
    );
    assert_eq!(msg("proc_wait_timeout").0, 1);
    assert_eq!(
        msg("proc_stop"),
        (0, "Requested stop on process acq\".".into())
    );
    assert_eq!(
        msg("proc_wait"),
        (
            0,
            "Operation \"acq\" is currently not running (SUCCEEDED).".into()
        )
    );
    assert!(r["proc_wait"]["session"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m[1].as_str().unwrap().starts_with("Stopped after")));
    assert_eq!(
        msg("proc_stop_again"),
        (-1, "The operation is already done".into())
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!agent.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_subscriber_gets_heartbeat_and_feed_like_the_vectors() {
    let Some(cb) = tokio::task::spawn_blocking(support::shared_crossbar)
        .await
        .unwrap()
    else {
        return;
    };
    let venv = support::venv().unwrap();
    let (agent, shutdown, task) = start_agent(&cb.ws_url(), "example-feeds").await;
    let hb_topic = format!("{ROOT}.example-feeds.feeds.heartbeat");
    let feed_topic = format!("{ROOT}.example-feeds.feeds.counts");
    let mut sub =
        Subscriber::start(&venv, &cb.ws_url(), &[hb_topic.clone(), feed_topic.clone()]).await;

    // Heartbeat: [[{op: code}, descriptor]] as in vector 02 (one positional argument).
    let hb = sub.next_on(&hb_topic, Duration::from_secs(5)).await;
    let reference = vector("02-heartbeat.json");
    let ref_hb = reference["wamp"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["msg"][0] == 16)
        .unwrap()["msg"][4]
        .clone();
    assert_eq!(hb["args"].as_array().unwrap().len(), 1);
    assert_eq!(hb["kwargs"], json!({}));
    assert_eq!(hb["args"][0][0], json!({"delay_task": 1, "acq": 1}));
    let descriptor = &hb["args"][0][1];
    assert_eq!(sorted_keys(descriptor), sorted_keys(&ref_hb[0][1]));
    assert_eq!(descriptor["agent_address"], "observatory.example-feeds");
    assert_eq!(descriptor["address"], hb_topic.as_str());
    assert_eq!(descriptor["record"], false);
    assert_eq!(descriptor["agent_class"], "ExampleAgent");

    // A recorded single sample goes out as a one-sample block, as in vector 91.
    agent
        .publish_to_feed(
            "counts",
            json!({"block_name": "counts", "timestamp": 1700000000.25, "data": {"count": 5}}),
        )
        .unwrap();
    let ev = sub.next_on(&feed_topic, Duration::from_secs(5)).await;
    let forms = vector("91-feed-publish-forms.json");
    let ref_feed = forms["wamp"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["msg"][3] == "observatory.probe1.feeds.recorded")
        .unwrap()["msg"][4]
        .clone();
    assert_eq!(
        ev["args"][0][0],
        json!({"counts": {"block_name": "counts", "data": {"count": [5]}, "influxdb_tags": null, "timestamps": [1700000000.25]}})
    );
    assert_eq!(
        sorted_keys(&ev["args"][0][0]["counts"]),
        sorted_keys(&ref_feed[0][0]["probe"])
    );
    assert_eq!(sorted_keys(&ev["args"][0][1]), sorted_keys(&ref_feed[0][1]));
    assert_eq!(ev["args"][0][1]["agg_params"], json!({"frame_length": 60}));
    assert_eq!(ev["args"][0][1]["record"], true);
    assert!(ev["args"][0][1]["session_id"].is_string());

    sub.stop().await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_instance_id_is_refused() {
    let Some(cb) = tokio::task::spawn_blocking(support::shared_crossbar)
        .await
        .unwrap()
    else {
        return;
    };
    let (_agent, shutdown, task) = start_agent(&cb.ws_url(), "example-twice").await;
    let twin =
        example::build_agent(SiteConfig::new(&cb.ws_url(), REALM, ROOT, "example-twice")).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), twin.run(CancellationToken::new()))
        .await
        .expect("the twin gives up")
        .expect_err("the twin must not run");
    assert!(matches!(err, AgentError::AlreadyRunning { .. }), "{err}");
    assert!(err.to_string().contains("already running?"), "{err}");
    assert!(
        err.to_string().contains("observatory.example-twice"),
        "{err}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A router of its own (these tests kill and stop it), or `None` to skip.
async fn own_crossbar() -> Option<Crossbar> {
    let venv = support::venv()?;
    Some(
        tokio::task::spawn_blocking(move || Crossbar::start(&venv).expect("start crossbar"))
            .await
            .unwrap(),
    )
}

fn count_sample(i: u64) -> Value {
    json!({"block_name": "counts", "timestamp": 1_700_000_000.0 + i as f64, "data": {"count": i}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossbar_killed_and_restarted_loses_no_queued_message() {
    let Some(cb) = own_crossbar().await else {
        return;
    };
    let cb = std::sync::Arc::new(cb);
    let venv = support::venv().unwrap();
    // The gate holds the agent off the restarted router until the subscriber is listening.
    let gate = support::Gate::start(cb.port).await;
    let (agent, shutdown, task) = start_agent(&gate.ws_url(), "example-restart").await;

    gate.close();
    let c = cb.clone();
    tokio::task::spawn_blocking(move || c.kill()).await.unwrap();
    let a = agent.clone();
    wait_for("the agent to notice", Duration::from_secs(10), move || {
        !a.is_connected()
    })
    .await;
    const N: u64 = 200;
    for i in 0..N {
        agent.publish_to_feed("counts", count_sample(i)).unwrap();
    }
    assert_eq!(agent.feed_stats().queued, N as usize);

    let c = cb.clone();
    tokio::task::spawn_blocking(move || c.restart())
        .await
        .unwrap();
    let feed_topic = format!("{ROOT}.example-restart.feeds.counts");
    let hb_topic = format!("{ROOT}.example-restart.feeds.heartbeat");
    let mut sub =
        Subscriber::start(&venv, &cb.ws_url(), &[feed_topic.clone(), hb_topic.clone()]).await;
    gate.open();
    let a = agent.clone();
    let took = wait_for("the agent to rejoin", Duration::from_secs(15), move || {
        a.is_connected()
    })
    .await;
    eprintln!("rejoined {took:?} after the router came back");

    for i in 0..N {
        let ev = sub.next_on(&feed_topic, Duration::from_secs(10)).await;
        assert_eq!(
            ev["args"][0][0]["counts"]["data"]["count"],
            json!([i]),
            "message {i} in order"
        );
    }
    let hb = sub.next_on(&hb_topic, Duration::from_secs(5)).await;
    assert_eq!(hb["args"][0][0], json!({"delay_task": 1, "acq": 1}));
    let stats = agent.feed_stats();
    assert_eq!((stats.queued, stats.dropped), (0, 0), "{stats:?}");
    sub.stop().await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_router_is_noticed_by_the_watchdog_and_rejoined() {
    let Some(cb) = own_crossbar().await else {
        return;
    };
    let venv = support::venv().unwrap();
    let (agent, shutdown, task) = start_agent(&cb.ws_url(), "example-hung").await;
    let before = agent.feed_stats().published;
    // A running op keeps running through it all.
    let acq = agent.start_op("acq", json!({"interval": 0.1})).unwrap();
    cb.pause();
    let a = agent.clone();
    let noticed = wait_for(
        "the watchdog to drop the hung router",
        Duration::from_secs(15),
        move || !a.is_connected(),
    )
    .await;
    eprintln!("hung router noticed after {noticed:?}");
    const M: u64 = 20;
    for i in 0..M {
        agent.publish_to_feed("counts", count_sample(i)).unwrap();
    }
    cb.resume();
    let a = agent.clone();
    let took = wait_for("the agent to rejoin", Duration::from_secs(20), move || {
        a.is_connected()
    })
    .await;
    eprintln!("rejoined {took:?} after SIGCONT");
    let a = agent.clone();
    wait_for(
        "queued messages to be acknowledged",
        Duration::from_secs(10),
        move || {
            let s = a.feed_stats();
            s.queued == 0 && s.published >= before + M
        },
    )
    .await;
    assert_eq!(agent.feed_stats().dropped, 0);
    let count = |s: &ocs_feed::Session| s.data()["count"].as_u64().unwrap_or(0);
    assert!(
        count(&acq) >= 50,
        "acq counted on while the router was hung: {:?}",
        acq.data()
    );
    assert_eq!(acq.status(), ocs_feed::Status::Running);
    let hb_topic = format!("{ROOT}.example-hung.feeds.heartbeat");
    let mut sub = Subscriber::start(&venv, &cb.ws_url(), std::slice::from_ref(&hb_topic)).await;
    sub.next_on(&hb_topic, Duration::from_secs(5)).await;
    sub.stop().await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_ops_and_dropping_run_releases_the_address() {
    let Some(cb) = tokio::task::spawn_blocking(support::shared_crossbar)
        .await
        .unwrap()
    else {
        return;
    };
    // Shutdown: the running process is stopped, then the agent leaves the realm.
    let (agent, shutdown, task) = start_agent(&cb.ws_url(), "example-drop").await;
    let acq = agent.start_op("acq", json!({"interval": 0.05})).unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown within the 3 s grace")
        .unwrap()
        .unwrap();
    assert_eq!(acq.status(), ocs_feed::Status::Done);
    assert_eq!(acq.op_code(), ocs_feed::OpCode::Succeeded);

    // Aborting the task that runs `run` drops the connection with it (no event loop survives,
    // unlike wamp_async's), so the router frees the address for the next agent.
    let (_agent, _token, task) = start_agent(&cb.ws_url(), "example-drop").await;
    task.abort();
    let _ = task.await;
    let (_again, token, task) = start_agent(&cb.ws_url(), "example-drop").await;
    token.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_ops_start_once_on_first_join_with_their_params() {
    let Some(cb) = tokio::task::spawn_blocking(support::shared_crossbar)
        .await
        .unwrap()
    else {
        return;
    };
    init_tracing();
    let venv = support::venv().unwrap();
    let gate = support::Gate::start(cb.port).await;
    let site = SiteConfig::new(&gate.ws_url(), REALM, ROOT, "startup1");
    let agent = Agent::builder("StartupAgent", site)
        .max_backoff(Duration::from_millis(500))
        .build();
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = runs.clone();
    agent
        .register_task(
            "init",
            ocs_feed::OpOptions::new().startup(json!({"alpha": 1, "beta": "two"})),
            move |session, params| {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    session.set_data(serde_json::Value::Object(params));
                    Ok("initialized".to_owned())
                }
            },
        )
        .unwrap();
    let hb_topic = format!("{ROOT}.startup1.feeds.heartbeat");
    let mut sub = Subscriber::start(&venv, &cb.ws_url(), std::slice::from_ref(&hb_topic)).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        async move { agent.run(shutdown).await }
    });
    // The first beat comes before the startup op starts, as in OCS.
    let first = sub.next_on(&hb_topic, Duration::from_secs(10)).await;
    assert_eq!(first["args"][0][0], json!({"init": 1}));
    let a = agent.clone();
    wait_for(
        "the startup op to finish",
        Duration::from_secs(10),
        move || {
            a.session("init")
                .is_some_and(|s| s.status() == ocs_feed::Status::Done)
        },
    )
    .await;
    let session = agent.session("init").unwrap();
    assert_eq!(session.data(), json!({"alpha": 1, "beta": "two"}));
    assert_eq!(session.op_code(), ocs_feed::OpCode::Succeeded);
    // Heartbeats keep coming, about one a second.
    let t0 = std::time::Instant::now();
    sub.next_on(&hb_topic, Duration::from_secs(3)).await;
    sub.next_on(&hb_topic, Duration::from_secs(3)).await;
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());

    // A reconnect does not start it again.
    gate.close();
    let a = agent.clone();
    wait_for("disconnect", Duration::from_secs(10), move || {
        !a.is_connected()
    })
    .await;
    gate.open();
    let a = agent.clone();
    wait_for("rejoin", Duration::from_secs(10), move || a.is_connected()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    sub.stop().await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Feed messages in flight when the router hangs may or may not have been delivered; after
/// the reconnect none is published again (a recorded feed feeds the aggregator and InfluxDB):
/// a subscriber sees each at most once, and the unacknowledged ones are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_when_the_router_is_lost_are_never_published_twice() {
    let Some(cb) = own_crossbar().await else {
        return;
    };
    let venv = support::venv().unwrap();
    let (agent, shutdown, task) = start_agent(&cb.ws_url(), "example-once").await;
    let feed_topic = format!("{ROOT}.example-once.feeds.counts");
    let mut sub = Subscriber::start(&venv, &cb.ws_url(), std::slice::from_ref(&feed_topic)).await;
    cb.pause();
    // Sent at once (the connection still looks fine), never acknowledged.
    const N: u64 = 50;
    for i in 0..N {
        agent.publish_to_feed("counts", count_sample(i)).unwrap();
    }
    let a = agent.clone();
    wait_for("the watchdog", Duration::from_secs(15), move || {
        !a.is_connected()
    })
    .await;
    cb.resume();
    let a = agent.clone();
    wait_for("the agent to rejoin", Duration::from_secs(20), move || {
        a.is_connected()
    })
    .await;
    agent.publish_to_feed("counts", count_sample(1000)).unwrap();
    let mut seen = Vec::new();
    loop {
        let ev = sub.next_on(&feed_topic, Duration::from_secs(10)).await;
        let i = ev["args"][0][0]["counts"]["data"]["count"][0]
            .as_u64()
            .unwrap();
        if i == 1000 {
            break;
        }
        seen.push(i);
    }
    let unique: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a message was published twice: {seen:?}"
    );
    let stats = agent.feed_stats();
    // Acknowledged ones were delivered; unconfirmed ones perhaps.
    assert!(
        seen.len() as u64 >= N - stats.unconfirmed,
        "{stats:?} {seen:?}"
    );
    assert!(
        stats.unconfirmed > 0,
        "the test did not hang the router mid-flight: {stats:?}"
    );
    eprintln!(
        "{} delivered, {} unconfirmed: {stats:?}",
        seen.len(),
        stats.unconfirmed
    );
    sub.stop().await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Makes a CA and a server certificate for 127.0.0.1 with the `openssl` command; returns
/// (CA, server certificate, server key).
fn make_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command (apt install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pysmurf test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A `wss://` router signed by a private CA: with the CA (`--site-ca-file`) the agent joins
/// and an autobahn client on the plain port sees its heartbeat; without it the TLS handshake
/// is refused and the agent keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_router_with_a_private_ca() {
    let Some(venv) = support::venv() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let cb = tokio::task::spawn_blocking(move || Crossbar::start_with_tls(&venv, &cert, &key))
        .await
        .unwrap()
        .expect("crossbar with TLS");
    let url = cb.wss_url().unwrap();

    // Without the CA: no join.
    let untrusted =
        example::build_agent(SiteConfig::new(&url, REALM, ROOT, "tls-untrusted")).unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let (a, t) = (untrusted.clone(), token.clone());
        async move { a.run(t).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!untrusted.is_connected(), "joined without trusting the CA");
    token.cancel();
    task.await.unwrap().unwrap();

    // With it.
    let mut site = SiteConfig::new(&url, REALM, ROOT, "tls-trusted");
    site.ca_file = Some(ca);
    let agent = example::build_agent(site).unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let (a, t) = (agent.clone(), token.clone());
        async move { a.run(t).await }
    });
    let a = agent.clone();
    wait_for(
        "the agent to join over TLS",
        Duration::from_secs(20),
        move || a.is_connected(),
    )
    .await;
    let hb_topic = format!("{ROOT}.tls-trusted.feeds.heartbeat");
    let mut sub = Subscriber::start(
        &support::venv().unwrap(),
        &cb.ws_url(),
        std::slice::from_ref(&hb_topic),
    )
    .await;
    let hb = sub.next_on(&hb_topic, Duration::from_secs(5)).await;
    assert_eq!(hb["args"][0][1]["agent_address"], "observatory.tls-trusted");
    sub.stop().await;
    token.cancel();
    task.await.unwrap().unwrap();

    // A CA file that is not one is refused before connecting.
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let mut site = SiteConfig::new(&url, REALM, ROOT, "tls-bad");
    site.ca_file = Some(bad);
    let err = example::build_agent(site)
        .unwrap()
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Tls { .. }), "{err}");
}
