//! HTTP routes, binding, startup and graceful shutdown of every task.
//!
//! Routes: `GET /ws` (token verified *before* any upgrade), `POST /notify/cita` (service tokens
//! only), `GET /health`, `GET /metrics`, and the dashboard page (`GET /`, `GET /assets/...`);
//! anything else is a JSON 404/405. [`start`] returns a [`RunningServer`] with the address actually bound, which is
//! what the tests and the demo use; `main` runs one until SIGTERM or Ctrl-C.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::upgrade::OnUpgrade;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::access::Access;
use crate::auth::jwks::Jwks;
use crate::auth::jwt::{id_text, AuthError, Grants, Principal, Verifier};
use crate::config::{Config, Limits};
use crate::edge::http::metrics::EdgeCounters;
use crate::edge::ws::transport::{self, WsContext};
use crate::fanout::hub::Hub;
use crate::fanout::hub::Refused;
use crate::log::listener::Listener;
use crate::log::status::ListenerStatus;
use crate::log::store::Store;

/// Pending connections the kernel queues for us. warp's own bind uses 128, which makes a storm
/// of reconnecting dashboards hit SYN retransmits (seconds of delay); the kernel caps this at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;
/// How long shutdown waits for sockets to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A server that is up: its address, its shared state, and the handles to stop it.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub status: Arc<ListenerStatus>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    http: JoinHandle<()>,
    listener: JoinHandle<()>,
    retention: Option<JoinHandle<()>>,
    stats_task: Option<JoinHandle<()>>,
}

/// Binds, starts the listener and the HTTP server, and returns at once: the listener connects
/// (and reconnects) in the background, and `/health` says when it is live.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    let jwks = match &config.jwks {
        Some(settings) => Some(
            Jwks::load(settings.source.clone(), settings.cooldown)
                .await
                .context("JWT_JWKS_URL: cannot load the signing keys")?,
        ),
        None => None,
    };
    let verifier = Arc::new(
        Verifier::with_checks(config.jwt_secret.as_ref(), jwks, &config.token_checks)
            .context("JWT_SECRET is unusable")?,
    );
    let tcp = bind(config.bind_addr)
        .with_context(|| format!("cannot listen on {} (BIND_ADDR)", config.bind_addr))?;
    let local_addr = tcp.local_addr()?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let hub = Arc::new(Hub::new());
    let status = Arc::new(ListenerStatus::default());

    let pool = config
        .database
        .pool(config.db_pool_size)
        .context("DATABASE_URL")?;
    let store = Store::new(pool);
    let retention = config.event_retention.map(|keep| {
        tokio::spawn(crate::log::retention::run(
            store.clone(),
            keep,
            shutdown.clone(),
        ))
    });
    let stats = config
        .stats
        .map(|settings| crate::fanout::stats::Stats::new(settings, hub.clone(), store.clone()));
    let stats_task = stats
        .clone()
        .map(|engine| tokio::spawn(engine.run(shutdown.clone())));
    let security = Arc::new(EdgeCounters::default());
    let http_counters = Arc::new(crate::edge::http::serve::HttpCounters::default());
    let access = Arc::new(Access::new(config.access_hook.clone(), store.clone()));
    let ctx = WsContext {
        verifier: verifier.clone(),
        access: access.clone(),
        max_subscriptions: config.limits.max_subscriptions,
        message_quota: config.limits.message_quota(),
        replay_quota: config.limits.replay_quota(),
        security: security.clone(),
        stats: stats.clone(),
        hub: hub.clone(),
        queue_capacity: config.client_queue_capacity,
        ping_interval: config.ws_ping_interval,
        store,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    };
    let listener = Listener::new(
        config.database.clone(),
        Arc::new(crate::fanout::Fanout {
            hub: hub.clone(),
            stats: stats.clone(),
        }),
        status.clone(),
        shutdown.clone(),
    );
    let listener = tokio::spawn(listener.run());
    let metrics = Arc::new(
        crate::edge::http::metrics::Metrics::new(crate::edge::http::metrics::Sources {
            hub: hub.clone(),
            status: status.clone(),
            stats: stats.clone(),
            access: access.clone(),
            edge: security.clone(),
            http: http_counters.clone(),
        })
        .context("cannot set up metrics")?,
    );
    let routes = routes(
        ctx,
        verifier,
        status.clone(),
        metrics,
        Arc::new(config.limits.clone()),
        config.dashboard,
        config.http.body_timeout,
    );
    let http_counters = http_counters.clone();
    let http = tokio::spawn(
        crate::edge::http::serve::Server {
            listener: tcp,
            routes,
            settings: config.http.clone(),
            counters: http_counters,
            hub: hub.clone(),
            open_file_limit: crate::edge::http::serve::raise_open_file_limit(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        }
        .run(),
    );
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        address = %local_addr,
        database = %config.database,
        "citas-realtime serving"
    );
    if config.database.tls_unverified() {
        tracing::warn!(
            "DATABASE_URL uses sslmode={:?} without sslrootcert: the connection is encrypted but \
             the server's certificate is not checked; use sslmode=verify-full and sslrootcert",
            config.database.ssl_mode()
        );
    }
    Ok(RunningServer {
        local_addr,
        hub,
        status,
        shutdown,
        tasks,
        http,
        listener,
        retention,
        stats_task,
    })
}

