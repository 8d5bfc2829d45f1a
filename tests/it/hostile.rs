//! Inputs nobody had tried: row values, token values, frames and bodies a stranger controls.
//! Each test here failed before the mechanism it names was fixed.

use std::time::{Duration, Instant};

use citas_realtime::auth::jwt::mint_token;
use citas_realtime::auth::SecretString;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    brief, config_with, connect, listen, spawn_app, spawn_app_ready, token, TestDb, DEADLINE,
    SECRET,
};

/// A row whose negocio is `''` is logged like any other but reaches nobody, live or on
/// replay; a TRUNCATE (marked by its action, not by a negocio) still resyncs everyone.
#[tokio::test]
async fn an_empty_negocio_reaches_nobody_and_truncate_still_resyncs() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut live = app.subscriber(&["a"]).await;
    db.execute("insert into citas (negocio_id, estado) values ('', 'confirmada')")
        .await;
    db.execute("update citas set estado = 'cancelada' where negocio_id = ''")
        .await;
    db.execute("insert into citas (negocio_id) values ('a')")
        .await;
    db.execute("delete from citas where negocio_id = ''").await;
    db.execute("insert into citas (negocio_id) values ('a')")
        .await;
    let logged = db.logged("").await;
    assert_eq!(logged.len(), 3, "the empty negocio's changes are logged");
    let own = db.logged("a").await;
    // Live: only a's two events, nothing of ''.
    let got: Vec<i64> = live.events(2).await.iter().map(|e| brief(e).2).collect();
    assert_eq!(got, own.iter().map(|(s, _)| *s).collect::<Vec<_>>());

    // Replay from the start: a's events, nothing of ''. A marker written afterwards must be
    // the very next event.
    let mut resumed = app.ws(&token(json!({"negocio_id": "a"}))).await;
    resumed
        .send(json!({"type": "subscribe", "channel": "estadisticas:a", "since": 0}))
        .await;
    resumed.expect("subscribed").await;
    let replayed: Vec<(String, String, i64)> = resumed.events(2).await.iter().map(brief).collect();
    assert!(
        replayed.iter().all(|(_, negocio, _)| negocio == "a"),
        "{replayed:?}"
    );
    db.execute("insert into citas (negocio_id) values ('')")
        .await;
    db.execute("insert into citas (negocio_id, estado) values ('a', 'completada')")
        .await;
    let next = resumed.events(1).await.remove(0);
    assert_eq!(next["data"]["estado"], "completada", "{next}");
    live.events(1).await;

    // TRUNCATE: resync to the live subscriber, and to a replay that crosses it.
    let before: i64 = db
        .scalar("select coalesce(max(seq), 0) from citas_realtime.events")
        .await;
    db.execute("truncate citas").await;
    assert_eq!(live.expect("resync").await["channel"], "estadisticas:a");
    let mut late = app.ws(&token(json!({"negocio_id": "a"}))).await;
    late.send(json!({"type": "subscribe", "channel": "estadisticas:a", "since": before}))
        .await;
    late.expect("subscribed").await;
    assert_eq!(late.expect("resync").await["channel"], "estadisticas:a");
}

