//! Security: JWKS keys and their rotation, algorithm pinning, the SQL access hook, the message
//! rate limit, `POST /notify/cita`, tenants kept apart under random grants, and tokens kept out
//! of logs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::helpers::{
    brief, config_with, metric, spawn_app_unready, token, BinaryServer, TestApp, TestDb, Ws, SECRET,
};

fn now() -> u64 {
    citas_realtime::auth::jwt::now_secs()
}

/// A signing key of the test's identity provider: its private half signs tokens, its public
/// half goes into the JWKS.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: Vec<u8>,
}

impl SigningKey {
    fn rsa(kid: &str) -> SigningKey {
        let rsa = Rsa::generate(2048).unwrap();
        let jwk = json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
            "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
        });
        let public_pem = rsa.public_key_to_pem().unwrap();
        let pkey = PKey::from_rsa(rsa).unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&pkey.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            jwk,
            public_pem,
        }
    }

    /// ES256; published without `alg`, as some providers do: the curve implies it.
    fn ec(kid: &str) -> SigningKey {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let (mut x, mut y) = (
            openssl::bn::BigNum::new().unwrap(),
            openssl::bn::BigNum::new().unwrap(),
        );
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap())
            .unwrap();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(x.to_vec_padded(32).unwrap()),
            "y": URL_SAFE_NO_PAD.encode(y.to_vec_padded(32).unwrap()),
        });
        let public_pem = ec.public_key_to_pem().unwrap();
        let pkey = PKey::from_ec_key(ec).unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(&pkey.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            jwk,
            public_pem,
        }
    }

    /// A token with `claims` (an hour's `exp` unless given), signed by this key with header
    /// `alg` and `kid` as given.
    fn sign_as(&self, alg: Algorithm, kid: &str, mut claims: Value) -> String {
        claims
            .as_object_mut()
            .unwrap()
            .entry("exp")
            .or_insert(json!(now() + 3600));
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    fn sign(&self, claims: Value) -> String {
        self.sign_as(self.alg, &self.kid, claims)
    }
}

