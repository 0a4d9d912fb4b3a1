//! Differential tests against ocs 0.12.1 itself: the same real clients (ocs's `OCSClient`
//! over crossbar's HTTP bridge, an autobahn subscriber) talk to a Python agent built on ocs's
//! own `OCSAgent` (`tests/python/twin_agent.py`) and to its Rust twin ([`twin`]), and every
//! reply must be the same JSON text, key order included, once timestamps, PIDs, host names
//! and the instance ids are masked.
//!
//! Without the test virtualenv these tests print `skipped: ...` (or fail when
//! `PYSMURF_TEST_REQUIRE_SERVICES=1`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ocs_feed::testing::{self as support, Crossbar, Subscriber, REALM, ROOT};
use ocs_feed::{
    AccessPolicy, Agent, Cast, FeedOptions, OcsClient, OpError, OpOptions, OpResult, Param,
    ParamHandler, ParamType, Params, Session, SiteConfig,
};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

/// The Rust twin of `tests/python/twin_agent.py`: same ops, params, feeds and docstrings,
/// registered in the same order.
fn twin(site: SiteConfig, policy: Option<AccessPolicy>) -> Agent {
    let mut builder = Agent::builder("TwinAgent", site);
    if let Some(p) = policy {
        builder = builder.access_policy(p);
    }
    let agent = builder.build();
    agent
        .register_feed(
            "counts",
            FeedOptions::recorded(json!({"frame_length": 60, "exclude_influx": false}), 0.0),
        )
        .unwrap();
    agent
        .register_feed("plain", FeedOptions::default())
        .unwrap();
    let task = |doc: &str| OpOptions::new().doc(doc).abortable(false);

    agent
        .register_task(
            "delay_task",
            OpOptions::new().doc("delay_task(delay=0.25)"),
            |session, params| async move {
                let delay = params.get("delay").cloned().unwrap_or(json!(0.25));
                session.set_data(json!({"requested_delay": delay, "zeta": 1, "alpha": 2}));
                let delay_s = delay.as_f64().unwrap_or(0.25);
                // As the Python twin: "stopping" for 0.5 s after an abort.
                let mut waited = 0.0;
                while waited < delay_s {
                    if session.stop_requested() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return Err(OpError::new("Aborted."));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    waited += 0.05;
                }
                Ok(format!("Exited after {delay} seconds"))
            },
        )
        .unwrap();
    agent
        .register_process(
            "acq",
            OpOptions::new().doc("acq()"),
            |session, _| async move {
                session.set_data(json!({"state": "acquiring", "nan_value": f64::NAN,
                    "nested": {"zeta": 1, "alpha": [1, 2.5, "three", null, true]}}));
                // As the Python twin: "stopping" for 0.5 s after a stop.
                session.stopped().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok("Stopped.".to_owned())
            },
        )
        .unwrap();
    let feeds = agent.clone();
    agent
        .register_task(
            "echo",
            task("echo(x=1, label='hello')")
                .param(Param::new("x").default(1).ty(ParamType::Int))
                .param(Param::new("label").default("hello").ty(ParamType::Str)),
            move |session, params| {
                let feeds = feeds.clone();
                async move {
                    session.set_data(json!({"params": params,
                        "nested": {"zeta": [1, 2.5], "alpha": null}}));
                    feeds.publish_to_feed(
                        "plain",
                        json!({"zeta": [1, "two", {"three": 3.0}], "x": params["x"],
                               "alpha": params["label"]}),
                    )?;
                    feeds.publish_to_feed(
                        "counts",
                        json!({"block_name": "probe", "timestamp": 1700000000.25,
                               "data": {"x": params["x"], "label": params["label"],
                                        "flag": true, "val": 2.5}}),
                    )?;
                    Ok("echo ok".to_owned())
                }
            },
        )
        .unwrap();
    // Python applies the @param decorators bottom-up: this is the Python source read upwards.
    agent
        .register_task(
            "configure",
            task(
                "configure(count, gain=1.0, mode='fast', tags=None, name='x', ratio=None, maybe=5)",
            )
            .param(
                Param::new("maybe")
                    .default(5)
                    .ty(ParamType::Int)
                    .treat_none_as_missing(false),
            )
            .param(Param::new("ratio").default(Value::Null).cast(Cast::Float))
            .param(Param::new("name").default("x").cast(Cast::Str))
            .param(Param::new("tags").default(Value::Null).ty(ParamType::List))
            .param(Param::new("count").ty(ParamType::Int))
            .param(
                Param::new("mode")
                    .default("fast")
                    .cast(Cast::Lower)
                    .choices(["fast", "slow"]),
            )
            .param(
                Param::new("gain")
                    .default(1.0)
                    .ty(ParamType::Float)
                    .check(|g| g.as_f64().is_some_and(|g| g > 0.0)),
            ),
            |session, params| params_into_data(session, params, "params", "configured"),
        )
        .unwrap();
    agent
        .register_task(
            "loose",
            task("loose(level=0, ...)")
                .param(Param::new("level").default(0).ty(ParamType::Int))
                .allow_stray_params(),
            |session, params| params_into_data(session, params, "params", "loose ok"),
        )
        .unwrap();
    agent
        .register_task(
            "manual",
            task("manual(speed)"),
            |session, params| async move {
                let mut handler = ParamHandler::new(&params);
                let speed = handler.get(&Param::new("speed").ty(ParamType::Float))?;
                handler.check_for_strays(&[])?;
                session.set_data(json!({ "speed": speed }));
                Ok("manual ok".to_owned())
            },
        )
        .unwrap();
    agent
        .register_task(
            "privileged",
            task("privileged()").min_privs(2),
            |_, _| async move { Ok("privileged ok".to_owned()) },
        )
        .unwrap();
    agent
        .register_task(
            "boot",
            task("boot()")
                .min_privs(3)
                .startup(json!({"alpha": 1, "beta": "two"})),
            |session, params| params_into_data(session, params, "startup_params", "booted"),
        )
        .unwrap();
    agent
}

