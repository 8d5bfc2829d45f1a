//! Live statistics: exact, coalesced, after the events, cheap, and never in the way.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{
    spawn_app, spawn_app_unready, test_config, token, TestApp, TestDb, Ws, DEADLINE,
};

/// A client that reads snapshots as ordinary messages.
async fn stats_client(app: &TestApp, negocio: &str, extra: Value) -> Ws {
    let mut ws = app.ws(&token(json!({"negocio_id": negocio}))).await;
    ws.keep_stats = true;
    let mut msg = json!({"type": "subscribe", "channel": format!("estadisticas:{negocio}")});
    if let (Value::Object(m), Value::Object(e)) = (&mut msg, extra) {
        m.extend(e);
    }
    ws.send(msg).await;
    ws.expect("subscribed").await;
    ws
}

/// Reads until a snapshot satisfies `done`; returns it. Events in between are skipped.
async fn snapshot_until(ws: &mut Ws, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no matching snapshot in time");
        let msg = ws.next().await;
        if msg["type"] == "estadisticas" && done(&msg["data"]) {
            return msg;
        }
    }
}

fn counts(data: &Value) -> (i64, i64, i64, i64, i64) {
    let e = &data["por_estado"];
    (
        data["total"].as_i64().unwrap_or(-1),
        e["pendiente"].as_i64().unwrap_or(-1),
        e["confirmada"].as_i64().unwrap_or(-1),
        e["completada"].as_i64().unwrap_or(-1),
        e["cancelada"].as_i64().unwrap_or(-1),
    )
}

