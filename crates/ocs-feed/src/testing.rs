//! Test helpers (feature `test-support`) for this crate's and other crates'
//! tests: real services, never mocks. A crossbar router from the test
//! virtualenv on a free loopback port, the venv's Python and this crate's
//! Python test scripts (a real autobahn subscriber, a real `OCSClient`), and
//! a TCP gate that cuts and restores connections to any loopback service.
//!
//! The virtualenv is `$PYSMURF_VENV` (default `<workspace>/.venv`, made by
//! `scripts/setup-python-env`). Without it tests are skipped with a
//! `skipped:` line, or fail when `PYSMURF_TEST_REQUIRE_SERVICES=1`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The realm of the test router.
pub const REALM: &str = "test_realm";
/// The address root of the test router's site file.
pub const ROOT: &str = "observatory";

/// The virtualenv with crossbar and ocs, or `None` (after printing why) if the test should be
/// skipped. Panics instead when `PYSMURF_TEST_REQUIRE_SERVICES=1`.
pub fn venv() -> Option<PathBuf> {
    let venv = std::env::var_os("PYSMURF_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let crossbar = venv.join("bin/crossbar");
    if crossbar.exists() && venv.join("bin/python").exists() {
        return Some(venv);
    }
    let reason = format!(
        "no crossbar in {} (run scripts/setup-python-env or set PYSMURF_VENV)",
        venv.display()
    );
    if std::env::var("PYSMURF_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("PYSMURF_TEST_REQUIRE_SERVICES=1 but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

/// A free TCP port on 127.0.0.1 (free when this returns; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A crossbar router in its own process group, killed with it.
pub struct Crossbar {
    venv: PathBuf,
    /// Its loopback port.
    pub port: u16,
    /// A second, TLS, port ([`Crossbar::start_with_tls`]).
    pub tls_port: Option<u16>,
    tls: Option<(PathBuf, PathBuf)>,
    dir: tempfile::TempDir,
    child: std::sync::Mutex<Option<Child>>,
}

static SHARED: OnceLock<Option<Crossbar>> = OnceLock::new();

/// The crossbar shared by the tests of this binary that do not disturb it; `None` = skip.
pub fn shared_crossbar() -> Option<&'static Crossbar> {
    SHARED
        .get_or_init(|| venv().map(|v| Crossbar::start(&v).expect("start crossbar")))
        .as_ref()
}

impl Crossbar {
    /// Starts a new router on a free loopback port; waits until it answers.
    pub fn start(venv: &Path) -> std::io::Result<Crossbar> {
        Crossbar::start_inner(venv, None)
    }

    /// Like [`Crossbar::start`], with a second transport on [`Crossbar::tls_port`] that
    /// speaks TLS with this certificate and key (PEM files); see [`Crossbar::wss_url`].
    pub fn start_with_tls(
        venv: &Path,
        certificate: &Path,
        key: &Path,
    ) -> std::io::Result<Crossbar> {
        Crossbar::start_inner(venv, Some((certificate.to_owned(), key.to_owned())))
    }

    fn start_inner(venv: &Path, tls: Option<(PathBuf, PathBuf)>) -> std::io::Result<Crossbar> {
        let dir = tempfile::tempdir()?;
        let cb = Crossbar {
            venv: venv.to_owned(),
            port: free_port(),
            tls_port: tls.as_ref().map(|_| free_port()),
            tls,
            dir,
            child: std::sync::Mutex::new(None),
        };
        cb.write_config()?;
        cb.spawn()?;
        Ok(cb)
    }

    /// The `wss://` URL of the TLS transport, if any.
    pub fn wss_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("wss://127.0.0.1:{p}/ws"))
    }

    fn write_config(&self) -> std::io::Result<()> {
        let mut config: Value = serde_json::from_str(include_str!(
            "../tests/vectors/crossbar-config.loopback.json"
        ))
        .unwrap();
        let transport = &mut config["workers"][0]["transports"][0];
        transport["endpoint"]["port"] = self.port.into();
        transport["endpoint"]["interface"] = "127.0.0.1".into();
        transport["paths"]["info"] = serde_json::json!({"type": "nodeinfo"});
        if let (Some(port), Some((cert, key))) = (self.tls_port, &self.tls) {
            let mut tls = transport.clone();
            // WebSocket only: the HTTP bridge stays on the plain port.
            tls["paths"] = serde_json::json!({"ws": transport["paths"]["ws"].clone()});
            tls["endpoint"]["port"] = port.into();
            tls["endpoint"]["tls"] = serde_json::json!({
                "certificate": cert.to_string_lossy(),
                "key": key.to_string_lossy(),
            });
            config["workers"][0]["transports"]
                .as_array_mut()
                .unwrap()
                .push(tls);
        }
        let cbdir = self.dir.path().join(".crossbar");
        std::fs::create_dir_all(&cbdir)?;
        std::fs::write(cbdir.join("config.json"), config.to_string())
    }

    fn spawn(&self) -> std::io::Result<()> {
        let cbdir = self.dir.path().join(".crossbar");
        let log = std::fs::File::create(self.dir.path().join("crossbar.log"))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(self.venv.join("bin/crossbar"))
            .args(["start", "--cbdir"])
            .arg(&cbdir)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        let pgid = child.id();
        // A watcher in another process group kills the router's group when this test process
        // is gone, however it ends (a `static` is never dropped).
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null && kill -0 -{pgid} 2>/dev/null; do sleep 0.5; done; \
                 kill -KILL -{pgid} 2>/dev/null",
                std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready(Duration::from_secs(60));
        Ok(())
    }

    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /info HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "crossbar did not come up on port {} within {limit:?}; log:\n{}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("crossbar.log")).unwrap_or_default()
        );
    }

    /// The WebSocket URL agents and clients join.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The HTTP bridge URL (OCSClient's).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/call", self.port)
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            let status = Command::new("kill")
                .args([sig, "--", &format!("-{}", child.id())])
                .status()
                .unwrap();
            assert!(status.success(), "kill {sig} crossbar");
        }
    }

    /// SIGSTOP to the whole router (controller and workers): a hung router, sockets open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Crossbar::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL to the whole router.
    pub fn kill(&self) {
        self.signal("-KILL");
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.wait();
        }
        // The workers are gone when the port is free again.
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the router again on the same port after [`Crossbar::kill`].
    pub fn restart(&self) {
        std::fs::remove_file(self.dir.path().join(".crossbar/node.pid")).ok();
        self.spawn().expect("restart crossbar");
    }

    /// A site file for OCSClient pointing at this router.
    pub fn site_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("site.yaml");
        std::fs::write(
            &path,
            format!(
                "hub:\n  wamp_server: {}\n  wamp_http: {}\n  wamp_realm: {REALM}\n  address_root: {ROOT}\n\
                 hosts:\n  localhost:\n    agent-instances: []\n",
                self.ws_url(),
                self.http_url()
            ),
        )
        .unwrap();
        path
    }

    /// The router's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("crossbar.log")).unwrap_or_default()
    }
}

