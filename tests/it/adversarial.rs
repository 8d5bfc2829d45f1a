//! Adversarial tests of the direct-write path (the hub writing frames straight to idle sockets):
//! order, duplicates, replays at the seam, backlogs, pings interleaved with direct writes,
//! half-closed and reset sockets, statistics snapshots, frames near the size limits.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    brief, config_with, connect, seqs, small_buffer_client, spawn_app, spawn_app_ready, token,
    BinaryServer, TestApp, TestDb, Ws, DEADLINE,
};

/// A writer inserting `statements` statements of `rows` rows each into `negocio`, pausing
/// `pause` between statements.
fn flood(
    url: String,
    negocio: &'static str,
    statements: usize,
    rows: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let writer = connect(&url).await;
        for _ in 0..statements {
            writer
                .batch_execute(&format!(
                    "insert into citas (negocio_id) select '{negocio}' from generate_series(1, {rows})"
                ))
                .await
                .unwrap();
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    })
}

/// Every message on the socket, parsed, until `stop` says so or DEADLINE passes. Close frames
/// are returned as `{"type":"__close","code":N}`.
async fn next_raw(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.socket.next())
            .await
            .unwrap_or_else(|_| panic!("no message within {DEADLINE:?}"));
        match msg {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("server sent bad JSON ({e}): {text}"))
            }
            Some(Ok(Message::Close(frame))) => {
                return json!({"type": "__close", "code": frame.map(|f| u16::from(f.code))})
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return json!({"type": "__error", "error": e.to_string()}),
            None => return json!({"type": "__eof"}),
        }
    }
}

fn is_event(v: &Value) -> bool {
    v["type"].as_str().unwrap_or_default().starts_with("cita_")
}

/// A resumed subscription's events must be exactly the log's seqs after `since`, contiguous.
fn assert_contiguous(logged: &[i64], since: i64, got: &[i64], what: &str) {
    let start = logged.partition_point(|s| *s <= since);
    let want = &logged[start..(start + got.len()).min(logged.len())];
    assert_eq!(
        got, want,
        "{what}: after since={since} expected a contiguous run of the log"
    );
}

// ---------------------------------------------------------------------------------------------
// Backpressure: a client reading as fast as it can must not be closed for the size of a burst.
// ---------------------------------------------------------------------------------------------

/// 1,000 events of ~2.9 KB (records on) are in the log; a fresh client resumes with since = 0
/// and reads as fast as it can. Expected: every event (the replay queue holds 4,096 and the
/// replay budget 40,960), no close. It failed while the socket's shared writer never said
/// "not now": a 1,000-event page went to the 256 KiB backlog at memory speed and overflowed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_big_replay_to_a_reading_client_is_not_kicked() {
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    replay_everything(
        &db,
        "bigr",
        1000,
        "insert into citas (negocio_id, cliente_id) \
         select 'bigr', repeat('x', 2500) from generate_series(1, 1000)",
    )
    .await;
}

/// Runs `insert` (`rows` rows of `negocio`), then a client resumes with since = 0 and reads as
/// fast as it can: it must get every event, in order, and nothing but statistics besides.
async fn replay_everything(db: &TestDb, negocio: &str, rows: usize, insert: &str) {
    db.execute(insert).await;
    let app = spawn_app(&db.url).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let logged = db.logged_seqs(negocio).await;
    assert_eq!(logged.len(), rows);
    let mut ws = app.ws(&token(json!({"negocio_id": negocio}))).await;
    let channel = format!("estadisticas:{negocio}");
    ws.send(json!({"type": "subscribe", "channel": channel, "since": 0}))
        .await;
    ws.expect("subscribed").await;
    let mut got = Vec::new();
    while got.len() < logged.len() {
        let msg = next_raw(&mut ws).await;
        if is_event(&msg) {
            got.push(brief(&msg).2);
        } else if msg["type"] != "estadisticas" {
            panic!(
                "after {} of {} replayed events: {msg} ({:?})",
                got.len(),
                logged.len(),
                hub.stats()
            );
        }
    }
    assert_eq!(got, logged);
}

/// A subscribed client that reads as fast as it can; one statement writes 2,000 events of ~6 KB.
/// Expected: all 2,000, no 1013 (its queue of 4,096 never overflowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_burst_of_large_live_events_to_a_reading_client_is_not_kicked() {
    const N: usize = 2000;
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let app = spawn_app(&db.url).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let mut ws = app.subscriber(&["bigl"]).await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N {
            let msg = next_raw(&mut ws).await;
            if is_event(&msg) {
                got.push(brief(&msg).2);
            } else if msg["type"] != "estadisticas" {
                return Err(format!("after {} of {N} events: {msg}", got.len()));
            }
        }
        Ok(got)
    });
    db.execute(&format!(
        "insert into citas (negocio_id, cliente_id) select 'bigl', repeat('y', 6000) from generate_series(1, {N})"
    ))
    .await;
    let got = reader.await.unwrap();
    let kicked = hub.stats().slow_clients_kicked;
    let got = got.unwrap_or_else(|e| panic!("{e} (slow_clients_kicked = {kicked})"));
    assert_eq!(got, db.logged_seqs("bigl").await);
}

// ---------------------------------------------------------------------------------------------
// Replays at the seam, during a flood.
// ---------------------------------------------------------------------------------------------

/// Clients resume with `since` (several values, some in the future of the log at the time)
/// while a writer floods: each gets exactly the log after its since, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_resume_during_a_high_rate_flood_is_exact() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    // Some history first.
    db.execute("insert into citas (negocio_id) select 'hot' from generate_series(1, 300)")
        .await;
    let history = db.logged_seqs("hot").await;
    let writer = flood(db.url.clone(), "hot", 60, 50, Duration::from_millis(5));
    let mut clients = Vec::new();
    for i in 0..8usize {
        let since = history[(i * 37) % history.len()];
        let mut ws = app.ws(&token(json!({"negocio_id": "hot"}))).await;
        ws.send(json!({"type": "subscribe", "channel": "estadisticas:hot", "since": since}))
            .await;
        ws.expect("subscribed").await;
        clients.push((since, ws));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    writer.await.unwrap();
    let logged = db.logged_seqs("hot").await;
    assert_eq!(logged.len(), 300 + 60 * 50);
    for (since, ws) in clients.iter_mut() {
        let start = logged.partition_point(|s| *s <= *since);
        let got = seqs(&ws.events(logged.len() - start).await);
        assert_contiguous(&logged, *since, &got, "resume during flood");
        ws.send(json!({"type": "ping"})).await;
        ws.expect("pong").await;
    }
}

/// A subscribed client, a bit behind (small receive buffer, a short pause), sends
/// `unsubscribe` and at once `subscribe` with `since` = the last seq it read, while events
/// flow. After the new `subscribed` it must get the log after `since`, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_pipelined_unsubscribe_and_resume_has_no_duplicates() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = small_buffer_client(app.addr, "pipe", 4096).await;
    ws.subscribe("pipe").await;
    let writer = flood(db.url.clone(), "pipe", 80, 20, Duration::from_millis(20));
    let mut last = 0i64;
    let mut rounds = Vec::new();
    for round in 0..5 {
        // Read some, then fall behind for a moment.
        for _ in 0..50 {
            let msg = next_raw(&mut ws).await;
            if is_event(&msg) {
                last = brief(&msg).2;
            }
        }
        tokio::time::sleep(Duration::from_millis(if round % 2 == 0 { 400 } else { 0 })).await;
        ws.send(json!({"type": "unsubscribe", "channel": "estadisticas:pipe"}))
            .await;
        ws.send(json!({"type": "subscribe", "channel": "estadisticas:pipe", "since": last}))
            .await;
        // In flight before the unsubscribe: whatever comes before `subscribed`.
        let mut stale_after_unsubscribed = 0;
        let mut saw_unsubscribed = false;
        loop {
            let msg = next_raw(&mut ws).await;
            match msg["type"].as_str().unwrap_or_default() {
                "unsubscribed" => saw_unsubscribed = true,
                "subscribed" => break,
                t if t.starts_with("cita_") => {
                    stale_after_unsubscribed += usize::from(saw_unsubscribed);
                }
                "estadisticas" => {}
                other => panic!("unexpected {other}: {msg}"),
            }
        }
        let since = last;
        let mut got = Vec::new();
        for _ in 0..60 {
            let msg = next_raw(&mut ws).await;
            if is_event(&msg) {
                got.push(brief(&msg).2);
            } else if msg["type"] != "estadisticas" {
                panic!("round {round}: {msg}");
            }
        }
        last = *got.last().unwrap_or(&last);
        rounds.push((since, got, stale_after_unsubscribed));
    }
    writer.await.unwrap();
    let logged = db.logged_seqs("pipe").await;
    for (i, (since, got, stale)) in rounds.iter().enumerate() {
        eprintln!("round {i}: since {since}, {stale} events between `unsubscribed` and `subscribed`, then {:?}", &got[..got.len().min(12)]);
        let dup: Vec<_> = {
            let mut seen = HashSet::new();
            got.iter().filter(|s| !seen.insert(**s)).copied().collect()
        };
        assert!(
            dup.is_empty(),
            "round {i}: since {since}: duplicates {dup:?} in {got:?} ({stale} events after `unsubscribed`)"
        );
        assert_contiguous(&logged, *since, got, &format!("round {i}"));
    }
}

