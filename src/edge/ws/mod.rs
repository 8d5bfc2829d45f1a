//! The WebSocket: the upgrade (only after the token is verified), and one task per connection.
//!
//! We finish the HTTP upgrade ourselves instead of using warp's `ws()` filter, because warp
//! offers no way to set tungstenite's read buffer, which it allocates eagerly at 128 KiB per
//! connection (about 134 KB of RSS per idle client, measured); with our own `WebSocketConfig` an
//! idle client costs a few KB.
//!
//! * [`upgrade`]: `GET /ws`, the token, the origin, the connection limits, the handshake.
//! * [`transport`]: the task that owns one socket: shutdown, kicks, the token's expiry, pings,
//!   frames in (rate-limited), the live queue out.
//! * [`connection`]: the writing half; it only frames.
//! * [`session`]: who the client is and what it holds; [`cmd`]: one file per client message;
//!   [`replay`]: resuming with `since`.
//! * [`protocol`]: what clients send.

pub(crate) mod cmd;
pub(crate) mod connection;
pub mod protocol;
pub(crate) mod replay;
pub(crate) mod session;
pub(crate) mod transport;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::access::Access;
use crate::auth::jwt::Verifier;
use crate::edge::http::metrics::EdgeCounters;
use crate::fanout::hub::Hub;
use crate::fanout::stats::Stats;
use crate::log::store::Store;

/// What one client, one subject and the whole server may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Browser origins allowed to open a socket; empty: any.
    pub allowed_origins: Vec<String>,
    pub max_subscriptions: usize,
    pub max_connections: usize,
    pub max_connections_per_subject: usize,
    /// Frames queued per client; a client this far behind is closed with 1013.
    pub queue_capacity: usize,
    /// A ping goes out this often; a client silent for two intervals is dropped.
    pub ping_interval: Duration,
    /// Frames a client may send: a sustained rate and a burst.
    pub message_quota: governor::Quota,
    /// Events a connection may have replayed: per minute, and at once.
    pub replay_quota: governor::Quota,
}

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct WsContext {
    pub hub: Arc<Hub>,
    /// For replays (clients resuming with `since`); never used for LISTEN.
    pub store: Store,
    /// The statistics engine, unless turned off.
    pub stats: Option<Arc<Stats>>,
    /// Verifies the fresh tokens of `auth` messages.
    pub verifier: Arc<Verifier>,
    /// Decides which negocios a principal may subscribe to.
    pub access: Arc<Access>,
    pub limits: Arc<Limits>,
    pub counters: Arc<EdgeCounters>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}
