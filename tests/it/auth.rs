//! Tokens: every bad kind is refused with 401 before any upgrade; every claim form grants what
//! it names and nothing more.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::helpers::{spawn_app, token, TestApp, TestDb, Ws, SECRET};

fn now() -> u64 {
    citas_realtime::auth::jwt::now_secs()
}

fn sign(alg: Algorithm, secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn b64(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Tries a WebSocket handshake; returns the HTTP status and JSON body of a refusal.
async fn refused(app: &TestApp, query: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = format!("ws://{}/ws{query}", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(bearer) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {bearer}")).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("handshake with {query:?} was accepted"),
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let json: Value = serde_json::from_slice(&body).expect("JSON error body");
            (response.status().as_u16(), json)
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn every_bad_token_gets_401_with_a_json_error() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let claims = json!({"negocio_id": "a", "exp": now() + 600});
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let cases: Vec<(&str, String)> = vec![
        ("missing", String::new()),
        ("malformed", "?token=not-a-jwt".into()),
        ("garbage segments", "?token=aaa.bbb.ccc".into()),
        (
            "wrong secret",
            format!(
                "?token={}",
                sign(Algorithm::HS256, "other-secret", claims.clone())
            ),
        ),
        (
            "expired",
            format!(
                "?token={}",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    json!({"negocio_id": "a", "exp": now() - 3600})
                )
            ),
        ),
        (
            "no exp",
            format!(
                "?token={}",
                sign(Algorithm::HS256, SECRET, json!({"negocio_id": "a"}))
            ),
        ),
        ("alg none", format!("?token={none_token}")),
        (
            "HS512",
            format!("?token={}", sign(Algorithm::HS512, SECRET, claims.clone())),
        ),
        (
            "not yet valid",
            format!(
                "?token={}",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    json!({"exp": now() + 7200, "nbf": now() + 3600})
                )
            ),
        ),
    ];
    for (what, query) in cases {
        let (status, body) = refused(&app, &query, None).await;
        assert_eq!(status, 401, "{what}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: body {body}"
        );
    }
    let (status, body) = refused(&app, "", Some("not-a-jwt")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("malformed token"))
    );
    let (_, body) = refused(
        &app,
        &format!(
            "?token={}",
            sign(Algorithm::HS256, SECRET, json!({"exp": now() - 3600}))
        ),
        None,
    )
    .await;
    assert_eq!(body["error"], "token expired");
}

#[tokio::test]
async fn a_bearer_header_works_like_the_query_token() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let mut request = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", token(json!({"negocio_id": "h"})))).unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("accepted");
    let mut ws = Ws::new(socket);
    ws.subscribe("h").await;
    db.execute("insert into citas (negocio_id) values ('h')")
        .await;
    ws.expect("cita_created").await;
}

async fn may_subscribe(ws: &mut Ws, negocio: &str) -> bool {
    let channel = format!("estadisticas:{negocio}");
    ws.send(json!({"type": "subscribe", "channel": channel}))
        .await;
    let reply = ws.next().await;
    match reply["type"].as_str() {
        Some("subscribed") => true,
        Some("error") => {
            assert_eq!(reply["code"], "forbidden", "{reply}");
            assert_eq!(reply["channel"], channel);
            false
        }
        _ => panic!("unexpected reply {reply}"),
    }
}

#[tokio::test]
async fn each_claim_form_grants_exactly_its_negocios() {
    let db = TestDb::new().await;
    let app = spawn_app(&db.url).await;
    let cases = [
        (json!({"negocio_id": "a"}), vec!["a"]),
        (json!({"negocio_ids": ["a", "b"]}), vec!["a", "b"]),
        (json!({"app_metadata": {"negocio_id": "c"}}), vec!["c"]),
        (
            json!({"app_metadata": {"negocio_ids": ["a", "c"]}}),
            vec!["a", "c"],
        ),
        (
            json!({"role": "authenticated", "negocio_id": "b"}),
            vec!["b"],
        ),
        (json!({"role": "authenticated"}), vec![]),
    ];
    for (claims, granted) in cases {
        let mut ws = app.ws(&token(claims.clone())).await;
        for negocio in ["a", "b", "c", "d"] {
            assert_eq!(
                may_subscribe(&mut ws, negocio).await,
                granted.contains(&negocio),
                "claims {claims} and negocio {negocio}"
            );
        }
    }
    let mut service = app.ws(&token(json!({"role": "service_role"}))).await;
    for negocio in ["a", "zzz", "42"] {
        assert!(may_subscribe(&mut service, negocio).await);
    }
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let db = TestDb::new().await;
    let mut config = crate::helpers::test_config(&db.url);
    config.token_checks.audience = Some("authenticated".into());
    config.token_checks.issuer = Some("https://ref.supabase.co/auth/v1".into());
    let app = crate::helpers::spawn_app_unready(config).await;
    app.wait_health(200).await;
    let iss = "https://ref.supabase.co/auth/v1";
    let good = token(json!({"aud": "authenticated", "iss": iss, "negocio_id": "a"}));
    let mut ws = app.ws(&good).await;
    ws.subscribe("a").await;
    for (claims, error) in [
        (json!({"iss": iss}), "token lacks a required claim: aud"),
        (
            json!({"aud": "anon", "iss": iss}),
            "token audience not accepted",
        ),
        (
            json!({"aud": "authenticated", "iss": "https://other/auth/v1"}),
            "token issuer not accepted",
        ),
    ] {
        let (status, body) = refused(&app, &format!("?token={}", token(claims)), None).await;
        assert_eq!((status, body["error"].as_str()), (401, Some(error)));
    }
}
