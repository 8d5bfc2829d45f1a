//! Nobody can exhaust the server: what a stranger can hold before authenticating is bounded in
//! time, size and number, and what a client can make the server do after is bounded too. All on
//! loopback, bounded in count and time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{
    config_with, metric, metric_at, spawn_app_ready, token, BinaryServer, TestApp, TestDb, DEADLINE,
};

/// True once the server closed `tcp` (EOF or reset) within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a response (408, 431): keep reading until the close
        }
    }
}

/// Opens `n` TCP connections to `addr` and writes `prefix` on each.
async fn open_many(addr: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        if !prefix.is_empty() {
            tcp.write_all(prefix).await.expect("write");
        }
        sockets.push(tcp);
    }
    sockets
}

async fn app_with(
    db: &TestDb,
    change: impl FnOnce(&mut citas_realtime::cli::ServeArgs),
) -> TestApp {
    spawn_app_ready(config_with(&db.url, change)).await
}

/// Silent sockets, half request lines and idle keep-alive connections are all closed once
/// `HTTP_HEADER_TIMEOUT` passes.
#[tokio::test]
async fn slow_silent_and_idle_connections_are_closed_after_the_header_timeout() {
    let db = TestDb::new().await;
    let app = app_with(&db, |a| a.http_header_timeout = "1s".into()).await;
    let mut silent = open_many(app.addr, 50, b"").await;
    let mut half = open_many(app.addr, 50, b"GET /health HT").await;
    let mut idle = open_many(app.addr, 10, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let started = Instant::now();
    for tcp in silent
        .iter_mut()
        .chain(half.iter_mut())
        .chain(idle.iter_mut())
    {
        assert!(
            closed_within(tcp, Duration::from_secs(5)).await,
            "still open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    // Only the connection asking for /metrics is pending.
    assert_eq!(
        metric(&app, "citas_realtime_http_pending_connections").await,
        1.0
    );
    assert!(metric(&app, "citas_realtime_http_client_errors_total").await >= 100.0);
}

/// Headers over `HTTP_MAX_HEADER_BYTES` get 431, whether 40 KiB or 380 KB.
#[tokio::test]
async fn oversized_headers_get_431() {
    let db = TestDb::new().await;
    let app = app_with(&db, |_| {}).await;
    for size in [40 * 1024, 380 * 1024] {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        // The server may answer and close before reading it all.
        let _ = tcp.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "{size}: {text}");
    }
    let ok = reqwest::get(app.url("/health")).await.unwrap();
    assert_eq!(ok.status(), 200);
}

/// `POST /notify/cita` checks the token before reading the body, and a body that stalls is
/// given up after `HTTP_BODY_TIMEOUT`.
#[tokio::test]
async fn notify_checks_the_token_first_and_bounds_the_body() {
    let db = TestDb::new().await;
    let app = app_with(&db, |a| a.http_body_timeout = "1s".into()).await;
    let stalled = |auth: String| {
        let addr = app.addr;
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /notify/cita HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
                 Content-Length: 16384\r\n\r\n{{\"negocio_id\":"
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            let started = Instant::now();
            let mut answer = vec![0u8; 1024];
            let n = tokio::time::timeout(DEADLINE, tcp.read(&mut answer))
                .await
                .expect("an answer")
                .unwrap();
            (
                String::from_utf8_lossy(&answer[..n]).to_string(),
                started.elapsed(),
            )
        }
    };
    let (answer, took) = stalled(String::new()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        took < Duration::from_millis(900),
        "waited for the body: {took:?}"
    );
    let user = token(json!({"negocio_id": "a"}));
    let (answer, _) = stalled(format!("Authorization: Bearer {user}\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let service = token(json!({"role": "service_role"}));
    let (answer, took) = stalled(format!("Authorization: Bearer {service}\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

/// Beyond `MAX_PENDING_CONNECTIONS` the oldest pending connection makes room: 300 silent
/// sockets cannot keep a legitimate client out.
#[tokio::test]
async fn pending_connections_are_capped_and_make_room_for_new_clients() {
    let db = TestDb::new().await;
    let app = app_with(&db, |a| a.max_pending_connections = "50".into()).await;
    let mut silent = open_many(app.addr, 300, b"").await;
    let started = Instant::now();
    let mut ws = app.subscriber(&["a"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(metric(&app, "citas_realtime_http_pending_connections").await <= 50.0);
    assert!(metric(&app, "citas_realtime_http_evicted_total").await >= 250.0);
    // The evicted ones were closed: the oldest 250.
    for tcp in silent.iter_mut().take(250) {
        assert!(closed_within(tcp, Duration::from_secs(5)).await);
    }
    db.execute("insert into citas (negocio_id) values ('a')")
        .await;
    ws.events(1).await;
}

/// Near the process's open-file limit, silent sockets give way to new ones; when upgraded
/// clients hold every descriptor, new sockets are closed at once and accept never fails for
/// the clients already there.
#[tokio::test]
async fn near_the_file_limit_nothing_breaks() {
    let db = TestDb::new().await;
    let server =
        BinaryServer::start_with_file_limit(&db.url, &[("RUST_LOG", "info")], Some(300)).await;
    let app = TestApp {
        addr: server.addr,
        server: None,
    };
    let mut live = app.subscriber(&["a"]).await;
    // 300 - 128 reserved: about 170 sockets for clients. 600 silent ones give way.
    let _silent = open_many(app.addr, 600, b"").await;
    let health = reqwest::get(app.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let mut late = app.subscriber(&["a"]).await;
    db.execute("insert into citas (negocio_id) values ('a')")
        .await;
    live.events(1).await;
    late.events(1).await;
    assert!(metric(&app, "citas_realtime_http_evicted_total").await >= 400.0);
    assert!(
        server.logs().contains("open-file limit"),
        "{}",
        server.logs()
    );
}

/// Tokens over `MAX_TOKEN_BYTES`, or granting more than `MAX_TOKEN_NEGOCIOS`, get 401 with a
/// reason.
#[tokio::test]
async fn big_tokens_and_too_many_grants_are_refused() {
    let db = TestDb::new().await;
    let app = app_with(&db, |_| {}).await;
    let ask = |token: String| {
        let url = app.url("/ws");
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };
    let ids: Vec<String> = (0..1001).map(|i| format!("n{i}")).collect();
    let (status, body) = ask(token(json!({"negocio_ids": ids}))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("too many negocios"), "{body}");
    let padding = "x".repeat(17 * 1024);
    let (status, body) = ask(token(json!({"negocio_id": "a", "pad": padding}))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("too large"), "{body}");
    let ids: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();
    let mut ws = app.ws(&token(json!({"negocio_ids": ids}))).await;
    ws.subscribe("n999").await;
}

/// A client looping subscribe `since: 0` / unsubscribe gets what its replay budget pays for,
/// then `resync`, whatever the log holds.
#[tokio::test]
async fn replays_are_bounded_by_a_budget() {
    let db = TestDb::new().await;
    db.execute("insert into citas (negocio_id) select 'r' from generate_series(1, 300)")
        .await;
    let app = app_with(&db, |a| a.client_replay_budget = Some("500".into())).await;
    let mut ws = app.ws(&token(json!({"negocio_id": "r"}))).await;
    let mut replayed = 0;
    let mut resyncs = 0;
    for _ in 0..10 {
        ws.send(json!({"type": "subscribe", "channel": "estadisticas:r", "since": 0}))
            .await;
        ws.expect("subscribed").await;
        loop {
            let msg = ws.next().await;
            match msg["type"].as_str() {
                Some("cita_created") => {
                    replayed += 1;
                    if replayed % 300 == 0 {
                        break;
                    }
                }
                Some("resync") => {
                    resyncs += 1;
                    break;
                }
                _ => panic!("unexpected {msg}"),
            }
        }
        ws.send(json!({"type": "unsubscribe", "channel": "estadisticas:r"}))
            .await;
        ws.expect("unsubscribed").await;
    }
    assert!(replayed <= 500, "replayed {replayed}");
    assert!(resyncs >= 8, "resyncs {resyncs}");
}

/// A replay never holds more frames than the client's queue: with a queue of 16, 300 events
/// come in pages of 16, all of them, in order.
#[tokio::test]
async fn a_replay_counts_against_the_queue() {
    let db = TestDb::new().await;
    db.execute("insert into citas (negocio_id) select 'q' from generate_series(1, 300)")
        .await;
    let app = app_with(&db, |a| a.client_queue_capacity = "16".into()).await;
    let mut ws = app.ws(&token(json!({"negocio_id": "q"}))).await;
    ws.send(json!({"type": "subscribe", "channel": "estadisticas:q", "since": 0}))
        .await;
    ws.expect("subscribed").await;
    let seqs: Vec<i64> = ws
        .events(160)
        .await
        .iter()
        .map(|e| e["data"]["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // The default budget is 10 x the queue: 160 events, then resync.
    assert_eq!(ws.expect("resync").await["channel"], "estadisticas:q");
}

/// WebSocket pings count against the message rate like JSON messages.
#[tokio::test]
async fn a_ping_flood_is_closed_with_1008() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let db = TestDb::new().await;
    let app = app_with(&db, |a| {
        a.client_message_rate = "5".into();
        a.client_message_burst = "20".into();
    })
    .await;
    let mut ws = app.ws(&token(json!({"negocio_id": "a"}))).await;
    for _ in 0..200 {
        if ws
            .socket
            .send(Message::Ping(Default::default()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(ws.closed().await, Some(CloseCode::Policy));
}

/// Tokens without `sub` share one per-subject count.
#[tokio::test]
async fn tokens_without_sub_share_one_count() {
    let db = TestDb::new().await;
    let app = app_with(&db, |a| a.max_connections_per_subject = "2".into()).await;
    let anonymous = token(json!({"negocio_id": "a"}));
    let _one = app.ws(&anonymous).await;
    let _two = app.ws(&token(json!({"negocio_id": "b"}))).await;
    let third = reqwest::Client::new()
        .get(app.url("/ws"))
        .bearer_auth(&anonymous)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    let _named = app
        .ws(&token(json!({"sub": "ana", "negocio_id": "a"})))
        .await;
}

/// 700 junk connections are counted, not logged one by one.
#[tokio::test]
async fn junk_connections_do_not_flood_the_log() {
    let db = TestDb::new().await;
    let server = BinaryServer::start(&db.url, &[("RUST_LOG", "info")]).await;
    for i in 0..700 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let junk: &[u8] = match i % 3 {
            0 => b"@@@ / HTTP/1.1\r\n\r\n",
            1 => b"GET /health HTTP/1.1\r\nHost",
            _ => b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        };
        let _ = tcp.write_all(junk).await;
        drop(tcp);
    }
    let deadline = Instant::now() + DEADLINE;
    while metric_at(server.addr, "citas_realtime_http_client_errors_total").await < 700.0 {
        assert!(Instant::now() < deadline, "junk not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = server.logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .count();
    assert!(lines <= 2, "{lines} lines:\n{logs}");
}

/// Raises this process's soft open-file limit to the hard one; fails clearly below `needed`.
fn raise_own_file_limit(needed: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= needed,
        "this test opens {needed} sockets; the hard open-file limit is {hard}: raise it (ulimit -Hn)"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// Everything at once: 5,000 silent sockets, 300 slow header senders, 200 stalled
/// `/notify/cita` bodies and a replay loop. A subscribed client gets every event, a new client
/// is in within a second, `/health` answers, memory stays bounded, and once the attack stops
/// the server is back to its legitimate connections within the header timeout and a few
/// seconds. The figures are printed (BENCHMARKS.md).
#[tokio::test]
async fn an_attack_of_every_kind_leaves_real_clients_served() {
    raise_own_file_limit(8_000);
    let db = TestDb::new().await;
    db.execute("insert into citas (negocio_id) select 'r' from generate_series(1, 2000)")
        .await;
    let envs = [("HTTP_HEADER_TIMEOUT", "3s"), ("HTTP_BODY_TIMEOUT", "3s")];
    let server = BinaryServer::start(&db.url, &envs).await;
    let app = TestApp {
        addr: server.addr,
        server: None,
    };
    let mut live = app.subscriber(&["a"]).await;
    let rss_before = server.rss_kib();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attack = tokio::task::JoinSet::new();
    let silent = open_many(app.addr, 5000, b"").await;
    for _ in 0..300 {
        attack.spawn(slow_headers(app.addr, stop.clone()));
    }
    let service = token(json!({"role": "service_role"}));
    for i in 0..200 {
        let auth = if i % 2 == 0 {
            format!("Authorization: Bearer {service}\r\n")
        } else {
            String::new()
        };
        attack.spawn(stalled_body(app.addr, auth, stop.clone()));
    }
    let app_addr = app.addr;
    for _ in 0..5 {
        let stop = stop.clone();
        attack.spawn(async move {
            replay_loop(app_addr, stop).await;
            None
        });
    }

    let mut seqs = Vec::new();
    let mut rss_during = 0;
    for _ in 0..50 {
        db.execute("insert into citas (negocio_id) values ('a')")
            .await;
        seqs.push(live.events(1).await[0]["data"]["seq"].as_i64().unwrap());
        rss_during = rss_during.max(server.rss_kib());
    }
    assert_eq!(
        seqs,
        db.logged("a")
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
    );
    let started = Instant::now();
    let mut newcomer = app.subscriber(&["a"]).await;
    let join_time = started.elapsed();
    assert!(
        join_time < Duration::from_secs(1),
        "a new client took {join_time:?}"
    );
    assert_eq!(
        reqwest::get(app.url("/health")).await.unwrap().status(),
        200
    );
    rss_during = rss_during.max(server.rss_kib());

    // The attack stops sending; its sockets stay open: the server must close them itself.
    stop.cancel();
    let mut held = Vec::new();
    while let Some(socket) = attack.join_next().await {
        held.extend(socket.ok().flatten());
    }
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(3 + 10);
    loop {
        let pending = metric_at(app.addr, "citas_realtime_http_pending_connections").await;
        let connections = metric_at(app.addr, "citas_realtime_connections").await;
        if pending <= 1.0 && connections == 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending {pending}, connections {connections}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = stopped.elapsed();
    drop((silent, held));
    db.execute("insert into citas (negocio_id) values ('a')")
        .await;
    live.events(1).await;
    newcomer.events(1).await;
    let rss_after = server.rss_kib();
    eprintln!(
        "attack: RSS before {rss_before} KiB, during (max) {rss_during} KiB, after {rss_after} KiB; \
         new client in {join_time:?}; back to legitimate connections {recovered:?} after the attack stopped"
    );
    assert!(
        rss_during < 256 * 1024,
        "RSS {rss_during} KiB during the attack"
    );
}

/// Sends a request line, then one header byte every 300 ms; returns the socket, still open,
/// when stopped.
async fn slow_headers(
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> Option<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ")
        .await
        .ok()?;
    while !stop.is_cancelled() {
        tcp.write_all(b"a").await.ok()?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.cancelled() => {}
        }
    }
    Some(tcp)
}

/// A `POST /notify/cita` whose body never comes; returns the socket, still open, when stopped
/// before the server answered.
async fn stalled_body(
    addr: SocketAddr,
    auth: String,
    stop: tokio_util::sync::CancellationToken,
) -> Option<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let head =
        format!("POST /notify/cita HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 16384\r\n\r\n{{");
    tcp.write_all(head.as_bytes()).await.ok()?;
    let mut buf = [0u8; 1024];
    tokio::select! {
        _ = tcp.read(&mut buf) => None,
        _ = stop.cancelled() => Some(tcp),
    }
}

/// A client subscribing with `since: 0` and unsubscribing, reading what comes, within its
/// message rate; returns how many frames it got.
async fn replay_loop(addr: SocketAddr, stop: tokio_util::sync::CancellationToken) -> usize {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp { addr, server: None };
    let mut ws = app.ws(&token(json!({"negocio_id": "r"}))).await;
    let mut frames = 0;
    while !stop.is_cancelled() {
        for message in [
            json!({"type": "subscribe", "channel": "estadisticas:r", "since": 0}),
            json!({"type": "unsubscribe", "channel": "estadisticas:r"}),
        ] {
            if ws
                .socket
                .send(Message::text(message.to_string()))
                .await
                .is_err()
            {
                return frames;
            }
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, ws.socket.next()).await {
            frames += 1;
        }
    }
    frames
}

/// The replay budget is the subject's, not the connection's: reconnecting buys none (found by
/// the adversarial pass: 30 reconnects replayed 1.2 million events in 7 s).
#[tokio::test]
async fn reconnecting_buys_no_fresh_replay_budget() {
    let db = TestDb::new().await;
    db.execute("insert into citas (negocio_id) select 'r' from generate_series(1, 300)")
        .await;
    let app = app_with(&db, |a| a.client_replay_budget = Some("500".into())).await;
    let claims = json!({"sub": "same", "negocio_id": "r"});
    let mut replayed = 0;
    let mut resyncs = 0;
    for _ in 0..4 {
        let mut ws = app.ws(&token(claims.clone())).await;
        ws.send(json!({"type": "subscribe", "channel": "estadisticas:r", "since": 0}))
            .await;
        ws.expect("subscribed").await;
        loop {
            let msg = ws.next().await;
            match msg["type"].as_str() {
                Some("cita_created") => {
                    replayed += 1;
                    if replayed % 300 == 0 {
                        break;
                    }
                }
                Some("resync") => {
                    resyncs += 1;
                    break;
                }
                _ => panic!("unexpected {msg}"),
            }
        }
    }
    assert!(replayed <= 500, "replayed {replayed} over four connections");
    assert!(resyncs >= 2, "resyncs {resyncs}");
}

/// Silent sockets are evicted before a client that has started its request: a flood of new
/// sockets cannot evict a client that takes a moment to send its headers (found by the
/// adversarial pass: a client 100 ms slow was evicted under churn).
#[tokio::test]
async fn silent_sockets_are_evicted_before_a_client_sending_its_request() {
    let db = TestDb::new().await;
    let app = app_with(&db, |a| a.max_pending_connections = "50".into()).await;
    let _before = open_many(app.addr, 100, b"").await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    // The server has read those bytes (the client is no longer silent) before the flood: two
    // pending connections have spoken, this one and the one asking for /metrics.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let pending = metric(&app, "citas_realtime_http_pending_connections").await;
        let silent = metric(&app, "citas_realtime_http_pending_silent_connections").await;
        if pending - silent >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the slow client was never heard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _after = open_many(app.addr, 300, b"").await;
    slow.write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, slow.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .expect("not evicted");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