/// The identity provider's JWKS endpoint, served over real HTTP; counts its fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[&SigningKey]) -> JwksServer {
        use warp::Filter;
        let keys: Arc<Mutex<Vec<Value>>> =
            Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), hits.clone());
        let route = warp::path!("auth" / "v1" / ".well-known" / "jwks.json").map(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = served.lock().unwrap().clone();
            warp::reply::json(&json!({ "keys": keys }))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        JwksServer {
            url: format!("http://{addr}/auth/v1/.well-known/jwks.json"),
            keys,
            hits,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The status of a WebSocket handshake with `token`: 101 when upgraded.
async fn handshake(app: &TestApp, token: &str) -> (u16, Value) {
    let request = format!("ws://{}/ws?token={token}", app.addr)
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => (101, Value::Null),
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

#[tokio::test]
async fn jwks_keys_verify_pin_their_algorithm_and_rotate() {
    let db = TestDb::new().await;
    let (rsa1, ec1, rsa2) = tokio::task::spawn_blocking(|| {
        (
            SigningKey::rsa("rsa-1"),
            SigningKey::ec("ec-1"),
            SigningKey::rsa("rsa-2"),
        )
    })
    .await
    .unwrap();
    let idp = JwksServer::start(&[&rsa1, &ec1]).await;
    let app = spawn_app_unready(config_with(&db.url, |a| {
        a.jwt_jwks_url = Some(idp.url.clone())
    }))
    .await;
    app.wait_health(200).await;
    assert_eq!(idp.hits(), 1, "keys are loaded once at start");

    // RS256 and ES256 tokens verify, and grant what they say.
    let mut ws = app
        .ws(&rsa1.sign(json!({"sub": "u1", "negocio_id": "k1"})))
        .await;
    ws.subscribe("k1").await;
    ws.send(json!({"type": "subscribe", "channel": "estadisticas:k2"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "forbidden");
    let mut es = app.ws(&ec1.sign(json!({"negocio_id": "k1"}))).await;
    es.subscribe("k1").await;
    db.execute("insert into citas (negocio_id) values ('k1')")
        .await;
    assert_eq!(ws.events(1).await[0]["data"]["negocio_id"], "k1");
    assert_eq!(es.events(1).await[0]["data"]["negocio_id"], "k1");
    // The HS256 secret still works beside the keys.
    assert_eq!(
        handshake(&app, &token(json!({"negocio_id": "k1"}))).await.0,
        101
    );

    // Algorithm confusion: an HS256 token whose "secret" is the RSA public key.
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &json!({"negocio_id": "k1", "exp": now() + 600}),
        &EncodingKey::from_secret(&rsa1.public_pem).unwrap(),
    )
    .unwrap();
    assert_eq!(handshake(&app, &confused).await.0, 401);
    let confused_ec = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"negocio_id": "k1", "exp": now() + 600}),
        &EncodingKey::from_secret(&ec1.public_pem).unwrap(),
    )
    .unwrap();
    assert_eq!(handshake(&app, &confused_ec).await.0, 401);
    // A key answers only for its own algorithm: an RS256 token naming the EC key's kid.
    let (code, body) = handshake(
        &app,
        &rsa1.sign_as(Algorithm::RS256, "ec-1", json!({"negocio_id": "k1"})),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (401, Some("token algorithm not accepted"))
    );
    // Expired, and not yet valid, as with HS256.
    let (code, body) = handshake(&app, &ec1.sign(json!({"exp": now() - 3600}))).await;
    assert_eq!((code, body["error"].as_str()), (401, Some("token expired")));
    let (code, _) = handshake(&app, &ec1.sign(json!({"nbf": now() + 3600}))).await;
    assert_eq!(code, 401);
    assert_eq!(idp.hits(), 1, "known kids never refetch");

    // Rotation: the provider withdraws rsa-1 and publishes rsa-2. A token signed with the new
    // key makes the server fetch again, once.
    idp.publish(&[&rsa2, &ec1]);
    let mut fresh = app.ws(&rsa2.sign(json!({"negocio_id": "k1"}))).await;
    fresh.subscribe("k1").await;
    assert_eq!(idp.hits(), 2);
    let (code, body) = handshake(&app, &rsa1.sign(json!({"negocio_id": "k1"}))).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (401, Some("token signed by an unknown key (kid)")),
        "a withdrawn key is no longer accepted once the keys are refetched"
    );
    // A flood of made-up kids costs no fetch within the cooldown.
    for i in 0..20 {
        let forged = rsa2.sign_as(Algorithm::RS256, &format!("made-up-{i}"), json!({}));
        assert_eq!(handshake(&app, &forged).await.0, 401);
    }
    assert_eq!(idp.hits(), 2, "unknown kids are rate-limited");
}