impl Drop for Crossbar {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.signal("-KILL");
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.wait();
        }
    }
}

/// The path of a script in this crate's `tests/python/` (`subscriber.py`,
/// `ocs_client_check.py`).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// A TCP forwarder from a loopback port to a loopback service (a router, a database) that can
/// cut its connections and refuse new ones, to hold a client off a service that is up.
///
/// [`Gate::close`] takes effect before it returns: every forwarded socket is shut down at once
/// (not when a forwarding task next gets to run), so nothing the client sends after `close`
/// reaches the service, however busy the machine is.
pub struct Gate {
    /// The loopback port to connect to instead of the target's.
    pub port: u16,
    state: Arc<std::sync::Mutex<GateState>>,
}

/// Whether the gate is open, and a duplicate handle of both sockets of every forwarded
/// connection, so that `close` can shut them down synchronously.
struct GateState {
    open: bool,
    next_id: u64,
    connections: std::collections::HashMap<u64, (TcpStream, TcpStream)>,
}

impl GateState {
    fn cut_all(&mut self) {
        for (_, (inbound, outbound)) in self.connections.drain() {
            let _ = inbound.shutdown(std::net::Shutdown::Both);
            let _ = outbound.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Gate {
    /// Forwards a new loopback port to `127.0.0.1:target_port`, open.
    pub async fn start(target_port: u16) -> Gate {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(std::sync::Mutex::new(GateState {
            open: true,
            next_id: 0,
            connections: Default::default(),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, target_port));
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (Some((mut inbound, inbound_dup)), Some((mut outbound, outbound_dup))) =
                        (with_duplicate(inbound), with_duplicate(outbound))
                    else {
                        return;
                    };
                    let id = {
                        let mut state = shared.lock().unwrap();
                        if !state.open {
                            return; // refused: both sockets are dropped, i.e. closed
                        }
                        state.next_id += 1;
                        let id = state.next_id;
                        state.connections.insert(id, (inbound_dup, outbound_dup));
                        id
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    // Drop the duplicates too, or the peers would never see this connection end.
                    shared.lock().unwrap().connections.remove(&id);
                });
            }
        });
        Gate { port, state }
    }

