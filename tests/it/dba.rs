//! What a DBA relies on: any writer role produces events, API roles reach nothing of ours,
//! bulk statements and TRUNCATE are announced, and upgrades lose nothing.

use std::time::Duration;

use citas_realtime::log::sql::{EXAMPLE_SCHEMA, INSTALL};
use pgtemp::TempPostgres;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{
    brief, config_with, connect, spawn_app, spawn_app_ready, token, TestApp, TestDb, Ws,
};

const INSTALL_V5: &str = include_str!("../fixtures/install_v5.sql");
const INSTALL_V4: &str = include_str!("../fixtures/install_v4.sql");
const INSTALL_V3: &str = include_str!("../fixtures/install_v3.sql");
const INSTALL_V2: &str = include_str!("../fixtures/install_v2.sql");
const INSTALL_V1: &str = include_str!("../fixtures/install_v1.sql");

/// Supabase's shape: RLS on citas, API roles writing through policies, default privileges that
/// grant API roles everything new, a batch job with its own role, and the server's own role.
#[tokio::test]
async fn supabase_roles_write_events_and_reach_nothing_of_ours() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("own cluster (roles are cluster-wide)");
    let db = TestDb::on(pg.url("postgres")).await;
    db.client
        .batch_execute(
            "create role anon nologin;
             create role authenticated nologin;
             create role batch_writer login bypassrls; -- like service_role
             create role rt_server login;
             alter default privileges grant all on tables to anon, authenticated;
             alter default privileges grant all on functions to anon, authenticated;
             alter default privileges grant all on sequences to anon, authenticated;",
        )
        .await
        .unwrap();
    db.client.batch_execute(EXAMPLE_SCHEMA).await.unwrap();
    db.client
        .batch_execute(
            "alter table citas enable row level security;
             create policy api_all on citas for all to anon, authenticated
                 using (true) with check (true);
             grant select, insert, update, delete on citas to batch_writer;",
        )
        .await
        .unwrap();
    db.client.batch_execute(INSTALL).await.expect("install");
    db.client
        .batch_execute("grant citas_realtime_reader to rt_server")
        .await
        .unwrap();

    let server_url = db.url.replace("postgres@", "rt_server@");
    let app = spawn_app(&server_url).await;
    let mut ws = app.subscriber(&["supa"]).await;

    db.client
        .batch_execute(
            "set role anon; insert into citas (negocio_id) values ('supa'); reset role;
             set role authenticated; update citas set estado = 'confirmada'; reset role;",
        )
        .await
        .expect("API roles write through RLS policies");
    let batch = connect(&db.url.replace("postgres@", "batch_writer@")).await;
    batch
        .batch_execute("delete from citas where negocio_id = 'supa'")
        .await
        .expect("a batch role writes");
    let kinds: Vec<String> = ws.events(3).await.iter().map(|e| brief(e).0).collect();
    assert_eq!(
        kinds,
        ["cita_created", "cita_status_changed", "cita_deleted"]
    );

    for role in ["anon", "authenticated", "batch_writer", "public"] {
        let row = db
            .client
            .query_one(
                "select has_schema_privilege($1, 'citas_realtime', 'usage'),
                        has_table_privilege($1, 'citas_realtime.events', 'select,insert,update,delete,truncate'),
                        has_table_privilege($1, 'citas_realtime.retention', 'select,update'),
                        has_function_privilege($1, 'citas_realtime.prune(interval)', 'execute'),
                        has_function_privilege($1, 'citas_realtime.version()', 'execute'),
                        has_function_privilege($1, 'citas_realtime.capture()', 'execute')",
                &[&role],
            )
            .await
            .unwrap();
        for i in 0..6 {
            assert!(
                !row.get::<_, bool>(i),
                "{role} holds privilege #{i} on our objects"
            );
        }
    }
    let rls: Vec<bool> = db
        .client
        .query(
            "select relrowsecurity from pg_class
             where oid in ('citas_realtime.events'::regclass, 'citas_realtime.retention'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rls, [true, true], "row-level security on the log");
    let denied = batch
        .batch_execute("select citas_realtime.prune(interval '0 seconds')")
        .await
        .expect_err("a writer cannot prune");
    assert!(denied
        .as_db_error()
        .is_some_and(|e| e.message().contains("permission denied")));

    drop((ws, batch, app, db));
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

/// Reads `n` events of `negocio`, reconnecting and resuming with `since` whenever the server
/// drops the client as too slow, as a real client does.
async fn collect_resuming(app: &TestApp, negocio: &str, n: usize) -> Vec<i64> {
    let mut seqs: Vec<i64> = Vec::with_capacity(n);
    let mut reconnects = 0;
    while seqs.len() < n {
        let mut ws = app.ws(&token(json!({"negocio_id": negocio}))).await;
        let channel = format!("estadisticas:{negocio}");
        let since = seqs.last().copied().unwrap_or(0);
        ws.send(json!({"type": "subscribe", "channel": channel, "since": since}))
            .await;
        ws.expect("subscribed").await;
        while seqs.len() < n {
            match next_or_close(&mut ws).await {
                Ok(event) if event["type"] == "estadisticas" => {}
                Ok(event) => seqs.push(event["data"]["seq"].as_i64().unwrap_or_default()),
                Err(code) => {
                    assert_eq!(code, Some(CloseCode::Again), "only slow-client closes");
                    reconnects += 1;
                    assert!(reconnects < 100, "too many reconnects");
                    break;
                }
            }
        }
    }
    seqs
}

async fn next_or_close(ws: &mut Ws) -> Result<serde_json::Value, Option<CloseCode>> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.socket.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
            Some(Ok(_)) => continue,
            _ => return Err(None),
        }
    }
}

