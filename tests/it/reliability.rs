//! Resuming with `since`, resync, retention, slow and dead clients.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    config_with, metric, seqs, small_buffer_client, spawn_app, spawn_app_ready, spawn_app_unready,
    test_config, token, BinaryServer, TestApp, TestDb, Ws, DEADLINE,
};

/// Subscribes to `negocio` resuming after `since`; returns after the `subscribed` answer.
async fn resume(ws: &mut Ws, negocio: &str, since: i64) {
    let channel = format!("estadisticas:{negocio}");
    ws.send(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    assert_eq!(ws.expect("subscribed").await["channel"], channel);
}

async fn insert(db: &TestDb, negocio: &str, n: usize) {
    for _ in 0..n {
        db.execute(&format!(
            "insert into citas (negocio_id) values ('{negocio}')"
        ))
        .await;
    }
}

#[tokio::test]
async fn a_client_resumes_exactly_across_disconnects_and_a_server_restart() {
    let db = TestDb::new().await;
    let mut app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["res"]).await;
    insert(&db, "res", 3).await;
    let seen = seqs(&ws.events(3).await);
    drop(ws);

    // Missed while away: replayed in order, then live, nothing twice.
    insert(&db, "res", 4).await;
    insert(&db, "other", 2).await;
    let mut ws = app.ws(&token(json!({"negocio_id": "res"}))).await;
    resume(&mut ws, "res", *seen.last().unwrap()).await;
    insert(&db, "res", 1).await;
    let got = seqs(&ws.events(5).await);
    let logged: Vec<i64> = db.logged_seqs("res").await;
    assert_eq!(got, logged[3..].to_vec());
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
    drop(ws);

    // The server restarts in between: the log lives in Postgres.
    app.shutdown().await;
    insert(&db, "res", 2).await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.ws(&token(json!({"negocio_id": "res"}))).await;
    resume(&mut ws, "res", *got.last().unwrap()).await;
    let after_restart = seqs(&ws.events(2).await);
    let logged: Vec<i64> = db.logged_seqs("res").await;
    assert_eq!(after_restart, logged[8..].to_vec());
    // since = 0 replays everything the log holds.
    let mut all = app.ws(&token(json!({"negocio_id": "res"}))).await;
    resume(&mut all, "res", 0).await;
    assert_eq!(seqs(&all.events(logged.len()).await), logged);
}

/// Writes go on while clients resume: the seam between replay and live has no gap and no
/// duplicate.
#[tokio::test]
async fn resuming_under_concurrent_writes_has_no_gap_and_no_duplicate() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let writer_db = crate::helpers::connect(&db.url).await;
    let writer = tokio::spawn(async move {
        for _ in 0..300 {
            writer_db
                .batch_execute("insert into citas (negocio_id) values ('seam')")
                .await
                .unwrap();
        }
    });
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut ws = app.ws(&token(json!({"negocio_id": "seam"}))).await;
        resume(&mut ws, "seam", 0).await;
        clients.push(ws);
    }
    writer.await.unwrap();
    let logged: Vec<i64> = db.logged_seqs("seam").await;
    assert_eq!(logged.len(), 300);
    for ws in clients.iter_mut() {
        assert_eq!(seqs(&ws.events(300).await), logged);
        ws.send(json!({"type": "ping"})).await;
        ws.expect("pong").await;
    }
}