/// A task body: its params into its session data under `key`, then `message`.
async fn params_into_data(session: Session, params: Params, key: &str, message: &str) -> OpResult {
    session.set_data(json!({ key: params }));
    Ok(message.to_owned())
}

/// Runs `agent` on a task of its own until `shutdown` is cancelled.
fn run_agent(
    agent: &Agent,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), ocs_feed::AgentError>> {
    let (agent, shutdown) = (agent.clone(), shutdown.clone());
    tokio::spawn(async move { agent.run(shutdown).await })
}

/// A site file for both twins (and an Access Director).
fn site_file(cb: &Crossbar, dir: &Path, hub_extra: &str, tag: &str) -> PathBuf {
    let path = dir.join("site.yaml");
    let mut yaml = format!(
        "hub:\n  wamp_server: {}\n  wamp_http: {}\n  wamp_realm: {REALM}\n  address_root: {ROOT}\n",
        cb.ws_url(),
        cb.http_url()
    );
    yaml.push_str(hub_extra);
    yaml.push_str("hosts:\n  localhost:\n    agent-instances:\n");
    for line in [
        format!("{{agent-class: TwinAgent, instance-id: twin-py-{tag}, arguments: []}}"),
        format!("{{agent-class: TwinAgent, instance-id: twin-rs-{tag}, arguments: []}}"),
        format!(
            "{{agent-class: AccessDirector, instance-id: access-dir-{tag}, \
             arguments: [--config-file, access.yaml]}}"
        ),
        format!("{{agent-class: FakeDataAgent, instance-id: fake-{tag}, arguments: []}}"),
    ] {
        yaml.push_str(&format!("      - {line}\n"));
    }
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A Python agent script from the venv, killed when dropped.
struct PythonAgent {
    child: tokio::process::Child,
}

impl PythonAgent {
    fn start(script: &Path, site: &Path, instance_id: &str, extra: &[&str]) -> PythonAgent {
        let venv = support::venv().unwrap();
        let log = std::fs::File::create(site.with_file_name(format!("{instance_id}.log"))).unwrap();
        let child = tokio::process::Command::new(venv.join("bin/python"))
            .arg(script)
            .arg("--site-file")
            .arg(site)
            .args(["--site-host", "localhost", "--instance-id", instance_id])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the Python agent");
        PythonAgent { child }
    }

    /// `tests/python/twin_agent.py` as `instance_id`.
    fn twin(site: &Path, instance_id: &str, extra: &[&str]) -> PythonAgent {
        PythonAgent::start(&support::script("twin_agent.py"), site, instance_id, extra)
    }
}

impl Drop for PythonAgent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs `parity_client.py` against one instance; returns its steps, one masked JSON text each.
async fn run_client(
    site: &Path,
    instance_id: &str,
    scenario: &str,
    password: Option<&str>,
) -> Vec<String> {
    let venv = support::venv().unwrap();
    let out = tokio::process::Command::new(venv.join("bin/python"))
        .arg(support::script("parity_client.py"))
        .arg(site)
        .args([instance_id, scenario])
        .args(password)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "parity_client.py {scenario} on {instance_id} failed:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(site.with_file_name(format!("{instance_id}.log")))
            .unwrap_or_default()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Masks what differs between two runs (times, PIDs, host names, the instance id), keeping
/// the key order.
fn normalize(v: &Value, instance_id: &str) -> Value {
    const MASKED: [&str; 5] = [
        "start_time",
        "end_time",
        "update_timestamp",
        "instance_pid",
        "instance_hostname",
    ];
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let masked = (MASKED.contains(&k.as_str()) && !val.is_null())
                    || (k == "session_id" && val.is_string());
                let val = if masked {
                    json!("<masked>")
                } else if k == "messages" && val.is_array() {
                    Value::Array(
                        val.as_array()
                            .unwrap()
                            .iter()
                            .map(|m| json!(["<t>", normalize(&m[1], instance_id)]))
                            .collect(),
                    )
                } else {
                    normalize(val, instance_id)
                };
                out.insert(k.clone(), val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| normalize(x, instance_id)).collect()),
        Value::String(s) => Value::String(s.replace(instance_id, "<id>")),
        other => other.clone(),
    }
}

