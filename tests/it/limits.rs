//! Token lifetime on open sockets, and the per-client, per-subject and origin limits.

use std::time::Duration;

use citas_realtime::auth::jwt::{mint_token, now_secs};
use citas_realtime::auth::SecretString;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::helpers::{
    config_with, spawn_app, spawn_app_ready, spawn_app_unready, token, TestDb, SECRET,
};

/// A token that expires `secs` from now.
fn short_token(claims: serde_json::Value, secs: u64) -> String {
    let mut claims = claims;
    claims["exp"] = (now_secs() + secs).into();
    mint_token(&SecretString::from(SECRET), claims, Duration::ZERO).unwrap()
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_with_1008() {
    let db = TestDb::new().await;
    let app = spawn_app_ready(config_with(&db.url, |a| a.jwt_leeway = "0".into())).await;
    let mut ws = app.ws(&short_token(json!({"negocio_id": "x"}), 2)).await;
    ws.subscribe("x").await;
    let closed = tokio::time::timeout(Duration::from_secs(10), ws.closed())
        .await
        .expect("closed when the token expired");
    assert_eq!(closed, Some(CloseCode::Policy));
}

/// A token past its `exp` but inside `JWT_LEEWAY` is accepted, and the socket lives until
/// `exp + leeway`: the rule of the upgrade, not a close at once.
#[tokio::test]
async fn a_token_inside_the_leeway_lives_until_exp_plus_leeway() {
    let db = TestDb::new().await;
    let app = spawn_app_ready(config_with(&db.url, |a| a.jwt_leeway = "4s".into())).await;
    let mut claims = json!({"negocio_id": "x"});
    claims["exp"] = (now_secs() - 1).into();
    let expired = mint_token(&SecretString::from(SECRET), claims, Duration::ZERO).unwrap();
    let started = std::time::Instant::now();
    let mut ws = app.ws(&expired).await;
    ws.subscribe("x").await;
    db.execute("insert into citas (negocio_id) values ('x')")
        .await;
    ws.events(1).await;
    let closed = ws.closed().await;
    assert_eq!(closed, Some(CloseCode::Policy));
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_secs(1),
        "closed after {lived:?}, before exp + leeway"
    );
}

#[tokio::test]
async fn a_fresh_token_keeps_the_socket_and_narrows_the_grants() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let expires_in = 2;
    let started = std::time::Instant::now();
    let mut ws = app
        .ws(&short_token(json!({"negocio_ids": ["a", "b"]}), expires_in))
        .await;
    ws.subscribe("a").await;
    ws.subscribe("b").await;

    // A bad token is refused and changes nothing.
    ws.send(json!({"type": "auth", "token": "nonsense"})).await;
    let refused = ws.expect("error").await;
    assert_eq!(refused["code"], "unauthorized");

    // The fresh token only grants a: b's subscription ends.
    ws.send(json!({"type": "auth", "token": token(json!({"negocio_id": "a"}))}))
        .await;
    ws.expect("authenticated").await;
    let ended = ws.expect("error").await;
    assert_eq!(ended["code"], "forbidden");
    assert_eq!(ended["channel"], "estadisticas:b");

    // Past the first token's expiry, the socket is still open, and only a's events come.
    let past_expiry = Duration::from_secs(expires_in + 1).saturating_sub(started.elapsed());
    tokio::time::sleep(past_expiry).await;
    db.execute("insert into citas (negocio_id) values ('b'), ('a')")
        .await;
    let event = ws.expect("cita_created").await;
    assert_eq!(event["data"]["negocio_id"], "a");
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let db = TestDb::new().await;
    let config = config_with(&db.url, |a| a.max_subscriptions = "2".into());
    let app = spawn_app_unready(config).await;
    app.wait_health(200).await;
    let mut ws = app.ws(&token(json!({"role": "service_role"}))).await;
    ws.subscribe("l1").await;
    ws.subscribe("l2").await;
    ws.send(json!({"type": "subscribe", "channel": "estadisticas:l3"}))
        .await;
    let reply = ws.expect("error").await;
    assert_eq!(reply["code"], "too_many_subscriptions");
    assert_eq!(reply["channel"], "estadisticas:l3");
    // Unsubscribing frees a place.
    ws.send(json!({"type": "unsubscribe", "channel": "estadisticas:l1"}))
        .await;
    ws.expect("unsubscribed").await;
    ws.subscribe("l3").await;
}

async fn status_of(url: String, origin: Option<&str>) -> Result<(), u16> {
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn origins_and_connections_per_subject_are_limited() {
    let db = TestDb::new().await;
    let config = config_with(&db.url, |a| {
        a.allowed_origins = Some("https://app.example.com".into());
        a.max_connections_per_subject = "2".into();
    });
    let app = spawn_app_unready(config).await;
    app.wait_health(200).await;
    let url = |sub: &str| {
        format!(
            "ws://{}/ws?token={}",
            app.addr,
            token(json!({"sub": sub, "negocio_id": "o"}))
        )
    };

    assert_eq!(
        status_of(url("u1"), Some("https://evil.example.com")).await,
        Err(403)
    );
    assert_eq!(
        status_of(url("u1"), Some("https://app.example.com")).await,
        Ok(())
    );
    // Clients that send no Origin (servers, mobile apps) are not affected.
    assert_eq!(status_of(url("u1"), None).await, Ok(()));

    let first = app
        .ws(&token(json!({"sub": "u2", "negocio_id": "o"})))
        .await;
    let _second = app
        .ws(&token(json!({"sub": "u2", "negocio_id": "o"})))
        .await;
    assert_eq!(status_of(url("u2"), None).await, Err(429));
    assert_eq!(
        status_of(url("u3"), None).await,
        Ok(()),
        "other subjects unaffected"
    );
    // A closed connection frees its place.
    drop(first);
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    while status_of(url("u2"), None).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
