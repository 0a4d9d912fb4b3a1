//! The real `pysmurf-monitor` binary, started as a child process, fed by a
//! real publisher on loopback, checked through the real database (SQLite
//! file or MariaDB), never through its own logs' claims.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    blocking_on, connect_default_sqlite, md5sum_tool, numbered, only_row, private_router,
    register_numbered, run_ocs_client, shared_router, wait_for_dead_letters, wait_for_rows,
    write_file, Backend, MonitorProcess,
};
use files_db::testing::TestDatabase;
use files_db::FilesDb;
use ocs_feed::testing::{self as ocs_testing, Gate, Subscriber};
use serde_json::json;
use smurf_protocol::{FilePayload, Publisher};

/// Every kind of datagram around three registrations; every column checked.
/// The monitor runs in `backend`'s working directory and environment and must
/// write to its target.
async fn records_exactly_what_was_registered(backend: &Backend) {
    let data = backend.work.path().join("data");
    let monitor = MonitorProcess::start(backend.work.path(), &backend.env, &[]);
    let mut publisher = monitor.publisher();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

    // 1. An npy file announced without its suffix, as pysmurf's np.save does.
    let npy = data.join("1700000000/outputs/1700000012_tune");
    write_file(&npy.with_extension("npy"), b"\x93NUMPY fake array");
    let mut tune = FilePayload::new(npy.to_str().unwrap(), "tuning");
    tune.format = Some("npy".into());
    tune.timestamp = Some(1_700_000_012.75);
    tune.action = Some("tune_band".into());
    tune.action_ts = Some(1_700_000_000);
    tune.plot = Some(false);
    tune.pysmurf_version = Some("v8.1.0".into());

    // 2. A plot with null action, as outside an action.
    let plot = data.join("plots/1700000100_iv.png");
    write_file(&plot, b"png bytes");
    let mut plot_payload = FilePayload::new(plot.to_str().unwrap(), "plot");
    plot_payload.plot = Some(true);
    plot_payload.timestamp = Some(1_700_000_100.0);

    // 3. A g3 file from the streamer.
    let g3 = data.join("timestreams/17000/crate1slot2/1700000200_000.g3");
    write_file(&g3, &vec![7u8; 3 * 1024 * 1024 + 5]);

    // Noise around them: malformed bytes, an unknown type, session messages.
    socket.send_to(b"\xff\xfe not json", monitor.udp).unwrap();
    socket.send_to(br#"{"id": 5}"#, monitor.udp).unwrap();
    publisher.publish("mystery_type", &json!({"a": 1})).unwrap();
    publisher
        .publish("session_log", &json!("a log line"))
        .unwrap();
    publisher.register_file(&tune).unwrap();
    socket.send_to(b"[1, 2, 3]", monitor.udp).unwrap();
    publisher.register_file(&plot_payload).unwrap();
    publisher
        .publish(
            "g3_file",
            &json!({"path": g3.to_str().unwrap(), "archive_name": "timestreams"}),
        )
        .unwrap();
    publisher
        .publish("session_data", &json!({"x": [1, 2]}))
        .unwrap();

    let db = FilesDb::connect(&backend.target).await.unwrap();
    wait_for_rows(&db, 3, Duration::from_secs(20)).await;
    let program = format!("pysmurf-monitor-rs {}", env!("CARGO_PKG_VERSION"));

    let row = only_row(&db, &npy.with_extension("npy")).await.row;
    assert_eq!(row.md5sum, md5sum_tool(&npy.with_extension("npy")));
    assert_eq!(row.action.as_deref(), Some("tune_band"));
    assert_eq!(row.timestamp.unwrap().timestamp(), 1_700_000_012);
    assert_eq!(row.action_timestamp, Some(1_700_000_000));
    assert_eq!(row.format.as_deref(), Some("npy"));
    assert_eq!(row.plot, Some(false));
    assert_eq!(row.site.as_deref(), Some("observatory"));
    assert_eq!(row.instance_id.as_deref(), Some("pysmurf-monitor"));
    assert_eq!(row.pub_id.as_deref(), Some("crate1slot2"));
    assert_eq!(row.script_id.as_deref(), Some("e2e_test.py"));
    assert_eq!(row.copied, Some(false));
    assert_eq!(row.failed_copy_attempts, Some(0));
    assert_eq!(row.pysmurf_version.as_deref(), Some("v8.1.0"));
    assert_eq!(row.socs_version.as_deref(), Some(program.as_str()));

    let row = only_row(&db, &plot).await.row;
    assert_eq!(row.md5sum, md5sum_tool(&plot));
    assert_eq!(row.action, None);
    assert_eq!(row.action_timestamp, None);
    assert_eq!(row.plot, Some(true));
    assert_eq!(row.format.as_deref(), Some(""));

    let row = only_row(&db, &g3).await.row;
    assert_eq!(row.md5sum, md5sum_tool(&g3));
    assert_eq!(
        row.timestamp, None,
        "the streamer sends no timestamp; none is made up"
    );
    assert_eq!(row.pysmurf_version, None);

    assert_eq!(monitor.terminate(), 0, "SIGTERM exits 0");
    db.close().await;
}

#[tokio::test]
async fn records_every_column_on_the_embedded_sqlite_default_without_a_router() {
    // With no database configured, the monitor writes pysmurf_files.db in
    // its working directory.
    records_exactly_what_was_registered(&Backend::sqlite_default()).await;
}

#[tokio::test]
async fn records_every_column_on_mariadb() {
    let Some(backend) = Backend::mariadb("monitor_mariadb_columns").await else {
        return;
    };
    records_exactly_what_was_registered(&backend).await;
    assert!(
        !backend.work.path().join("pysmurf_files.db").exists(),
        "MYSQL_* selects MariaDB, not the SQLite default"
    );
    backend.finish().await;
}

/// A row the database refuses (a path longer than its column) goes to the
/// dead-letter file with the database's message; the rows around it land.
#[tokio::test]
async fn a_rejected_row_is_dead_lettered_and_blocks_nothing() {
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &[], &[]);
    let mut publisher = monitor.publisher();
    let long_dir = work.path().join("d".repeat(200)).join("e".repeat(100));
    let mut paths = Vec::new();
    for i in 0..5 {
        let path = if i == 2 {
            long_dir.join("too_long.txt")
        } else {
            work.path().join(format!("ok_{i}.txt"))
        };
        write_file(&path, format!("file {i}").as_bytes());
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "txt"))
            .unwrap();
        paths.push(path);
    }
    let db = connect_default_sqlite(work.path()).await;
    wait_for_rows(&db, 4, Duration::from_secs(20)).await;
    let text = wait_for_dead_letters(work.path(), Duration::from_secs(10), |_| true).await;
    let letters: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{text}");
    assert!(letters[0]["reason"]
        .as_str()
        .unwrap()
        .contains("rejected by the database"));
    assert_eq!(
        letters[0]["datagram"]["payload"]["path"],
        paths[2].to_str().unwrap()
    );
    assert_eq!(monitor.terminate(), 0);
    db.close().await;
}

