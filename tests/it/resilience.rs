//! The listener survives its connection; the server shuts down cleanly.

use pgtemp::TempPostgres;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{brief, connect, spawn_app, spawn_app_unready, test_config, TestDb, DEADLINE};

#[tokio::test]
async fn health_reports_a_live_listener() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let body = app.wait_health(200).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["listener"], "connected");
}

/// A server started before our SQL is installed reports 503, then goes live by itself, and a
/// client that subscribed before the listener was live still gets what was written since.
#[tokio::test]
async fn a_client_subscribed_before_the_listener_is_live_misses_nothing() {
    let db = TestDb::empty().await;
    db.client
        .batch_execute(citas_realtime::log::sql::EXAMPLE_SCHEMA)
        .await
        .unwrap();
    let app = spawn_app_unready(test_config(&db.url)).await;
    let body = app.wait_health(503).await;
    assert_eq!(body["listener"], "disconnected");
    let mut ws = app.subscriber(&["early"]).await;
    db.client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await
        .unwrap();
    db.execute("insert into citas (negocio_id) values ('early')")
        .await;
    let event = ws.expect("cita_created").await;
    assert_eq!(event["data"]["negocio_id"], "early");
    app.wait_health(200).await;
}

/// Waits until the server's listener is connected with a backend other than `previous`.
async fn next_listener_pid(db: &TestDb, previous: Option<i32>) -> i32 {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let pids: Vec<i32> = db
            .client
            .query(
                "select pid from pg_stat_activity
                 where datname = current_database() and application_name = 'citas-realtime-listener'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            pids.len() <= 1,
            "more than one listener connection: {pids:?}"
        );
        if let Some(&pid) = pids.first().filter(|&&p| Some(p) != previous) {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener did not reconnect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Kills the listener's backend 20 times while writes go on: every event arrives once, in order.
#[tokio::test]
async fn a_killed_listener_connection_loses_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["k"]).await;
    let mut written = 0;
    let mut killed = None;
    for _ in 0..20 {
        let pid = next_listener_pid(&db, killed).await;
        db.client
            .execute("select pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        killed = Some(pid);
        for _ in 0..3 {
            db.execute("insert into citas (negocio_id) values ('k')")
                .await;
            written += 1;
        }
    }
    let seqs: Vec<i64> = ws
        .events(written)
        .await
        .iter()
        .map(|e| brief(e).2)
        .collect();
    let logged: Vec<i64> = db.logged_seqs("k").await;
    assert_eq!(seqs, logged);
    assert!(app.wait_health(200).await["listener_reconnects"].as_u64() >= Some(1));
}

/// A transaction takes a seq, a later one commits first: both arrive, once, in commit order.
#[tokio::test]
async fn out_of_order_commits_are_delivered_once() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["o"]).await;
    let slow = connect(&db.url).await;
    slow.batch_execute("begin; insert into citas (negocio_id, cliente_id) values ('o', 'slow')")
        .await
        .unwrap();
    db.execute("insert into citas (negocio_id, cliente_id) values ('o', 'fast')")
        .await;
    let first = ws.events(1).await;
    // The slow transaction stays open across a listener reconnect, too.
    let pid = next_listener_pid(&db, None).await;
    db.client
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    next_listener_pid(&db, Some(pid)).await;
    slow.batch_execute("commit").await.unwrap();
    db.execute("insert into citas (negocio_id, cliente_id) values ('o', 'last')")
        .await;
    let rest = ws.events(2).await;
    let seqs: Vec<i64> = first
        .iter()
        .chain(rest.iter())
        .map(|e| brief(e).2)
        .collect();
    let logged: Vec<i64> = db.logged_seqs("o").await;
    assert_eq!(logged.len(), 3);
    // Commit order: the fast one (seq 2), then the slow one (seq 1), then the last (seq 3).
    assert_eq!(seqs, vec![logged[1], logged[0], logged[2]]);
}

/// The slow writer took its transaction id *after* the fast one, so a snapshot taken once
/// the fast one committed does not list it among its running transactions (its id is at or
/// above the snapshot's `xmax`): it is still waited for, and its event arrives live.
#[tokio::test]
async fn a_writer_younger_than_the_last_commit_is_waited_for() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["y"]).await;
    let fast = connect(&db.url).await;
    let slow = connect(&db.url).await;
    // Fast gets its transaction id first, slow second; slow draws its seq first.
    fast.batch_execute("begin; select pg_current_xact_id()")
        .await
        .unwrap();
    slow.batch_execute("begin; insert into citas (negocio_id, cliente_id) values ('y', 'slow')")
        .await
        .unwrap();
    fast.batch_execute("insert into citas (negocio_id, cliente_id) values ('y', 'fast'); commit")
        .await
        .unwrap();
    let first = ws.events(1).await;
    slow.batch_execute("commit").await.unwrap();
    let second = ws.events(1).await;
    let logged: Vec<i64> = db.logged_seqs("y").await;
    assert_eq!(logged.len(), 2);
    assert_eq!(
        vec![brief(&first[0]).2, brief(&second[0]).2],
        vec![logged[1], logged[0]]
    );
}

/// PostgreSQL itself restarts under a connected client: /health follows, delivery resumes.
#[tokio::test]
async fn a_postgres_restart_is_survived() {
    let mut pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("own cluster");
    let db = TestDb::installed_on(&pg).await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["r"]).await;
    db.execute("insert into citas (negocio_id) values ('r')")
        .await;
    ws.expect("cita_created").await;

    pg.stop().expect("stop postgres");
    let body = app.wait_health(503).await;
    assert_eq!(body["listener"], "disconnected");
    pg.restart().expect("restart postgres");
    app.wait_health(200).await;

    let writer = connect(&db.url).await;
    writer
        .batch_execute("insert into citas (negocio_id) values ('r')")
        .await
        .unwrap();
    let event = ws.expect("cita_created").await;
    assert_eq!(event["data"]["negocio_id"], "r");
    drop(writer);
    drop(db);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_clients_with_going_away() {
    let db = TestDb::new().await;
    let mut app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["s"]).await;
    let started = std::time::Instant::now();
    app.shutdown().await;
    assert_eq!(ws.closed().await, Some(CloseCode::Away));
    assert!(started.elapsed() < DEADLINE);
    // And the port no longer accepts.
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err());
}