impl RunningServer {
    /// Stops accepting, closes every socket with 1001 (going away), stops the listener, and
    /// waits for all of it, at most a few seconds.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some clients did not close in time");
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.http).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.listener).await;
        for task in [self.retention, self.stats_task].into_iter().flatten() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
        }
        tracing::info!("stopped");
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn routes(
    ctx: WsContext,
    verifier: Arc<Verifier>,
    status: Arc<ListenerStatus>,
    metrics: Arc<crate::edge::http::metrics::Metrics>,
    limits: Arc<Limits>,
    dashboard: bool,
    body_timeout: Duration,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let hub = ctx.hub.clone();
    let stats = ctx.stats.clone();
    let ws = warp::path!("ws")
        .and(warp::get())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .then({
            let (ctx, verifier) = (ctx.clone(), verifier.clone());
            move |query: HashMap<String, String>, headers: HeaderMap, on_upgrade| {
                let (ctx, limits, verifier) = (ctx.clone(), limits.clone(), verifier.clone());
                async move { upgrade(&ctx, &limits, &verifier, &query, &headers, on_upgrade).await }
            }
        });
    let notify = warp::path!("notify" / "cita")
        .and(warp::post())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(NOTIFY_BODY_LIMIT))
        .and(warp::body::stream())
        .then(
            move |query: HashMap<String, String>, headers: HeaderMap, body| {
                let (store, verifier, security) =
                    (ctx.store.clone(), verifier.clone(), ctx.security.clone());
                async move {
                    // The token first: a stranger's body is never read.
                    let principal = match authenticate(&verifier, &query, &headers).await {
                        Ok(principal) => principal,
                        Err(refusal) => return refusal,
                    };
                    if principal.grants != Grants::All {
                        return error_response(
                            StatusCode::FORBIDDEN,
                            "POST /notify/cita needs a service token (role service_role)",
                        );
                    }
                    let body = match read_body(body, body_timeout).await {
                        Ok(body) => body,
                        Err(error) => return error.response(),
                    };
                    notify_cita(&store, &security, &body).await
                }
            },
        );
    let health = warp::path!("health").and(warp::get()).map(move || {
        let connected = status.is_connected();
        let counts = hub.stats();
        let body = serde_json::json!({
            "status": if connected { "ok" } else { "unavailable" },
            "listener": status.state_name(),
            "last_seq": status.last_seq(),
            "listener_reconnects": status.reconnects(),
            "connections": counts.connections,
            "subscriptions": counts.subscriptions,
            "slow_clients_kicked": counts.slow_clients_kicked,
            "stats_queries": stats.as_ref().map(|s| s.queries()),
        });
        let code = if connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(code, &body)
    });
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        let mut response = Response::new(metrics.render().into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    });
    let page = warp::any()
        .and_then(move || async move {
            if dashboard {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(crate::edge::http::dashboard::routes());
    ws.or(notify)
        .unify()
        .or(health)
        .unify()
        .or(page)
        .unify()
        .or(metrics)
        .unify()
        .recover(rejection)
        .unify()
}

/// `GET /ws`: token first, then the WebSocket handshake.
async fn upgrade(
    ctx: &WsContext,
    limits: &Limits,
    verifier: &Verifier,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Response {
    let principal = match authenticate(verifier, query, headers).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal,
    };
    if ctx.shutdown.is_cancelled() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin = origin.trim_end_matches('/');
        if !limits.allowed_origins.is_empty() && !limits.allowed_origins.iter().any(|o| o == origin)
        {
            return error_response(StatusCode::FORBIDDEN, "origin not allowed");
        }
    }
    let has = |name: header::HeaderName, value: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(value))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        let mut response = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket only",
        );
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return error_response(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
    }
    let (Some(key), Some(on_upgrade)) = (headers.get(header::SEC_WEBSOCKET_KEY), on_upgrade) else {
        return error_response(StatusCode::BAD_REQUEST, "not a valid WebSocket handshake");
    };
    let permit = match ctx.hub.admit(
        principal.subject.as_deref(),
        limits.max_connections,
        limits.max_connections_per_subject,
    ) {
        Ok(permit) => permit,
        Err(Refused::ServerFull) => {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "too many connections")
        }
        Err(Refused::SubjectFull) => {
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections for this token's subject",
            )
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    transport::spawn_connection(ctx.clone(), on_upgrade, principal, permit);

    let mut response = Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The request's token (`?token=`, what the Angular app sends, or `Authorization: Bearer`),
/// verified; the 401 answer otherwise.
async fn authenticate(
    verifier: &Verifier,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    let bearer = || {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
    };
    let token = query.get("token").map(String::as_str).or_else(bearer);
    match token {
        Some(token) => verifier.verify(token).await.map_err(|e| unauthorized(&e)),
        None => Err(unauthorized(&AuthError::Missing)),
    }
}

