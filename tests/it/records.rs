//! Records: the columns a DBA chose (`citas_realtime.set_record_columns`) travel with each
//! event, live and on replay; off by default; bounded; never a writer's failure.

use serde_json::{json, Value};

use crate::helpers::{connect, spawn_app, TestDb, Ws};

const SIX: &str = "array['fecha','hora_inicio','hora_fin','estado','cliente_id','servicio_id']";

async fn choose(db: &TestDb, columns: &str) {
    db.execute(&format!(
        "select citas_realtime.set_record_columns({columns})"
    ))
    .await;
}

/// Subscribes to `negocio` resuming after `since`.
async fn resume(ws: &mut Ws, negocio: &str, since: i64) {
    let channel = format!("estadisticas:{negocio}");
    ws.send(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    ws.expect("subscribed").await;
}

/// Every kind of change, as the contract describes it; the same events again on a replay.
#[tokio::test]
async fn every_kind_carries_the_chosen_columns_live_and_on_replay() {
    let db = TestDb::new().await;
    choose(&db, SIX).await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["rec", "rec2"]).await;
    db.execute(
        "insert into citas (id, negocio_id, fecha, hora_inicio, hora_fin, cliente_id)
         values ('00000000-0000-4000-8000-000000000001', 'rec', '2026-12-03', '10:00', '10:30', 'ana')",
    )
    .await;
    db.execute("update citas set estado = 'confirmada' where negocio_id = 'rec'")
        .await;
    db.execute(
        "update citas set updated_at = now() + interval '1 minute' where negocio_id = 'rec'",
    )
    .await;
    db.execute(
        "update citas set hora_inicio = '11:00', hora_fin = '11:30' where negocio_id = 'rec'",
    )
    .await;
    db.execute("update citas set negocio_id = 'rec2' where negocio_id = 'rec'")
        .await;
    db.execute("delete from citas where negocio_id = 'rec2'")
        .await;
    let live: Vec<Value> = ws.events(7).await;
    let data: Vec<&Value> = live.iter().map(|e| &e["data"]).collect();
    let created = json!({"fecha": "2026-12-03", "hora_inicio": "10:00:00", "hora_fin": "10:30:00",
                         "estado": "pendiente", "cliente_id": "ana", "servicio_id": null});
    assert_eq!(live[0]["type"], "cita_created");
    assert_eq!(data[0]["record"], created);
    assert_eq!(data[0]["old_record"], Value::Null);
    assert!(
        data[0].get("old_record").is_some(),
        "old_record is present, null"
    );
    assert_eq!(live[1]["type"], "cita_status_changed");
    assert_eq!(data[1]["record"]["estado"], "confirmada");
    assert_eq!(data[1]["old_record"], json!({"estado": "pendiente"}));
    assert_eq!(
        live[2]["type"], "cita_updated",
        "an unchosen column changed"
    );
    assert_eq!(data[2]["old_record"], json!({}));
    assert_eq!(data[2]["record"]["hora_inicio"], "10:00:00");
    assert_eq!(live[3]["type"], "cita_updated");
    assert_eq!(
        data[3]["old_record"],
        json!({"hora_inicio": "10:00:00", "hora_fin": "10:30:00"})
    );
    // The move: the old negocio's cita_deleted, the new one's cita_created.
    assert_eq!(
        (live[4]["type"].as_str(), data[4]["negocio_id"].as_str()),
        (Some("cita_deleted"), Some("rec"))
    );
    assert_eq!(data[4]["old_record"]["hora_inicio"], "11:00:00");
    assert_eq!(data[4]["record"], Value::Null);
    assert_eq!(
        (live[5]["type"].as_str(), data[5]["negocio_id"].as_str()),
        (Some("cita_created"), Some("rec2"))
    );
    assert_eq!(data[5]["record"]["estado"], "confirmada");
    assert_eq!(live[6]["type"], "cita_deleted");
    assert_eq!(data[6]["old_record"]["cliente_id"], "ana");
    assert!(data.iter().all(|d| d.get("record_truncated").is_none()));

    // A replay carries exactly what the live events carried.
    let token = crate::helpers::token(json!({"negocio_ids": ["rec", "rec2"]}));
    let mut again = app.ws(&token).await;
    resume(&mut again, "rec", 0).await;
    let replayed = again.events(5).await;
    let live_rec: Vec<&Value> = live
        .iter()
        .filter(|e| e["data"]["negocio_id"] == "rec")
        .collect();
    assert_eq!(replayed.iter().collect::<Vec<_>>(), live_rec);
}