/// `kill -9` while registrations are spooled but not committed (their files
/// appear only later): after a restart every registration is in the table
/// exactly once.
async fn kill_9_loses_nothing_and_doubles_nothing(backend: &Backend) {
    const EARLY: usize = 300;
    const LATE: usize = 200;
    let (work, env) = (backend.work.path(), &backend.env);
    let data = work.join("data");
    let monitor = MonitorProcess::start(work, env, &[]);
    let mut publisher = monitor.publisher();
    let mut expected = HashMap::new();
    for i in 0..EARLY + LATE {
        let path = data.join(format!("{i:05}.dat"));
        if i < EARLY {
            write_file(&path, format!("early {i}").as_bytes());
        }
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
            .unwrap();
        expected.insert(path, i);
        if i % 100 == 99 {
            // Stay under the kernel's socket buffer: this test is about the
            // monitor, not about UDP overflowing.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let db = FilesDb::connect(&backend.target).await.unwrap();
    wait_for_rows(&db, EARLY as u64, Duration::from_secs(60)).await;
    // The late ones are spooled and waiting for their files.
    monitor.kill_9();

    for i in EARLY..EARLY + LATE {
        write_file(
            &data.join(format!("{i:05}.dat")),
            format!("late {i}").as_bytes(),
        );
    }
    let restarted = MonitorProcess::start(work, env, &[]);
    wait_for_rows(&db, (EARLY + LATE) as u64, Duration::from_secs(60)).await;
    for path in expected.keys() {
        let row = only_row(&db, path).await.row;
        assert_eq!(row.md5sum, md5sum_tool(path));
    }
    assert_eq!(restarted.terminate(), 0);
    db.close().await;
}

#[tokio::test]
async fn kill_9_then_restart_on_sqlite() {
    kill_9_loses_nothing_and_doubles_nothing(&Backend::sqlite_default()).await;
}

#[tokio::test]
async fn kill_9_then_restart_on_mariadb() {
    let Some(backend) = Backend::mariadb("monitor_kill_9").await else {
        return;
    };
    kill_9_loses_nothing_and_doubles_nothing(&backend).await;
    backend.finish().await;
}

/// MariaDB unreachable mid-stream: registrations keep being received and
/// spooled, nothing is written while it is away, and everything lands
/// exactly once when it is back.
#[tokio::test]
async fn a_database_outage_delays_rows_but_loses_and_doubles_none() {
    let Some(test_db) = TestDatabase::create("monitor_db_outage").await else {
        return;
    };
    // A real outage as the monitor sees it, without stopping the server other tests use.
    let proxy = Gate::start(test_db.server_port()).await;
    let monitor_env = test_db.env_through(proxy.port);
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &monitor_env, &[]);
    let mut publisher = monitor.publisher();
    let direct = FilesDb::connect(test_db.target()).await.unwrap();
    let mut register = |range| register_numbered(&mut publisher, work.path(), range);

    register(0..50);
    wait_for_rows(&direct, 50, Duration::from_secs(20)).await;

    proxy.close();
    register(50..150);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = direct.status().await.unwrap().current_table().unwrap().rows;
    assert_eq!(
        during, 50,
        "nothing can be written while the database is away"
    );

    proxy.open();
    wait_for_rows(&direct, 150, Duration::from_secs(60)).await;
    for i in 0..150 {
        only_row(&direct, &numbered(work.path(), i)).await;
    }
    assert_eq!(monitor.terminate(), 0);
    direct.close().await;
    test_db.drop_database().await;
}

/// With a real crossbar router: session messages reach a real autobahn
/// subscriber unchanged and in arrival order (up to the publisher's 64000-byte
/// limit), streamer metadata reaches `<stream-id>_meta` as an OCS block, and
/// the real `OCSClient` sees the `init` task and the `run` process counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_and_ops_work_with_a_real_router_and_real_clients() {
    let Some((router, venv)) = shared_router().await else {
        return;
    };
    let instance = format!("pysmurf-monitor-e2e-{}", std::process::id());
    let address = format!("{}.{instance}", ocs_testing::ROOT);
    let topic = |feed: &str| format!("{address}.feeds.{feed}");
    let mut subscriber = Subscriber::start(
        &venv,
        &router.ws_url(),
        &[
            topic("heartbeat"),
            topic("pysmurf_session_data"),
            topic("crate1slot2_meta"),
        ],
    )
    .await;

    // Real MariaDB when the test script provides it, as in production.
    let backend = Backend::mariadb("monitor_feeds")
        .await
        .unwrap_or_else(Backend::sqlite_default);
    let work = &backend.work;
    let hub = router.ws_url();
    let monitor = MonitorProcess::start(
        work.path(),
        &backend.env,
        &["--site-hub", &hub, "--instance-id", &instance],
    );
    // Joined once its heartbeat is heard.
    subscriber
        .next_on(&topic("heartbeat"), Duration::from_secs(30))
        .await;

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = Vec::new();
    for seq_no in 0..100 {
        let (kind, payload) = match seq_no {
            0 => (
                "session_data",
                json!({"band": 3, "values": [1.5, -2, null]}),
            ),
            // The largest datagram the publisher sends: the Python agent's
            // 8192-byte buffer dropped these.
            50 => ("session_data", json!("x".repeat(63_700))),
            n => ("session_log", json!(format!("log line {n}\n"))),
        };
        let datagram = json!({
            "host": "smurf-srv", "id": "crate1slot2", "script": "e2e.py",
            "time": 1_700_000_000.0 + f64::from(seq_no), "seq_no": seq_no,
            "type": kind, "payload": payload,
        });
        let bytes = serde_json::to_vec(&datagram).unwrap();
        assert!(bytes.len() <= 64_000);
        socket.send_to(&bytes, monitor.udp).unwrap();
        sent.push(datagram);
    }
    let metadata = json!({
        "host": "smurf-srv", "id": "STREAMER:crate1slot2", "script": null,
        "time": 1_700_000_500.5, "seq_no": 0, "type": "metadata",
        "payload": {"path": "AMCc.SmurfProcessor.ChannelMapper.NumChannels", "type": "int", "value": 1024},
    });
    socket
        .send_to(&serde_json::to_vec(&metadata).unwrap(), monitor.udp)
        .unwrap();

    for expected in &sent {
        let event = subscriber
            .next_on(&topic("pysmurf_session_data"), Duration::from_secs(20))
            .await;
        let (message, descriptor) = (&event["args"][0][0], &event["args"][0][1]);
        assert_eq!(message, expected, "unchanged and in order");
        assert_eq!(descriptor["feed_name"], "pysmurf_session_data");
        assert_eq!(descriptor["record"], false);
        assert_eq!(descriptor["agent_class"], "PysmurfMonitor");
    }

    let event = subscriber
        .next_on(&topic("crate1slot2_meta"), Duration::from_secs(20))
        .await;
    // What ocs's Feed.enforce_field_name_rules makes of the path (dots dropped).
    let field = "AMCcSmurfProcessorChannelMapperNumChannels";
    let block = &event["args"][0][0][field];
    assert_eq!(block["block_name"], field, "{event}");
    assert_eq!(block["data"][field], json!([1024]), "{event}");
    assert_eq!(block["timestamps"], json!([1_700_000_500.5]), "{event}");
    assert_eq!(event["args"][0][1]["record"], true);
    subscriber.stop().await;

    // One registration, then what a real OCSClient sees.
    let file = work.path().join("data/a.txt");
    write_file(&file, b"a");
    monitor
        .publisher()
        .register_file(&FilePayload::new(file.to_str().unwrap(), "txt"))
        .unwrap();
    let site_file = router.site_file(work.path());
    let client = run_ocs_client(&venv, "monitor_client.py", &site_file, &instance)
        .await
        .unwrap_or_else(|stderr| panic!("{stderr}"));
    assert_eq!(client["agent_class"], "PysmurfMonitor");
    assert_eq!(client["tasks"], json!(["init"]));
    assert_eq!(client["processes"], json!(["run"]));
    assert_eq!(
        client["feeds"],
        json!([
            "crate1slot2_meta",
            "heartbeat",
            "monitor_stats",
            "pysmurf_session_data"
        ])
    );
    let init = &client["init"]["session"];
    assert_eq!(init["success"], true, "{client}");
    assert_eq!(init["data"]["table"], "pysmurf_files_v1");
    let run = &client["run"]["session"];
    assert_eq!(run["status"], "running", "{client}");
    assert_eq!(run["data"]["files_registered"], 1, "{client}");
    assert_eq!(run["data"]["session_messages"], 100, "{client}");
    assert_eq!(run["data"]["metadata_messages"], 1, "{client}");
    assert_eq!(run["data"]["database_up"], true, "{client}");
    assert_eq!(monitor.terminate(), 0);
    let db = FilesDb::connect(&backend.target).await.unwrap();
    assert_eq!(only_row(&db, &file).await.row.md5sum, md5sum_tool(&file));
    db.close().await;
    backend.finish().await;
}