/// Compares two step lists text for text (so key order counts).
fn assert_same_steps(python: &[String], rust: &[String]) {
    for (p, r) in python.iter().zip(rust) {
        assert_eq!(r, p, "\nRust (left) and ocs 0.12.1 (right) differ");
    }
    assert_eq!(python.len(), rust.len());
    assert!(!python.is_empty());
}

struct Twins {
    tag: &'static str,
    _dir: tempfile::TempDir,
    site: PathBuf,
    _python: PythonAgent,
    rust: Agent,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ocs_feed::AgentError>>,
}

impl Twins {
    /// Both twins, with instance ids `twin-py-{tag}` and `twin-rs-{tag}`.
    async fn start(
        cb: &Crossbar,
        tag: &'static str,
        hub_extra: &str,
        python_extra: &[&str],
        rust_policy: Option<&str>,
    ) -> Twins {
        let dir = tempfile::tempdir().unwrap();
        let site = site_file(cb, dir.path(), hub_extra, tag);
        let python = PythonAgent::twin(&site, &format!("twin-py-{tag}"), python_extra);
        // The Rust twin takes its policy from its site config, as `--access-policy` or the
        // site file's `access_policy` give it.
        let mut site_config = SiteConfig::new(&cb.ws_url(), REALM, ROOT, &format!("twin-rs-{tag}"));
        site_config.access_policy = rust_policy.map(str::to_owned);
        let rust = twin(site_config, None);
        let shutdown = CancellationToken::new();
        let task = run_agent(&rust, &shutdown);
        Twins {
            tag,
            _dir: dir,
            site,
            _python: python,
            rust,
            shutdown,
            task,
        }
    }

    async fn compare(&self, scenario: &str, password: Option<&str>) {
        let tag = self.tag;
        let python = run_client(&self.site, &format!("twin-py-{tag}"), scenario, password).await;
        let rust = run_client(&self.site, &format!("twin-rs-{tag}"), scenario, password).await;
        if python != rust {
            eprintln!(
                "Python twin's log:\n{}",
                std::fs::read_to_string(self.site.with_file_name(format!("twin-py-{tag}.log")))
                    .unwrap_or_default()
            );
        }
        assert_same_steps(&python, &rust);
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        drop(self.rust);
    }
}

async fn crossbar() -> Option<&'static Crossbar> {
    tokio::task::spawn_blocking(support::shared_crossbar)
        .await
        .unwrap()
}

