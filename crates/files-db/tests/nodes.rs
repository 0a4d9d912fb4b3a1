//! A MariaDB target of several nodes (`host1:port1,host2:port2`): the pool
//! moves to the next node when the one in use stops answering or turns
//! read-only, and back to the first once it answers again. Two private MariaDB servers stand in
//! for the nodes of a cluster (they do not replicate: which server a row
//! lands in shows which node was in use).

use std::time::{Duration, Instant};

use files_db::testing::PrivateMariaDb;
use files_db::{DbTarget, FailureKind, FileRow, FilesDb};

const DATABASE: &str = "pysmurf_files";

async fn server(test: &str) -> Option<PrivateMariaDb> {
    let test = test.to_owned();
    let server = tokio::task::spawn_blocking(move || PrivateMariaDb::start(&test))
        .await
        .unwrap()?;
    server
        .execute(None, &format!("CREATE DATABASE {DATABASE}"))
        .await;
    FilesDb::connect(&server.target(DATABASE))
        .await
        .unwrap()
        .create_table()
        .await
        .unwrap();
    Some(server)
}

async fn rows_in(server: &PrivateMariaDb) -> u64 {
    let db = FilesDb::connect(&server.target(DATABASE)).await.unwrap();
    let rows = db.status().await.unwrap().current_table().unwrap().rows;
    db.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_to_the_next_node_when_one_fails_and_back_when_it_returns() {
    let (Some(first), Some(second)) = (
        server("nodes_failover_first").await,
        server("nodes_failover_second").await,
    ) else {
        return;
    };
    let target = DbTarget::from_url(&format!(
        "mysql://root@127.0.0.1:{},127.0.0.1:{}/{DATABASE}",
        first.port(),
        second.port()
    ))
    .unwrap();
    assert_eq!(target.node_count(), 2);
    let db = FilesDb::connect_lazy(&target).await.unwrap();
    db.set_node_return_interval(Duration::from_millis(500));
    db.insert_files(&[FileRow::new("/data/a.npy", [1; 16])])
        .await
        .unwrap();
    assert_eq!((rows_in(&first).await, rows_in(&second).await), (1, 0));

    // A read-only first node (as a node being taken out of service, or a
    // replica): its refusal (1290) is not the rows' fault; the probe passes
    // it over for the second node. (root may write anyway: a plain user.)
    for server in [&first, &second] {
        server
            .execute(None, "CREATE USER 'monitor'@'127.0.0.1'")
            .await;
        server
            .execute(
                None,
                &format!("GRANT SELECT, INSERT ON {DATABASE}.* TO 'monitor'@'127.0.0.1'"),
            )
            .await;
    }
    first.execute(None, "SET GLOBAL read_only = ON").await;
    let as_monitor = DbTarget::from_url(&format!(
        "mysql://monitor@127.0.0.1:{},127.0.0.1:{}/{DATABASE}",
        first.port(),
        second.port()
    ))
    .unwrap();
    let monitor = FilesDb::connect_lazy(&as_monitor).await.unwrap();
    let err = monitor
        .insert_files(&[FileRow::new("/data/r.npy", [9; 16])])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Unreachable, "{err}");
    monitor.probe().await.unwrap();
    assert_eq!(
        monitor.active_node(),
        format!("127.0.0.1:{}", second.port())
    );
    monitor
        .insert_files(&[FileRow::new("/data/r.npy", [9; 16])])
        .await
        .unwrap();
    assert_eq!((rows_in(&first).await, rows_in(&second).await), (1, 1));
    monitor.close().await;
    first.execute(None, "SET GLOBAL read_only = OFF").await;

    // The first node goes away: writes fail as unreachable; a probe finds
    // the second node and later writes go there.
    let mut first = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first.stop();
        first
    })
    .await
    .unwrap();
    let err = db
        .insert_files(&[FileRow::new("/data/b.npy", [2; 16])])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Unreachable, "{err}");
    db.probe().await.unwrap();
    assert_eq!(db.active_node(), format!("127.0.0.1:{}", second.port()));
    db.insert_files(&[FileRow::new("/data/b.npy", [2; 16])])
        .await
        .unwrap();
    assert_eq!(rows_in(&second).await, 2);

    // The first node returns: the pool moves back to it by itself.
    first = tokio::task::spawn_blocking(move || {
        first.restart();
        first
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.active_node() != format!("127.0.0.1:{}", first.port()) {
        assert!(
            Instant::now() < deadline,
            "never moved back to the first node"
        );
        // Any operation lets the pool look, at most every 500 ms here.
        db.status().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.insert_files(&[FileRow::new("/data/c.npy", [3; 16])])
        .await
        .unwrap();
    assert_eq!((rows_in(&first).await, rows_in(&second).await), (2, 2));

    // Both down: the probe fails, naming the target without a password.
    let mut second = second;
    let (first, second) = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first.stop();
        second.stop();
        (first, second)
    })
    .await
    .unwrap();
    let err = db.probe().await.unwrap_err();
    assert_eq!(err.kind(), FailureKind::Unreachable, "{err}");
    assert!(err.to_string().contains("any of the 2 nodes"), "{err}");
    db.close().await;
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_starts_on_the_first_node_that_answers() {
    let Some(second) = server("nodes_first_answering").await else {
        return;
    };
    // A closed loopback port first: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = DbTarget::from_url(&format!(
        "mysql://root@127.0.0.1:{closed},127.0.0.1:{}/{DATABASE}",
        second.port()
    ))
    .unwrap();
    let db = FilesDb::connect(&target).await.unwrap();
    assert_eq!(db.active_node(), format!("127.0.0.1:{}", second.port()));
    db.insert_files(&[FileRow::new("/data/a.npy", [1; 16])])
        .await
        .unwrap();
    assert_eq!(rows_in(&second).await, 1);
    db.close().await;
}
