//! `GET /health`: 200 while the listener is live, 503 (saying why) while it is not.

use std::sync::Arc;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use crate::edge::http::reply::json_response;
use crate::fanout::hub::Hub;
use crate::fanout::stats::Stats;
use crate::log::status::ListenerStatus;

pub fn route(
    status: Arc<ListenerStatus>,
    hub: Arc<Hub>,
    stats: Option<Arc<Stats>>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("health").and(warp::get()).map(move || {
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
    })
}