/// The body of `POST /notify/cita`, as the REST API of the old design sends it. `cita_id` and
/// `estado` are optional extras; ids may be strings or numbers (bigint ids).
#[derive(Debug, serde::Deserialize)]
struct NotifyBody {
    negocio_id: serde_json::Value,
    action: String,
    #[serde(default)]
    cita_id: Option<serde_json::Value>,
    #[serde(default)]
    estado: Option<String>,
}

/// A `POST /notify/cita` body, validated: what `citas_realtime.notify_cita()` is called with.
#[derive(Debug)]
struct Notification {
    negocio_id: String,
    action: String,
    cita_id: Option<String>,
    estado: Option<String>,
}

impl Notification {
    /// Every field checked here, so that a bad body is a 400 naming the field, never a
    /// database error (PostgreSQL text cannot hold NUL, for one).
    fn from_body(body: &[u8]) -> Result<Notification, String> {
        let body: NotifyBody = serde_json::from_slice(body).map_err(|error| {
            format!("body must be {{\"negocio_id\": ..., \"action\": ...}}: {error}")
        })?;
        let negocio_id = id_text(&body.negocio_id)
            .filter(|id| id.len() <= crate::edge::ws::protocol::MAX_NEGOCIO_ID_LEN)
            .ok_or(
                "negocio_id must be a string of 1 to 256 bytes without NUL, or an integer of at \
                 most 2^53 - 1 (send larger ids as strings)",
            )?;
        if !NOTIFY_ACTIONS.contains(&body.action.as_str()) {
            return Err("action must be one of created, updated, deleted, status_changed".into());
        }
        let cita_id = match &body.cita_id {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(id_text(value).ok_or(
                "cita_id must be a non-empty string without NUL, or an integer of at most \
                 2^53 - 1",
            )?),
        };
        if body.estado.as_deref().is_some_and(|e| e.contains('\0')) {
            return Err("estado must not contain NUL".into());
        }
        Ok(Notification {
            negocio_id,
            action: body.action,
            cita_id,
            estado: body.estado,
        })
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("body too large")]
    TooLarge,
    #[error("the body took longer than HTTP_BODY_TIMEOUT")]
    Timeout,
    #[error("bad body")]
    Broken,
}

impl BodyError {
    fn response(&self) -> Response {
        let code = match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
            BodyError::Broken => StatusCode::BAD_REQUEST,
        };
        error_response(code, &self.to_string())
    }
}

/// Reads a body of at most [`NOTIFY_BODY_LIMIT`] bytes within `timeout`: a client that stalls
/// mid-body holds nothing for long.
async fn read_body<S, B>(body: S, timeout: Duration) -> Result<Vec<u8>, BodyError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let read = async {
        let mut out = Vec::new();
        futures::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|_| BodyError::Broken)?;
            if out.len() + chunk.remaining() > NOTIFY_BODY_LIMIT as usize {
                return Err(BodyError::TooLarge);
            }
            while chunk.has_remaining() {
                let piece = chunk.chunk();
                out.extend_from_slice(piece);
                let n = piece.len();
                chunk.advance(n);
            }
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// The actions `POST /notify/cita` accepts.
const NOTIFY_ACTIONS: [&str; 4] = ["created", "updated", "deleted", "status_changed"];
/// `POST /notify/cita` bodies are a few dozen bytes.
const NOTIFY_BODY_LIMIT: u64 = 16 * 1024;

/// `POST /notify/cita`: the old design's REST-side notification, for APIs not yet migrated.
/// Service tokens only. The event goes through the log like any trigger-written one
/// (`citas_realtime.notify_cita`), so every instance, every resume and the statistics see it.
async fn notify_cita(store: &Store, security: &EdgeCounters, body: &[u8]) -> Response {
    let note = match Notification::from_body(body) {
        Ok(note) => note,
        Err(reason) => return error_response(StatusCode::BAD_REQUEST, &reason),
    };
    let result = store
        .notify_cita(
            &note.negocio_id,
            &note.action,
            note.cita_id.as_deref(),
            note.estado.as_deref(),
        )
        .await;
    match result {
        Ok(seq) => {
            security.notify_events.inc();
            json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "notificación recibida", "seq": seq}),
            )
        }
        Err(error) => {
            tracing::warn!(%error, "POST /notify/cita could not write the event");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot record the notification now (is install.sql version 3 or later installed?)",
            )
        }
    }
}

fn unauthorized(error: &AuthError) -> Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, &error.to_string());
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn error_response(code: StatusCode, message: &str) -> Response {
    json_response(code, &serde_json::json!({ "error": message }))
}

fn json_response(code: StatusCode, body: &serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(body), code).into_response()
}

async fn rejection(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(if rejection.is_not_found() {
        error_response(StatusCode::NOT_FOUND, "not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        error_response(StatusCode::PAYLOAD_TOO_LARGE, "body too large")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        error_response(
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required",
        )
    } else {
        tracing::debug!(?rejection, "request rejected");
        error_response(StatusCode::BAD_REQUEST, "bad request")
    })
}
