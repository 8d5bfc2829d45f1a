//! What the DBA installs: install.sql, uninstall.sql, and the events the triggers write.

use std::time::Duration;

use crate::helpers::{listen, TestDb};
use citas_realtime::log::sql::{EXAMPLE_SCHEMA, INSTALL, UNINSTALL};

#[tokio::test]
async fn install_is_idempotent_and_uninstall_keeps_the_rows() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(INSTALL)
        .await
        .expect("second install is clean");
    db.execute("insert into citas (negocio_id) values ('a'), ('a')")
        .await;
    assert_eq!(
        db.logged("a").await.len(),
        2,
        "exactly one event per row, not per install"
    );

    db.client.batch_execute(UNINSTALL).await.expect("uninstall");
    db.client
        .batch_execute(UNINSTALL)
        .await
        .expect("uninstall twice");
    let schema: i64 = db
        .scalar("select count(*) from pg_namespace where nspname = 'citas_realtime'")
        .await;
    assert_eq!(schema, 0);
    let triggers: i64 = db
        .scalar("select count(*) from pg_trigger where tgname like 'citas_realtime%'")
        .await;
    assert_eq!(triggers, 0);
    assert_eq!(
        db.execute("select * from citas").await,
        2,
        "uninstall never touches citas"
    );
    // Writes go on without us.
    db.execute("insert into citas (negocio_id) values ('b')")
        .await;
    db.client.batch_execute(INSTALL).await.expect("reinstall");
    db.execute("insert into citas (negocio_id) values ('b')")
        .await;
    assert_eq!(db.logged("b").await.len(), 1);
}

#[tokio::test]
async fn install_without_citas_fails_clearly() {
    let db = TestDb::empty().await;
    let err = db
        .client
        .batch_execute(INSTALL)
        .await
        .expect_err("must fail");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("public.citas does not exist"),
        "unclear message: {message}"
    );
    // install.sql runs in its own transaction block: a client must roll it back after a failure.
    db.execute("rollback").await;
    let schema: i64 = db
        .scalar("select count(*) from pg_namespace where nspname = 'citas_realtime'")
        .await;
    assert_eq!(schema, 0, "a failed install leaves nothing behind");
}

/// capture() names the log's identity sequence (currval): a log whose seq is backed by another
/// sequence is refused at install time, clearly, before any trigger could fail a writer.
#[tokio::test]
async fn install_refuses_a_log_with_another_sequence() {
    let db = TestDb::empty().await;
    db.client.batch_execute(EXAMPLE_SCHEMA).await.unwrap();
    db.client
        .batch_execute(
            "create schema citas_realtime;
             create table citas_realtime.events (
                 seq bigint generated always as identity (sequence name citas_realtime.other_seq)
                     primary key,
                 negocio_id text not null, cita_id text not null, action text not null,
                 estado text, estado_anterior text,
                 created_at timestamptz not null default clock_timestamp())",
        )
        .await
        .unwrap();
    let err = db
        .client
        .batch_execute(INSTALL)
        .await
        .expect_err("must refuse");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("must be backed by citas_realtime.events_seq_seq")
            && message.contains("citas_realtime.other_seq"),
        "unclear message: {message}"
    );
    db.execute("rollback").await;
    db.execute("insert into citas (negocio_id) values ('n1')")
        .await;
    let triggers: i64 = db
        .scalar("select count(*) from pg_trigger where tgname like 'citas_realtime%'")
        .await;
    assert_eq!(triggers, 0, "a refused install leaves no trigger behind");
}

/// negocio_id, cita_id, action, estado, estado_anterior
type LoggedEvent = (String, String, String, Option<String>, Option<String>);