/// Point 3: every reply of the ops and management handlers, the errors included, byte for
/// byte (after masking) as ocs 0.12.1 sends them; heartbeat and feed messages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_replies_heartbeats_and_feeds_are_ocs_byte_for_byte() {
    let Some(cb) = crossbar().await else { return };
    let venv = support::venv().unwrap();
    let topics: Vec<String> = ["twin-py-wire", "twin-rs-wire"]
        .iter()
        .flat_map(|id| ["heartbeat", "plain", "counts"].map(|f| format!("{ROOT}.{id}.feeds.{f}")))
        .collect();
    let mut sub = Subscriber::start(&venv, &cb.ws_url(), &topics).await;
    let twins = Twins::start(cb, "wire", "", &[], None).await;
    twins.compare("wire", None).await;

    // The first event of each topic (the subscriber joined before both agents).
    let mut first: std::collections::HashMap<String, Value> = Default::default();
    while first.len() < topics.len() {
        let ev = sub
            .next_any(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("events missing; got {:?}", first.keys()));
        let topic = ev["topic"].as_str().unwrap().to_owned();
        first.entry(topic).or_insert(ev);
    }
    for feed in ["heartbeat", "plain", "counts"] {
        let py = &first[&format!("{ROOT}.twin-py-wire.feeds.{feed}")];
        let rs = &first[&format!("{ROOT}.twin-rs-wire.feeds.{feed}")];
        let (py, rs) = (
            normalize(&py["args"], "twin-py-wire").to_string(),
            normalize(&rs["args"], "twin-rs-wire").to_string(),
        );
        assert_eq!(rs, py, "{feed}: Rust (left) and ocs 0.12.1 (right) differ");
    }
    sub.stop().await;
    twins.stop().await;
}

/// Point 2: `@param` checks, casts, defaults and errors (start refusals and `ERROR:` session
/// messages) as ocs 0.12.1 gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn param_checks_refuse_and_convert_as_ocs() {
    let Some(cb) = crossbar().await else { return };
    let twins = Twins::start(cb, "params", "", &[], None).await;
    twins.compare("params", None).await;
    twins.stop().await;
}

#[test]
fn a_param_default_that_fails_its_own_checks_is_refused_at_registration() {
    let agent = Agent::new("A", SiteConfig::new("ws://127.0.0.1:1/ws", "r", ROOT, "a"));
    let err = agent
        .register_task(
            "t",
            OpOptions::new().param(Param::new("x").default("one").ty(ParamType::Int)),
            |_, _| async { Ok(String::new()) },
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Param 'x'=one is not of required type (<class 'int'>)"),
        "{err}"
    );
}

/// Point 1, `override:PW2,PW3` (from the site file's `access_policy`): levels by password,
/// `min_privs` refusals with ocs's texts, the super-user startup op, `access_control` in
/// `get_api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_policy_protects_as_ocs() {
    let Some(cb) = crossbar().await else { return };
    let policy = "override:secret2,secret3";
    let twins = Twins::start(
        cb,
        "override",
        &format!("  access_policy: {policy}\n"),
        &[],
        Some(policy),
    )
    .await;
    for password in [None, Some("wrong"), Some("secret2"), Some("secret3")] {
        twins.compare("access", password).await;
    }
    twins.stop().await;
}

const ACCESS_CONFIG: &str = "\
passwords_block_default_hashfunc: none
distrib_hashfunc: md5
passwords:
  - default: true
    password_1: ''
    password_2: 'two'
  - agent_class: 'Twin*,!Other*'
    password_3: 'three'
  - instance_id: 'nobody*'
    password_3: 'two'
";

/// One of ocs's own agents from the venv (`access_director`, `fake_data`, ...).
fn ocs_agent_script(name: &str) -> PathBuf {
    let venv = support::venv().unwrap();
    std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .join(format!("site-packages/ocs/agents/{name}/agent.py"))
        })
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("ocs's {name} agent in the venv"))
}

fn access_director(site: &Path, tag: &str) -> PythonAgent {
    std::fs::write(site.with_file_name("access.yaml"), ACCESS_CONFIG).unwrap();
    let script = ocs_agent_script("access_director");
    PythonAgent::start(&script, site, &format!("access-dir-{tag}"), &[])
}

/// Waits until `agent` has rules from the Access Director (`what` they are).
async fn wait_for_rules(agent: &Agent, what: &str) {
    let agent = agent.clone();
    support::wait_for(what, Duration::from_secs(30), move || {
        agent.access_control()["update_count"].as_u64() >= Some(1)
    })
    .await;
}

