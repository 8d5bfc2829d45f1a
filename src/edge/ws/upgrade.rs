//! `GET /ws`: the token first, then the origin, the handshake and the connection limits; only
//! then 101 and a task for the connection. warp routes the request; hyper's `OnUpgrade` is in
//! its extensions, and we finish the upgrade with our own socket settings.

use std::collections::HashMap;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::auth::jwt::Principal;
use crate::edge::http::pending::Heard;
use crate::edge::http::reply::error_response;
use crate::edge::http::token::{authenticate, query};
use crate::edge::ws::transport::serve;
use crate::edge::ws::WsContext;
use crate::fanout::hub::{ConnectionPermit, Refused};

pub fn route(
    ctx: WsContext,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("ws")
        .and(warp::get())
        .and(query())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .then(move |query, headers, on_upgrade| {
            let ctx = ctx.clone();
            async move { upgrade(&ctx, &query, &headers, on_upgrade).await }
        })
}

async fn upgrade(
    ctx: &WsContext,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Response {
    let principal = match authenticate(&ctx.verifier, query, headers).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal,
    };
    if ctx.shutdown.is_cancelled() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    let admitted = check_origin(ctx, headers)
        .and_then(|()| handshake(headers, on_upgrade))
        .and_then(|(key, on_upgrade)| Ok((key, on_upgrade, admit(ctx, &principal)?)));
    let (key, on_upgrade, permit) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.response(),
    };
    spawn_connection(ctx.clone(), on_upgrade, principal, permit);
    let mut response = Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Why a request to `/ws` with a valid token is not upgraded.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("origin not allowed")]
    Origin,
    #[error("this endpoint speaks WebSocket only")]
    NotWebSocket,
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    #[error("not a valid WebSocket handshake")]
    Handshake,
    #[error("too many connections")]
    ServerFull,
    #[error("too many connections for this token's subject")]
    SubjectFull,
}

impl Refusal {
    fn response(&self) -> Response {
        let code = match self {
            Refusal::Origin => StatusCode::FORBIDDEN,
            Refusal::NotWebSocket => StatusCode::UPGRADE_REQUIRED,
            Refusal::Version | Refusal::Handshake => StatusCode::BAD_REQUEST,
            Refusal::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::SubjectFull => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut response = error_response(code, &self.to_string());
        if let Refusal::NotWebSocket = self {
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        response
    }
}

/// A browser's origin must be allowed (`ALLOWED_ORIGINS`); clients without one are not affected.
fn check_origin(ctx: &WsContext, headers: &HeaderMap) -> Result<(), Refusal> {
    let allowed = &ctx.limits.allowed_origins;
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) if !allowed.is_empty() => {
            let origin = origin.trim_end_matches('/');
            if allowed.iter().any(|o| o == origin) {
                Ok(())
            } else {
                Err(Refusal::Origin)
            }
        }
        _ => Ok(()),
    }
}

/// The WebSocket handshake's key and the upgrade, or why this is no handshake.
fn handshake(
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Result<(HeaderValue, OnUpgrade), Refusal> {
    let has = |name: header::HeaderName, value: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(value))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(Refusal::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Refusal::Version);
    }
    match (headers.get(header::SEC_WEBSOCKET_KEY), on_upgrade) {
        (Some(key), Some(on_upgrade)) => Ok((key.clone(), on_upgrade)),
        _ => Err(Refusal::Handshake),
    }
}

/// A connection slot within the limits (in total, and per subject).
fn admit(ctx: &WsContext, principal: &Principal) -> Result<ConnectionPermit, Refusal> {
    let limits = &ctx.limits;
    ctx.hub
        .admit(
            principal.subject.as_deref(),
            limits.max_connections,
            limits.max_connections_per_subject,
        )
        .map_err(|refused| match refused {
            Refused::ServerFull => Refusal::ServerFull,
            Refused::SubjectFull => Refusal::SubjectFull,
        })
}

/// Spawns the task that waits for the upgrade to complete and then serves the connection.
fn spawn_connection(
    ctx: WsContext,
    on_upgrade: OnUpgrade,
    principal: Principal,
    permit: ConnectionPermit,
) {
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        // Holds the connection's slot until the task ends, however it ends.
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<Heard<TcpStream>>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner().into_inner();
                if parts.read_buf.is_empty() {
                    serve(ctx, tcp, principal).await;
                } else {
                    // The client sent frames before our 101 reached it: replay those bytes.
                    let (rd, wr) = tcp.into_split();
                    let rd = std::io::Cursor::new(parts.read_buf).chain(rd);
                    serve(ctx, tokio::io::join(rd, wr), principal).await;
                }
            }
            Err(upgraded) => serve(ctx, TokioIo::<Upgraded>::new(upgraded), principal).await,
        }
    });
}