/// Guard rails: datagrams from outside `--allow-from`, over 64000 bytes, or
/// naming files outside `--data-root` are refused (the latter dead-lettered),
/// and every valid registration around them is recorded.
#[tokio::test]
async fn guard_rails_refuse_and_the_valid_datagrams_around_them_land() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    let outside = work.path().join("secret.txt");
    write_file(&outside, b"not data");
    std::fs::create_dir_all(&root).unwrap();
    let monitor = MonitorProcess::start(
        work.path(),
        &[],
        &[
            "--allow-from",
            "127.0.0.1/32,::1/128",
            "--data-root",
            root.to_str().unwrap(),
        ],
    );
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut publisher = monitor.publisher();
    let mut expected = Vec::new();
    for i in 0..20 {
        let path = root.join(format!("{i}.dat"));
        write_file(&path, format!("{i}").as_bytes());
        let payload = FilePayload::new(path.to_str().unwrap(), "dat");
        // Refused: a sender outside the allow-list, the same datagram.
        let datagram = json!({"id": "intruder", "type": "data_file", "payload": payload.to_json()});
        stranger
            .send_to(&serde_json::to_vec(&datagram).unwrap(), monitor.udp)
            .unwrap();
        // Refused: over the publisher's limit.
        let huge = json!({"id": "p", "type": "session_log", "payload": "y".repeat(64_100)});
        publisher
            .socket()
            .send_to(&serde_json::to_vec(&huge).unwrap(), monitor.udp)
            .unwrap();
        // Refused: a file outside the data root, through `..`.
        let escape = root.join("../secret.txt");
        publisher
            .register_file(&FilePayload::new(escape.to_str().unwrap(), "txt"))
            .unwrap();
        publisher.register_file(&payload).unwrap();
        expected.push(path);
    }
    let db = connect_default_sqlite(work.path()).await;
    wait_for_rows(&db, 20, Duration::from_secs(20)).await;
    for path in &expected {
        assert_eq!(
            only_row(&db, path).await.row.pub_id.as_deref(),
            Some("crate1slot2")
        );
    }
    // 20 dead letters for the escapes.
    let text = wait_for_dead_letters(work.path(), Duration::from_secs(10), |t| {
        t.lines().count() >= 20
    })
    .await;
    assert!(
        text.lines().all(|l| l.contains("outside the data roots")),
        "{text}"
    );
    assert_eq!(monitor.terminate(), 0);
    db.close().await;
}