    /// The WebSocket URL through the gate, when the target is a router.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Cuts every connection and refuses new ones. When this returns, no byte written by a
    /// client afterwards can reach the service through the gate.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap();
        state.open = false;
        state.cut_all();
    }

    /// Accepts connections again after [`Gate::close`].
    pub fn open(&self) {
        self.state.lock().unwrap().open = true;
    }
}

/// The stream and a duplicate of its socket (same socket, another descriptor) for shutting it
/// down from outside the task that owns the stream.
fn with_duplicate(stream: tokio::net::TcpStream) -> Option<(tokio::net::TcpStream, TcpStream)> {
    let std_stream = stream.into_std().ok()?;
    let duplicate = std_stream.try_clone().ok()?;
    Some((tokio::net::TcpStream::from_std(std_stream).ok()?, duplicate))
}

/// Waits up to `limit` for `cond`; returns how long it took, or panics with `what`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// A real autobahn subscriber (`tests/python/subscriber.py`) on a set of
/// topics; its events arrive as JSON values `{"topic", "args", "kwargs"}`.
pub struct Subscriber {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Subscriber {
    /// Starts a subscriber joined to the router at `url` (realm [`REALM`]) and
    /// returns once it is subscribed to every topic.
    pub async fn start(venv: &std::path::Path, url: &str, topics: &[String]) -> Subscriber {
        let mut child = tokio::process::Command::new(venv.join("bin/python"))
            .arg(script("subscriber.py"))
            .args([url, REALM, "120"])
            .args(topics)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start subscriber");
        let stdout = child.stdout.take().unwrap();
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("subscriber ready in time")
            .expect("subscriber output");
        assert_eq!(ready, serde_json::json!({"ready": true}));
        Subscriber { child, lines }
    }

    /// The next event on `topic` (others are skipped), within `limit`.
    pub async fn next_on(&mut self, topic: &str, limit: Duration) -> Value {
        tokio::time::timeout(limit, async {
            loop {
                let v = self.lines.recv().await.expect("subscriber ended");
                if v["topic"] == topic {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event on {topic} within {limit:?}"))
    }

    /// The next event on any topic, or `None` when none comes within `limit` or the
    /// subscriber has ended.
    pub async fn next_any(&mut self, limit: Duration) -> Option<Value> {
        tokio::time::timeout(limit, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event on `topic` (others are skipped), or `None` when none
    /// comes within `limit` or the subscriber has ended.
    pub async fn try_next_on(&mut self, topic: &str, limit: Duration) -> Option<Value> {
        tokio::time::timeout(limit, async {
            loop {
                let v = self.lines.recv().await?;
                if v["topic"] == topic {
                    return Some(v);
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Tells the subscriber to leave and waits (briefly) for it to exit.
    pub async fn stop(mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"done\n").await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