#[tokio::test]
async fn jwks_from_a_file_and_clear_errors_for_bad_sources() {
    let db = TestDb::new().await;
    let key = tokio::task::spawn_blocking(|| SigningKey::ec("file-key"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [key.jwk]}).to_string()).unwrap();
    // JWKS only: no JWT_SECRET at all, so HS256 tokens are refused.
    let app = spawn_app_unready(config_with(&db.url, |a| {
        a.jwt_secret = None;
        a.jwt_jwks_url = Some(path.display().to_string());
    }))
    .await;
    app.wait_health(200).await;
    assert_eq!(
        handshake(&app, &key.sign(json!({"negocio_id": "f"})))
            .await
            .0,
        101
    );
    let (code, body) = handshake(&app, &token(json!({"negocio_id": "f"}))).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (401, Some("token algorithm not accepted"))
    );

    // A source that does not work stops the server at start, naming the variable.
    for bad in [
        dir.path().join("missing.json").display().to_string(),
        "http://127.0.0.1:9/jwks.json".to_string(),
    ] {
        let config = config_with(&db.url, |a| a.jwt_jwks_url = Some(bad.clone()));
        let error = match citas_realtime::commands::serve::start(&config).await {
            Ok(_) => panic!("started with JWT_JWKS_URL={bad}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains("JWT_JWKS_URL"), "{error}");
    }
    std::fs::write(&path, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
    let config = config_with(&db.url, |a| {
        a.jwt_jwks_url = Some(path.display().to_string())
    });
    let error = format!(
        "{:#}",
        citas_realtime::commands::serve::start(&config)
            .await
            .err()
            .unwrap()
    );
    assert!(error.contains("no usable signing key"), "{error}");
}

/// The DBA's mapping table and hook: `members(user_id, negocio_id)`; every call is counted;
/// negocio `boom` makes the function fail.
const HOOK_SQL: &str = "
    create table public.members (user_id text, negocio_id text);
    create table public.hook_calls (n int);
    create function citas_realtime.can_subscribe(claims jsonb, negocio_id text)
        returns boolean language plpgsql security definer
        set search_path = pg_catalog, pg_temp as $$
    begin
        insert into public.hook_calls values (1);
        if negocio_id = 'boom' then
            raise exception 'mapping table unavailable';
        end if;
        return exists (select 1 from public.members m
                       where m.user_id = claims ->> 'sub' and m.negocio_id = can_subscribe.negocio_id);
    end $$;";

#[tokio::test]
async fn the_sql_hook_grants_subscriptions_and_is_cached() {
    let db = TestDb::new().await;
    db.client.batch_execute(HOOK_SQL).await.unwrap();
    db.execute("insert into members values ('ana', 'h1'), ('ana', 'h2')")
        .await;
    let app = spawn_app_unready(config_with(&db.url, |a| {
        a.can_subscribe_function = Some("citas_realtime.can_subscribe".into());
        a.can_subscribe_cache = "1h".into();
    }))
    .await;
    app.wait_health(200).await;

    let mut ana = app.ws(&token(json!({"sub": "ana"}))).await;
    ana.subscribe("h1").await;
    ana.subscribe("h2").await;
    ana.send(json!({"type": "subscribe", "channel": "estadisticas:h3"}))
        .await;
    let refused = ana.expect("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["channel"].as_str()),
        (Some("forbidden"), Some("estadisticas:h3"))
    );
    // A failing hook refuses, and says it may be worth trying again.
    ana.send(json!({"type": "subscribe", "channel": "estadisticas:boom"}))
        .await;
    assert_eq!(ana.expect("error").await["code"], "unavailable");
    // Claims still grant on their own, without asking the function.
    let mut bea = app
        .ws(&token(json!({"sub": "bea", "negocio_id": "h3"})))
        .await;
    bea.subscribe("h3").await;

    db.execute("insert into citas (negocio_id) values ('h1'), ('h3'), ('h2')")
        .await;
    let got: Vec<String> = ana.events(2).await.iter().map(|e| brief(e).1).collect();
    assert_eq!(got, ["h1", "h2"]);
    assert_eq!(bea.events(1).await[0]["data"]["negocio_id"], "h3");

    // Answers are cached: ana's second dashboard asks the database nothing new.
    let calls: i64 = db.scalar("select count(*) from hook_calls").await;
    // h1, h2 and h3, once each; the call for boom failed, and its insert with it.
    assert_eq!(calls, 3);
    let mut again = app.ws(&token(json!({"sub": "ana"}))).await;
    again.subscribe("h1").await;
    again.subscribe("h2").await;
    let calls: i64 = db.scalar("select count(*) from hook_calls").await;
    assert_eq!(calls, 3);
    assert_eq!(
        metric(&app, "citas_realtime_access_checks_total").await,
        4.0
    );
    assert_eq!(
        metric(&app, "citas_realtime_access_check_failures_total").await,
        1.0
    );
}

#[tokio::test]
async fn a_client_flooding_messages_is_closed_with_1008() {
    let db = TestDb::new().await;
    let app = spawn_app_unready(config_with(&db.url, |a| {
        a.client_message_rate = "1".into();
        a.client_message_burst = "10".into();
    }))
    .await;
    app.wait_health(200).await;
    // Within the burst: answered.
    let mut polite = app.ws(&token(json!({"negocio_id": "r"}))).await;
    for _ in 0..5 {
        polite.send(json!({"type": "ping"})).await;
        polite.expect("pong").await;
    }
    let mut flood = app.ws(&token(json!({"negocio_id": "r"}))).await;
    for _ in 0..50 {
        if tokio::time::timeout(
            std::time::Duration::from_secs(1),
            flood
                .socket
                .send(tokio_tungstenite::tungstenite::Message::text(
                    r#"{"type":"ping"}"#,
                )),
        )
        .await
        .map_or(true, |r| r.is_err())
        {
            break;
        }
    }
    assert_eq!(flood.closed().await, Some(CloseCode::Policy));
    assert_eq!(metric(&app, "citas_realtime_rate_limited_total").await, 1.0);
    // The polite client is not affected.
    polite.send(json!({"type": "ping"})).await;
    polite.expect("pong").await;
}

/// `POST /notify/cita` with an optional bearer token; status and JSON body.
async fn notify(app: &TestApp, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(app.url("/notify/cita"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_notify_endpoint_answers_401_403_400_and_delivers_through_the_log() {
    let db = TestDb::new().await;
    let app = crate::helpers::spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["rest"]).await;
    let service = token(json!({"role": "service_role"}));
    let good = r#"{"negocio_id": "rest", "action": "updated"}"#;

    assert_eq!(notify(&app, None, good).await.0, 401);
    assert_eq!(notify(&app, Some("not-a-token"), good).await.0, 401);
    let user = token(json!({"role": "authenticated", "negocio_id": "rest"}));
    let (code, body) = notify(&app, Some(&user), good).await;
    assert_eq!(code, 403);
    assert!(body["error"].as_str().unwrap().contains("service_role"));
    for bad in [
        "not json",
        "{}",
        r#"{"negocio_id": "rest"}"#,
        r#"{"negocio_id": "rest", "action": "exploded"}"#,
        r#"{"negocio_id": "", "action": "created"}"#,
        r#"{"negocio_id": ["rest"], "action": "created"}"#,
    ] {
        let (code, body) = notify(&app, Some(&service), bad).await;
        assert_eq!(code, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    assert_eq!(
        db.scalar::<i64>("select count(*) from citas_realtime.events")
            .await,
        0
    );

    let (code, body) = notify(&app, Some(&service), good).await;
    assert_eq!(code, 200, "{body}");
    let seq = body["seq"].as_i64().expect("the event's seq");
    let event = ws.expect("cita_updated").await;
    assert_eq!(event["channel"], "estadisticas:rest");
    assert_eq!(event["data"]["seq"], seq);
    assert_eq!(event["data"]["action"], "updated");
    assert_eq!(event["data"]["cita_id"], Value::Null);

    // Numbers for bigint ids, and the optional cita_id; a resuming client gets it too.
    let (code, body) = notify(
        &app,
        Some(&service),
        r#"{"negocio_id": 77, "action": "status_changed", "cita_id": 9, "estado": "confirmada"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let mut late = app.ws(&token(json!({"negocio_id": "77"}))).await;
    late.send(json!({"type": "subscribe", "channel": "estadisticas:77", "since": seq}))
        .await;
    late.expect("subscribed").await;
    let event = late.expect("cita_status_changed").await;
    assert_eq!(event["data"]["cita_id"], "9");
    assert_eq!(event["data"]["estado"], "confirmada");

    assert_eq!(
        metric(&app, "citas_realtime_notify_events_total").await,
        2.0
    );

    // The token may also come as ?token=, as on /ws.
    let by_query = reqwest::Client::new()
        .post(format!("{}?token={service}", app.url("/notify/cita")))
        .header("content-type", "application/json")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status().as_u16(), 200);
    assert_eq!(
        ws.expect("cita_updated").await["data"]["negocio_id"],
        "rest"
    );

    // Bodies are bounded: over 16 KiB is 413; without Content-Length (chunked), 411.
    let (code, _) = notify(&app, Some(&service), &" ".repeat(20_000)).await;
    assert_eq!(code, 413, "an oversized body is refused before it is read");
    let mut raw = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /notify/cita HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {service}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut raw, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");

    let wrong_method = reqwest::get(app.url("/notify/cita")).await.unwrap();
    assert_eq!(wrong_method.status().as_u16(), 405);
}

/// Random writes across 50 negocios; clients with random grants (half in their claims, half
/// through the SQL hook). Every client receives exactly the events of the negocios it may see,
/// in log order.
#[tokio::test]
async fn random_grants_over_50_negocios_see_exactly_their_events() {
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    db.client.batch_execute(HOOK_SQL).await.unwrap();
    let app = spawn_app_unready(config_with(&db.url, |a| {
        a.can_subscribe_function = Some("citas_realtime.can_subscribe".into());
    }))
    .await;
    app.wait_health(200).await;
    let negocios: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();

    struct Client {
        ws: Ws,
        allowed: BTreeSet<String>,
    }
    let mut clients = Vec::new();
    for c in 0..20 {
        let allowed: BTreeSet<String> = negocios
            .iter()
            .filter(|_| rng.random_bool(0.2))
            .cloned()
            .collect();
        let user = format!("user{c}");
        let claims = if c % 2 == 0 {
            json!({"sub": user, "negocio_ids": allowed})
        } else {
            for n in &allowed {
                db.client
                    .execute("insert into members values ($1, $2)", &[&user, n])
                    .await
                    .unwrap();
            }
            json!({"sub": user})
        };
        let mut ws = app.ws(&token(claims)).await;
        // Each client asks for every negocio; only its own are granted.
        for n in &negocios {
            ws.send(json!({"type": "subscribe", "channel": format!("estadisticas:{n}")}))
                .await;
            let reply = ws.next().await;
            let expected = if allowed.contains(n) {
                "subscribed"
            } else {
                "error"
            };
            assert_eq!(reply["type"], expected, "seed {seed}, {user}, {n}: {reply}");
            if expected == "error" {
                assert_eq!(reply["code"], "forbidden", "seed {seed}");
            }
        }
        clients.push(Client { ws, allowed });
    }

    for _ in 0..200 {
        let n = &negocios[rng.random_range(0..negocios.len())];
        let sql = match rng.random_range(0..3) {
            0 => "insert into citas (negocio_id) values ($1)",
            1 => "update citas set estado = 'confirmada' where id = (select id from citas where negocio_id = $1 and estado = 'pendiente' limit 1)",
            _ => "delete from citas where id = (select id from citas where negocio_id = $1 limit 1)",
        };
        db.client.execute(sql, &[n]).await.unwrap();
    }

    let logged: Vec<(i64, String)> = db
        .client
        .query(
            "select seq, negocio_id from citas_realtime.events order by seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let expected: Vec<(i64, String)> = logged
            .iter()
            .filter(|(_, n)| client.allowed.contains(n))
            .cloned()
            .collect();
        let got: Vec<(i64, String)> = client
            .ws
            .events(expected.len())
            .await
            .iter()
            .map(|e| (brief(e).2, brief(e).1))
            .collect();
        assert_eq!(got, expected, "seed {seed}, client {i}");
        // And nothing more: a ping is answered next, with no stray event before it.
        client.ws.send(json!({"type": "ping"})).await;
        assert_eq!(
            client.ws.next().await["type"],
            "pong",
            "seed {seed}, client {i}"
        );
    }
    let per_negocio: BTreeMap<&str, usize> =
        logged.iter().fold(BTreeMap::new(), |mut m, (_, n)| {
            *m.entry(n.as_str()).or_default() += 1;
            m
        });
    assert!(per_negocio.len() > 10, "writes spread over many negocios");
}

#[tokio::test]
async fn tokens_and_secrets_never_reach_the_log() {
    let db = TestDb::new().await;
    let server = BinaryServer::start(&db.url, &[("RUST_LOG", "trace")]).await;
    let app = TestApp {
        addr: server.addr,
        server: None,
    };
    let good = token(json!({"sub": "logged-user", "negocio_id": "l"}));
    let mut ws = app.ws(&good).await;
    ws.subscribe("l").await;
    let fresh = token(json!({"sub": "logged-user", "negocio_id": "l", "n": 2}));
    ws.send(json!({"type": "auth", "token": fresh})).await;
    ws.expect("authenticated").await;
    let forged = crate::helpers::token(json!({"sub": "x"})) + "tampered";
    assert_eq!(handshake(&app, &forged).await.0, 401);
    let service = token(json!({"role": "service_role"}));
    assert_eq!(
        notify(
            &app,
            Some(&service),
            r#"{"negocio_id": "l", "action": "created"}"#
        )
        .await
        .0,
        200
    );
    ws.expect("cita_created").await;
    drop(ws);

    let logs = server.logs();
    assert!(
        logs.contains("citas-realtime serving"),
        "the log is captured: {logs}"
    );
    for secret in [
        good.as_str(),
        fresh.as_str(),
        forged.as_str(),
        service.as_str(),
        SECRET,
    ] {
        // The signature part is what makes a token usable.
        let signature = secret.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "a token or secret was logged: {logs}"
        );
    }
}

/// Anyone who may NOTIFY on the database can send junk on our channel: it is counted, logged,
/// and changes nothing (delivery reads the log, never the payload).
#[tokio::test]
async fn foreign_notifications_are_counted_and_change_nothing() {
    let db = TestDb::new().await;
    let app = crate::helpers::spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["fn"]).await;
    for payload in [
        "",
        "not json",
        r#"{"first_seq": 99999999, "last_seq": 1, "count": 1}"#,
        &"x".repeat(7000),
    ] {
        db.client
            .execute("select pg_notify('citas_realtime', $1)", &[&payload])
            .await
            .unwrap();
    }
    db.execute("insert into citas (negocio_id) values ('fn')")
        .await;
    let event = ws.expect("cita_created").await;
    let logged: i64 = db
        .scalar("select max(seq) from citas_realtime.events")
        .await;
    assert_eq!(event["data"]["seq"], logged);
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    while metric(&app, "citas_realtime_unrecognised_notifications_total").await < 4.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "foreign payloads not counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Nothing but that one event reached the client.
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
}

/// A notification whose events were all read already wakes no read (counted in
/// `_notifications_already_read_total`); one that names a seq not yet read does. So a payload
/// can only save a read, never hide an event: a forged "already read" payload sent in the same
/// transaction as a real change is outweighed by the change's own notification, and the event
/// arrives at once, not at the next periodic read.
#[tokio::test]
async fn notifications_of_events_already_read_wake_no_read_and_hide_none() {
    const ALREADY_READ: &str = "citas_realtime_notifications_already_read_total";
    const READS: &str = "citas_realtime_log_reads_total";
    let db = TestDb::new().await;
    let app = crate::helpers::spawn_app(&db.url).await;
    let mut ws = app.subscriber(&["ar"]).await;
    db.execute("insert into citas (negocio_id) values ('ar')")
        .await;
    ws.expect("cita_created").await;
    let until = |name: &'static str, at_least: f64| {
        let app = &app;
        async move {
            let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
            loop {
                let value = metric(app, name).await;
                if value >= at_least {
                    return value;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} stayed below {at_least}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    let notify = |payload: &'static str| {
        let db = &db;
        async move {
            db.client
                .execute("select pg_notify('citas_realtime', $1)", &[&payload])
                .await
                .unwrap();
        }
    };
    // Seq 1 was read: no read.
    let skipped = metric(&app, ALREADY_READ).await;
    notify(r#"{"last_seq":1,"count":1}"#).await;
    until(ALREADY_READ, skipped + 1.0).await;
    // A seq beyond the log: a read (which finds nothing).
    let (skipped, reads) = (metric(&app, ALREADY_READ).await, metric(&app, READS).await);
    notify(r#"{"last_seq":1000000000000,"count":1}"#).await;
    until(READS, reads + 1.0).await;
    assert_eq!(metric(&app, ALREADY_READ).await, skipped);
    // A forged "already read" beside real changes hides none of them.
    for _ in 0..5 {
        db.client
            .batch_execute(
                r#"begin;
                   insert into citas (negocio_id) values ('ar');
                   select pg_notify('citas_realtime', '{"last_seq":1,"count":1}');
                   commit"#,
            )
            .await
            .unwrap();
        let committed = std::time::Instant::now();
        let event = ws.expect("cita_created").await;
        let logged: i64 = db
            .scalar("select max(seq) from citas_realtime.events")
            .await;
        assert_eq!(event["data"]["seq"], logged);
        // Well before the periodic read (every 5 s) would have found it.
        assert!(
            committed.elapsed() < std::time::Duration::from_secs(1),
            "the event took {:?}",
            committed.elapsed()
        );
    }
}
