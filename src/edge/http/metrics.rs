//! `GET /metrics` in Prometheus text format.
//!
//! The counts live where they happen, as plain atomics: the hub, the listener (and its lag
//! histogram), the statistics engine, the access hook. This module alone knows Prometheus: it
//! mirrors those into a registry at scrape time, so the fan-out path only bumps atomics. The
//! edge's own counters (rate-limit closes, `POST /notify/cita`, the HTTP accept loop's) are
//! registered as they are. Counters only ever move forward: each scrape adds what the source
//! gained since the last one, under a lock so concurrent scrapes cannot add twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

use crate::auth::access::Access;
use crate::edge::http::counters::HttpCounters;
use crate::fanout::hub::Hub;
use crate::fanout::stats::Stats;
use crate::log::status::{ListenerStatus, LAG_BUCKETS};

/// Counters of the edge, bumped where they happen and registered as they are.
#[derive(Debug)]
pub struct EdgeCounters {
    /// Clients closed with 1008 for sending too many messages.
    pub rate_limited: IntCounter,
    /// Events recorded through `POST /notify/cita`.
    pub notify_events: IntCounter,
}

impl Default for EdgeCounters {
    fn default() -> Self {
        EdgeCounters {
            rate_limited: counter(
                "citas_realtime_rate_limited_total",
                "Clients closed with 1008 for exceeding CLIENT_MESSAGE_RATE",
            ),
            notify_events: counter(
                "citas_realtime_notify_events_total",
                "Events recorded through POST /notify/cita",
            ),
        }
    }
}

/// A counter with a fixed, valid name: creation cannot fail.
fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).unwrap_or_else(|_| unreachable!("valid counter options"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).unwrap_or_else(|_| unreachable!("valid gauge options"))
}

/// Where the figures come from.
pub struct Sources {
    pub hub: Arc<Hub>,
    pub status: Arc<ListenerStatus>,
    pub stats: Option<Arc<Stats>>,
    pub access: Arc<Access>,
    pub edge: Arc<EdgeCounters>,
    pub http: Arc<HttpCounters>,
}

/// The mirrors of the sources' atomics.
struct Mirrors {
    connections: IntGauge,
    subscriptions: IntGauge,
    listener_up: IntGauge,
    events_read: IntCounter,
    reads: IntCounter,
    already_read: IntCounter,
    delivered: IntCounter,
    written_directly: IntCounter,
    slow_drops: IntCounter,
    reconnects: IntCounter,
    replayed: IntCounter,
    stats_queries: IntCounter,
    unrecognised: IntCounter,
    access_checks: IntCounter,
    access_failures: IntCounter,
}

