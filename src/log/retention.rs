//! Retention: events older than `EVENT_RETENTION` are pruned so the log does not grow forever.
//!
//! The work is `citas_realtime.prune(keep)` in SQL, which takes an advisory lock: when several
//! servers (or a DBA's scheduler) call it at once, one does the work and the others return at
//! once. The server calls it on a timer; with `EVENT_RETENTION=off` it never does, and the DBA
//! schedules the function instead (pg_cron, cron + psql).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::log::store::Store;

/// How often to prune: a quarter of the retention, between 1 s and 5 min. Deleting in small,
/// frequent batches keeps each delete short.
pub fn prune_interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// Prunes on a timer until shutdown.
pub async fn run(store: Store, retention: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(prune_interval(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.prune(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned old events"),
            Err(error) => tracing::warn!(%error, "cannot prune old events"),
        }
    }
}