/// Point 1, `director:ID` with ocs 0.12's real Access Director: blocked (level 0) until its
/// rules arrive on its `controls` feed; then md5-hashed passwords, scopes and patterns as in
/// ocs. A twin pair that joins after the director gets its rules through `agent_poll`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_policy_blocks_until_the_access_director_rules_arrive() {
    let Some(cb) = crossbar().await else { return };
    let policy = "director:access-dir-director";
    let twins = Twins::start(
        cb,
        "director",
        "",
        &["--access-policy", policy],
        Some(policy),
    )
    .await;
    // No director yet: everything is blocked, on both.
    twins.compare("access", Some("three")).await;
    assert_eq!(twins.rust.access_control()["update_count"], 0);

    let _director = access_director(&twins.site, "director");
    wait_for_rules(&twins.rust, "the Access Director's rules").await;
    // Both twins get the same broadcast.
    twins.compare("wait_rules", None).await;
    for password in [None, Some("two"), Some("three"), Some("wrong")] {
        twins.compare("access", password).await;
    }

    // Agents that join after the director ask it with agent_poll.
    let late = Twins::start(cb, "late", "", &["--access-policy", policy], Some(policy)).await;
    wait_for_rules(&late.rust, "the rules asked for with agent_poll").await;
    late.compare("wait_rules", None).await;
    late.compare("access", Some("three")).await;
    late.stop().await;
    twins.stop().await;
}

/// FakeDataAgent's own options, as `tests/python/site_args.py` declares them.
#[derive(Debug, clap::Parser)]
struct FakeDataArgs {
    #[command(flatten)]
    site: ocs_feed::SiteArgs,
    #[arg(long, default_value = "idle", value_parser = ["idle", "acq"])]
    mode: String,
    #[arg(long, default_value_t = 2)]
    num_channels: i64,
    #[arg(long, default_value_t = 9.5)]
    sample_rate: f64,
    #[arg(long, default_value_t = 60)]
    frame_length: i64,
}

impl ocs_feed::HasSiteArgs for FakeDataArgs {
    fn site_args(&self) -> &ocs_feed::SiteArgs {
        &self.site
    }
}

const SITE_FOR_ARGS: &str = "\
hub:
  wamp_server: ws://127.0.0.1:18001/ws
  wamp_http: http://127.0.0.1:18001/call
  wamp_realm: test_realm
  address_root: observatory
  access_policy: override:two,three
hosts:
  daq:
    wamp_server: ws://127.0.0.1:18002/ws
    crossbar_timeout: 20
    log-dir: /var/log/ocs
    agent-instances:
      - {agent-class: FakeDataAgent, instance-id: fake1,
         arguments: [--sample-rate, -5, [--num-channels, 4], --mode, acq]}
      - {agent-class: RegistryAgent, instance-id: registry}
  daq2:
    agent-instances:
      - {instance-id: classless, arguments: [--frame-length, -1]}
  localhost:
    agent-instances:
      - {agent-class: FakeDataAgent, instance-id: fake-local}
      - {agent-class: FakeDataAgent, instance-id: fake-local2}
";

/// Point 5: the same site file and argument lists resolved by ocs 0.12.1's
/// `site_config.parse_args` and by `ocs_feed::parse_args_from` give the same values (or both
/// fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_files_and_arguments_resolve_as_ocs() {
    let Some(venv) = support::venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.yaml");
    std::fs::write(&file, SITE_FOR_ARGS).unwrap();
    let file = file.to_str().unwrap();
    // `--site-file FILE --site-host HOST [--instance-id ID]`, then `more`.
    let case = |host: &'static str, instance: Option<&'static str>, more: &[&'static str]| {
        let mut args = vec!["--site-file", file, "--site-host", host];
        if let Some(instance) = instance {
            args.extend(["--instance-id", instance]);
        }
        args.extend(more);
        args
    };
    let cases: Vec<Vec<&str>> = vec![
        case("daq", Some("fake1"), &[]),
        case("daq", None, &[]),
        case("daq2", Some("classless"), &[]),
        case("daq", Some("registry"), &[]),
        case(
            "daq",
            Some("fake1"),
            &[
                "--sample-rate",
                "-2.5",
                "--crossbar-timeout",
                "0",
                "--access-policy",
                "none",
            ],
        ),
        case("elsewhere", Some("fake-local"), &[]),
        case("elsewhere", None, &[]),
        case("daq", Some("nope"), &[]),
        case(
            "daq",
            Some("fake1"),
            &[
                "--site-hub",
                "ws://127.0.0.1:18003/ws",
                "--site-realm",
                "other",
                "--mode",
                "idle",
            ],
        ),
    ];
    for case in cases {
        let out = tokio::process::Command::new(venv.join("bin/python"))
            .arg(support::script("site_args.py"))
            .arg("FakeDataAgent")
            .args(&case)
            .output()
            .await
            .unwrap();
        let python: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let argv = std::iter::once("agent").chain(case.iter().copied());
        let rust = match ocs_feed::parse_args_from::<FakeDataArgs, _, _>("FakeDataAgent", argv) {
            Ok((args, site)) => json!({
                "site_hub": site.hub_url,
                "site_http": site.http_url,
                "site_realm": site.realm,
                "address_root": site.address_root,
                "instance_id": site.instance_id,
                // Unset, ocs uses 10 s for an agent of a site file; this agent reconnects
                // forever (docs/ocs-compatibility.md).
                "crossbar_timeout": site.crossbar_timeout.unwrap_or(10),
                "log_dir": site.log_dir,
                "access_policy": site.access_policy,
                "mode": args.mode,
                "num_channels": args.num_channels,
                "sample_rate": args.sample_rate,
                "frame_length": args.frame_length,
            }),
            Err(e) => {
                eprintln!("{case:?}: {e}");
                json!({"error": "refused"})
            }
        };
        if python.get("error").is_some() {
            assert!(
                rust.get("error").is_some(),
                "{case:?}: ocs refuses, Rust gave {rust}"
            );
        } else {
            assert_eq!(
                rust, python,
                "{case:?}: Rust (left) and ocs 0.12.1 (right) differ"
            );
        }
    }
}