#[tokio::test]
async fn a_since_the_log_cannot_serve_gets_resync() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    insert(&db, "rs", 5).await;
    let logged: Vec<i64> = db.logged_seqs("rs").await;

    // Newer than anything the log holds (another database, or a reset one), up to the
    // largest seq there is: resync, and then every live event, though each is below `since`.
    let mut ahead = app.ws(&token(json!({"negocio_id": "rs"}))).await;
    resume(&mut ahead, "rs", logged[4] + 1000).await;
    assert_eq!(ahead.expect("resync").await["channel"], "estadisticas:rs");
    let mut far_ahead = app.ws(&token(json!({"negocio_id": "rs"}))).await;
    resume(&mut far_ahead, "rs", i64::MAX).await;
    far_ahead.expect("resync").await;
    insert(&db, "rs", 2).await;
    let live = db.logged_seqs("rs").await[5..].to_vec();
    assert_eq!(seqs(&ahead.events(2).await), live);
    assert_eq!(seqs(&far_ahead.events(2).await), live);

    // Older than what retention kept.
    db.execute(
        "update citas_realtime.events set created_at = now() - interval '2 days' where seq <= 3",
    )
    .await;
    let deleted: i64 = db
        .client
        .query_one("select citas_realtime.prune(interval '1 day')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 3);
    let mut ws = app.ws(&token(json!({"negocio_id": "rs"}))).await;
    resume(&mut ws, "rs", logged[0]).await;
    ws.expect("resync").await;
    // A since at or after the pruned point still replays exactly.
    let mut ws = app.ws(&token(json!({"negocio_id": "rs"}))).await;
    resume(&mut ws, "rs", logged[2]).await;
    let after_pruned_point: Vec<i64> = logged[3..].iter().chain(&live).copied().collect();
    assert_eq!(seqs(&ws.events(4).await), after_pruned_point);
}

#[tokio::test]
async fn prune_runs_one_caller_at_a_time_and_the_server_prunes_by_itself() {
    let db = TestDb::new().await;
    insert(&db, "p", 3).await;
    // A DBA's call in progress holds the lock: a concurrent call returns 0 at once.
    let other = crate::helpers::connect(&db.url).await;
    db.execute("begin").await;
    let first: i64 = db
        .client
        .query_one("select citas_realtime.prune(interval '0 seconds')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, 3);
    let second: i64 = other
        .query_one("select citas_realtime.prune(interval '0 seconds')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(second, 0);
    db.execute("commit").await;

    // A server with a 1 s retention prunes what is older without being asked.
    insert(&db, "p", 2).await;
    let mut config = test_config(&db.url);
    config.event_retention = Some(Duration::from_secs(1));
    let app = spawn_app_unready(config).await;
    app.wait_health(200).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left: i64 = db
            .client
            .query_one("select count(*) from citas_realtime.events", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} events were never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pruned_upto: i64 = db
        .client
        .query_one("select pruned_upto from citas_realtime.retention", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pruned_upto, 5);
}

/// A client connection whose kernel receive buffer is tiny, so that not reading stalls it.
async fn stalled_client(addr: std::net::SocketAddr, negocio: &str) -> Ws {
    let mut ws = small_buffer_client(addr, negocio, 4096).await;
    ws.subscribe(negocio).await;
    ws
}

/// Twenty clients stop reading while 20,000 events flow: each is dropped with 1013, a reading
/// client receives every event, and the server's memory (its own process) stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_dropped_and_the_others_get_everything() {
    const EVENTS: usize = 20_000;
    let db = TestDb::new().await;
    let server = BinaryServer::start(&db.url, &[]).await;
    let app = TestApp {
        addr: server.addr,
        server: None,
    };

    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(stalled_client(app.addr, "slow").await);
    }
    let mut reader = app.subscriber(&["slow"]).await;
    let reading = tokio::spawn(async move {
        let events = reader.events(EVENTS).await;
        seqs(&events)
    });
    let rss_before = server.rss_kib();
    // Statements of 200 rows: the reading client keeps up with each.
    for _ in 0..EVENTS / 200 {
        db.execute("insert into citas (negocio_id) select 'slow' from generate_series(1, 200)")
            .await;
    }
    let got = reading.await.unwrap();
    let logged: Vec<i64> = db.logged_seqs("slow").await;
    assert!(
        got == logged,
        "the reading client got every event, in order"
    );

    for ws in stalled.iter_mut() {
        assert_eq!(ws.closed().await, Some(CloseCode::Again));
    }
    let growth_kib = server.rss_kib().saturating_sub(rss_before);
    // Copying every frame into each stalled client's buffers would take 20 x 20,000 frames
    // (over 100 MB); bounded queues of shared frames and capped write buffers stay far below.
    assert!(
        growth_kib < 40 * 1024,
        "server memory grew by {growth_kib} KiB"
    );
    let health = app.wait_health(200).await;
    assert_eq!(health["slow_clients_kicked"], 20);
}

