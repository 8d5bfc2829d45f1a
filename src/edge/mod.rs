//! Where clients meet the server: HTTP ([`http`]: the accept loop and its limits, the
//! endpoints, the dashboard page) and the WebSocket ([`ws`]).

pub(crate) mod http;
pub(crate) mod tapped;
pub mod ws;

use std::convert::Infallible;
use std::sync::Arc;

use warp::reply::Response;
use warp::Filter;

use crate::log::status::ListenerStatus;

/// What the routes need besides the WebSocket's context.
pub struct Endpoints {
    pub ws: ws::WsContext,
    pub notify: http::notify::Notify,
    pub status: Arc<ListenerStatus>,
    pub metrics: Arc<http::metrics::Metrics>,
    /// Serve the dashboard page at `GET /`.
    pub dashboard: bool,
}

/// Every route: `GET /ws`, `POST /notify/cita`, `GET /health`, `GET /metrics`, the dashboard
/// (`GET /`, `GET /assets/...`), and a JSON 404/405 for anything else.
pub fn routes(e: Endpoints) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let health = http::health::route(e.status, e.ws.hub.clone(), e.ws.stats.clone());
    let dashboard = e.dashboard;
    let page = warp::any()
        .and_then(move || async move {
            if dashboard {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(http::dashboard::routes());
    ws::upgrade::route(e.ws)
        .or(http::notify::route(e.notify))
        .unify()
        .or(health)
        .unify()
        .or(page)
        .unify()
        .or(http::metrics::route(e.metrics))
        .unify()
        .recover(http::reply::rejection)
        .unify()
}