/// Point 4, `--crossbar-timeout 2`: after the router dies, ocs stops its ops and exits after
/// about 2 s; the Rust agent stops its ops and `run` ends with `RouterTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossbar_timeout_stops_ops_and_ends_as_ocs_exits() {
    let Some(venv) = support::venv() else { return };
    let cb = tokio::task::spawn_blocking(move || Crossbar::start(&venv).expect("crossbar"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let site = site_file(&cb, dir.path(), "", "timeout");
    let mut python = PythonAgent::twin(&site, "twin-py-timeout", &["--crossbar-timeout", "2"]);
    let mut config = SiteConfig::new(&cb.ws_url(), REALM, ROOT, "twin-rs-timeout");
    config.crossbar_timeout = Some(2);
    let rust = twin(config, None);
    let run = run_agent(&rust, &CancellationToken::new());
    run_client(&site, "twin-py-timeout", "ping", None).await;
    run_client(&site, "twin-rs-timeout", "ping", None).await;
    let acq = rust.start_op("acq", json!({})).unwrap();

    let t0 = std::time::Instant::now();
    let cb = std::sync::Arc::new(cb);
    let c = cb.clone();
    tokio::task::spawn_blocking(move || c.kill()).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("run ends")
        .unwrap();
    let took = t0.elapsed();
    assert!(
        matches!(
            ended,
            Err(ocs_feed::AgentError::RouterTimeout { seconds: 2 })
        ),
        "{ended:?}"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert_eq!(acq.status(), ocs_feed::Status::Done, "ops are stopped");
    let status = tokio::time::timeout(Duration::from_secs(20), python.child.wait())
        .await
        .expect("ocs exits too")
        .unwrap();
    eprintln!("Rust ended after {took:?}; ocs exited with {status}");
}

#[allow(dead_code)] // `drive` is used; `main` is the example's.
#[path = "../../../examples/ocs_client.rs"]
mod client_example;

/// A plain Rust agent that only calls (no ops of its own), running until the token is
/// cancelled.
async fn client_agent(
    url: &str,
    instance_id: &str,
) -> (
    Agent,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), ocs_feed::AgentError>>,
) {
    let agent = Agent::new(
        "ClientAgent",
        SiteConfig::new(url, REALM, ROOT, instance_id),
    );
    let token = CancellationToken::new();
    let task = run_agent(&agent, &token);
    let a = agent.clone();
    support::wait_for(
        "the client agent to join",
        Duration::from_secs(20),
        move || a.is_connected(),
    )
    .await;
    (agent, token, task)
}

/// Point 6: the Rust `OcsClient` gets from a Python ocs agent exactly the reply triples
/// ocs's own `OCSClient` gets (compared as text, key order included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_gets_the_reply_triples_ocs_client_gets() {
    let Some(cb) = crossbar().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let site = site_file(cb, dir.path(), "", "client");
    // Two Python twins: one driven by ocs's OCSClient, one by the Rust client.
    let _a = PythonAgent::twin(&site, "twin-py-client", &[]);
    let _b = PythonAgent::twin(&site, "twin-rs-client", &[]);
    let python = run_client(&site, "twin-py-client", "client", None).await;
    run_client(&site, "twin-rs-client", "ping", None).await;
    let (agent, token, task) = client_agent(&cb.ws_url(), "rust-client").await;
    let twin = OcsClient::new(&agent, "twin-rs-client");
    let mut rust = Vec::new();
    let mut step = |name: &str, reply: Result<ocs_feed::OcsReply, ocs_feed::CallError>| {
        let r = reply.unwrap();
        let v = json!({"step": name, "reply": [r.status, r.msg, r.session]});
        rust.push(normalize(&v, "twin-rs-client").to_string());
    };
    step("status never run", twin.status("delay_task").await);
    step(
        "wait never run",
        twin.wait("delay_task", Some(Duration::from_secs(1))).await,
    );
    step(
        "start",
        twin.start("echo", json!({"x": 5, "label": "abc"})).await,
    );
    step(
        "wait",
        twin.wait("echo", Some(Duration::from_secs(10))).await,
    );
    step("bad param", twin.start("configure", json!({})).await);
    step("privileged", twin.start("privileged", json!({})).await);
    step("start process", twin.start("acq", json!({})).await);
    step("stop process", twin.stop("acq").await);
    step(
        "wait process",
        twin.wait("acq", Some(Duration::from_secs(10))).await,
    );
    step("abort a process", twin.abort("acq").await);
    step("run_task", twin.run_task("echo", json!({})).await);
    let api = twin.get_api().await.unwrap();
    assert_eq!(api["agent_class"], "TwinAgent");
    // A call to an agent that is not there.
    let err = OcsClient::new(&agent, "nobody")
        .status("x")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ocs_feed::CallError::Remote { error, .. } if error == "wamp.error.no_such_procedure"),
        "{err}"
    );
    // The Python side prints with Python's JSON spacing: compare both in serde_json's
    // compact form (key order kept).
    let python: Vec<String> = python
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap().to_string())
        .collect();
    assert_same_steps(&python, &rust);
    token.cancel();
    task.await.unwrap().unwrap();
}