/// Subscribe / unsubscribe / subscribe again (waiting for each answer) in a loop while a
/// writer floods: between each `subscribed` and the next `unsubscribe`, events are a
/// contiguous run of the log (no gap, no duplicate, no reorder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_subscribe_unsubscribe_loops_during_a_flood() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.ws(&token(json!({"negocio_id": "loop"}))).await;
    let writer = flood(db.url.clone(), "loop", 100, 20, Duration::from_millis(10));
    let mut segments: Vec<Vec<i64>> = Vec::new();
    let mut all: Vec<i64> = Vec::new();
    let started = Instant::now();
    let mut loops = 0;
    while !writer.is_finished() && started.elapsed() < Duration::from_secs(20) && loops < 60 {
        loops += 1;
        ws.send(json!({"type": "subscribe", "channel": "estadisticas:loop"}))
            .await;
        let mut seg = Vec::new();
        loop {
            let msg = next_raw(&mut ws).await;
            match msg["type"].as_str().unwrap_or_default() {
                "subscribed" => break,
                t if t.starts_with("cita_") => all.push(brief(&msg).2),
                "estadisticas" => {}
                other => panic!("unexpected {other}: {msg}"),
            }
        }
        // Read up to 25 events, but no longer than 100 ms.
        let until = Instant::now() + Duration::from_millis(100);
        while seg.len() < 25 {
            let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until.into(), ws.socket.next()).await
            else {
                break;
            };
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if is_event(&v) {
                    seg.push(brief(&v).2);
                    all.push(brief(&v).2);
                }
            }
        }
        ws.send(json!({"type": "unsubscribe", "channel": "estadisticas:loop"}))
            .await;
        loop {
            let msg = next_raw(&mut ws).await;
            match msg["type"].as_str().unwrap_or_default() {
                "unsubscribed" => break,
                t if t.starts_with("cita_") => {
                    seg.push(brief(&msg).2);
                    all.push(brief(&msg).2)
                }
                "estadisticas" => {}
                other => panic!("unexpected {other}: {msg}"),
            }
        }
        segments.push(seg);
    }
    writer.await.unwrap();
    let logged = db.logged_seqs("loop").await;
    let mut seen = HashSet::new();
    let dups: Vec<i64> = all.iter().filter(|s| !seen.insert(**s)).copied().collect();
    assert!(
        dups.is_empty(),
        "an event twice on one connection: {dups:?}"
    );
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "events out of order on one connection: {all:?}"
    );
    for (i, seg) in segments.iter().enumerate() {
        if let Some(first) = seg.first() {
            assert_contiguous(&logged, first - 1, seg, &format!("segment {i}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pausing clients, pings interleaved with direct writes, frames near the limits.
// ---------------------------------------------------------------------------------------------

/// Eight clients with 4 KiB receive buffers pause and resume at random while events of ~1.5 KB
/// flow; a normal reader gets everything, and each pausing client either gets everything in
/// order, or is closed with 1013 after an in-order, gap-free prefix. Every frame parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_clients_that_pause_and_resume_get_whole_frames_in_order() {
    const STATEMENTS: usize = 40;
    const ROWS: usize = 25;
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let app = spawn_app(&db.url).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let mut ws = small_buffer_client(app.addr, "pr", 4096).await;
        ws.subscribe("pr").await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut rng = i * 7919 + 1;
            loop {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (rng >> 33) % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis((rng >> 40) % 120)).await;
                }
                let msg = next_raw(&mut ws).await;
                if is_event(&msg) {
                    let cliente = msg["data"]["record"]["cliente_id"].as_str().unwrap_or("");
                    assert_eq!(cliente.len(), 1500, "a whole record");
                    got.push(brief(&msg).2);
                    if got.len() == STATEMENTS * ROWS {
                        return (got, None);
                    }
                } else if msg["type"] == "__close" {
                    return (got, msg["code"].as_u64());
                } else if msg["type"] != "estadisticas" {
                    panic!("client {i}: {msg}");
                }
            }
        }));
    }
    let mut reader = app.subscriber(&["pr"]).await;
    let writer = tokio::spawn({
        let url = db.url.clone();
        async move {
            let w = connect(&url).await;
            for _ in 0..STATEMENTS {
                w.batch_execute(&format!(
                    "insert into citas (negocio_id, cliente_id) select 'pr', repeat('z', 1500) from generate_series(1, {ROWS})"
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    });
    let read = seqs(&reader.events(STATEMENTS * ROWS).await);
    writer.await.unwrap();
    let logged = db.logged_seqs("pr").await;
    assert_eq!(read, logged);
    let mut kicked = 0;
    for t in tasks {
        let (got, code) = t.await.unwrap();
        if let Some(first) = got.first() {
            assert_contiguous(&logged, first - 1, &got, "pausing client");
        }
        match code {
            None => assert_eq!(got, logged),
            Some(code) => {
                assert_eq!(code, 1013, "closed with {code} after {} events", got.len());
                kicked += 1;
            }
        }
    }
    eprintln!(
        "pausing clients kicked: {kicked} of 8; hub: {:?}",
        hub.stats()
    );
}

/// A client sends WebSocket pings (and JSON pings) constantly while ~9 MB of events flow to
/// it, and the server pings every 100 ms. The client has a 4 KiB receive buffer and reads a
/// little slowly, so the server's socket fills: frames are written in part, the rest goes to
/// the backlog, and tungstenite's pongs join the same stream. Every frame must parse, every
/// event arrive once in order, pongs answer pings in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_constant_pings_interleave_with_direct_and_partial_writes() {
    const N: usize = 12_000;
    if std::env::var("ADV_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("citas_realtime=debug")
            .with_writer(std::io::stderr)
            .try_init();
    }
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let config = config_with(&db.url, |a| {
        // Short: while the server waits for this slow reader's socket it reads nothing, so the
        // client's own pings pile up unread; they must count before its silence is judged.
        a.ws_ping_interval = "100ms".into();
        a.client_message_rate = "2000".into();
        a.client_message_burst = "2000".into();
        a.client_queue_capacity = "100000".into();
    });
    let app = spawn_app_ready(config).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let mut ws = small_buffer_client(app.addr, "png", 4096).await;
    ws.subscribe("png").await;
    let (mut tx, mut rx) = ws.socket.split();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pinger = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            if stop_rx.try_recv().is_ok() {
                break;
            }
            let payload = sent.to_be_bytes().to_vec();
            if tx.send(Message::Ping(payload.into())).await.is_err() {
                break;
            }
            if sent.is_multiple_of(5)
                && tx
                    .send(Message::text(json!({"type": "ping"}).to_string()))
                    .await
                    .is_err()
            {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        (tx, sent)
    });
    let writer = tokio::spawn({
        let url = db.url.clone();
        async move {
            let w = connect(&url).await;
            for i in 0..(N / 100) {
                w.batch_execute(&format!(
                    "insert into citas (negocio_id, cliente_id) select 'png', repeat('{}', 100 + g * 3) from generate_series(1, 100) g",
                    i % 10
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut got = Vec::new();
    let (mut pongs, mut json_pongs) = (0u64, 0u64);
    let mut last_pong = None::<u64>;
    while got.len() < N {
        let msg = tokio::time::timeout(DEADLINE, rx.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .unwrap_or_else(|e| {
                panic!(
                    "bad frame after {} events: {e} ({:?})",
                    got.len(),
                    hub.stats()
                )
            });
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("bad JSON ({e}) after {} events", got.len()));
                if is_event(&v) {
                    let g = (got.len() % 100) + 1;
                    let cliente = v["data"]["record"]["cliente_id"].as_str().unwrap_or("");
                    assert_eq!(cliente.len(), 100 + g * 3, "a whole record");
                    got.push(brief(&v).2);
                    if got.len() % 25 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                } else if v["type"] == "pong" {
                    json_pongs += 1;
                } else if v["type"] != "estadisticas" {
                    panic!("unexpected {v}");
                }
            }
            Message::Pong(p) => {
                let n = u64::from_be_bytes(p.as_ref().try_into().expect("8-byte payload"));
                if let Some(prev) = last_pong {
                    assert!(n > prev, "pong {n} after pong {prev}");
                }
                last_pong = Some(n);
                pongs += 1;
            }
            Message::Close(f) => panic!(
                "closed after {} events: {f:?} ({:?})",
                got.len(),
                hub.stats()
            ),
            _ => {}
        }
    }
    writer.await.unwrap();
    stop_tx.send(()).unwrap();
    let (_tx, sent) = pinger.await.unwrap();
    assert_eq!(got, db.logged_seqs("png").await);
    let stats = hub.stats();
    eprintln!("pings: sent {sent}, pongs {pongs}, json pongs {json_pongs}; {stats:?}");
    assert!(
        pongs > 0 && json_pongs > 0,
        "pongs {pongs}, json pongs {json_pongs}, sent {sent}"
    );
}

/// Records near the limits: values of 3 to 8.2 KB (the 8 KiB record bound), multibyte text,
/// estado-sized fields, to a client with a 4 KiB receive buffer that reads slowly: every frame
/// whole, the record exact or left out with `record_truncated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_frames_near_the_size_limits_arrive_whole() {
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let app = spawn_app(&db.url).await;
    let mut slow = small_buffer_client(app.addr, "lim", 4096).await;
    slow.subscribe("lim").await;
    let mut fast = app.subscriber(&["lim"]).await;
    let sizes: Vec<usize> = (0..120).map(|i| 3000 + (i * 97) % 5300).collect();
    let mut want = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        // Half multibyte (ñ is two bytes): `n` characters.
        let ch = if i % 2 == 0 { "a" } else { "ñ" };
        let value = ch.repeat(*n);
        db.client
            .execute(
                "insert into citas (negocio_id, cliente_id) values ('lim', $1)",
                &[&value],
            )
            .await
            .unwrap();
        want.push(value);
    }
    let logged = db.logged_seqs("lim").await;
    assert_eq!(seqs(&fast.events(want.len()).await), logged);
    let mut got = Vec::new();
    while got.len() < want.len() {
        let msg = next_raw(&mut slow).await;
        if is_event(&msg) {
            got.push(msg);
            if got.len() % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        } else if msg["type"] != "estadisticas" {
            panic!("after {} events: {msg}", got.len());
        }
    }
    assert_eq!(seqs(&got), logged);
    for (event, value) in got.iter().zip(&want) {
        let record = &event["data"]["record"];
        if event["data"]["record_truncated"] == true {
            assert!(record.is_null());
            assert!(json!({"cliente_id": value}).to_string().len() > 8 * 1024 - 64);
        } else {
            assert_eq!(record["cliente_id"].as_str(), Some(value.as_str()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.
// ---------------------------------------------------------------------------------------------

/// A snapshot always comes after the events it reflects, live and after a replay, while a
/// writer floods; the last snapshot is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_statistics_follow_their_events_during_a_flood() {
    let db = TestDb::new().await;
    let config = config_with(&db.url, |a| a.stats_interval = "20ms".into());
    let app = spawn_app_ready(config).await;
    db.execute("insert into citas (negocio_id) select 'st' from generate_series(1, 100)")
        .await;
    let history = db.logged_seqs("st").await;
    let writer = flood(db.url.clone(), "st", 50, 20, Duration::from_millis(15));
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut ws = app.ws(&token(json!({"negocio_id": "st"}))).await;
        ws.keep_stats = true;
        let since = if i % 2 == 0 { Some(history[50]) } else { None };
        let mut sub = json!({"type": "subscribe", "channel": "estadisticas:st"});
        if let Some(s) = since {
            sub["since"] = s.into();
        }
        ws.send(sub).await;
        ws.expect("subscribed").await;
        clients.push((since, ws));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    writer.await.unwrap();
    let logged = db.logged_seqs("st").await;
    let total = logged.len();
    let last = *logged.last().unwrap();
    for (i, (since, ws)) in clients.iter_mut().enumerate() {
        let mut events: Vec<i64> = Vec::new();
        let mut snapshots = 0;
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "client {i}: never an exact last snapshot"
            );
            let msg = ws.next().await;
            if is_event(&msg) {
                events.push(brief(&msg).2);
            } else if msg["type"] == "estadisticas" {
                snapshots += 1;
                let s = msg["data"]["seq"].as_i64().unwrap();
                // After its events: either seen, or before anything this client was to get.
                let first_expected =
                    since.unwrap_or_else(|| events.first().copied().unwrap_or(s + 1) - 1);
                assert!(
                    s <= first_expected || events.contains(&s),
                    "client {i}: snapshot seq {s} before its event (events so far end at {:?}, since {since:?})",
                    events.last()
                );
                if since.is_some() && snapshots == 1 {
                    // The first snapshot follows the replay.
                    assert!(!events.is_empty(), "client {i}: snapshot before the replay");
                }
                if s == last {
                    assert_eq!(msg["data"]["total"], total as u64, "client {i}: {msg}");
                    break;
                }
            } else {
                panic!("client {i}: unexpected {msg}");
            }
        }
        if let Some(s) = since {
            assert_contiguous(&logged, *s, &events, &format!("client {i}"));
        } else if let Some(first) = events.first() {
            assert_contiguous(&logged, first - 1, &events, &format!("client {i}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Broken clients, against the real binary: no panic, the others unaffected, closes work.
// ---------------------------------------------------------------------------------------------

/// While events flow: clients reset their TCP connection, half-close it, send a Close frame
/// and keep reading, or vanish with a full socket. A reading client gets everything; the
/// closing client gets the server's Close reply; the server logs no panic and its connection
/// count returns to the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_resets_half_closes_and_closes_mid_stream() {
    const STATEMENTS: usize = 60;
    const ROWS: usize = 40;
    let db = TestDb::new().await;
    let server = BinaryServer::start(&db.url, &[("RUST_LOG", "info")]).await;
    let app = TestApp {
        addr: server.addr,
        server: None,
    };
    let mut reader = app.subscriber(&["brk"]).await;
    let reading = tokio::spawn(async move {
        let events = reader.events(STATEMENTS * ROWS).await;
        (seqs(&events), reader)
    });
    let writer = flood(
        db.url.clone(),
        "brk",
        STATEMENTS,
        ROWS,
        Duration::from_millis(10),
    );

    let mut handles = Vec::new();
    for i in 0..12u32 {
        let addr = app.addr;
        handles.push(tokio::spawn(async move {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            if i % 4 == 0 {
                #[allow(deprecated)]
                socket.set_linger(Some(Duration::ZERO)).unwrap();
            }
            let stream = socket.connect(addr).await.unwrap();
            let url = format!(
                "ws://{addr}/ws?token={}",
                token(json!({"negocio_id": "brk"}))
            );
            let (socket, _) = tokio_tungstenite::client_async(
                url,
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
            )
            .await
            .unwrap();
            let mut ws = Ws::new(socket);
            ws.subscribe("brk").await;
            tokio::time::sleep(Duration::from_millis(50 + 30 * u64::from(i))).await;
            match i % 4 {
                // Reset (linger 0), with unread data in the socket.
                0 => drop(ws),
                // Half-close: no more data from us; keep reading.
                1 => {
                    if let tokio_tungstenite::MaybeTlsStream::Plain(s) = ws.socket.get_mut() {
                        s.shutdown().await.unwrap();
                    }
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout(Duration::from_secs(3), ws.socket.next()).await
                    {
                    }
                }
                // A Close frame, then read until the server's Close.
                2 => {
                    ws.socket
                        .send(Message::Close(None))
                        .await
                        .expect("send close");
                    let deadline = Instant::now() + DEADLINE;
                    loop {
                        assert!(Instant::now() < deadline, "client {i}: no Close reply");
                        match tokio::time::timeout(DEADLINE, ws.socket.next()).await {
                            Ok(Some(Ok(Message::Close(_)))) => break,
                            Ok(Some(Ok(_))) => continue,
                            Ok(Some(Err(e))) => panic!("client {i}: error before Close reply: {e}"),
                            Ok(None) => panic!("client {i}: EOF before Close reply"),
                            Err(_) => panic!("client {i}: no Close reply"),
                        }
                    }
                }
                // Stops reading and disappears later without a word.
                _ => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    drop(ws);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    writer.await.unwrap();
    let (got, mut reader) = reading.await.unwrap();
    assert_eq!(got, db.logged_seqs("brk").await);
    reader.send(json!({"type": "ping"})).await;
    reader.expect("pong").await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let health = app.wait_health(200).await;
        if health["connections"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections never back to 1: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = server.logs();
    assert!(!logs.contains("panic"), "the server panicked:\n{logs}");
    // The reader closes cleanly too.
    reader.socket.send(Message::Close(None)).await.unwrap();
    let code = reader.closed().await;
    assert!(matches!(code, None | Some(CloseCode::Normal)), "{code:?}");
}

/// As above, but the client is far behind (its kernel buffers full, frames waiting in the
/// server's queue) when it sends `unsubscribe` then `subscribe` with `since` = the last seq it
/// read. After the new `subscribed` (and its replay) it must get the log after `since`, each
/// event once, in order: the frames still queued for the old subscription must not follow the
/// replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_pipelined_unsubscribe_and_resume_while_far_behind() {
    let db = TestDb::new().await;
    let config = config_with(&db.url, |a| a.client_queue_capacity = "100000".into());
    let app = spawn_app_ready(config).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let mut ws = small_buffer_client(app.addr, "far", 4096).await;
    ws.subscribe("far").await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    // ~750-byte frames: a write batch (256 frames) stays under the 256 KiB backlog, the whole
    // flood (15,000) is far beyond what the kernel buffers.
    let writer = tokio::spawn({
        let url = db.url.clone();
        async move {
            let w = connect(&url).await;
            for _ in 0..150 {
                w.batch_execute(
                    "insert into citas (negocio_id, cliente_id) select 'far', repeat('f', 400) from generate_series(1, 100)",
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut last = 0i64;
    for _ in 0..100 {
        let msg = next_raw(&mut ws).await;
        if is_event(&msg) {
            last = brief(&msg).2;
        }
    }
    // Fall far behind.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    ws.send(json!({"type": "unsubscribe", "channel": "estadisticas:far"}))
        .await;
    ws.send(json!({"type": "subscribe", "channel": "estadisticas:far", "since": last}))
        .await;
    let (mut before_unsub, mut between) = (0usize, 0usize);
    let mut saw_unsubscribed = false;
    loop {
        let msg = next_raw(&mut ws).await;
        match msg["type"].as_str().unwrap_or_default() {
            "unsubscribed" => saw_unsubscribed = true,
            "subscribed" => break,
            t if t.starts_with("cita_") => {
                if saw_unsubscribed {
                    between += 1
                } else {
                    before_unsub += 1
                }
            }
            "estadisticas" => {}
            other => panic!("unexpected {other}: {msg}"),
        }
    }
    writer.await.unwrap();
    let logged = db.logged_seqs("far").await;
    let start = logged.partition_point(|s| *s <= last);
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < logged.len() - start && Instant::now() < deadline {
        let Ok(Some(Ok(msg))) =
            tokio::time::timeout(Duration::from_secs(3), ws.socket.next()).await
        else {
            break;
        };
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if is_event(&v) {
                got.push(brief(&v).2);
            } else if v["type"] != "estadisticas" {
                panic!("after {} events: {v}", got.len());
            }
        }
    }
    // Anything more is a duplicate.
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(500), ws.socket.next()).await
    {
        let v: Value = serde_json::from_str(&t).unwrap();
        if is_event(&v) {
            got.push(brief(&v).2);
        }
    }
    let mut seen = HashSet::new();
    let dups: Vec<i64> = got.iter().filter(|s| !seen.insert(**s)).copied().collect();
    let backwards = got.windows(2).position(|w| w[0] >= w[1]);
    eprintln!(
        "far behind: since {last}; {before_unsub} events before `unsubscribed`, {between} between it and `subscribed`; \
         then {} events ({} expected), {} duplicates, first step back at {backwards:?}: {:?}; hub {:?}",
        got.len(),
        logged.len() - start,
        dups.len(),
        backwards.map(|i| &got[i.saturating_sub(2)..(i + 3).min(got.len())]),
        hub.stats()
    );
    assert!(
        dups.is_empty(),
        "{} duplicates after the resumed `subscribed`",
        dups.len()
    );
    assert_eq!(got, logged[start..].to_vec());
}

/// A client that stops reading for 2 s while 3,000 events of ~2.5 KB (7 MB) flow, far more
/// than its socket holds: writes wait for it (they do not pile up in memory), and when it reads
/// again it gets every event, in order, and is not dropped: its queue never overflowed and no
/// write waited longer than the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_a_client_that_pauses_under_large_events_gets_them_all() {
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let app = spawn_app(&db.url).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let mut ws = small_buffer_client(app.addr, "blg", 4096).await;
    ws.subscribe("blg").await;
    for _ in 0..30 {
        db.execute(
            "insert into citas (negocio_id, cliente_id) select 'blg', repeat('b', 2000) from generate_series(1, 100)",
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = db.logged_seqs("blg").await;
    let mut got = Vec::new();
    while got.len() < logged.len() {
        let msg = next_raw(&mut ws).await;
        if is_event(&msg) {
            got.push(brief(&msg).2);
        } else {
            assert_eq!(msg["type"], "estadisticas", "unexpected: {msg}");
        }
    }
    assert_eq!(got, logged);
    assert_eq!(hub.stats().slow_clients_kicked, 0);
}

/// A client back after a while at a busy negocio: 4,000 plain events (~330 bytes, no records)
/// to replay with `since`, read as fast as the client can. Expected: all of them, no close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_replay_of_4000_small_events_to_a_reading_client() {
    let db = TestDb::new().await;
    replay_everything(
        &db,
        "smr",
        4000,
        "insert into citas (negocio_id) select 'smr' from generate_series(1, 4000)",
    )
    .await;
}

/// Clients already receiving one negocio's events directly (idle, so the hub writes to their
/// sockets) subscribe to a second negocio while it floods: the first message of the second
/// channel each gets is its `subscribed`, never a live event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_subscribed_comes_before_any_live_event_of_its_channel() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let writer_a = flood(db.url.clone(), "sa", 100, 5, Duration::from_millis(5));
    let writer_b = flood(db.url.clone(), "sb", 150, 10, Duration::from_millis(2));
    let mut clients = Vec::new();
    for _ in 0..12 {
        let mut ws = app.ws(&token(json!({"negocio_ids": ["sa", "sb"]}))).await;
        ws.subscribe("sa").await;
        clients.push(ws);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ws.send(json!({"type": "subscribe", "channel": "estadisticas:sb"}))
            .await;
        let mut last_a = 0;
        loop {
            let msg = next_raw(ws).await;
            if msg["type"] == "subscribed" {
                assert_eq!(msg["channel"], "estadisticas:sb");
                break;
            }
            assert!(
                is_event(&msg) || msg["type"] == "estadisticas",
                "client {i}: {msg}"
            );
            if is_event(&msg) {
                let (_, negocio, seq) = brief(&msg);
                assert_eq!(
                    negocio, "sa",
                    "client {i}: a live sb event before `subscribed`"
                );
                assert!(seq > last_a, "client {i}: sa out of order");
                last_a = seq;
            }
        }
    }
    writer_a.await.unwrap();
    writer_b.await.unwrap();
    // And from then on, sb events are a contiguous run.
    let logged_b = db.logged_seqs("sb").await;
    for (i, ws) in clients.iter_mut().enumerate() {
        let mut got_b = Vec::new();
        while let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(300), ws.socket.next()).await
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            if is_event(&v) && brief(&v).1 == "sb" {
                got_b.push(brief(&v).2);
            }
        }
        if let Some(first) = got_b.first() {
            assert_contiguous(&logged_b, first - 1, &got_b, &format!("client {i} sb"));
            assert_eq!(got_b.last(), logged_b.last(), "client {i}: sb to the end");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Split fan-outs: over `hub::SPLIT_FANOUT` (512) subscribers, the publisher and the lane both
// write an event's frames, taking chunks of 32 subscribers from one cursor.
// ---------------------------------------------------------------------------------------------

/// A writer on its own connection running `count` statements back to back (`sql(i)` is the
/// i-th), telling `progress` how many it has run.
fn spawn_writer(
    db: &TestDb,
    count: usize,
    progress: tokio::sync::watch::Sender<usize>,
    sql: impl Fn(usize) -> String + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let url = db.url.clone();
    tokio::spawn(async move {
        let w = connect(&url).await;
        for i in 0..count {
            w.batch_execute(&sql(i)).await.expect("insert");
            progress.send_replace(i + 1);
        }
    })
}

/// The log's newest seq now (0 when empty).
async fn newest_seq(db: &TestDb) -> i64 {
    db.scalar("select coalesce(max(seq), 0)::int8 from citas_realtime.events")
        .await
}

/// The next message within [`DEADLINE`] (as [`next_raw`]), failing with `who` and what it had
/// read so far when none comes.
async fn next_for(ws: &mut Ws, who: impl FnOnce() -> String) -> Value {
    match tokio::time::timeout(DEADLINE, next_raw(ws)).await {
        Ok(msg) => msg,
        Err(_) => panic!("{}: no message within {DEADLINE:?}", who()),
    }
}

/// A client with its own subject (the per-subject connection limit is 200), subscribed to
/// each of `negocios`.
async fn subject_client(addr: std::net::SocketAddr, negocios: &[&str], sub: &str) -> Ws {
    let app = TestApp { addr, server: None };
    let mut ws = app
        .ws(&token(json!({"negocio_ids": negocios, "sub": sub})))
        .await;
    for negocio in negocios {
        ws.subscribe(negocio).await;
    }
    ws
}

/// A client with its own subject that subscribes to `negocio` with `since` (and has its
/// `subscribed`).
async fn resume_client(addr: std::net::SocketAddr, negocio: &str, sub: &str, since: i64) -> Ws {
    let app = TestApp { addr, server: None };
    let mut ws = app
        .ws(&token(json!({"negocio_id": negocio, "sub": sub})))
        .await;
    let channel = format!("estadisticas:{negocio}");
    ws.send(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    let reply = ws.expect("subscribed").await;
    assert_eq!(reply["channel"], channel);
    ws
}

/// Reads until `want` events arrived (statistics are skipped; anything else fails, naming
/// `who`); returns them as (negocio, seq).
async fn read_events(ws: &mut Ws, want: usize, who: &str) -> Vec<(String, i64)> {
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        let msg = next_for(ws, || {
            format!("{who}: after {} of {want} events", got.len())
        })
        .await;
        if is_event(&msg) {
            let (_, negocio, seq) = brief(&msg);
            got.push((negocio, seq));
        } else if msg["type"] != "estadisticas" {
            panic!("{who}: after {} of {want} events: {msg}", got.len());
        }
    }
    got
}

/// Sends a ping and reads up to its pong: the events before it (a replay's rest, live events
/// already on their way), as (negocio, seq).
async fn events_until_pong(ws: &mut Ws, who: &str) -> Vec<(String, i64)> {
    ws.send(json!({"type": "ping"})).await;
    let mut got = Vec::new();
    loop {
        let msg = next_for(ws, || format!("{who}: no pong")).await;
        if msg["type"] == "pong" {
            return got;
        }
        if is_event(&msg) {
            let (_, negocio, seq) = brief(&msg);
            got.push((negocio, seq));
        } else if msg["type"] != "estadisticas" {
            panic!("{who}: before the pong: {msg}");
        }
    }
}

fn seqs_of(events: &[(String, i64)], negocio: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|(n, _)| n == negocio)
        .map(|(_, s)| *s)
        .collect()
}

/// The writes of [`adversarial_split_fan_out_with_paused_small_buffer_clients`], one per
/// statement (or transaction), and how many events of `sp`, `sm` and `big` each makes.
fn split_workload(i: usize) -> (&'static str, [usize; 3]) {
    match i % 6 {
        0 => ("insert into citas (negocio_id) values ('sp')", [1, 0, 0]),
        1 => (
            "insert into citas (negocio_id) \
             select case when g % 3 = 0 then 'sm' else 'sp' end from generate_series(1, 9) g",
            [6, 3, 0],
        ),
        2 => (
            "update citas set estado = case estado when 'pendiente' then 'confirmada' \
             else 'pendiente' end \
             where id in (select id from citas where negocio_id = 'sp' order by id limit 4)",
            [4, 0, 0],
        ),
        3 => (
            "begin; insert into citas (negocio_id) values ('sp'), ('sm'); \
             delete from citas where id = \
               (select id from citas where negocio_id = 'sp' order by id desc limit 1); \
             commit",
            [2, 1, 0],
        ),
        4 => (
            "begin; insert into citas (negocio_id) select 'sp' from generate_series(1, 50); \
             rollback",
            [0, 0, 0],
        ),
        // ~7 KB frames, for the few clients of `big` only: over 5 MB each, more than the
        // kernel holds for a client that does not read.
        _ => (
            "insert into citas (negocio_id, cliente_id) \
             select case when g % 20 = 0 then 'sp' else 'big' end, \
                    case when g % 20 = 0 then null else repeat('b', 7000) end \
             from generate_series(1, 80) g",
            [4, 0, 76],
        ),
    }
}

/// 620 subscribers of one negocio, `sp` (so each of its events is a split fan-out), events
/// committed back to back: single rows, multi-row inserts mixing other negocios, multi-row
/// updates, multi-statement transactions, a rollback. 576 clients read as they come, 4 of them
/// also subscribed to a second negocio `sm`. 40 have small receive buffers (2 to 64 KiB), a
/// queue of 32, and read nothing until the writer is done (10 of them, also subscribed to
/// `big`, whose 7 KB events fill their sockets so `sp`'s frames must go through their queues)
/// or every reader is done (the others). Expected: every reader gets every event of each
/// of its negocios once, in order; each paused client gets them all in order, or a 1013 close
/// after an in-order prefix and then, resuming with `since` = the last seq it read, exactly
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_split_fan_out_with_paused_small_buffer_clients() {
    const READERS: usize = 576;
    const DUAL: usize = 4;
    const PAUSED: usize = 40;
    const STATEMENTS: usize = 60;
    let db = TestDb::new().await;
    db.execute("select citas_realtime.set_record_columns(array['cliente_id'])")
        .await;
    let config = config_with(&db.url, |a| a.client_queue_capacity = "32".into());
    let app = spawn_app_ready(config).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let addr = app.addr;
    let [want_sp, want_sm, want_big] = (0..STATEMENTS)
        .map(|i| split_workload(i).1)
        .fold([0; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]]);

    let mut readers = Vec::new();
    for i in 0..READERS {
        let dual = i < DUAL;
        let negocios: &[&str] = if dual { &["sp", "sm"] } else { &["sp"] };
        let mut ws = subject_client(addr, negocios, &format!("r{i}")).await;
        let want = if dual { want_sp + want_sm } else { want_sp };
        readers.push(tokio::spawn(async move {
            read_events(&mut ws, want, &format!("reader {i}")).await
        }));
    }
    // 0: writing; 1: the writer is done; 2: every reader is done too.
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(0u8);
    let mut paused = Vec::new();
    for i in 0..PAUSED {
        let rcvbuf = [2048, 4096, 16384, 65536][i % 4];
        let big = i % 4 == 0;
        let mut ws = small_buffer_client(addr, "sp", rcvbuf).await;
        if big {
            // The token grants `sp` only: a second one, on the same socket, for `big`.
            ws.send(json!({"type": "auth", "token": token(json!({"negocio_ids": ["sp", "big"]}))}))
                .await;
            ws.expect("authenticated").await;
            ws.subscribe("big").await;
        }
        ws.subscribe("sp").await;
        let mut phase = phase_rx.clone();
        paused.push(tokio::spawn(async move {
            let who = format!("paused client {i} (rcvbuf {rcvbuf}, big {big})");
            phase
                .wait_for(|p| *p >= if big { 1 } else { 2 })
                .await
                .expect("the test holds the phase");
            let mut got = Vec::new();
            let mut end = None;
            let mut sp = 0;
            while sp < want_sp {
                let msg = next_for(&mut ws, || format!("{who}: after {} events", got.len())).await;
                if is_event(&msg) {
                    let (_, negocio, seq) = brief(&msg);
                    sp += usize::from(negocio == "sp");
                    got.push((negocio, seq));
                } else if msg["type"].as_str().unwrap_or_default().starts_with("__") {
                    end = Some(msg);
                    break;
                } else if msg["type"] != "estadisticas" {
                    panic!("{who}: after {} events: {msg}", got.len());
                }
            }
            (who, got, end)
        }));
    }
    assert_eq!(
        hub.stats().subscriptions,
        READERS + DUAL + PAUSED + PAUSED / 4,
        "every client subscribed before the first write"
    );
    let start = newest_seq(&db).await;
    for i in 0..STATEMENTS {
        db.client
            .batch_execute(split_workload(i).0)
            .await
            .unwrap_or_else(|e| panic!("statement {i}: {e}"));
    }
    phase_tx.send_replace(1);
    let logged_sp = db.logged_seqs("sp").await;
    let logged_sm = db.logged_seqs("sm").await;
    let logged_big = db.logged_seqs("big").await;
    assert_eq!(
        [logged_sp.len(), logged_sm.len(), logged_big.len()],
        [want_sp, want_sm, want_big]
    );
    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.expect("a reader");
        assert_eq!(seqs_of(&got, "sp"), logged_sp, "reader {i}: sp");
        if i < DUAL {
            assert_eq!(seqs_of(&got, "sm"), logged_sm, "reader {i}: sm");
        }
    }
    phase_tx.send_replace(2);

    let mut kicked = 0;
    for (i, task) in paused.into_iter().enumerate() {
        let (who, got, end) = task.await.expect("a paused client");
        let (sp, big) = (seqs_of(&got, "sp"), seqs_of(&got, "big"));
        assert_eq!(sp, logged_sp[..sp.len()], "{who}: sp, an in-order prefix");
        assert_eq!(
            big,
            logged_big[..big.len()],
            "{who}: big, an in-order prefix"
        );
        let Some(end) = end else {
            assert_eq!(sp, logged_sp, "{who}");
            continue;
        };
        assert_eq!(
            end,
            json!({"type": "__close", "code": 1013}),
            "{who}: ended after {} sp events",
            sp.len()
        );
        kicked += 1;
        // Resume where it stopped.
        let since = sp.last().copied().unwrap_or(start);
        let mut ws = resume_client(addr, "sp", &format!("p{i}"), since).await;
        let rest = read_events(&mut ws, want_sp - sp.len(), &who).await;
        let extra = events_until_pong(&mut ws, &who).await;
        assert!(extra.is_empty(), "{who}: events beyond the log: {extra:?}");
        let all: Vec<i64> = sp.iter().copied().chain(seqs_of(&rest, "sp")).collect();
        assert_eq!(all, logged_sp, "{who}: resumed with since {since}");
    }
    let stats = hub.stats();
    eprintln!("paused clients closed with 1013: {kicked} of {PAUSED}; hub: {stats:?}");
    assert!(stats.written_directly > 0, "{stats:?}");
}

/// What a churning client expects next from the server, in the order it sent its requests.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Awaited {
    Unsubscribed,
    /// `subscribed`, for a subscribe with this `since`.
    Subscribed(i64),
}

/// One churning client of [`adversarial_unsubscribe_races_during_split_fan_outs`]: subscribed
/// to `ur` (a split fan-out) and `ux` (a small one), it leaves `ur` and comes back with `since`
/// = the last `ur` seq it read, `CYCLES` times while events stream, in four ways: waiting for
/// `unsubscribed` first; pipelining `unsubscribe` + `subscribe`; pipelining two such pairs; or
/// staying away until two `ux` events went by. No `ur` event may come between `unsubscribed`
/// and the next `subscribed`; `ux` never stops. Returns each `ur` subscription's since and
/// events, and the `ux` events.
async fn churn(
    addr: std::net::SocketAddr,
    i: usize,
    start: i64,
    want_ur: usize,
    want_ux: usize,
) -> (Vec<(i64, Vec<i64>)>, Vec<i64>) {
    const CYCLES: usize = 6;
    let who = format!("churner {i}");
    let mut ws = subject_client(addr, &["ur", "ux"], &format!("ch{i}")).await;
    let channel = "estadisticas:ur";
    let mut segments: Vec<(i64, Vec<i64>)> = vec![(start, Vec::new())];
    let mut ux = Vec::new();
    let mut seen = HashSet::new();
    let mut awaited = std::collections::VecDeque::new();
    let (mut subscribed, mut last, mut cycles) = (true, start, 0);
    // Mode 0: subscribe once `unsubscribed` came; mode 3: once two more `ux` events came.
    let mut resubscribe_after: Option<(usize, usize)> = None;
    loop {
        let settled = awaited.is_empty() && subscribed && resubscribe_after.is_none();
        if settled && seen.len() == want_ur {
            break;
        }
        let segment_len = segments.last().map_or(0, |s| s.1.len());
        if settled && cycles < CYCLES && segment_len > (i + cycles) % 5 {
            let mode = (i + cycles) % 4;
            cycles += 1;
            ws.send(json!({"type": "unsubscribe", "channel": channel}))
                .await;
            awaited.push_back(Awaited::Unsubscribed);
            match mode {
                0 => resubscribe_after = Some((0, 0)),
                1 | 2 => {
                    for pair in 0..mode {
                        if pair > 0 {
                            ws.send(json!({"type": "unsubscribe", "channel": channel}))
                                .await;
                            awaited.push_back(Awaited::Unsubscribed);
                        }
                        ws.send(json!({"type": "subscribe", "channel": channel, "since": last}))
                            .await;
                        awaited.push_back(Awaited::Subscribed(last));
                    }
                }
                _ => resubscribe_after = Some((3, ux.len() + 2)),
            }
        }
        if let Some((3, at)) = resubscribe_after {
            if !subscribed && (ux.len() >= at || ux.len() == want_ux) {
                resubscribe_after = None;
                ws.send(json!({"type": "subscribe", "channel": channel, "since": last}))
                    .await;
                awaited.push_back(Awaited::Subscribed(last));
            }
        }
        let msg = next_for(&mut ws, || {
            format!(
                "{who}: ur {} of {want_ur} (subscribed {subscribed}, awaiting {awaited:?}), \
                 ux {} of {want_ux}",
                seen.len(),
                ux.len()
            )
        })
        .await;
        match msg["type"].as_str().unwrap_or_default() {
            "unsubscribed" => {
                assert_eq!(msg["channel"], channel, "{who}");
                assert_eq!(
                    awaited.pop_front(),
                    Some(Awaited::Unsubscribed),
                    "{who}: {msg}"
                );
                subscribed = false;
                if resubscribe_after == Some((0, 0)) {
                    resubscribe_after = None;
                    ws.send(json!({"type": "subscribe", "channel": channel, "since": last}))
                        .await;
                    awaited.push_back(Awaited::Subscribed(last));
                }
            }
            "subscribed" => {
                assert_eq!(msg["channel"], channel, "{who}");
                let Some(Awaited::Subscribed(since)) = awaited.pop_front() else {
                    panic!("{who}: {msg} unasked");
                };
                subscribed = true;
                segments.push((since, Vec::new()));
            }
            "estadisticas" => {}
            t if t.starts_with("cita_") => {
                let (_, negocio, seq) = brief(&msg);
                if negocio == "ux" {
                    ux.push(seq);
                    continue;
                }
                assert!(
                    subscribed,
                    "{who}: ur event {seq} between `unsubscribed` and `subscribed` \
                     (last before it {last})"
                );
                segments.last_mut().expect("a segment").1.push(seq);
                seen.insert(seq);
                last = seq;
            }
            _ => panic!("{who}: {msg}"),
        }
    }
    // Whatever else is on its way (the rest of a replay, the last ux events) comes before the
    // pong.
    while ux.len() < want_ux {
        for (negocio, seq) in read_events(&mut ws, 1, &who).await {
            if negocio == "ux" {
                ux.push(seq);
            } else {
                segments.last_mut().expect("a segment").1.push(seq);
            }
        }
    }
    for (negocio, seq) in events_until_pong(&mut ws, &who).await {
        assert_eq!(negocio, "ur", "{who}: ux event {seq} beyond the log");
        segments.last_mut().expect("a segment").1.push(seq);
    }
    assert_eq!(
        cycles, CYCLES,
        "{who}: the stream ended before it churned enough"
    );
    (segments, ux)
}

/// 540 clients read `ur` (so, with 40 more, each `ur` event is a split fan-out, also when
/// every churner is away) while 40 churners (see [`churn`]) keep leaving and rejoining it, and
/// a writer commits `ur` and `ux` events back to back. Expected: readers get every `ur` event
/// once, in order; a churner sees no `ur` event between `unsubscribed` and `subscribed`, and
/// each of its subscriptions' events are exactly the log after that subscription's `since`, in
/// order (so a resume has no gap and no duplicate); together they cover the log; every `ux`
/// event arrives once, in order, whatever happens to `ur`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_unsubscribe_races_during_split_fan_outs() {
    const READERS: usize = 540;
    const CHURNERS: usize = 40;
    const STATEMENTS: usize = 80;
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let hub = app.server.as_ref().unwrap().hub.clone();
    let addr = app.addr;
    // Statement i: one `ux` event and 1 to 3 `ur` events.
    let want_ux = STATEMENTS;
    let want_ur: usize = (0..STATEMENTS).map(|i| 1 + i % 3).sum();
    let start = newest_seq(&db).await;
    let mut readers = Vec::new();
    for i in 0..READERS {
        let mut ws = subject_client(addr, &["ur"], &format!("r{i}")).await;
        readers.push(tokio::spawn(async move {
            read_events(&mut ws, want_ur, &format!("reader {i}")).await
        }));
    }
    let mut churners = Vec::new();
    for i in 0..CHURNERS {
        churners.push(tokio::spawn(churn(addr, i, start, want_ur, want_ux)));
    }
    // Every churner subscribed before the first write.
    let deadline = Instant::now() + DEADLINE;
    while hub.stats().subscriptions < READERS + 2 * CHURNERS {
        assert!(Instant::now() < deadline, "subscribed: {:?}", hub.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..STATEMENTS {
        db.execute(&format!(
            "insert into citas (negocio_id) \
             select case when g = 0 then 'ux' else 'ur' end from generate_series(0, {}) g",
            1 + i % 3
        ))
        .await;
    }
    let logged = db.logged_seqs("ur").await;
    let logged_ux = db.logged_seqs("ux").await;
    assert_eq!((logged.len(), logged_ux.len()), (want_ur, want_ux));
    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.expect("a reader");
        assert_eq!(seqs_of(&got, "ur"), logged, "reader {i}");
    }
    let mut resumes = 0;
    for (i, churner) in churners.into_iter().enumerate() {
        let (segments, ux) = churner.await.expect("a churner");
        assert_eq!(ux, logged_ux, "churner {i}: ux");
        let mut covered = HashSet::new();
        for (n, (since, events)) in segments.iter().enumerate() {
            let stale: Vec<i64> = events.iter().copied().filter(|s| s <= since).collect();
            assert!(
                stale.is_empty(),
                "churner {i}: subscription {n} (since {since}) got events at or below its \
                 since: {stale:?}; it got {events:?}"
            );
        }
        for (since, events) in &segments {
            assert_contiguous(&logged, *since, events, &format!("churner {i}"));
            covered.extend(events.iter().copied());
        }
        assert_eq!(covered.len(), logged.len(), "churner {i}: the whole log");
        let (since, events) = segments.last().expect("a segment");
        assert_eq!(
            events.last().or(Some(since)),
            logged.last(),
            "churner {i}: to the end"
        );
        resumes += segments.len() - 1;
    }
    eprintln!("churners resumed {resumes} times; hub: {:?}", hub.stats());
}

/// A client resumes while the listener is behind the log (each event is a split fan-out to
/// 560 subscribers, and a writer commits back to back): it reads a replay with one connection
/// (`since` = before everything), then opens another and subscribes with `since` = the last seq
/// that replay gave it. Expected, per docs/protocol.md: after `subscribed`, every event after
/// `since`, in order, once; nothing at or below `since`. Done again and again while the writer
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_resume_ahead_of_a_lagging_split_fan_out() {
    const READERS: usize = 560;
    const STATEMENTS: usize = 60;
    const ROWS: usize = 3;
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let addr = app.addr;
    let start = newest_seq(&db).await;
    let mut readers = Vec::new();
    for i in 0..READERS {
        let mut ws = subject_client(addr, &["lag"], &format!("r{i}")).await;
        readers.push(tokio::spawn(async move {
            read_events(&mut ws, STATEMENTS * ROWS, &format!("reader {i}")).await
        }));
    }
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let writer = spawn_writer(&db, STATEMENTS, progress_tx, |_| {
        format!("insert into citas (negocio_id) select 'lag' from generate_series(1, {ROWS})")
    });
    progress
        .wait_for(|n| *n > 0)
        .await
        .expect("the writer runs");
    let mut resumed = Vec::new();
    // Back to back while the writer runs (at most 30 times).
    for round in 1..=30 {
        if writer.is_finished() {
            break;
        }
        let who = format!("resume {round}");
        // The first connection: a replay of everything so far.
        let mut first = resume_client(addr, "lag", &format!("res{round}"), start).await;
        let replayed = events_until_pong(&mut first, &who).await;
        let since = replayed.last().expect("a replay").1;
        drop(first);
        // The second: resume after the last seq the first one got.
        let ws = resume_client(addr, "lag", &format!("res{round}"), since).await;
        resumed.push((round, since, ws));
    }
    writer.await.expect("the writer");
    let logged = db.logged_seqs("lag").await;
    assert_eq!(logged.len(), STATEMENTS * ROWS);
    for (i, reader) in readers.into_iter().enumerate() {
        assert_eq!(
            seqs_of(&reader.await.expect("a reader"), "lag"),
            logged,
            "reader {i}"
        );
    }
    for (round, since, mut ws) in resumed {
        let who = format!("resume {round} (since {since})");
        let want = logged.iter().filter(|s| **s > since).count();
        let mut got = seqs_of(&read_events(&mut ws, want, &who).await, "lag");
        got.extend(seqs_of(&events_until_pong(&mut ws, &who).await, "lag"));
        let stale: Vec<i64> = got.iter().copied().filter(|s| *s <= since).collect();
        assert!(
            stale.is_empty(),
            "{who}: {} events at or below since: {stale:?}; got {got:?}",
            stale.len()
        );
        assert_contiguous(&logged, since, &got, &who);
        assert_eq!(got.len(), want, "{who}");
    }
}

// ---------------------------------------------------------------------------------------------
// Abrupt disconnects during split fan-outs, and resumes (`since`) whose floor is attacked.
// ---------------------------------------------------------------------------------------------

/// A client of `negocio` with its own subject on a socket of its own making: a small receive
/// buffer when `rcvbuf` is given, and SO_LINGER 0 (its drop resets the connection) when
/// `reset`; subscribed.
async fn raw_client(
    addr: std::net::SocketAddr,
    negocio: &str,
    sub: &str,
    rcvbuf: Option<u32>,
    reset: bool,
) -> Ws {
    let socket = TcpSocket::new_v4().expect("a socket");
    if let Some(rcvbuf) = rcvbuf {
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    }
    if reset {
        #[allow(deprecated)]
        socket.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    }
    let stream = socket.connect(addr).await.expect("connect");
    let url = format!(
        "ws://{addr}/ws?token={}",
        token(json!({"negocio_id": negocio, "sub": sub}))
    );
    let (socket, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket handshake");
    let mut ws = Ws::new(socket);
    ws.subscribe(negocio).await;
    ws
}

/// Polls `/metrics` of the server at `addr` until `name` is `want`, failing after DEADLINE.
async fn wait_metric(addr: std::net::SocketAddr, name: &str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = crate::helpers::metric_at(addr, name).await;
        if value == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {value}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The in-process server's hub counters: (frames delivered, of them written directly,
/// subscriptions).
fn hub_counters(app: &TestApp) -> (u64, u64, usize) {
    let stats = app.server.as_ref().expect("a server").hub.stats();
    (stats.delivered, stats.written_directly, stats.subscriptions)
}

/// Waits until the hub has delivered at least `want` more frames than `before` (the counter
/// moves just after the clients may already hold them); the hub's counters then.
async fn hub_delivered(app: &TestApp, before: (u64, u64, usize), want: u64) -> (u64, u64, usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = hub_counters(app);
        if now.0 >= before.0 + want {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {} of {want}: {now:?}",
            now.0 - before.0
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 640 subscribers of `ab` (each event a split fan-out), 90 statements committed back to back.
/// 300 of them leave abruptly mid-stream, each after reading 1 to 40 events: a plain drop
/// with unread data (RST), a drop with SO_LINGER 0 (RST), a half-close (shutdown of the write
/// half) that keeps reading until the server ends, or a 4 KiB receive buffer that stops reading
/// (its frames go through its queue) and vanishes two thirds into the stream. Expected: the 340
/// others get every event once, in order; whatever a leaver got is an in-order prefix of the
/// log; the server logs no panic; `citas_realtime_connections` and
/// `citas_realtime_subscriptions` come back to exactly 340; the next events are delivered to
/// exactly those 340 (no ghost subscriber offered a frame), almost all written directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_abrupt_disconnects_mid_split_fan_out_release_everything() {
    const STAYERS: usize = 340;
    const LEAVERS: usize = 300;
    const STATEMENTS: usize = 90;
    const AFTER: usize = 3;
    let db = TestDb::new().await;
    let server = BinaryServer::start(&db.url, &[]).await;
    let addr = server.addr;
    let start = newest_seq(&db).await;
    let want: usize = (0..STATEMENTS).map(|i| 1 + i % 3).sum();

    let (progress_tx, progress_rx) = tokio::sync::watch::channel(0usize);
    let mut stayers = Vec::new();
    for i in 0..STAYERS {
        let mut ws = subject_client(addr, &["ab"], &format!("s{i}")).await;
        stayers.push(tokio::spawn(async move {
            let got = read_events(&mut ws, want, &format!("stayer {i}")).await;
            (seqs_of(&got, "ab"), ws)
        }));
    }
    let mut leavers = Vec::new();
    for i in 0..LEAVERS {
        let kind = i % 4;
        let rcvbuf = (kind == 3).then_some(4096);
        let mut ws = raw_client(addr, "ab", &format!("l{i}"), rcvbuf, kind == 1).await;
        let mut progress = progress_rx.clone();
        leavers.push(tokio::spawn(async move {
            let who = format!("leaver {i} (kind {kind})");
            let after = 1 + (i * 7) % 40;
            let mut got = seqs_of(&read_events(&mut ws, after, &who).await, "ab");
            match kind {
                // Gone, with frames unread in the socket (the kernel resets the connection).
                0 | 1 => drop(ws),
                // No more data from this side: the server ends the connection; until then
                // what arrives is read.
                2 => {
                    if let tokio_tungstenite::MaybeTlsStream::Plain(s) = ws.socket.get_mut() {
                        s.shutdown().await.expect("shutdown the write half");
                    }
                    loop {
                        let msg = next_for(&mut ws, || format!("{who}: not closed")).await;
                        if is_event(&msg) {
                            got.push(brief(&msg).2);
                        } else if msg["type"].as_str().unwrap_or_default().starts_with("__") {
                            break;
                        } else {
                            assert_eq!(msg["type"], "estadisticas", "{who}: {msg}");
                        }
                    }
                }
                // Stops reading: the socket fills, frames wait in its queue; then it vanishes.
                _ => {
                    progress
                        .wait_for(|n| *n >= STATEMENTS * 2 / 3)
                        .await
                        .expect("the writer reports");
                    drop(ws);
                }
            }
            (who, got)
        }));
    }
    let total = (STAYERS + LEAVERS) as f64;
    wait_metric(addr, "citas_realtime_subscriptions", total).await;
    wait_metric(addr, "citas_realtime_connections", total).await;

    let writer = spawn_writer(&db, STATEMENTS, progress_tx, |i| {
        format!(
            "insert into citas (negocio_id) select 'ab' from generate_series(1, {})",
            1 + i % 3
        )
    });
    writer.await.expect("the writer");
    let logged = db.logged_seqs("ab").await;
    assert_eq!(logged.len(), want);
    assert!(logged[0] > start);
    let mut kept = Vec::new();
    for (i, stayer) in stayers.into_iter().enumerate() {
        let (got, ws) = stayer.await.expect("a stayer");
        assert_eq!(got, logged, "stayer {i}");
        kept.push(ws);
    }
    let mut read_by_leavers = [0usize; 4];
    for (i, leaver) in leavers.into_iter().enumerate() {
        let (who, got) = leaver.await.expect("a leaver");
        assert_eq!(got, logged[..got.len()], "{who}: an in-order prefix");
        read_by_leavers[i % 4] += got.len();
    }
    eprintln!("events read by the leavers, by kind: {read_by_leavers:?} (of {want} each)");

    // Everything the leavers held is released.
    wait_metric(addr, "citas_realtime_connections", STAYERS as f64).await;
    wait_metric(addr, "citas_realtime_subscriptions", STAYERS as f64).await;

    // The next events reach exactly the survivors, straight to their sockets.
    let delivered = crate::helpers::metric_at(addr, "citas_realtime_events_delivered_total").await;
    let direct =
        crate::helpers::metric_at(addr, "citas_realtime_frames_written_directly_total").await;
    let readers: Vec<_> = kept
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                seqs_of(
                    &read_events(&mut ws, AFTER, &format!("stayer {i}, after")).await,
                    "ab",
                )
            })
        })
        .collect();
    for _ in 0..AFTER {
        db.execute("insert into citas (negocio_id) values ('ab')")
            .await;
    }
    let logged = db.logged_seqs("ab").await;
    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.expect("a stayer");
        assert_eq!(got, logged[logged.len() - AFTER..], "stayer {i}, after");
    }
    let want_delivered = delivered + (STAYERS * AFTER) as f64;
    let deadline = Instant::now() + DEADLINE;
    let mut now = delivered;
    while now < want_delivered && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = crate::helpers::metric_at(addr, "citas_realtime_events_delivered_total").await;
    }
    assert_eq!(
        now - delivered,
        (STAYERS * AFTER) as f64,
        "frames offered for the last {AFTER} events: only the survivors'"
    );
    let direct = crate::helpers::metric_at(addr, "citas_realtime_frames_written_directly_total")
        .await
        - direct;
    assert!(
        direct >= (STAYERS * AFTER * 9 / 10) as f64,
        "only {direct} of {} frames written directly",
        STAYERS * AFTER
    );
    let logs = server.logs();
    assert!(!logs.contains("panic"), "the server panicked:\n{logs}");
}

/// The next message of `ws` that is not a statistics snapshot, as [`next_for`].
async fn next_message(ws: &mut Ws, who: &str) -> Value {
    loop {
        let msg = next_for(ws, || format!("{who}: no message")).await;
        if msg["type"] != "estadisticas" {
            return msg;
        }
    }
}

/// Sends `subscribe` with `since` (any JSON value) on `ws`; the reply.
async fn subscribe_since(ws: &mut Ws, negocio: &str, since: Value) -> Value {
    let channel = format!("estadisticas:{negocio}");
    ws.send(json!({"type": "subscribe", "channel": channel, "since": since, "stats": false}))
        .await;
    next_message(ws, &format!("subscribe {negocio} since {since}")).await
}

/// One connection resumes with hostile `since` values. A negative one, one beyond i64, a float,
/// a string, an array: `bad_request`, no subscription (a later event of that negocio does not
/// come), the connection lives. `i64::MAX`, and a since a few seqs ahead of the log: `resync`
/// right after `subscribed`, then every live event, including those whose seq is at or below
/// that since (the resync lifted the floor). 0: the whole log of the negocio, then live. After
/// all of it the connection's events are written straight to its socket again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_hostile_since_values_are_refused_or_resynced_then_live() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    db.execute(
        "insert into citas (negocio_id) \
         select n from unnest(array['hx', 'hy', 'hz']) n, generate_series(1, 5)",
    )
    .await;
    let mut ws = app
        .ws(&token(
            json!({"negocio_ids": ["hx", "hy", "hz", "hn"], "sub": "hostile"}),
        ))
        .await;
    let refused = [
        json!(-1),
        json!(i64::MIN),
        json!(9_223_372_036_854_775_808u64),
        json!(1.5),
        json!(1e300),
        json!("5"),
        json!([1]),
        json!({"seq": 1}),
    ];
    for since in refused {
        let reply = subscribe_since(&mut ws, "hn", since.clone()).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "since {since}: {reply}"
        );
    }
    assert_eq!(hub_counters(&app).2, 0, "a refused since subscribed");

    // Far beyond the log.
    let reply = subscribe_since(&mut ws, "hx", json!(i64::MAX)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let reply = next_message(&mut ws, "hx since i64::MAX").await;
    assert_eq!(
        (reply["type"].as_str(), reply["channel"].as_str()),
        (Some("resync"), Some("estadisticas:hx")),
        "{reply}"
    );
    db.execute("insert into citas (negocio_id) select 'hx' from generate_series(1, 3)")
        .await;
    let logged_hx = db.logged_seqs("hx").await;
    let got = read_events(&mut ws, 3, "hx after resync").await;
    assert_eq!(seqs_of(&got, "hx"), logged_hx[5..], "hx after resync");

    // Just ahead of the log: the next events have seqs at and below since, and must come.
    let since = newest_seq(&db).await + 3;
    let reply = subscribe_since(&mut ws, "hy", json!(since)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let reply = next_message(&mut ws, "hy since newest + 3").await;
    assert_eq!(reply["type"], "resync", "hy since {since}: {reply}");
    db.execute("insert into citas (negocio_id) select 'hy' from generate_series(1, 6)")
        .await;
    let logged_hy = db.logged_seqs("hy").await;
    assert!(logged_hy[5] <= since, "events at or below since follow");
    let got = read_events(&mut ws, 6, &format!("hy after resync (since {since})")).await;
    assert_eq!(seqs_of(&got, "hy"), logged_hy[5..], "hy since {since}");

    // Zero: everything.
    let reply = subscribe_since(&mut ws, "hz", json!(0)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let got = read_events(&mut ws, 5, "hz since 0").await;
    assert_eq!(
        seqs_of(&got, "hz"),
        db.logged_seqs("hz").await,
        "hz since 0"
    );
    assert!(events_until_pong(&mut ws, "hz since 0").await.is_empty());

    // No subscription was left by the refusals: an `hn` event does not come.
    assert_eq!(hub_counters(&app).2, 3);
    db.execute("insert into citas (negocio_id) values ('hn'), ('hz')")
        .await;
    let got = read_events(&mut ws, 1, "hz after hn").await;
    assert_eq!(got[0].0, "hz", "{got:?}");
    assert!(events_until_pong(&mut ws, "after hn").await.is_empty());

    // Back on the direct path: of the next events, at most the first goes through the queue.
    five_events_mostly_written_directly(&app, &db, &mut ws, "hx").await;
}

/// Five events of `negocio`, each read by `ws` (its only subscriber): at most the first goes
/// through the connection's queue, the others are written directly (no floor or replay
/// de-duplication holds the connection on the queued path).
async fn five_events_mostly_written_directly(
    app: &TestApp,
    db: &TestDb,
    ws: &mut Ws,
    negocio: &str,
) {
    let before = hub_counters(app);
    for i in 0..5 {
        db.execute(&format!(
            "insert into citas (negocio_id) values ('{negocio}')"
        ))
        .await;
        read_events(ws, 1, &format!("{negocio} direct {i}")).await;
    }
    let after = hub_delivered(app, before, 5).await;
    assert!(
        after.1 - before.1 >= 4,
        "written directly: {} of 5",
        after.1 - before.1
    );
}

/// A connection in an open transaction that has inserted `rows` citas of `negocio`; their
/// seqs, in order (drawn, not committed).
async fn open_transaction_inserting(
    db: &TestDb,
    negocio: &str,
    rows: usize,
) -> (tokio_postgres::Client, Vec<i64>) {
    let long = connect(&db.url).await;
    long.batch_execute(&format!(
        "begin; insert into citas (negocio_id) select '{negocio}' from generate_series(1, {rows})"
    ))
    .await
    .expect("the open transaction");
    let seqs: Vec<i64> = long
        .query(
            "select seq from citas_realtime.events where negocio_id = $1 order by seq",
            &[&negocio],
        )
        .await
        .expect("its own rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs.len(), rows);
    (long, seqs)
}

/// A transaction inserts 10 `ot` rows (their seqs drawn, uncommitted) and stays open while 5
/// more commit. Clients resume with `since` below the open range, inside it, and above it
/// (among the committed rows). Expected: each replay is the committed rows after its since;
/// when the transaction commits, its rows reach a subscription only above its since (all of
/// them, none of them, the upper half), once, followed by the next event; from then on the
/// connections' events are written directly again (no floor left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_since_inside_an_open_transactions_range() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let addr = app.addr;
    let mut reader = subject_client(addr, &["ot"], "reader").await;
    let (long, open) = open_transaction_inserting(&db, "ot", 10).await;
    db.execute("insert into citas (negocio_id) select 'ot' from generate_series(1, 5)")
        .await;
    let committed = db.logged_seqs("ot").await;
    assert_eq!(committed.len(), 5);
    assert!(committed[0] > open[9]);
    assert_eq!(
        seqs_of(&read_events(&mut reader, 5, "reader").await, "ot"),
        committed
    );

    let sinces = [open[0] - 1, open[4], committed[1]];
    let mut resumed = Vec::new();
    for (n, since) in sinces.into_iter().enumerate() {
        let who = format!("resume {n} (since {since})");
        let mut ws = resume_client(addr, "ot", &format!("res{n}"), since).await;
        let want: Vec<i64> = committed.iter().copied().filter(|s| *s > since).collect();
        let mut got = seqs_of(&read_events(&mut ws, want.len(), &who).await, "ot");
        got.extend(seqs_of(&events_until_pong(&mut ws, &who).await, "ot"));
        assert_eq!(got, want, "{who}: the replay");
        resumed.push((who, since, ws));
    }

    long.batch_execute("commit").await.expect("commit");
    db.execute("insert into citas (negocio_id) values ('ot')")
        .await;
    let marker = *db.logged_seqs("ot").await.last().expect("the marker");
    let mut after_commit = open.clone();
    after_commit.push(marker);
    assert_eq!(
        seqs_of(&read_events(&mut reader, 11, "reader").await, "ot"),
        after_commit
    );
    for (who, since, ws) in &mut resumed {
        let want: Vec<i64> = after_commit
            .iter()
            .copied()
            .filter(|s| *s > *since)
            .collect();
        let mut got = seqs_of(&read_events(ws, want.len(), who).await, "ot");
        got.extend(seqs_of(&events_until_pong(ws, who).await, "ot"));
        assert_eq!(got, want, "{who}: after the long transaction committed");
    }

    // No floor is left: the next events go straight to the four sockets.
    let before = hub_counters(&app);
    for i in 0..4 {
        db.execute("insert into citas (negocio_id) values ('ot')")
            .await;
        let want = *db.logged_seqs("ot").await.last().expect("an event");
        let who = format!("direct {i}");
        assert_eq!(read_events(&mut reader, 1, &who).await[0].1, want);
        for (who, _, ws) in &mut resumed {
            assert_eq!(read_events(ws, 1, who).await[0].1, want, "{who}");
        }
    }
    let after = hub_delivered(&app, before, 16).await;
    assert!(
        after.1 - before.1 >= 12,
        "written directly: {} of 16",
        after.1 - before.1
    );
}

/// `since` at seqs burned by rollbacks: one inside a transaction still open when the client
/// resumes (it rolls back later, and no NOTIFY says so), one of a transaction rolled back
/// before. Expected: each replay is the committed rows after its since; every later event
/// arrives once, in order; and the connections get back to direct writes within a few events
/// (the floor does not hold them on the queued path for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_since_at_rolled_back_seqs_then_back_to_direct_writes() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let addr = app.addr;
    let mut reader = subject_client(addr, &["rb"], "reader").await;
    let (long, open) = open_transaction_inserting(&db, "rb", 10).await;
    let open = open[0];
    db.execute("insert into citas (negocio_id) select 'rb' from generate_series(1, 3)")
        .await;
    let mut logged = db.logged_seqs("rb").await;
    assert_eq!(
        seqs_of(&read_events(&mut reader, 3, "reader").await, "rb"),
        logged
    );
    let inside = open + 5;
    let mut first = resume_client(addr, "rb", "first", inside).await;
    assert_eq!(
        seqs_of(&read_events(&mut first, 3, "first").await, "rb"),
        logged
    );
    long.batch_execute("rollback").await.expect("rollback");

    // Seqs burned by a rollback that already happened.
    db.client
        .batch_execute(
            "begin; insert into citas (negocio_id) select 'rb' from generate_series(1, 5); \
             rollback",
        )
        .await
        .expect("a rolled-back insert");
    let before_rollback = newest_seq(&db).await;
    db.execute("insert into citas (negocio_id) select 'rb' from generate_series(1, 2)")
        .await;
    logged = db.logged_seqs("rb").await;
    let two = &logged[3..];
    // Strictly between the last committed seq and the next: one the rollback burned.
    let burned = (before_rollback + two[0]) / 2;
    assert!(
        before_rollback < burned && burned < two[0],
        "a burned seq: {burned}, between {before_rollback} and {two:?}"
    );
    for (who, ws) in [("reader", &mut reader), ("first", &mut first)] {
        assert_eq!(seqs_of(&read_events(ws, 2, who).await, "rb"), two, "{who}");
    }
    let mut second = resume_client(addr, "rb", "second", burned).await;
    assert_eq!(
        seqs_of(&read_events(&mut second, 2, "second").await, "rb"),
        two
    );
    assert!(events_until_pong(&mut second, "second").await.is_empty());

    // One event at a time, until all three sockets were written directly.
    let mut clients = [("reader", reader), ("first", first), ("second", second)];
    for i in 0.. {
        assert!(i < 20, "still on the queued path after {i} events");
        let before = hub_counters(&app);
        db.execute("insert into citas (negocio_id) values ('rb')")
            .await;
        let want = *db.logged_seqs("rb").await.last().expect("an event");
        for (who, ws) in &mut clients {
            assert_eq!(read_events(ws, 1, who).await[0].1, want, "{who}: event {i}");
        }
        let after = hub_delivered(&app, before, 3).await;
        if after.1 - before.1 == 3 {
            eprintln!("all three written directly from event {i} on");
            break;
        }
    }
    for (who, ws) in &mut clients {
        assert!(events_until_pong(ws, who).await.is_empty(), "{who}");
    }
}

/// One subscription of [`adversarial_since_cycles_across_many_negocios_on_one_connection`].
#[derive(Debug)]
struct Segment {
    negocio: String,
    since: i64,
    /// The log's newest seq before the subscribe was sent: every event of the negocio after
    /// `since` up to it must be in the replay.
    newest: i64,
    resync: bool,
    events: Vec<i64>,
}

/// One connection, 30 negocios, while a writer commits single events to them back to back:
/// four rounds of pipelined `subscribe` with `since` + `unsubscribe` for every negocio, with
/// the since the client last saw, 0, far beyond the log, `i64::MAX`, or the middle of the log
/// (another negocio's seq). Expected per subscription: `subscribed`, then `resync` first when
/// (and only when) the since was beyond the log, else the log after the since, contiguous and
/// complete up to where the log was when the subscribe was sent; nothing after `unsubscribed`.
/// A transaction of another negocio, open through the first two rounds, holds a seq below
/// every since (so those subscriptions keep floors). Then every negocio resumes with its last
/// seq: exactly the rest of the log, each once, and the connection's next events are written
/// directly (no floor or replay left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_since_cycles_across_many_negocios_on_one_connection() {
    const NEGOCIOS: usize = 30;
    const ROUNDS: usize = 4;
    const WRITES: usize = 300;
    let db = TestDb::new().await;
    let config = config_with(&db.url, |a| a.client_message_burst = "10000".into());
    let app = spawn_app_ready(config).await;
    let names: Vec<String> = (0..NEGOCIOS).map(|n| format!("cy{n}")).collect();
    db.execute(&format!(
        "insert into citas (negocio_id) \
         select 'cy' || n from generate_series(0, {}) n, generate_series(1, 3)",
        NEGOCIOS - 1
    ))
    .await;
    let mut ws = app
        .ws(&token(json!({"negocio_ids": names, "sub": "cycler"})))
        .await;
    // A seq of another negocio held by an open transaction, below every since of the first
    // rounds: their subscriptions keep floors until it commits (in round 2).
    let long = connect(&db.url).await;
    long.batch_execute("begin; insert into citas (negocio_id) values ('cyx')")
        .await
        .expect("the long transaction");
    let (progress_tx, progress) = tokio::sync::watch::channel(0usize);
    let writer = spawn_writer(&db, WRITES, progress_tx, |i| {
        format!(
            "insert into citas (negocio_id) values ('cy{}')",
            (i * 7) % NEGOCIOS
        )
    });
    let negocio_of = |msg: &Value| -> String {
        msg["channel"]
            .as_str()
            .and_then(|c| c.strip_prefix("estadisticas:"))
            .unwrap_or_else(|| panic!("no channel: {msg}"))
            .to_string()
    };
    let mut last_seen: std::collections::HashMap<String, i64> =
        names.iter().map(|n| (n.clone(), 0)).collect();
    let mut segments: Vec<Segment> = Vec::new();
    // The subscription each negocio has (an index into `segments`).
    let mut open: std::collections::HashMap<String, usize> = Default::default();
    for round in 0..=ROUNDS {
        // Each round while the writer is still writing; events pile up unread meanwhile.
        let mut progress = progress.clone();
        progress
            .wait_for(|n| *n >= round * WRITES / (ROUNDS + 2))
            .await
            .expect("the writer reports");
        if round == 2 {
            long.batch_execute("commit").await.expect("commit");
        }
        let newest = newest_seq(&db).await;
        let mut sent = std::collections::HashMap::new();
        let mut awaited = 0;
        for (n, name) in names.iter().enumerate() {
            let channel = format!("estadisticas:{name}");
            if round > 0 {
                ws.send(json!({"type": "unsubscribe", "channel": channel}))
                    .await;
                awaited += 1;
            }
            if round == ROUNDS {
                continue;
            }
            let since = match (n + round) % 5 {
                0 => last_seen[name],
                1 => 0,
                2 => newest + 100_000,
                3 => i64::MAX,
                _ => newest / 2,
            };
            sent.insert(name.clone(), since);
            ws.send(
                json!({"type": "subscribe", "channel": channel, "since": since, "stats": false}),
            )
            .await;
            awaited += 1;
        }
        while awaited > 0 {
            let who = format!("round {round}");
            let msg = next_message(&mut ws, &who).await;
            let kind = msg["type"].as_str().unwrap_or_default();
            if is_event(&msg) {
                let (_, negocio, seq) = brief(&msg);
                let Some(&at) = open.get(&negocio) else {
                    panic!("{who}: event {seq} of {negocio}, not subscribed to it");
                };
                segments[at].events.push(seq);
                last_seen.insert(negocio, seq);
                continue;
            }
            let negocio = negocio_of(&msg);
            match kind {
                "subscribed" => {
                    let since = sent
                        .remove(&negocio)
                        .unwrap_or_else(|| panic!("{who}: {msg} unasked; segments {segments:?}"));
                    assert!(!open.contains_key(&negocio), "{who}: {msg} twice");
                    open.insert(negocio.clone(), segments.len());
                    segments.push(Segment {
                        negocio,
                        since,
                        newest,
                        resync: false,
                        events: Vec::new(),
                    });
                }
                "resync" => {
                    let at = *open.get(&negocio).expect("resync of a subscription");
                    assert!(
                        segments[at].events.is_empty() && !segments[at].resync,
                        "{who}: {msg} after {:?}",
                        segments[at]
                    );
                    segments[at].resync = true;
                    // Not a reply of its own.
                    continue;
                }
                "unsubscribed" => {
                    open.remove(&negocio)
                        .unwrap_or_else(|| panic!("{who}: {msg} before subscribed"));
                }
                _ => panic!("{who}: {msg}"),
            }
            awaited -= 1;
        }
    }
    assert!(open.is_empty());
    assert!(events_until_pong(&mut ws, "after the rounds")
        .await
        .is_empty());
    writer.await.expect("the writer");

    // Resume everything where it was left.
    let mut finals = Vec::new();
    for name in &names {
        let since = last_seen[name];
        let channel = format!("estadisticas:{name}");
        ws.send(json!({"type": "subscribe", "channel": channel, "since": since, "stats": false}))
            .await;
        finals.push((name.clone(), since));
    }
    let mut rest = Vec::new();
    let mut subscribed = HashSet::new();
    while subscribed.len() < NEGOCIOS {
        let msg = next_message(&mut ws, "final resumes").await;
        if is_event(&msg) {
            let (_, negocio, seq) = brief(&msg);
            assert!(
                subscribed.contains(&negocio),
                "{negocio} {seq} before subscribed"
            );
            rest.push((negocio, seq));
        } else {
            assert_eq!(msg["type"], "subscribed", "final resumes: {msg}");
            assert!(subscribed.insert(negocio_of(&msg)), "{msg} twice");
        }
    }
    rest.extend(events_until_pong(&mut ws, "final resumes").await);
    for i in 0..NEGOCIOS {
        db.execute(&format!(
            "insert into citas (negocio_id) values ('cy{}')",
            (i * 11) % NEGOCIOS
        ))
        .await;
    }
    rest.extend(read_events(&mut ws, NEGOCIOS, "final live").await);
    rest.extend(events_until_pong(&mut ws, "final live").await);

    let mut logs = std::collections::HashMap::new();
    for name in &names {
        logs.insert(name.clone(), db.logged_seqs(name).await);
    }
    let mut resyncs = 0;
    for (n, seg) in segments.iter().enumerate() {
        let logged = &logs[&seg.negocio];
        let what = format!("subscription {n}: {seg:?}");
        let beyond = seg.since > seg.newest;
        assert_eq!(
            seg.resync, beyond,
            "{what}: resync iff since beyond the log"
        );
        if seg.resync {
            resyncs += 1;
            if let Some(first) = seg.events.first() {
                assert_contiguous(logged, first - 1, &seg.events, &what);
            }
        } else {
            assert_contiguous(logged, seg.since, &seg.events, &what);
            let due = logged
                .iter()
                .filter(|s| **s > seg.since && **s <= seg.newest)
                .count();
            assert!(seg.events.len() >= due, "{what}: {due} due");
        }
    }
    for (name, since) in &finals {
        let got = seqs_of(&rest, name);
        let want: Vec<i64> = logs[name].iter().copied().filter(|s| s > since).collect();
        assert_eq!(got, want, "final resume of {name} since {since}");
    }
    eprintln!(
        "{} subscriptions, {resyncs} resynced; hub {:?}",
        segments.len(),
        hub_counters(&app)
    );

    // Nothing holds the connection on the queued path any more.
    assert_eq!(hub_counters(&app).2, NEGOCIOS);
    five_events_mostly_written_directly(&app, &db, &mut ws, "cy0").await;
}
