//! `POST /notify/cita`: the old design's REST-side notification, for APIs not yet migrated.
//! Service tokens only; the token is checked before a byte of the body is read, and the body
//! must arrive within `HTTP_BODY_TIMEOUT`. The event goes through the log like any
//! trigger-written one (`citas_realtime.notify_cita`), so every instance, every resume and the
//! statistics see it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::auth::jwt::{id_text, Grants, Verifier};
use crate::edge::http::metrics::EdgeCounters;
use crate::edge::http::reply::{error_response, json_response};
use crate::edge::http::token::{authenticate, query};
use crate::edge::ws::protocol::MAX_NEGOCIO_ID_LEN;
use crate::log::store::Store;

/// What the endpoint needs.
#[derive(Clone)]
pub struct Notify {
    pub verifier: Arc<Verifier>,
    pub store: Store,
    pub counters: Arc<EdgeCounters>,
    pub body_timeout: Duration,
}

pub fn route(
    notify: Notify,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("notify" / "cita")
        .and(warp::post())
        .and(query())
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(NOTIFY_BODY_LIMIT))
        .and(warp::body::stream())
        .then(move |query, headers: HeaderMap, body| {
            let notify = notify.clone();
            async move { notify.handle(&query, &headers, body).await }
        })
}

impl Notify {
    async fn handle<S, B>(
        &self,
        query: &std::collections::HashMap<String, String>,
        headers: &HeaderMap,
        body: S,
    ) -> Response
    where
        S: futures::Stream<Item = Result<B, warp::Error>>,
        B: Buf,
    {
        // The token first: a stranger's body is never read.
        let principal = match authenticate(&self.verifier, query, headers).await {
            Ok(principal) => principal,
            Err(refusal) => return refusal,
        };
        if principal.grants != Grants::All {
            return error_response(
                StatusCode::FORBIDDEN,
                "POST /notify/cita needs a service token (role service_role)",
            );
        }
        let body = match read_body(body, self.body_timeout).await {
            Ok(body) => body,
            Err(error) => return error.response(),
        };
        match Notification::from_body(&body) {
            Ok(note) => self.record(note).await,
            Err(error) => error_response(StatusCode::BAD_REQUEST, &error.to_string()),
        }
    }

    async fn record(&self, note: Notification) -> Response {
        let result = self
            .store
            .notify_cita(
                &note.negocio_id,
                &note.action,
                note.cita_id.as_deref(),
                note.estado.as_deref(),
            )
            .await;
        match result {
            Ok(seq) => {
                self.counters.notify_events.inc();
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
}

/// Why a body is refused (400).
#[derive(Debug, thiserror::Error)]
enum BadBody {
    #[error("body must be {{\"negocio_id\": ..., \"action\": ...}}: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("negocio_id must be a string of 1 to 256 bytes without NUL, or an integer of at most 2^53 - 1 (send larger ids as strings)")]
    NegocioId,
    #[error("action must be one of created, updated, deleted, status_changed")]
    Action,
    #[error("cita_id must be a non-empty string without NUL, or an integer of at most 2^53 - 1")]
    CitaId,
    #[error("estado must not contain NUL")]
    Estado,
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
    fn from_body(body: &[u8]) -> Result<Notification, BadBody> {
        let body: NotifyBody = serde_json::from_slice(body)?;
        let negocio_id = id_text(&body.negocio_id)
            .filter(|id| id.len() <= MAX_NEGOCIO_ID_LEN)
            .ok_or(BadBody::NegocioId)?;
        if !NOTIFY_ACTIONS.contains(&body.action.as_str()) {
            return Err(BadBody::Action);
        }
        let cita_id = match &body.cita_id {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(id_text(value).ok_or(BadBody::CitaId)?),
        };
        if body.estado.as_deref().is_some_and(|e| e.contains('\0')) {
            return Err(BadBody::Estado);
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