async fn stats_queries(app: &TestApp) -> u64 {
    app.wait_health(200).await["stats_queries"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn figures_are_exact_after_every_kind_of_change() {
    let db = TestDb::new().await;
    db.execute(
        "insert into citas (negocio_id, fecha, estado) values
           ('e1', current_date, 'pendiente'), ('e1', current_date + 1, 'confirmada')",
    )
    .await;
    let app = spawn_app(&db.url).await;
    let mut ws = stats_client(&app, "e1", json!({})).await;

    let first = ws.expect("estadisticas").await;
    assert_eq!(first["channel"], "estadisticas:e1");
    assert_eq!(counts(&first["data"]), (2, 1, 1, 0, 0));
    assert_eq!(first["data"]["hoy"]["total"], 1);
    assert_eq!(first["data"]["hoy"]["por_estado"]["pendiente"], 1);
    assert!(first["data"]["seq"].as_i64().is_some());

    db.execute("insert into citas (negocio_id, fecha) values ('e1', current_date)")
        .await;
    let s = snapshot_until(&mut ws, |d| d["total"] == 3).await;
    assert_eq!(counts(&s["data"]), (3, 2, 1, 0, 0));
    assert_eq!(s["data"]["hoy"]["total"], 2);

    db.execute(
        "update citas set estado = 'completada' where negocio_id = 'e1' and estado = 'confirmada'",
    )
    .await;
    let s = snapshot_until(&mut ws, |d| d["por_estado"]["completada"] == 1).await;
    assert_eq!(counts(&s["data"]), (3, 2, 0, 1, 0));

    // A move to another negocio: gone from e1's figures.
    db.execute("update citas set negocio_id = 'e2' where id = (select id from citas where negocio_id = 'e1' and estado = 'completada')")
        .await;
    let s = snapshot_until(&mut ws, |d| d["total"] == 2).await;
    assert_eq!(counts(&s["data"]), (2, 2, 0, 0, 0));

    db.execute("update citas set estado = 'cancelada' where negocio_id = 'e1'")
        .await;
    db.execute(
        "delete from citas where id = (select id from citas where negocio_id = 'e1' limit 1)",
    )
    .await;
    let s = snapshot_until(&mut ws, |d| {
        d["total"] == 1 && d["por_estado"]["cancelada"] == 1
    })
    .await;
    assert_eq!(counts(&s["data"]), (1, 0, 0, 0, 1));
    // The snapshot's seq is the newest event it includes, and that event arrived before it.
    let logged = db.logged("e1").await;
    assert_eq!(
        s["data"]["seq"].as_i64(),
        logged.last().map(|(seq, _)| *seq)
    );
}

#[tokio::test]
async fn a_burst_costs_a_few_queries_and_ends_exact() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut watchers = Vec::new();
    for _ in 0..5 {
        let mut ws = stats_client(&app, "burst", json!({})).await;
        ws.expect("estadisticas").await;
        watchers.push(ws);
    }
    let before = stats_queries(&app).await;
    for _ in 0..200 {
        db.execute("insert into citas (negocio_id) values ('burst')")
            .await;
    }
    let last_seq = db.logged("burst").await.last().map(|(s, _)| *s);
    let mut snapshots_seen = 0;
    let ws = &mut watchers[0];
    let mut events = 0;
    loop {
        let msg = ws.next().await;
        match msg["type"].as_str() {
            Some("cita_created") => events += 1,
            Some("estadisticas") => {
                snapshots_seen += 1;
                // Never ahead of the events it reflects.
                let seq = msg["data"]["seq"].as_i64();
                assert!(events >= 1 || seq.is_none());
                if msg["data"]["total"] == 200 {
                    assert_eq!(seq, last_seq);
                    break;
                }
            }
            _ => {}
        }
    }
    assert_eq!(events, 200, "every event arrived before the final snapshot");
    let queries = stats_queries(&app).await - before;
    assert!(
        snapshots_seen < 50 && queries < 50,
        "200 commits cost {queries} queries and {snapshots_seen} snapshots"
    );
    // All five watchers got the same final figures from those few queries.
    for ws in watchers.iter_mut().skip(1) {
        snapshot_until(ws, |d| d["total"] == 200).await;
    }
    assert!(stats_queries(&app).await - before < 50);
}

#[tokio::test]
async fn a_new_subscriber_gets_the_cached_snapshot_without_a_query() {
    let db = TestDb::new().await;
    db.execute("insert into citas (negocio_id) values ('c'), ('c')")
        .await;
    let app = spawn_app(&db.url).await;
    let mut first = stats_client(&app, "c", json!({})).await;
    assert_eq!(first.expect("estadisticas").await["data"]["total"], 2);
    let queries = stats_queries(&app).await;
    let mut second = stats_client(&app, "c", json!({})).await;
    assert_eq!(second.expect("estadisticas").await["data"]["total"], 2);
    assert_eq!(stats_queries(&app).await, queries, "served from the cache");
}

#[tokio::test]
async fn opting_out_and_turning_off() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut quiet = stats_client(&app, "o", json!({"stats": false})).await;
    db.execute("insert into citas (negocio_id) values ('o')")
        .await;
    assert_eq!(quiet.next().await["type"], "cita_created");
    quiet.send(json!({"type": "ping"})).await;
    assert_eq!(
        quiet.next().await["type"],
        "pong",
        "no snapshot for an opted-out client"
    );

    let mut config = test_config(&db.url);
    config.stats = None;
    let off = spawn_app_unready(config).await;
    off.wait_health(200).await;
    let mut ws = stats_client(&off, "o", json!({})).await;
    db.execute("insert into citas (negocio_id) values ('o')")
        .await;
    assert_eq!(ws.next().await["type"], "cita_created");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(
        ws.next().await["type"],
        "pong",
        "no snapshots with STATS=off"
    );
    assert_eq!(off.wait_health(200).await["stats_queries"], Value::Null);
}