#[tokio::test]
async fn every_action_is_logged_with_its_fields() {
    let db = TestDb::new().await;
    db.execute(
        "insert into citas (id, negocio_id) values ('00000000-0000-0000-0000-000000000001', 'n1')",
    )
    .await;
    db.execute("update citas set estado = 'confirmada'").await;
    db.execute("update citas set cliente_id = 'c9'").await;
    db.execute("update citas set cliente_id = 'c9'").await; // changes nothing: no event
    db.execute("update citas set negocio_id = 'n2'").await;
    // A changed primary key: the old id is deleted, the new one created.
    db.execute("update citas set id = '00000000-0000-0000-0000-000000000002'")
        .await;
    db.execute("begin").await;
    db.execute("insert into citas (negocio_id) values ('n1')")
        .await;
    db.execute("rollback").await;
    db.execute("delete from citas").await;

    let rows = db
        .client
        .query(
            "select negocio_id, cita_id, action, estado, estado_anterior
             from citas_realtime.events order by seq",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<LoggedEvent> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let id = "00000000-0000-0000-0000-000000000001".to_string();
    let id2 = "00000000-0000-0000-0000-000000000002".to_string();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            (
                "n1".into(),
                id.clone(),
                "created".into(),
                s("pendiente"),
                None
            ),
            (
                "n1".into(),
                id.clone(),
                "status_changed".into(),
                s("confirmada"),
                s("pendiente")
            ),
            (
                "n1".into(),
                id.clone(),
                "updated".into(),
                s("confirmada"),
                None
            ),
            (
                "n1".into(),
                id.clone(),
                "deleted".into(),
                s("confirmada"),
                None
            ),
            (
                "n2".into(),
                id.clone(),
                "created".into(),
                s("confirmada"),
                None
            ),
            (
                "n2".into(),
                id.clone(),
                "deleted".into(),
                s("confirmada"),
                None
            ),
            (
                "n2".into(),
                id2.clone(),
                "created".into(),
                s("confirmada"),
                None
            ),
            (
                "n2".into(),
                id2.clone(),
                "deleted".into(),
                s("confirmada"),
                None
            ),
        ]
    );
}

#[tokio::test]
async fn any_id_types_work_and_events_carry_text() {
    let db = TestDb::empty().await;
    db.client
        .batch_execute(
            "create table public.citas (id bigint generated always as identity primary key,
                                        negocio_id bigint not null,
                                        estado text not null default 'pendiente',
                                        notas json)",
        )
        .await
        .unwrap();
    db.client
        .batch_execute(INSTALL)
        .await
        .expect("install on bigint ids");
    db.execute("insert into citas (negocio_id, notas) values (42, '{\"a\":1}')")
        .await;
    // json has no equality operator: the update comparison must still work.
    db.execute("update citas set notas = '{\"a\":2}'").await;
    assert_eq!(
        db.logged("42")
            .await
            .iter()
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>(),
        ["created", "updated"]
    );
    let cita: String = db
        .scalar("select cita_id from citas_realtime.events limit 1")
        .await;
    assert_eq!(cita, "1");
}

#[tokio::test]
async fn a_large_statement_sends_one_small_notification() {
    let db = TestDb::new().await;
    let (_listener, mut payloads) = listen(&db.url, "citas_realtime").await;
    // 5,000 rows with long negocio ids in one statement: the writer must not fail (the NOTIFY
    // payload limit is 8,000 bytes) and every row gets its event.
    let n = db
        .execute(&format!(
            "insert into citas (negocio_id) select '{}' || g from generate_series(1, 5000) g",
            "x".repeat(500)
        ))
        .await;
    assert_eq!(n, 5000);
    let count: i64 = db
        .scalar("select count(*) from citas_realtime.events")
        .await;
    assert_eq!(count, 5000);
    let last: i64 = db
        .scalar("select max(seq) from citas_realtime.events")
        .await;
    // One notification per statement, of ids only. An UPDATE can write several kinds: no
    // action. A statement that changes nothing sends nothing.
    db.execute(
        "update citas set estado = 'confirmada'
         where id in (select id from citas order by id limit 2)",
    )
    .await;
    db.execute("update citas set estado = estado").await;
    db.execute("select pg_notify('citas_realtime', 'end')")
        .await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("end") {
        let payload = tokio::time::timeout(Duration::from_secs(10), payloads.recv())
            .await
            .expect("notifications arrive")
            .expect("listener alive");
        got.push(payload);
    }
    assert_eq!(
        got,
        [
            format!(r#"{{"last_seq":{last},"count":5000,"action":"created"}}"#),
            format!(r#"{{"last_seq":{},"count":2}}"#, last + 2),
            "end".to_string()
        ]
    );
    // The example schema is also valid input for a second run.
    db.client.batch_execute(EXAMPLE_SCHEMA).await.unwrap();
}

#[tokio::test]
async fn the_installed_version_is_the_one_the_binary_ships() {
    let db = TestDb::new().await;
    let version: i32 = db.scalar("select citas_realtime.version()").await;
    assert_eq!(version, citas_realtime::log::sql::SQL_VERSION);
}

/// The triggers mark each side of an UPDATE's pairs with a column named
/// `citas_realtime_present`: a citas that has one is refused at install, clearly.
#[tokio::test]
async fn install_refuses_a_column_named_like_the_triggers_marker() {
    let db = crate::helpers::TestDb::empty().await;
    db.client
        .batch_execute(citas_realtime::log::sql::EXAMPLE_SCHEMA)
        .await
        .unwrap();
    db.execute("alter table citas add column citas_realtime_present boolean")
        .await;
    let error = db
        .client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await
        .unwrap_err();
    let message = error
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("citas_realtime_present"), "{message}");
}