/// Compares long seq lists without printing them whole.
fn assert_same(got: &[i64], want: &[i64]) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!("seq #{i} differs: got {} want {}", got[i], want[i]);
    }
    assert_eq!(
        got.len(),
        want.len(),
        "as many events as logged, once each, in order"
    );
}

/// One statement touching 100,000 rows: every event, each with its own seq, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_statements_deliver_every_event() {
    const ROWS: usize = 100_000;
    let db = TestDb::new().await;
    // 300,000 events replayed to one connection: far beyond the default replay budget.
    let app = spawn_app_ready(config_with(&db.url, |a| {
        a.client_replay_budget = Some("10000000".into())
    }))
    .await;
    let reader = {
        let addr = app.addr;
        tokio::spawn(async move {
            let app = TestApp { addr, server: None };
            collect_resuming(&app, "bulk", ROWS).await
        })
    };
    // Let the reader subscribe before the statement commits.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while app.server.as_ref().unwrap().hub.stats().subscriptions == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reader never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let inserted = db
        .execute(&format!(
            "insert into citas (negocio_id) select 'bulk' from generate_series(1, {ROWS})"
        ))
        .await;
    assert_eq!(inserted as usize, ROWS);
    let got = reader.await.unwrap();
    let logged: Vec<i64> = db.logged_seqs("bulk").await;
    assert_same(&got, &logged);
    assert!(
        got.windows(2).all(|w| w[0] + 1 == w[1]),
        "one seq each, contiguous"
    );

    // UPDATE and DELETE of all of them: one event per row each, read back through a replay.
    db.execute("update citas set estado = 'cancelada'").await;
    db.execute("delete from citas").await;
    let all = collect_resuming(&app, "bulk", 3 * ROWS).await;
    let logged: Vec<(i64, String)> = db.logged("bulk").await;
    assert_same(&all, &logged.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    let count = |a: &str| logged.iter().filter(|(_, x)| x == a).count();
    assert_eq!(
        (count("created"), count("status_changed"), count("deleted")),
        (ROWS, ROWS, ROWS)
    );
}