#[tokio::test]
async fn a_redefined_function_is_used_at_once_and_a_failing_one_is_an_error() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = stats_client(&app, "f", json!({})).await;
    ws.expect("estadisticas").await;

    db.client
        .batch_execute(
            "create or replace function citas_realtime.estadisticas(negocio_id text) returns jsonb
             language sql stable as $$ select jsonb_build_object('custom', 42) $$",
        )
        .await
        .unwrap();
    db.execute("insert into citas (negocio_id) values ('f')")
        .await;
    let s = snapshot_until(&mut ws, |d| d.get("custom").is_some()).await;
    assert_eq!(s["data"]["custom"], 42);

    db.client
        .batch_execute(
            "create or replace function citas_realtime.estadisticas(negocio_id text) returns jsonb
             language plpgsql stable as $$ begin raise exception 'boom'; end $$",
        )
        .await
        .unwrap();
    db.execute("insert into citas (negocio_id) values ('f')")
        .await;
    let deadline = Instant::now() + DEADLINE;
    let error = loop {
        assert!(Instant::now() < deadline);
        let msg = ws.next().await;
        if msg["type"] == "error" {
            break msg;
        }
    };
    assert_eq!(error["code"], "stats_unavailable");
    assert_eq!(error["channel"], "estadisticas:f");
    assert!(error["message"]
        .as_str()
        .is_some_and(|m| m.contains("boom")));
    // Events keep flowing and the connection is alive.
    db.execute("insert into citas (negocio_id) values ('f')")
        .await;
    loop {
        let msg = ws.next().await;
        if msg["type"] == "cita_created" {
            break;
        }
    }
    ws.send(json!({"type": "ping"})).await;
    loop {
        if ws.next().await["type"] == "pong" {
            break;
        }
    }

    // A slow function times out instead of holding anything up.
    db.client
        .batch_execute(
            "create or replace function citas_realtime.estadisticas(negocio_id text) returns jsonb
             language sql volatile as $$ select pg_sleep(30); select '{}'::jsonb $$",
        )
        .await
        .unwrap();
    let started = Instant::now();
    db.execute("insert into citas (negocio_id) values ('f')")
        .await;
    let mut event_at = None;
    loop {
        let msg = ws.next().await;
        if msg["type"] == "cita_created" && event_at.is_none() {
            event_at = Some(started.elapsed());
        }
        if msg["type"] == "error" && msg["code"] == "stats_unavailable" {
            break;
        }
    }
    assert!(
        event_at.is_some_and(|t| t < Duration::from_secs(2)),
        "the event did not wait for the statistics: {event_at:?}"
    );
}

/// A negocio written while nobody watched it: its next subscriber gets today's figures, not the
/// snapshot cached before the write (found by the dashboard's browser test: a page that lost
/// its connection came back to a stale chart).
#[tokio::test]
async fn a_snapshot_cached_before_unwatched_writes_is_not_served() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut first = stats_client(&app, "u", json!({})).await;
    assert_eq!(first.expect("estadisticas").await["data"]["total"], 0);
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    while app.wait_health(200).await["subscriptions"] != 0 {
        assert!(Instant::now() < deadline, "the subscription did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.execute("insert into citas (negocio_id) values ('u')")
        .await;
    let seq: i64 = db
        .scalar("select max(seq) from citas_realtime.events")
        .await;
    while app.wait_health(200).await["last_seq"].as_i64() < Some(seq) {
        assert!(
            Instant::now() < deadline,
            "the listener did not read the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = stats_client(&app, "u", json!({})).await;
    let snapshot = second.expect("estadisticas").await;
    assert_eq!(snapshot["data"]["total"], 1, "{snapshot}");
}

/// `subscribe` and `unsubscribe` read together: the snapshot the subscribe queued (the cached
/// one, pushed at once) is dropped with the subscription, so nothing of the channel follows
/// `unsubscribed`. The `ping` after it is answered before anything else.
#[tokio::test]
async fn no_snapshot_follows_unsubscribed() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    // A watcher keeps the negocio's snapshot cached: every subscribe gets it at once.
    let mut watcher = stats_client(&app, "lv", json!({})).await;
    watcher.expect("estadisticas").await;
    let mut ws = app.ws(&token(json!({"negocio_id": "lv"}))).await;
    ws.keep_stats = true;
    let channel = "estadisticas:lv";
    for round in 0..20 {
        ws.send_together(&[
            json!({"type": "subscribe", "channel": channel}),
            json!({"type": "unsubscribe", "channel": channel}),
        ])
        .await;
        ws.expect("subscribed").await;
        loop {
            let msg = ws.next().await;
            if msg["type"] == "unsubscribed" {
                break;
            }
            assert_eq!(msg["type"], "estadisticas", "round {round}: {msg}");
        }
        ws.send(json!({"type": "ping"})).await;
        let msg = ws.next().await;
        assert_eq!(
            msg["type"], "pong",
            "round {round}: after `unsubscribed`: {msg}"
        );
    }
}
