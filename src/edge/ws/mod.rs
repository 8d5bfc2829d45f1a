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
//! * [`outlet`]: one socket's ordered writes, shared by the task and the hub's direct writes.
//! * [`session`]: who the client is and what it holds; [`cmd`]: one file per client message;
//!   [`replay`]: resuming with `since`.
//! * [`protocol`]: what clients send.

pub(crate) mod cmd;
pub(crate) mod connection;
pub(crate) mod metered;
pub(crate) mod outlet;
pub mod protocol;
pub(crate) mod replay;
pub(crate) mod session;
pub(crate) mod transport;
pub(crate) mod upgrade;

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

/// The replay budget (`CLIENT_REPLAY_BUDGET` events per minute) of each token subject, shared
/// by all its connections: reconnecting buys no fresh budget. Tokens without `sub` share one.
pub struct ReplayBudgets {
    limiter: governor::RateLimiter<
        String,
        governor::state::keyed::HashMapStateStore<String>,
        governor::clock::MonotonicClock,
    >,
}

impl std::fmt::Debug for ReplayBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBudgets").finish_non_exhaustive()
    }
}

impl ReplayBudgets {
    /// Subjects kept at most before the ones whose budget is whole again are forgotten.
    const KEEP: usize = 10_000;

    pub fn new(quota: governor::Quota) -> ReplayBudgets {
        ReplayBudgets {
            limiter: governor::RateLimiter::hashmap_with_clock(
                quota,
                governor::clock::MonotonicClock,
            ),
        }
    }

    /// Takes `events` from `subject`'s budget; false when it cannot pay.
    pub fn charge(&self, subject: &str, events: usize) -> bool {
        let Some(n) = std::num::NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)) else {
            return true;
        };
        if self.limiter.len() > Self::KEEP {
            self.limiter.retain_recent();
        }
        matches!(
            self.limiter.check_key_n(&subject.to_string(), n),
            Ok(Ok(()))
        )
    }
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
    /// What replays may still cost, per token subject.
    pub replay_budgets: Arc<ReplayBudgets>,
    pub counters: Arc<EdgeCounters>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}
