//! The protocol's answers, and that an error never closes the connection.

use serde_json::json;

use crate::helpers::{spawn_app, token, TestDb};

#[tokio::test]
async fn every_protocol_error_has_its_code_and_the_connection_stays_open() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.ws(&token(json!({"negocio_id": "mine"}))).await;

    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;

    for bad in [
        "not json",
        "[1,2,3]",
        r#"{"type":"dance"}"#,
        r#"{"type":"subscribe"}"#,
        r#"{"channel":"estadisticas:mine"}"#,
        r#"{"type":"subscribe","channel":42}"#,
    ] {
        ws.send_text(bad).await;
        let reply = ws.expect("error").await;
        assert_eq!(reply["code"], "bad_request", "for {bad}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for channel in ["estadisticas:", "estadisticas", "otro:mine", ""] {
        ws.send(json!({"type": "subscribe", "channel": channel}))
            .await;
        let reply = ws.expect("error").await;
        assert_eq!(reply["code"], "bad_channel", "for {channel:?}: {reply}");
    }
    ws.send(json!({"type": "subscribe", "channel": "estadisticas:theirs"}))
        .await;
    let reply = ws.expect("error").await;
    assert_eq!(reply["code"], "forbidden");
    assert_eq!(reply["channel"], "estadisticas:theirs");

    // Still open and still working after all of that.
    ws.subscribe("mine").await;
    db.execute("insert into citas (negocio_id) values ('theirs'), ('mine')")
        .await;
    let event = ws.expect("cita_created").await;
    assert_eq!(event["data"]["negocio_id"], "mine");
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
}

#[tokio::test]
async fn subscribing_twice_delivers_once() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["dup"]).await;
    ws.subscribe("dup").await;
    db.execute("insert into citas (negocio_id) values ('dup')")
        .await;
    ws.expect("cita_created").await;
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
}

#[tokio::test]
async fn other_paths_answer_json_errors() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let resp = reqwest::get(app.url("/nope")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "not found");
    // A valid token on a plain GET (no upgrade) is told to speak WebSocket.
    let resp = reqwest::get(app.url(&format!("/ws?token={}", token(json!({})))))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 426);
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["m"]).await;
    db.execute("insert into citas (negocio_id) values ('m'), ('m')")
        .await;
    ws.events(2).await;
    let resp = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/plain")));
    let text = resp.text().await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(value("citas_realtime_connections"), 1.0);
    assert_eq!(value("citas_realtime_subscriptions"), 1.0);
    assert_eq!(value("citas_realtime_listener_up"), 1.0);
    assert!(value("citas_realtime_events_received_total") >= 2.0);
    assert!(value("citas_realtime_events_delivered_total") >= 2.0);
    assert!(value("citas_realtime_event_lag_seconds_count") >= 2.0);
    assert_eq!(value("citas_realtime_slow_client_drops_total"), 0.0);
    assert!(text.contains("# TYPE citas_realtime_events_delivered_total counter"));
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut ws = app.ws(&token(json!({"negocio_id": "big"}))).await;
    let huge = format!(
        r#"{{"type":"subscribe","channel":"estadisticas:{}"}}"#,
        "x".repeat(20 * 1024)
    );
    ws.send_text(&huge).await;
    assert_eq!(
        ws.closed().await,
        Some(tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Size)
    );
}