#[tokio::test]
async fn truncate_tells_every_subscriber_to_resync() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut both = app.subscriber(&["t1", "t2"]).await;
    let mut other = app.subscriber(&["t3"]).await;
    db.execute("insert into citas (negocio_id) values ('t1')")
        .await;
    both.expect("cita_created").await;
    db.execute("truncate citas").await;
    let mut channels: Vec<String> = Vec::new();
    for _ in 0..2 {
        let msg = both.expect("resync").await;
        channels.push(msg["channel"].as_str().unwrap_or_default().to_string());
    }
    channels.sort();
    assert_eq!(channels, ["estadisticas:t1", "estadisticas:t2"]);
    assert_eq!(other.expect("resync").await["channel"], "estadisticas:t3");
    // A client resuming from before the truncate is told too, at its place in the order.
    let mut late = app.ws(&token(json!({"negocio_id": "t1"}))).await;
    late.send(json!({"type": "subscribe", "channel": "estadisticas:t1", "since": 0}))
        .await;
    late.expect("subscribed").await;
    late.expect("cita_created").await;
    late.expect("resync").await;
}

/// An install of an older version, writers busy (inserts, updates and deletes: every branch of
/// the trigger), then the new install.sql over it: no write fails, no event is lost or
/// doubled, every kind arrives, and the version is the new one.
async fn upgrade_under_writes(old_sql: &str, old_version: i32) {
    let db = TestDb::empty().await;
    db.client.batch_execute(EXAMPLE_SCHEMA).await.unwrap();
    db.client
        .batch_execute(old_sql)
        .await
        .expect("the old version installs");
    let version: i32 = db.scalar("select citas_realtime.version()").await;
    assert_eq!(version, old_version);
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["up"]).await;

    let writer_db = connect(&db.url).await;
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            writer_db
                .batch_execute(UPGRADE_WRITES[i % UPGRADE_WRITES.len()])
                .await
                .unwrap_or_else(|e| panic!("write {i} failed during the upgrade: {e}"));
        }
    });
    let upgrader = connect(&db.url).await;
    upgrader
        .batch_execute(INSTALL)
        .await
        .expect("the upgrade applies");
    writer.await.unwrap();
    for write in UPGRADE_WRITES {
        db.execute(write).await;
    }

    let logged = db.logged("up").await;
    let kinds: std::collections::BTreeSet<&str> = logged.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        kinds,
        ["created", "deleted", "status_changed", "updated"].into(),
        "every kind of event was written"
    );
    let got: Vec<i64> = ws
        .events(logged.len())
        .await
        .iter()
        .map(|e| brief(e).2)
        .collect();
    let logged: Vec<i64> = logged.iter().map(|(s, _)| *s).collect();
    assert_eq!(got, logged);
    // 200 writes + 4: 51 citas, each created, updated twice and deleted.
    assert_eq!(logged.len(), 4 * 51);
    let version: i32 = db.scalar("select citas_realtime.version()").await;
    assert_eq!(version, citas_realtime::log::sql::SQL_VERSION);
}

/// What the upgrade tests write, in turn: each cita is created, changes estado, is edited
/// otherwise, then deleted.
const UPGRADE_WRITES: [&str; 4] = [
    "insert into citas (negocio_id) values ('up')",
    "update citas set estado = 'confirmada' where negocio_id = 'up' and estado = 'pendiente'",
    "update citas set cliente_id = 'c1' where negocio_id = 'up' and estado = 'confirmada'",
    "delete from citas where negocio_id = 'up'",
];

#[tokio::test]
async fn upgrading_from_version_1_under_writes_loses_nothing() {
    upgrade_under_writes(INSTALL_V1, 1).await;
}

#[tokio::test]
async fn upgrading_from_version_2_under_writes_loses_nothing() {
    upgrade_under_writes(INSTALL_V2, 2).await;
}

#[tokio::test]
async fn upgrading_from_version_3_under_writes_loses_nothing() {
    upgrade_under_writes(INSTALL_V3, 3).await;
}

#[tokio::test]
async fn upgrading_from_version_4_under_writes_loses_nothing() {
    upgrade_under_writes(INSTALL_V4, 4).await;
}

#[tokio::test]
async fn upgrading_from_version_5_under_writes_loses_nothing() {
    upgrade_under_writes(INSTALL_V5, 5).await;
}
