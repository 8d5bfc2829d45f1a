//! What happened to HTTP connections that never became useful: counters and gauges kept by
//! the accept loop and the pending registry, shown by `/metrics`.

use prometheus::{IntCounter, IntGauge};

/// What happened to connections that never became useful, for `/metrics`.
#[derive(Debug)]
pub struct HttpCounters {
    /// Connections that ended in a client error: malformed, too large, abandoned mid-request,
    /// or too slow to send their headers.
    pub client_errors: IntCounter,
    /// Pending connections closed to make room for a new one.
    pub evicted: IntCounter,
    /// Sockets closed at once because the process was near its open-file limit.
    pub refused: IntCounter,
    /// Connections accepted and not (yet) upgraded or closed.
    pub pending: IntGauge,
    /// Those of them that have not sent a byte yet.
    pub silent: IntGauge,
}

impl Default for HttpCounters {
    fn default() -> Self {
        // Fixed, valid names: creation cannot fail.
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|_| unreachable!("valid counter options"))
        };
        HttpCounters {
            client_errors: counter(
                "citas_realtime_http_client_errors_total",
                "HTTP connections that ended in a client error (malformed, too large, abandoned, \
                 or headers slower than HTTP_HEADER_TIMEOUT)",
            ),
            evicted: counter(
                "citas_realtime_http_evicted_total",
                "Pending HTTP connections closed to make room (MAX_PENDING_CONNECTIONS)",
            ),
            refused: counter(
                "citas_realtime_http_refused_total",
                "Sockets closed at accept because the process was near its open-file limit",
            ),
            pending: IntGauge::new(
                "citas_realtime_http_pending_connections",
                "Connections accepted and not yet upgraded or closed",
            )
            .unwrap_or_else(|_| unreachable!("valid gauge options")),
            silent: IntGauge::new(
                "citas_realtime_http_pending_silent_connections",
                "Pending connections that have not sent a byte yet (evicted first)",
            )
            .unwrap_or_else(|_| unreachable!("valid gauge options")),
        }
    }
}