/// The router killed, restarted, and hung (SIGSTOP) while files keep
/// coming: every registration is in the table exactly once, and the agent
/// rejoins each time (its `run` counters reach a real OCSClient afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_failures_never_cost_a_registration() {
    let Some(venv) = ocs_testing::venv() else {
        return;
    };
    let router = private_router(&venv).await;
    let work = tempfile::tempdir().unwrap();
    let instance = format!("pysmurf-monitor-faults-{}", std::process::id());
    let hub = router.ws_url();
    let monitor = MonitorProcess::start(
        work.path(),
        &[],
        &["--site-hub", &hub, "--instance-id", &instance],
    );
    let mut publisher = monitor.publisher();
    let db = connect_default_sqlite(work.path()).await;
    let mut register = |range| register_numbered(&mut publisher, work.path(), range);

    register(0..100);
    let router = blocking_on(router, |router| router.kill()).await;
    register(100..200);
    wait_for_rows(&db, 200, Duration::from_secs(20)).await;
    let router = blocking_on(router, |router| {
        router.restart();
        router.pause();
    })
    .await;
    register(200..300);
    wait_for_rows(&db, 300, Duration::from_secs(20)).await;
    router.resume();
    register(300..400);
    wait_for_rows(&db, 400, Duration::from_secs(20)).await;
    for i in 0..400 {
        only_row(&db, &numbered(work.path(), i)).await;
    }

    // Rejoined: a real OCSClient reads the counters of the whole run.
    let site_file = router.site_file(work.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match run_ocs_client(&venv, "monitor_client.py", &site_file, &instance).await {
            Ok(client) => {
                // The `run` session refreshes its data once a second: a first
                // answer may predate the last rows.
                let registered = &client["run"]["session"]["data"]["files_registered"];
                if *registered == 400 {
                    break;
                }
                assert!(Instant::now() < deadline, "{client}");
            }
            Err(stderr) => assert!(
                Instant::now() < deadline,
                "the monitor did not rejoin: {stderr}"
            ),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(monitor.terminate(), 0);
    db.close().await;
}

/// Every class of bad input: the monitor keeps running, each refusal is
/// counted under its reason, bad registrations are dead-lettered with a
/// reason, and every valid registration sent between them is recorded.
#[tokio::test]
async fn bad_input_is_refused_counted_and_loses_nothing_around_it() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    std::fs::create_dir_all(root.join("a_directory")).unwrap();
    let secret = work.path().join("secret.txt");
    write_file(&secret, b"outside the data root");
    std::os::unix::fs::symlink(&secret, root.join("link_out")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .unwrap()
        .success());
    let too_long = root
        .join("d".repeat(200))
        .join("e".repeat(60))
        .join("too_long.txt");
    assert!(too_long.as_os_str().len() > 260);
    write_file(&too_long, b"a path longer than the column");
    let monitor = MonitorProcess::start(
        work.path(),
        &[],
        &["--data-root", root.to_str().unwrap(), "--file-wait", "1"],
    );
    let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut publisher = monitor.publisher();

    let malformed: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\xff\xfe\xfd".to_vec(),
        b"not json".to_vec(),
        br#"{"id": "p", "type": "data_file", "payload": {"path": "/x"#.to_vec(),
        b"[1, 2, 3]".to_vec(),
        br#""a string""#.to_vec(),
        b"42".to_vec(),
        br#"{"type": "data_file", "payload": {"path": "/x"}}"#.to_vec(),
        br#"{"id": "p", "payload": {"path": "/x"}}"#.to_vec(),
        br#"{"id": "p", "type": "data_file"}"#.to_vec(),
        br#"{"id": 5, "type": "data_file", "payload": {"path": "/x"}}"#.to_vec(),
        br#"{"id": "p", "type": "data_file", "payload": {"path": 7}}"#.to_vec(),
        br#"{"id": "p", "type": "data_file", "payload": {}}"#.to_vec(),
        br#"{"id": "p", "type": "data_file", "payload": {"path": "/x", "plot": "yes"}}"#.to_vec(),
        br#"{"id": "p", "type": "data_file", "payload": {"path": "/x", "timestamp": {"a": 1}}}"#
            .to_vec(),
        br#"{"id": "p", "type": "metadata", "payload": {"path": "a", "type": "int"}}"#.to_vec(),
    ];
    let refused_paths = [
        String::new(),
        "relative/file.txt".to_owned(),
        root.join("../secret.txt").display().to_string(),
        root.join("link_out").display().to_string(),
    ];
    let unreadable = [root.join("a_directory"), root.join("fifo")];

    let mut valid: Vec<std::path::PathBuf> = Vec::new();
    let mut sent = 0u64;
    let register_valid = |publisher: &mut Publisher, valid: &mut Vec<std::path::PathBuf>| {
        let path = root.join(format!("valid_{}.dat", valid.len()));
        write_file(&path, format!("valid {}", valid.len()).as_bytes());
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
            .unwrap();
        valid.push(path);
    };
    for bytes in &malformed {
        raw.send_to(bytes, monitor.udp).unwrap();
        register_valid(&mut publisher, &mut valid);
        sent += 2;
    }
    // The largest UDP payload there is: over the publisher's limit.
    raw.send_to(&vec![b' '; 65_507], monitor.udp).unwrap();
    sent += 1;
    for path in &refused_paths {
        publisher
            .register_file(&FilePayload::new(path.as_str(), "txt"))
            .unwrap();
        register_valid(&mut publisher, &mut valid);
        sent += 2;
    }
    for path in unreadable.iter().chain([&too_long]) {
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "txt"))
            .unwrap();
        register_valid(&mut publisher, &mut valid);
        sent += 2;
    }
    // 10,000 distinct unknown types, paced under the kernel's socket buffer.
    for i in 0..10_000 {
        publisher
            .publish(&format!("unknown_type_{i}"), &json!({"i": i}))
            .unwrap();
        if i % 500 == 499 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    sent += 10_000;
    register_valid(&mut publisher, &mut valid);
    sent += 1;

    let db = connect_default_sqlite(work.path()).await;
    wait_for_rows(&db, valid.len() as u64, Duration::from_secs(30)).await;
    for path in &valid {
        only_row(&db, path).await;
    }
    let expected_dead = refused_paths.len() + unreadable.len() + 1;
    let letters = wait_for_dead_letters(work.path(), Duration::from_secs(20), |t| {
        t.lines().count() >= expected_dead
    })
    .await;
    for reason in [
        "empty path",
        "relative path",
        "outside the data roots",
        "cannot read",
        "rejected by the database",
    ] {
        assert!(
            letters.contains(reason),
            "no dead letter says {reason:?}:\n{letters}"
        );
    }

    let (code, counters, log) = monitor.terminate_with_log();
    assert_eq!(code, 0);
    // One line per (sender, reason) a minute, not one per datagram: the raw
    // socket's malformed and too-large datagrams, the publisher's refused paths.
    let refusals: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("datagram refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:#?}");
    assert_eq!(counters["datagrams_received"], sent, "{counters}");
    assert_eq!(
        counters["rejected_malformed"],
        malformed.len(),
        "{counters}"
    );
    assert_eq!(counters["rejected_too_large"], 1, "{counters}");
    assert_eq!(
        counters["rejected_path_refused"],
        refused_paths.len(),
        "{counters}"
    );
    assert_eq!(counters["other_messages"], 10_000, "{counters}");
    assert_eq!(counters["dead_letters"], expected_dead, "{counters}");
    assert_eq!(counters["files_registered"], valid.len(), "{counters}");
    assert_eq!(counters["spool_depth"], 0, "{counters}");
    db.close().await;
}

