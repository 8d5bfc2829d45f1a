//! The HTTP server under the routes: our own accept loop on hyper, so that what a stranger can
//! hold before authenticating is bounded in time, size and number.
//!
//! * **Time.** A request's headers must arrive within `HTTP_HEADER_TIMEOUT`; the same timer
//!   closes a keep-alive connection that sends no next request. Bodies have their own bound
//!   (`HTTP_BODY_TIMEOUT`, applied by the handler that reads one).
//! * **Size.** The request line and headers are capped (`HTTP_MAX_HEADER_BYTES`, 431 beyond).
//! * **Number.** A connection is *pending* from `accept` until it is upgraded to a WebSocket
//!   (then the hub's connection permits count it) or closed. At most `MAX_PENDING_CONNECTIONS`
//!   are pending; a new one beyond that evicts the oldest one that has sent nothing yet (then
//!   the oldest), so sockets held open by an attacker cannot lock legitimate clients out, they
//!   only make room for them (see [`crate::edge::http::pending`]). The process's open-file
//!   limit (its soft limit raised to the hard one at start) bounds them the same way: pending
//!   connections give way to new ones before descriptors run out, and when upgraded clients
//!   hold them all, a new socket is closed at once rather than letting `accept` fail.
//! * **Noise.** Malformed, abandoned and timed-out connections are the client's doing: they are
//!   counted (`/metrics`) and summed up in one log line per [`SUMMARY_INTERVAL`], never logged
//!   one by one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::reply::Response;
use warp::Filter;

use crate::edge::http::counters::HttpCounters;
use crate::edge::http::pending::{heard, Pending, PendingSlot};
use crate::fanout::hub::Hub;

/// How often client errors are summed up in the log.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// File descriptors kept for everything but client sockets (database connections, the log,
/// JWKS fetches, ...).
const RESERVED_FDS: u64 = 128;
/// How long a connection may take to finish its response once shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The HTTP limits (see the module documentation).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_pending: usize,
}

/// Raises the soft open-file limit to the hard one and returns the soft limit now in force
/// (logged with both values).
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let raised = setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok();
            let now = if raised { hard } else { soft };
            tracing::info!(soft_was = soft, hard, soft_now = now, "open-file limit");
            now
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// Everything the accept loop needs.
pub struct Server<F> {
    pub listener: TcpListener,
    pub routes: F,
    pub settings: HttpSettings,
    pub counters: Arc<HttpCounters>,
    /// Upgraded connections hold the hub's permits; they count against the file limit too.
    pub hub: Arc<Hub>,
    /// The soft open-file limit in force.
    pub open_file_limit: u64,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl<F> Server<F>
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
    F::Future: Send,
{
    /// Accepts until shutdown; every connection is served by a task of `tasks`.
    pub async fn run(self) {
        let pending = Arc::new(Pending::new(
            self.settings.max_pending,
            self.counters.clone(),
        ));
        self.tasks.spawn(summarize_client_errors(
            self.counters.clone(),
            self.shutdown.clone(),
        ));
        let budget = self.open_file_limit.saturating_sub(RESERVED_FDS) as usize;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .max_header_size(self.settings.max_header_bytes)
            .max_buf_size(self.settings.max_header_bytes.max(8192) + 8192)
            .keep_alive(true);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = self.shutdown.cancelled() => break,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of descriptors despite the budget (or a transient error): wait a
                    // moment rather than spin; the connections that end free some.
                    tracing::debug!(%error, "accept failed");
                    self.counters.refused.inc();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            // Near the file limit, pending connections make room for new ones as at the cap;
            // only when upgraded connections hold every descriptor is a socket refused.
            let room = budget.saturating_sub(self.hub.connection_count());
            let Some(slot) = pending.admit(room) else {
                self.counters.refused.inc();
                drop(tcp);
                continue;
            };
            let service = TowerToHyperService::new(warp::service(self.routes.clone()));
            let connection = Connection {
                builder: builder.clone(),
                counters: self.counters.clone(),
                shutdown: self.shutdown.clone(),
            };
            self.tasks.spawn(connection.serve(tcp, service, slot));
        }
    }
}

/// What one connection's task needs.
struct Connection {
    builder: http1::Builder,
    counters: Arc<HttpCounters>,
    shutdown: CancellationToken,
}

impl Connection {
    /// Serves HTTP on `tcp` until it closes, is upgraded, is evicted, or shutdown ends it.
    async fn serve<S>(self, tcp: TcpStream, service: S, slot: PendingSlot)
    where
        S: hyper::service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = Response,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send,
    {
        // Events are small and latency is the product: never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let connection = self
            .builder
            .serve_connection(TokioIo::new(heard(tcp, &slot)), service)
            .with_upgrades();
        tokio::pin!(connection);
        let outcome = tokio::select! {
            outcome = connection.as_mut() => outcome,
            _ = slot.evicted.cancelled() => return,
            _ = self.shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                    Ok(outcome) => outcome,
                    Err(_) => return,
                }
            }
        };
        if let Err(error) = outcome {
            // The client's doing (a parse error, a timeout, a reset, a half-sent request):
            // counted and summed up, not logged one by one.
            tracing::trace!(%error, "HTTP connection ended in a client error");
            self.counters.client_errors.inc();
        }
    }
}

/// Logs one line per [`SUMMARY_INTERVAL`] when client errors happened in it.
async fn summarize_client_errors(counters: Arc<HttpCounters>, shutdown: CancellationToken) {
    let mut last = (
        counters.client_errors.get(),
        counters.evicted.get(),
        counters.refused.get(),
    );
    let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
    tick.reset();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = (
            counters.client_errors.get(),
            counters.evicted.get(),
            counters.refused.get(),
        );
        if now != last {
            tracing::warn!(
                client_errors = now.0 - last.0,
                evicted = now.1 - last.1,
                refused = now.2 - last.2,
                seconds = SUMMARY_INTERVAL.as_secs(),
                "HTTP connections that ended badly (malformed, abandoned, too slow, evicted, or \
                 refused near the open-file limit); see citas_realtime_http_* in /metrics"
            );
            last = now;
        }
    }
}