/// Off by default: events exactly as before records existed.
#[tokio::test]
async fn records_are_off_by_default() {
    let db = TestDb::new().await;
    let columns: Vec<String> = db.scalar("select citas_realtime.record_columns()").await;
    assert!(columns.is_empty());
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["off"]).await;
    db.execute("insert into citas (negocio_id) values ('off')")
        .await;
    db.execute("update citas set estado = 'cancelada' where negocio_id = 'off'")
        .await;
    for event in ws.events(2).await {
        let data = event["data"].as_object().unwrap();
        for key in ["record", "old_record", "record_truncated"] {
            assert!(!data.contains_key(key), "{key} in {event}");
        }
    }
}

/// The choice is validated, read back, turned off, and kept by an upgrade.
#[tokio::test]
async fn the_choice_is_validated_read_back_and_survives_install() {
    let db = TestDb::new().await;
    let error = db
        .client
        .batch_execute("select citas_realtime.set_record_columns(array['fecha', 'precio'])")
        .await
        .unwrap_err();
    let message = error
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("no column precio"), "{message}");
    choose(&db, "array['fecha', 'hora_inicio']").await;
    db.client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await
        .unwrap();
    let columns: Vec<String> = db.scalar("select citas_realtime.record_columns()").await;
    assert_eq!(columns, ["fecha", "hora_inicio"]);
    // A chosen column cannot be dropped from under the triggers.
    let error = db
        .client
        .batch_execute("alter table citas drop column fecha")
        .await
        .unwrap_err();
    let detail = format!("{:?}", error.as_db_error());
    assert!(detail.contains("record_columns_guard"), "{detail}");
    choose(&db, "array[]::text[]").await;
    let columns: Vec<String> = db.scalar("select citas_realtime.record_columns()").await;
    assert!(columns.is_empty());
    db.execute("alter table citas drop column fecha").await;
    db.execute("insert into citas (negocio_id) values ('x')")
        .await;
}

/// A 100 KB value and a 128 KiB number: the writer is unaffected, the event says its record was
/// left out; a number is a JSON number.
#[tokio::test]
async fn a_huge_value_is_flagged_and_numbers_stay_numbers() {
    let db = TestDb::new().await;
    db.execute("alter table citas add column precio numeric, add column notas text")
        .await;
    choose(&db, "array['precio', 'notas']").await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["big"]).await;
    db.execute("insert into citas (negocio_id, precio, notas) values ('big', 12.50, 'hola')")
        .await;
    db.execute("update citas set notas = repeat('x', 100000) where negocio_id = 'big'")
        .await;
    // A number of 131,000 digits: a few bytes in the log, 128 KiB as JSON text.
    db.execute("update citas set notas = 'x', precio = '1e131000' where negocio_id = 'big'")
        .await;
    let events = ws.events(3).await;
    assert_eq!(
        events[0]["data"]["record"],
        json!({"precio": 12.50, "notas": "hola"})
    );
    let data = &events[1]["data"];
    assert_eq!(data["record_truncated"], true);
    assert_eq!(data["record"], Value::Null);
    assert_eq!(data["old_record"], json!({"notas": "hola"}));
    let data = &events[2]["data"];
    assert_eq!(data["record_truncated"], true);
    assert_eq!(
        (&data["record"], &data["old_record"]),
        (&Value::Null, &Value::Null)
    );
    // What the log keeps of them is bounded too.
    let largest: i32 = db
        .scalar(
            "select max(greatest(octet_length(record::text), octet_length(old_record::text)))
               from citas_realtime.events where negocio_id = 'big'",
        )
        .await;
    assert!(largest < 20_000, "{largest} bytes logged for one record");
}

/// Records turned on and off while writers write: no write fails, and each event has all the
/// chosen columns or no record at all.
#[tokio::test]
async fn turning_records_on_and_off_under_writes_never_halves_an_event() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["tog"]).await;
    let writer_db = connect(&db.url).await;
    let writer = tokio::spawn(async move {
        for i in 0..300 {
            writer_db
                .batch_execute(
                    "insert into citas (negocio_id, fecha, cliente_id) values ('tog', current_date, 'c')",
                )
                .await
                .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
        }
    });
    let mut on = true;
    while !writer.is_finished() {
        choose(&db, if on { SIX } else { "array[]::text[]" }).await;
        on = !on;
    }
    writer.await.unwrap();
    let mut with = 0;
    for event in ws.events(300).await {
        let data = &event["data"];
        match data.get("record") {
            Some(record) => {
                with += 1;
                assert_eq!(record.as_object().map(|o| o.len()), Some(6), "{event}");
            }
            None => assert!(data.get("old_record").is_none(), "{event}"),
        }
    }
    assert!(
        0 < with && with < 300,
        "{with} of 300 events had records: both kinds expected"
    );
}