/// The table dropped under a running monitor (a database restored without
/// it): with `--create-table` the monitor recreates it and every later
/// registration lands exactly once.
#[tokio::test]
async fn a_dropped_table_is_recreated_and_nothing_after_is_lost() {
    let Some(test_db) = TestDatabase::create("monitor_table_dropped").await else {
        return;
    };
    let env: Vec<(&str, String)> = test_db.env().to_vec();
    let work = tempfile::tempdir().unwrap();
    let monitor = MonitorProcess::start(work.path(), &env, &["--create-table", "True"]);
    let mut publisher = monitor.publisher();
    let db = FilesDb::connect(test_db.target()).await.unwrap();
    let mut register = |range| register_numbered(&mut publisher, work.path(), range);
    register(0..20);
    wait_for_rows(&db, 20, Duration::from_secs(20)).await;
    test_db.query_text("DROP TABLE pysmurf_files_v1").await;
    register(20..60);
    wait_for_rows(&db, 40, Duration::from_secs(30)).await;
    for i in 20..60 {
        only_row(&db, &numbered(work.path(), i)).await;
    }
    assert_eq!(monitor.terminate(), 0);
    db.close().await;
    test_db.drop_database().await;
}

/// A second monitor with the same instance-id on the same router refuses
/// to run, as OCS agents do, and says why; the first keeps recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_instance_id_exits_with_a_clear_error() {
    let Some((router, _)) = shared_router().await else {
        return;
    };
    let instance = format!("pysmurf-monitor-twin-{}", std::process::id());
    let hub = router.ws_url();
    let args = [
        "--site-hub",
        hub.as_str(),
        "--instance-id",
        instance.as_str(),
    ];
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = MonitorProcess::start(first_dir.path(), &[], &args);
    // Wait until the first has joined (its startup ops start then).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::iter::from_fn(|| first.log.try_recv().ok()).any(|l| l.contains("joined")) {
        assert!(Instant::now() < deadline, "the first monitor did not join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut second = MonitorProcess::start(second_dir.path(), &[], &args);
    let status = tokio::task::spawn_blocking(move || {
        let status = second.child.wait().unwrap();
        let log: Vec<String> = std::iter::from_fn(|| second.log.try_recv().ok()).collect();
        (status, log)
    })
    .await
    .unwrap();
    assert_ne!(status.0.code(), Some(0), "the twin must not run");
    assert!(
        status.1.iter().any(|l| l.contains("already running")),
        "{:?}",
        status.1
    );

    let file = first_dir.path().join("data/a.dat");
    write_file(&file, b"a");
    first
        .publisher()
        .register_file(&FilePayload::new(file.to_str().unwrap(), "dat"))
        .unwrap();
    let db = connect_default_sqlite(first_dir.path()).await;
    wait_for_rows(&db, 1, Duration::from_secs(20)).await;
    assert_eq!(first.terminate(), 0);
    db.close().await;
}