/// A client stops reading before its queue can overflow: 6,000 events of 3 KB (18 MB) fill its
/// socket (at most 4 MB on Linux by default) but not its queue (raised to 10,000 here). After
/// 10 s in which it took no data it is closed with 1013 and a reason saying so, and counted
/// like a client whose queue overflowed (metric and /health).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_data_for_10_s_is_closed_with_1013_and_counted() {
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let config = config_with(&db.url, |a| a.client_queue_capacity = "10000".into());
    let app = spawn_app_ready(config).await;
    let mut stalled = stalled_client(app.addr, "stall").await;
    db.execute(
        "insert into citas (negocio_id, cliente_id) \
         select 'stall', repeat('x', 3000) from generate_series(1, 6000)",
    )
    .await;
    let drops = "citas_realtime_slow_client_drops_total";
    let deadline = Instant::now() + Duration::from_secs(40);
    while metric(&app, drops).await < 1.0 {
        assert!(Instant::now() < deadline, "not given up within 40 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It reads again: what its socket held, then the close (sent within 5 s of giving up).
    let close = loop {
        let msg = tokio::time::timeout(DEADLINE, stalled.socket.next())
            .await
            .expect("no close frame");
        match msg {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame with a code"),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Again);
    assert!(
        close.reason.contains("took no data for 10 s"),
        "{}",
        close.reason
    );
    assert_eq!(metric(&app, drops).await, 1.0);
    assert_eq!(app.wait_health(200).await["slow_clients_kicked"], 1);
}

/// A client stops reading until its socket is full, then reads again. Frames of about 3 KB
/// each are then written partly at once and partly later (the rest of one frame, then the
/// frames queued meanwhile): the client must get every event whole and in order, not be
/// dropped, and a reading client of the same negocio must not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_reading_gets_every_event_whole_and_in_order() {
    const EVENTS: usize = 60;
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let app = spawn_app(&db.url).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let mut paused = stalled_client(app.addr, "pause").await;
    let mut reader = app.subscriber(&["pause"]).await;
    for i in 0..EVENTS {
        db.execute(&format!(
            "insert into citas (negocio_id, cliente_id) values ('pause', repeat('{}', 3000))",
            i % 10
        ))
        .await;
    }
    let logged: Vec<i64> = db.logged_seqs("pause").await;
    assert_eq!(logged.len(), EVENTS);
    // The reading client gets everything while the other still reads nothing.
    assert_eq!(seqs(&reader.events(EVENTS).await), logged);
    let deadline = Instant::now() + DEADLINE;
    while hub.stats().delivered < 2 * EVENTS as u64 {
        assert!(
            Instant::now() < deadline,
            "the events were never handed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = paused.events(EVENTS).await;
    assert_eq!(seqs(&got), logged, "every event, in order");
    for (i, event) in got.iter().enumerate() {
        let cliente = event["data"]["record"]["cliente_id"].as_str().unwrap();
        assert_eq!(cliente, (i % 10).to_string().repeat(3000));
    }
    assert_eq!(hub.stats().slow_clients_kicked, 0);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let db = TestDb::new().await;
    let config = config_with(&db.url, |a| a.ws_ping_interval = "200ms".into());
    let app = spawn_app_unready(config).await;
    app.wait_health(200).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    // This client answers pings (it reads), the other never reads, so never answers.
    let mut alive = app.subscriber(&["p1"]).await;
    let _silent = app.subscriber(&["p2"]).await;
    assert_eq!(hub.stats().connections, 2);
    let deadline = Instant::now() + DEADLINE;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let keep_reading = tokio::spawn(async move {
        // Reading makes tungstenite answer the server's pings.
        use futures::StreamExt;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                msg = alive.socket.next() => assert!(matches!(msg, Some(Ok(_))), "alive dropped"),
            }
        }
        alive
    });
    while hub.stats().connections > 1 {
        assert!(
            Instant::now() < deadline,
            "the silent client was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    let mut alive = keep_reading.await.unwrap();
    alive.send(json!({"type": "ping"})).await;
    alive.expect("pong").await;
}