impl Mirrors {
    fn new() -> Mirrors {
        Mirrors {
            connections: gauge("citas_realtime_connections", "Open WebSocket connections"),
            subscriptions: gauge("citas_realtime_subscriptions", "Channel subscriptions"),
            listener_up: gauge(
                "citas_realtime_listener_up",
                "1 while the listener is connected to PostgreSQL",
            ),
            events_read: counter(
                "citas_realtime_events_received_total",
                "Events read from the log",
            ),
            reads: counter(
                "citas_realtime_log_reads_total",
                "Reads of the event log by the listener (one per wake-up, more while catching up)",
            ),
            already_read: counter(
                "citas_realtime_notifications_already_read_total",
                "Wake-ups by notifications that needed no read: every event they announced had been read already",
            ),
            delivered: counter(
                "citas_realtime_events_delivered_total",
                "Event frames handed to subscribers (one per subscriber per event)",
            ),
            written_directly: counter(
                "citas_realtime_frames_written_directly_total",
                "Of those, frames written straight to an idle socket by the publishing thread \
                 (the rest were queued for the connection's task)",
            ),
            slow_drops: counter(
                "citas_realtime_slow_client_drops_total",
                "Clients disconnected with 1013: their queue overflowed, or they took no data for 10 s",
            ),
            reconnects: counter(
                "citas_realtime_listener_reconnects_total",
                "Times the listener lost its database connection",
            ),
            replayed: counter(
                "citas_realtime_replayed_events_total",
                "Events sent to clients resuming with since",
            ),
            stats_queries: counter(
                "citas_realtime_stats_queries_total",
                "Statistics queries run",
            ),
            unrecognised: counter(
                "citas_realtime_unrecognised_notifications_total",
                "NOTIFY citas_realtime payloads that are not a trigger's announcement \
                 (another install.sql version, or someone else using the channel)",
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

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        for g in [&self.connections, &self.subscriptions, &self.listener_up] {
            registry.register(Box::new(g.clone()))?;
        }
        for c in [
            &self.events_read,
            &self.reads,
            &self.already_read,
            &self.delivered,
            &self.written_directly,
            &self.slow_drops,
            &self.reconnects,
            &self.replayed,
            &self.stats_queries,
            &self.unrecognised,
            &self.access_checks,
            &self.access_failures,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        Ok(())
    }
}

pub struct Metrics {
    registry: Registry,
    sources: Sources,
    mirrors: Mirrors,
    sync: Mutex<()>,
}

impl Metrics {
    pub fn new(sources: Sources) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let mirrors = Mirrors::new();
        mirrors.register(&registry)?;
        registry.register(Box::new(LagCollector::new(sources.status.clone())?))?;
        for c in [
            &sources.edge.rate_limited,
            &sources.edge.notify_events,
            &sources.http.client_errors,
            &sources.http.evicted,
            &sources.http.refused,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(sources.http.pending.clone()))?;
        registry.register(Box::new(sources.http.silent.clone()))?;
        Ok(Metrics {
            registry,
            sources,
            mirrors,
            sync: Mutex::new(()),
        })
    }

    /// The text exposition of every metric, up to date.
    pub fn render(&self) -> String {
        let _guard = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        self.mirror();
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn mirror(&self) {
        let (m, s) = (&self.mirrors, &self.sources);
        let hub = s.hub.stats();
        m.connections.set(hub.connections as i64);
        m.subscriptions.set(hub.subscriptions as i64);
        m.listener_up.set(i64::from(s.status.is_connected()));
        let forward = |c: &IntCounter, now: u64| c.inc_by(now.saturating_sub(c.get()));
        forward(&m.events_read, s.status.events_read());
        forward(&m.reads, s.status.reads());
        forward(&m.already_read, s.status.already_read());
        forward(&m.delivered, hub.delivered);
        forward(&m.written_directly, hub.written_directly);
        forward(&m.slow_drops, hub.slow_clients_kicked);
        forward(&m.reconnects, s.status.reconnects());
        forward(&m.replayed, hub.replayed);
        forward(&m.unrecognised, s.status.unrecognised());
        let (checks, failures) = s.access.counts();
        forward(&m.access_checks, checks);
        forward(&m.access_failures, failures);
        if let Some(stats) = &s.stats {
            forward(&m.stats_queries, stats.queries());
        }
    }
}

/// `citas_realtime_event_lag_seconds`, read from the listener's atomic histogram.
struct LagCollector {
    status: Arc<ListenerStatus>,
    desc: Desc,
}

impl LagCollector {
    const NAME: &'static str = "citas_realtime_event_lag_seconds";
    const HELP: &'static str =
        "Time from a change being written to its event being handed to subscribers' queues";

    fn new(status: Arc<ListenerStatus>) -> prometheus::Result<LagCollector> {
        let desc = Desc::new(Self::NAME.into(), Self::HELP.into(), vec![], HashMap::new())?;
        Ok(LagCollector { status, desc })
    }
}

impl Collector for LagCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (cumulative, count, sum) = self.status.lag.snapshot();
        let mut histogram = Histogram::default();
        histogram.set_sample_count(count);
        histogram.set_sample_sum(sum);
        histogram.set_bucket(
            LAG_BUCKETS
                .iter()
                .zip(cumulative)
                .map(|(bound, count)| {
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(count);
                    bucket
                })
                .collect(),
        );
        let mut metric = Metric::default();
        metric.set_histogram(histogram);
        let mut family = MetricFamily::default();
        family.set_name(Self::NAME.into());
        family.set_help(Self::HELP.into());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

/// `GET /metrics`.
pub fn route(
    metrics: Arc<Metrics>,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    use warp::Filter;
    warp::path!("metrics").and(warp::get()).map(move || {
        let mut response = warp::reply::Response::new(metrics.render().into());
        response.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    })
}