/// A server newer than the database's SQL (version 5: no record columns) keeps delivering,
/// live and on replay; once the SQL is upgraded and records chosen, events carry them.
#[tokio::test]
async fn a_server_ahead_of_its_sql_keeps_delivering() {
    let db = TestDb::empty().await;
    db.client
        .batch_execute(citas_realtime::log::sql::EXAMPLE_SCHEMA)
        .await
        .unwrap();
    db.client
        .batch_execute(include_str!("../fixtures/install_v5.sql"))
        .await
        .unwrap();
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["old"]).await;
    db.execute("insert into citas (negocio_id) values ('old')")
        .await;
    let live = ws.events(1).await;
    assert!(live[0]["data"].get("record").is_none());
    let token = crate::helpers::token(json!({"negocio_ids": ["old"]}));
    let mut again = app.ws(&token).await;
    resume(&mut again, "old", 0).await;
    assert_eq!(again.events(1).await, live);

    db.client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await
        .unwrap();
    choose(&db, "array['estado']").await;
    // The listener notices the upgrade within its poll interval and reads records from then
    // on; every write is delivered meanwhile, with records once it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        db.execute("insert into citas (negocio_id) values ('old')")
            .await;
        let event = ws.events(1).await.remove(0);
        if event["data"]["record"] == json!({"estado": "pendiente"}) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record after the upgrade: {event}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Types records cannot carry safely (json, arrays, composites, bytea) and names with "$" are
/// refused, naming the column; a json value jsonb cannot hold never fails a writer.
#[tokio::test]
async fn unsafe_columns_are_refused_and_no_value_fails_a_writer() {
    let db = TestDb::new().await;
    db.execute(
        r#"alter table citas add column j json, add column tags text[], add column "x$fn$y" text"#,
    )
    .await;
    for (columns, named) in [
        ("array['fecha', 'j']", "j (json)"),
        ("array['tags']", "tags (text[])"),
        (r#"array['x$fn$y']"#, r#""x$fn$y""#),
    ] {
        let error = db
            .client
            .batch_execute(&format!(
                "select citas_realtime.set_record_columns({columns})"
            ))
            .await
            .unwrap_err();
        let message = error
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(message.contains(named), "{message}");
    }
    let columns: Vec<String> = db.scalar("select citas_realtime.record_columns()").await;
    assert!(columns.is_empty(), "a refused choice changes nothing");
    // json that jsonb cannot hold: every write goes through, records off and on.
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["js"]).await;
    db.execute(
        r#"insert into citas (negocio_id, j) values ('js', '{"a":"\u0000","n":1e1000000}')"#,
    )
    .await;
    db.execute("update citas set cliente_id = 'c' where negocio_id = 'js'")
        .await;
    choose(&db, "array['cliente_id', 'fecha']").await;
    db.execute("update citas set cliente_id = 'd' where negocio_id = 'js'")
        .await;
    let events = ws.events(3).await;
    assert_eq!(events[1]["type"], "cita_updated");
    assert_eq!(events[2]["data"]["old_record"], json!({"cliente_id": "c"}));
}

/// A column being chosen cannot be dropped meanwhile (the choice and the triggers would name a
/// column that no longer exists); it waits for the choice to commit.
#[tokio::test]
async fn choosing_locks_out_concurrent_changes_to_citas() {
    let db = TestDb::new().await;
    let chooser = connect(&db.url).await;
    chooser
        .batch_execute("begin; select citas_realtime.set_record_columns(array['fecha'])")
        .await
        .unwrap();
    let error = db
        .client
        .batch_execute("set lock_timeout = '200ms'; alter table citas drop column fecha")
        .await
        .unwrap_err();
    let code = error.code().cloned();
    assert_eq!(
        code,
        Some(tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{error}"
    );
    chooser.batch_execute("commit").await.unwrap();
    db.execute("reset lock_timeout").await;
    db.execute("insert into citas (negocio_id, fecha) values ('l', current_date)")
        .await;
}
