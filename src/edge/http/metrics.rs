//! `GET /metrics` in Prometheus text format.
//!
//! The counts live where they happen (the hub's and the listener's atomics, the statistics
//! engine); this module mirrors them into a registry at scrape time, so the fan-out path only
//! bumps plain atomics (the listener also observes the lag histogram, once per event).
//! Counters only ever move forward: each scrape adds what the source gained since the last one,
//! under a lock so concurrent scrapes cannot add twice.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

use crate::fanout::hub::Hub;
use crate::fanout::stats::Stats;
use crate::log::listener::ListenerStatus;

/// Counters of the security paths, bumped where they happen (cheap atomics) and registered
/// with the scrape registry as they are.
#[derive(Debug)]
pub struct SecurityCounters {
    /// Clients closed with 1008 for sending too many messages.
    pub rate_limited: IntCounter,
    /// Events recorded through `POST /notify/cita`.
    pub notify_events: IntCounter,
    /// Queries of the SQL access hook (cache misses), and those that failed.
    pub access_checks: IntCounter,
    pub access_failures: IntCounter,
}

impl Default for SecurityCounters {
    fn default() -> Self {
        // Fixed, valid names: creation cannot fail.
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|_| unreachable!("valid counter options"))
        };
        SecurityCounters {
            rate_limited: counter(
                "citas_realtime_rate_limited_total",
                "Clients closed with 1008 for exceeding CLIENT_MESSAGE_RATE",
            ),
            notify_events: counter(
                "citas_realtime_notify_events_total",
                "Events recorded through POST /notify/cita",
            ),
            access_checks: counter(
                "citas_realtime_access_checks_total",
                "Calls of CAN_SUBSCRIBE_FUNCTION (answers not found in the cache)",
            ),
            access_failures: counter(
                "citas_realtime_access_check_failures_total",
                "Calls of CAN_SUBSCRIBE_FUNCTION that failed or timed out",
            ),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    hub: Arc<Hub>,
    status: Arc<ListenerStatus>,
    stats: Option<Arc<Stats>>,
    connections: IntGauge,
    subscriptions: IntGauge,
    listener_up: IntGauge,
    events_read: IntCounter,
    delivered: IntCounter,
    slow_drops: IntCounter,
    reconnects: IntCounter,
    replayed: IntCounter,
    stats_queries: IntCounter,
    sync: Mutex<()>,
}

impl Metrics {
    pub fn new(
        hub: Arc<Hub>,
        status: Arc<ListenerStatus>,
        stats: Option<Arc<Stats>>,
        security: &SecurityCounters,
        http: &crate::edge::http::serve::HttpCounters,
    ) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let m = Metrics {
            connections: gauge("citas_realtime_connections", "Open WebSocket connections")?,
            subscriptions: gauge("citas_realtime_subscriptions", "Channel subscriptions")?,
            listener_up: gauge(
                "citas_realtime_listener_up",
                "1 while the listener is connected to PostgreSQL",
            )?,
            events_read: counter(
                "citas_realtime_events_received_total",
                "Events read from the log",
            )?,
            delivered: counter(
                "citas_realtime_events_delivered_total",
                "Event frames queued to subscribers (one per subscriber per event)",
            )?,
            slow_drops: counter(
                "citas_realtime_slow_client_drops_total",
                "Clients disconnected with 1013 because their queue overflowed",
            )?,
            reconnects: counter(
                "citas_realtime_listener_reconnects_total",
                "Times the listener lost its database connection",
            )?,
            replayed: counter(
                "citas_realtime_replayed_events_total",
                "Events sent to clients resuming with since",
            )?,
            stats_queries: counter(
                "citas_realtime_stats_queries_total",
                "Statistics queries run",
            )?,
            sync: Mutex::new(()),
            hub,
            status,
            stats,
            registry,
        };
        m.registry.register(Box::new(m.status.lag.clone()))?;
        for c in [
            &security.rate_limited,
            &security.notify_events,
            &security.access_checks,
            &security.access_failures,
        ] {
            m.registry.register(Box::new(c.clone()))?;
        }
        m.registry
            .register(Box::new(m.status.unrecognised.clone()))?;
        for c in [&http.client_errors, &http.evicted, &http.refused] {
            m.registry.register(Box::new(c.clone()))?;
        }
        m.registry.register(Box::new(http.pending.clone()))?;
        Ok(m)
    }

    /// The text exposition of every metric, up to date.
    pub fn render(&self) -> String {
        let _guard = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        let hub = self.hub.stats();
        self.connections.set(hub.connections as i64);
        self.subscriptions.set(hub.subscriptions as i64);
        self.listener_up.set(i64::from(self.status.is_connected()));
        let forward = |c: &IntCounter, now: u64| c.inc_by(now.saturating_sub(c.get()));
        forward(&self.events_read, self.status.events_read());
        forward(&self.delivered, hub.delivered);
        forward(&self.slow_drops, hub.slow_clients_kicked);
        forward(&self.reconnects, self.status.reconnects());
        forward(&self.replayed, hub.replayed);
        if let Some(stats) = &self.stats {
            forward(&self.stats_queries, stats.queries());
        }
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