/// A transaction holds its seq while another session burns 100,000 seqs in rolled-back
/// writes (with commits between them, so each rollback is a gap of its own): when it commits,
/// its live subscriber gets the event.
#[tokio::test]
async fn a_long_transaction_is_delivered_after_100000_rollbacks() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut victim = app.subscriber(&["victima"]).await;
    let writer = connect(&db.url).await;
    writer.batch_execute("begin").await.unwrap();
    writer
        .batch_execute("insert into citas (negocio_id) values ('victima')")
        .await
        .unwrap();
    db.execute(
        "do $$ begin
           for i in 1..100000 loop
             insert into citas (negocio_id) values ('ruido'); rollback;
             insert into citas (negocio_id) values ('ruido'); commit;
           end loop;
         end $$",
    )
    .await;
    // Every committed noise event has been read before the victim commits.
    let newest: i64 = db
        .scalar("select max(seq) from citas_realtime.events")
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.wait_health(200).await["last_seq"].as_i64() < Some(newest) {
        assert!(Instant::now() < deadline, "the listener never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.batch_execute("commit").await.unwrap();
    let event = victim.events(1).await.remove(0);
    assert_eq!(brief(&event).0, "cita_created");
    assert_eq!(brief(&event).1, "victima");
}

/// A 1 MB estado: the live subscriber and a resuming one both get the event, its estado cut to
/// 1 KiB and flagged, and stay connected.
#[tokio::test]
async fn a_1mb_estado_closes_nobody() {
    let db = TestDb::new().await;
    db.execute("alter table citas drop constraint citas_estado_check")
        .await;
    let app = spawn_app(&db.url).await;
    let mut live = app.subscriber(&["big"]).await;
    db.execute("insert into citas (negocio_id, estado) values ('big', repeat('é', 500000))")
        .await;
    // A log row written before install.sql bounded values (or by hand) is bounded on the wire.
    db.execute(
        "insert into citas_realtime.events (negocio_id, cita_id, action, estado)
         values ('big', repeat('c', 300000), 'created', repeat('x', 1000000))",
    )
    .await;
    let check = |event: &Value| {
        let estado = event["data"]["estado"].as_str().unwrap_or_default();
        assert!(
            estado.len() <= 1024 && estado.len() > 1000,
            "{}",
            estado.len()
        );
        assert_eq!(event["data"]["fields_truncated"], true);
        assert!(event["data"]["cita_id"].as_str().unwrap_or_default().len() <= 1024);
    };
    for event in live.events(2).await {
        check(&event);
    }
    db.execute("insert into citas (negocio_id) values ('big')")
        .await;
    let normal = live.events(1).await.remove(0);
    assert!(normal["data"].get("fields_truncated").is_none(), "{normal}");

    let mut resumed = app.ws(&token(json!({"negocio_id": "big"}))).await;
    resumed
        .send(json!({"type": "subscribe", "channel": "estadisticas:big", "since": 0}))
        .await;
    resumed.expect("subscribed").await;
    let replayed = resumed.events(3).await;
    check(&replayed[0]);
    check(&replayed[1]);
    db.execute("insert into citas (negocio_id) values ('big')")
        .await;
    resumed.events(1).await;
    live.events(1).await;
}

/// Ids of 10 KB: inserts, updates and deletes all succeed (nothing of ours makes a writer's
/// change fail), and the events reach nobody (no channel can name such a negocio).
#[tokio::test]
async fn ten_kb_ids_never_fail_a_writer() {
    let db = TestDb::empty().await;
    db.client
        .batch_execute(
            "create table public.citas (id text not null, negocio_id text not null,
                                        estado text not null default 'pendiente')",
        )
        .await
        .unwrap();
    db.client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await
        .unwrap();
    // Random text does not compress: 10 KB of it is more than a btree entry may hold.
    let random = "(select string_agg(md5(random()::text), '') from generate_series(1, 320))";
    for negocio in [random.to_string(), format!("replace({random}, 'a', 'ñ')")] {
        db.execute(&format!(
            "insert into citas (id, negocio_id) values ({random}, {negocio})"
        ))
        .await;
    }
    db.execute("update citas set estado = 'confirmada'").await;
    db.execute("update citas set negocio_id = negocio_id || 'x'")
        .await;
    db.execute("update citas set id = id || 'y'").await;
    db.execute("delete from citas").await;
    let logged: i64 = db
        .scalar("select count(*) from citas_realtime.events where length(negocio_id) = 257")
        .await;
    assert_eq!(logged, 2 + 2 + 4 + 4 + 2);
}