/// Point 6: the example drives ocs's real FakeDataAgent, and a feed subscription is made
/// again after the connection to the router is cut and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_drives_ocs_fake_data_agent_and_resubscribes_after_a_reconnect() {
    let Some(cb) = crossbar().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let site = site_file(cb, dir.path(), "", "fake");
    let _fake = PythonAgent::start(&ocs_agent_script("fake_data"), &site, "fake-fake", &[]);
    run_client(&site, "fake-fake", "ping", None).await;
    let gate = support::Gate::start(cb.port).await;
    let (agent, token, task) = client_agent(&gate.ws_url(), "fake-driver").await;
    let summary = client_example::drive(&agent, "fake-fake", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(summary.delay_task.status, 0, "{summary:?}");
    assert_eq!(
        summary.delay_task.msg,
        "Operation \"delay_task\" is currently not running (SUCCEEDED)."
    );
    assert_eq!(summary.delay_task.session["success"], true);
    assert_eq!(summary.acq_start.msg, "Started process \"acq\".");
    assert_eq!(summary.acq_stop.msg, "Requested stop on process acq\".");
    assert_eq!(summary.acq_done.session["success"], true, "{summary:?}");
    assert!(summary.feed_messages >= 1, "{summary:?}");

    // Cut and restore the connection; the subscription comes back with it.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    agent.subscribe_to_feed(
        &format!("{ROOT}.fake-fake"),
        "false_temperatures",
        move |_, _| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    );
    gate.close();
    let a = agent.clone();
    support::wait_for("disconnect", Duration::from_secs(10), move || {
        !a.is_connected()
    })
    .await;
    gate.open();
    let a = agent.clone();
    support::wait_for("rejoin", Duration::from_secs(20), move || a.is_connected()).await;
    count.store(0, std::sync::atomic::Ordering::Relaxed);
    let fake = OcsClient::new(&agent, "fake-fake");
    assert!(fake.start("acq", json!({})).await.unwrap().is_ok());
    let c = count.clone();
    support::wait_for(
        "feed messages after the reconnect",
        Duration::from_secs(15),
        move || c.load(std::sync::atomic::Ordering::Relaxed) >= 1,
    )
    .await;
    fake.stop("acq").await.unwrap();
    token.cancel();
    task.await.unwrap().unwrap();
}