/// An instance-id longer than its column would have every row refused: the
/// monitor refuses to start instead, saying why.
#[test]
fn an_instance_id_too_long_for_its_column_is_refused_at_start() {
    let work = tempfile::tempdir().unwrap();
    let too_long = "pysmurf-monitor-instance-id-33-ch";
    assert_eq!(too_long.len(), 33);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pysmurf-monitor"))
        .current_dir(work.path())
        .env_remove("OCS_CONFIG_DIR")
        .args(["--udp-host", "127.0.0.1", "--udp-port", "0"])
        .args([
            "--site-hub",
            "ws://127.0.0.1:1/ws",
            "--instance-id",
            too_long,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A monitor that starts anyway runs until killed: fail, do not hang.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "instance_id \"{too_long}\" is longer than the 32 characters its column holds"
        )),
        "{stderr}"
    );
}

/// A file the monitor may not read is dead-lettered with the operating
/// system's reason, and the files around it land. The tests run as root,
/// who reads any file: the monitor runs without the capabilities that allow
/// it (as it would as a plain user in production).
#[tokio::test]
async fn a_file_without_read_permission_is_dead_lettered_and_the_others_land() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    let wrapper: &[&str] = if is_root {
        &[
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--",
        ]
    } else {
        &[]
    };
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let (before, locked, after) = (
        data.join("a.dat"),
        data.join("locked.dat"),
        data.join("b.dat"),
    );
    for path in [&before, &locked, &after] {
        write_file(path, b"bytes");
    }
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let monitor = MonitorProcess::start_under(wrapper, work.path(), &[], &["--file-wait", "1"]);
    let mut publisher = monitor.publisher();
    for path in [&before, &locked, &after] {
        publisher
            .register_file(&FilePayload::new(path.to_str().unwrap(), "dat"))
            .unwrap();
    }
    let db = connect_default_sqlite(work.path()).await;
    wait_for_rows(&db, 2, Duration::from_secs(20)).await;
    only_row(&db, &before).await;
    only_row(&db, &after).await;
    assert!(db
        .files_by_path(locked.to_str().unwrap())
        .await
        .unwrap()
        .is_empty());
    // A dead letter for the locked file.
    let text = wait_for_dead_letters(work.path(), Duration::from_secs(10), |text| {
        text.contains("locked.dat")
    })
    .await;
    assert!(text.contains("Permission denied"), "{text}");
    let (code, counters, _) = monitor.terminate_with_log();
    assert_eq!(code, 0);
    assert_eq!(counters["dead_letters"], 1, "{counters}");
    assert_eq!(counters["files_registered"], 2, "{counters}");
    db.close().await;
}

/// `--log-dir` writes the file ocs names, `<address-root>.<instance-id>.log`,
/// a relative directory taken from `--working-dir`.
#[test]
fn the_log_file_is_named_and_placed_as_ocs_does() {
    let work = tempfile::tempdir().unwrap();
    let working_dir = work.path().join("ocs-home");
    std::fs::create_dir_all(&working_dir).unwrap();
    let monitor = MonitorProcess::start(
        work.path(),
        &[],
        &[
            "--address-root",
            "observatory",
            "--instance-id",
            "logname-test",
            "--working-dir",
            working_dir.to_str().unwrap(),
            "--log-dir",
            "logs",
        ],
    );
    let file = working_dir.join("logs/observatory.logname-test.log");
    // The file gets the start-up line a moment after stderr does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("udp=") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no start-up line in {}: {text:?}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(monitor.terminate(), 0);
}