/// A token whose `exp` is u64::MAX: no arithmetic panics, the connection works, an `auth`
/// with such a token works, and when the socket closes the hub holds nothing of it.
#[tokio::test]
async fn a_far_future_exp_works_and_leaves_nothing_behind() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let forever = |sub: &str| {
        mint_token(
            &SecretString::from(SECRET),
            json!({"sub": sub, "negocio_id": "x", "exp": u64::MAX}),
            Duration::ZERO,
        )
        .unwrap()
    };
    let mut ws = app.ws(&forever("u")).await;
    ws.subscribe("x").await;
    ws.send(json!({"type": "auth", "token": forever("u")}))
        .await;
    ws.expect("authenticated").await;
    db.execute("insert into citas (negocio_id) values ('x')")
        .await;
    ws.events(1).await;
    ws.socket.close(None).await.unwrap();
    drop(ws);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let health = app.wait_health(200).await;
        if health["connections"] == 0 && health["subscriptions"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `auth` may refresh the token of the connection's own subject, never switch to another.
#[tokio::test]
async fn auth_for_another_subject_is_refused() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app
        .ws(&token(json!({"sub": "ana", "negocio_id": "a"})))
        .await;
    ws.subscribe("a").await;
    ws.send(json!({"type": "auth", "token": token(json!({"sub": "bea", "negocio_id": "b"}))}))
        .await;
    let refused = ws.expect("error").await;
    assert_eq!(refused["code"], "unauthorized");
    assert!(refused["message"].as_str().unwrap().contains("subject"));
    // Still ana: b is refused, a keeps flowing.
    ws.send(json!({"type": "subscribe", "channel": "estadisticas:b"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "forbidden");
    db.execute("insert into citas (negocio_id) values ('a')")
        .await;
    ws.events(1).await;
    ws.send(json!({"type": "auth", "token": token(json!({"sub": "ana", "negocio_id": "a"}))}))
        .await;
    ws.expect("authenticated").await;
}

/// A client's Close frame is answered with a Close frame (RFC 6455 §5.5.1).
#[tokio::test]
async fn a_close_frame_is_answered() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["a"]).await;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.socket.send(Message::Close(Some(frame))).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, ws.socket.next())
        .await
        .expect("an answer");
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Protocol errors close with the code RFC 6455 gives them, not a bare TCP close.
#[tokio::test]
async fn protocol_errors_close_with_1002_and_1007() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    // A text frame (FIN, opcode 1) with RSV1 set, masked, empty payload.
    let rsv1 = [0xC1, 0x80, 1, 2, 3, 4];
    assert_eq!(close_code_after(&app, &rsv1).await, 1002);
    // An unknown opcode (3).
    assert_eq!(
        close_code_after(&app, &[0x83, 0x80, 1, 2, 3, 4]).await,
        1002
    );
    // A text frame whose payload is not UTF-8 (0xFF), masked with a zero key.
    assert_eq!(
        close_code_after(&app, &[0x81, 0x81, 0, 0, 0, 0, 0xFF]).await,
        1007
    );
}

/// An empty text frame that is not the last of its message, then empty continuation frames
/// forever: tungstenite shows no message, so only a byte budget can stop it (found by the
/// adversarial pass: a core per connection until the ping timeout).
#[tokio::test]
async fn a_flood_of_continuation_frames_is_closed_with_1008() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut flood = vec![0x01, 0x80, 0, 0, 0, 0];
    for _ in 0..300_000 {
        flood.extend_from_slice(&[0x00, 0x80, 0, 0, 0, 0]);
    }
    let started = Instant::now();
    assert_eq!(close_code_after(&app, &flood).await, 1008);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Opens a WebSocket by hand, sends `frame`, and returns the code of the server's close frame.
async fn close_code_after(app: &crate::helpers::TestApp, frame: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token(json!({"negocio_id": "a"})),
        app.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.expect("the 101 answer");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let (mut rd, mut wr) = tcp.into_split();
    // The server may stop reading (and close) before all of it is written.
    let frame = frame.to_vec();
    tokio::spawn(async move { wr.write_all(&frame).await });
    let mut reply = [0u8; 4];
    tokio::time::timeout(DEADLINE, rd.read_exact(&mut reply))
        .await
        .expect("an answer in time")
        .expect("a close frame, not a bare TCP close");
    assert_eq!(reply[0], 0x88, "a close frame: {reply:?}");
    u16::from_be_bytes([reply[2], reply[3]])
}

/// `POST /notify/cita` refuses, with 400 and a reason, what it would otherwise store wrongly
/// or fail on: NUL in text, floats and integers beyond 2^53 as ids, a mistyped cita_id.
#[tokio::test]
async fn notify_bodies_with_bad_values_are_400() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let service = token(json!({"role": "service_role"}));
    let post = |body: String| {
        let (url, service) = (app.url("/notify/cita"), service.clone());
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(service)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    for body in [
        r#"{"negocio_id":"a\u0000b","action":"created"}"#,
        r#"{"negocio_id":"a","action":"created","estado":"x\u0000"}"#,
        r#"{"negocio_id":"a","action":"created","cita_id":"c\u0000"}"#,
        r#"{"negocio_id":123456789012345678901234567890,"action":"created"}"#,
        r#"{"negocio_id":9007199254740993,"action":"created"}"#,
        r#"{"negocio_id":1.0,"action":"created"}"#,
        r#"{"negocio_id":"a","action":"created","cita_id":true}"#,
        r#"{"negocio_id":"a","action":"created","cita_id":{"id":1}}"#,
        r#"{"negocio_id":"a","action":"created","cita_id":2.5}"#,
    ] {
        let response = post(body.to_string()).await;
        assert_eq!(response.status(), 400, "{body}");
        let reason: Value = response.json().await.unwrap();
        assert!(reason["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let ok = post(r#"{"negocio_id":9007199254740991,"action":"created","cita_id":7}"#.into()).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(db.logged("9007199254740991").await.len(), 1);
}

/// notify_cita()'s notification carries seqs and a count, like the triggers': any role may
/// LISTEN on the channel, and negocio ids are not for everyone.
#[tokio::test]
async fn notify_cita_announces_no_negocio() {
    let db = TestDb::new().await;
    let (_listener, mut payloads) = listen(&db.url, "citas_realtime").await;
    let seq: i64 = db
        .scalar("select citas_realtime.notify_cita('secreto', 'created')")
        .await;
    let payload = tokio::time::timeout(DEADLINE, payloads.recv())
        .await
        .unwrap()
        .unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload,
        json!({"last_seq": seq, "count": 1, "action": "created"})
    );
}

/// When the access hook fails, the client is told to try again, not the database's error.
#[tokio::test]
async fn a_failing_access_hook_tells_the_client_nothing_of_the_database() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "create function public.can_subscribe(claims jsonb, negocio_id text)
             returns boolean language plpgsql as $$
             begin raise exception 'secret table members is locked'; end $$;",
        )
        .await
        .unwrap();
    let app = spawn_app_ready(config_with(&db.url, |a| {
        a.can_subscribe_function = Some("public.can_subscribe".into())
    }))
    .await;
    let mut ws = app.ws(&token(json!({"sub": "u"}))).await;
    ws.send(json!({"type": "subscribe", "channel": "estadisticas:z"}))
        .await;
    let error = ws.expect("error").await;
    assert_eq!(error["code"], "unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(!message.contains("secret"), "{message}");
    assert!(message.contains("try again"), "{message}");
}

/// A transaction holds its seq across a server restart while rolled-back writes burn more
/// seqs than the first read looks back: the restarted server still delivers it to a client
/// that resumed before the commit (found by the adversarial pass).
#[tokio::test]
async fn a_transaction_open_across_a_restart_is_delivered() {
    let db = TestDb::new().await;
    let mut first = spawn_app(&db.url).await;
    let mut client = first.subscriber(&["r"]).await;
    db.execute("insert into citas (negocio_id) values ('r')")
        .await;
    let seen = brief(&client.events(1).await[0]).2;
    let writer = connect(&db.url).await;
    writer
        .batch_execute("begin; insert into citas (negocio_id) values ('r')")
        .await
        .unwrap();
    db.execute(
        "do $$ begin
           for i in 1..1500 loop
             insert into citas (negocio_id) values ('ruido'); rollback;
           end loop;
           insert into citas (negocio_id) values ('otro'); commit;
         end $$",
    )
    .await;
    first.shutdown().await;
    drop(client);
    let second = spawn_app(&db.url).await;
    client = second.ws(&token(json!({"negocio_id": "r"}))).await;
    client
        .send(json!({"type": "subscribe", "channel": "estadisticas:r", "since": seen}))
        .await;
    client.expect("subscribed").await;
    // The replay is over once the next message is answered: the commit comes after it.
    client.send(json!({"type": "ping"})).await;
    client.expect("pong").await;
    writer.batch_execute("commit").await.unwrap();
    let event = client.events(1).await.remove(0);
    assert_eq!(brief(&event).1, "r");
    assert_eq!(brief(&event).2, seen + 1);
}

/// A hook that hangs (a lock wait, say) is ended by the database at the check's timeout: the
/// pool's connections go back to replays and `POST /notify/cita` within seconds, not when the
/// function returns (found by the adversarial pass: 30 s of stalled replays).
#[tokio::test]
async fn a_hanging_access_hook_does_not_hold_the_pool() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "create function public.can_subscribe(claims jsonb, negocio_id text)
             returns boolean language plpgsql as $$
             begin perform pg_sleep(30); return true; end $$;",
        )
        .await
        .unwrap();
    let app = spawn_app_ready(config_with(&db.url, |a| {
        a.can_subscribe_function = Some("public.can_subscribe".into())
    }))
    .await;
    // Four hanging checks: as many as the pool has connections.
    let mut waiting = Vec::new();
    for i in 0..4 {
        let mut ws = app.ws(&token(json!({"sub": format!("u{i}")}))).await;
        ws.send(json!({"type": "subscribe", "channel": format!("estadisticas:lento{i}")}))
            .await;
        waiting.push(ws);
    }
    for ws in &mut waiting {
        assert_eq!(ws.expect("error").await["code"], "unavailable");
    }
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(app.url("/notify/cita"))
        .bearer_auth(token(json!({"role": "service_role"})))
        .json(&json!({"negocio_id": "n", "action": "created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut resumed = app.ws(&token(json!({"negocio_id": "n"}))).await;
    resumed
        .send(json!({"type": "subscribe", "channel": "estadisticas:n", "since": 0}))
        .await;
    resumed.expect("subscribed").await;
    resumed.events(1).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the pool was held for {took:?}"
    );
}

/// A `citas.id` that may be NULL never fails a writer and still gives events (with no cita
/// id); an id type without `=` (json) is refused at install, not at a writer's UPDATE (found by
/// the adversarial pass).
#[tokio::test]
async fn null_ids_give_events_and_incomparable_ids_are_refused_at_install() {
    let db = TestDb::empty().await;
    db.client
        .batch_execute(
            "create table public.citas (id bigint, negocio_id text not null,
                                        estado text not null default 'pendiente')",
        )
        .await
        .unwrap();
    db.client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await
        .unwrap();
    db.execute("insert into citas (id, negocio_id) values (null, 'nulo'), (7, 'nulo')")
        .await;
    db.execute("update citas set estado = 'confirmada'").await;
    db.execute("delete from citas").await;
    let logged: Vec<(String, String)> = db
        .client
        .query(
            "select action, cita_id from citas_realtime.events where negocio_id = 'nulo'
             order by seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let count = |action: &str, id: &str| {
        logged
            .iter()
            .filter(|(a, i)| a == action && i == id)
            .count()
    };
    assert_eq!(count("created", ""), 2, "{logged:?}"); // the insert, and the update's new row
    assert_eq!(count("deleted", ""), 2, "{logged:?}"); // the update's old row, and the delete
    assert_eq!(count("status_changed", "7"), 1, "{logged:?}");

    let other = TestDb::empty().await;
    other
        .client
        .batch_execute("create table public.citas (id json, negocio_id text, estado text)")
        .await
        .unwrap();
    let refused = other
        .client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await
        .expect_err("a json id is refused");
    assert!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().contains("no \"=\" operator")),
        "{refused:?}"
    );
}

/// A numeric `sub` is a subject like any other: counted as itself, and an `auth` may not move
/// the connection to another number.
#[tokio::test]
async fn a_numeric_sub_is_a_subject() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.ws(&token(json!({"sub": 42, "negocio_id": "a"}))).await;
    ws.send(json!({"type": "auth", "token": token(json!({"sub": 43, "negocio_id": "a"}))}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "unauthorized");
    ws.send(json!({"type": "auth", "token": token(json!({"sub": 42, "negocio_id": "a"}))}))
        .await;
    ws.expect("authenticated").await;
}
