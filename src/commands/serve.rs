//! `serve`: the composition root. It builds every part from the [`Config`], wires the pipeline
//! (listener → fan-out → sockets), starts each background task on one `TaskTracker`, and stops
//! them all, in order, on shutdown. Nothing here handles a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::access::Access;
use crate::auth::jwks::Jwks;
use crate::auth::jwt::Verifier;
use crate::config::Config;
use crate::edge::http::counters::HttpCounters;
use crate::edge::http::metrics::{EdgeCounters, Metrics, Sources};
use crate::edge::http::notify::Notify;
use crate::edge::http::serve::{raise_open_file_limit, Server};
use crate::edge::ws::{ReplayBudgets, WsContext};
use crate::edge::Endpoints;
use crate::fanout::hub::Hub;
use crate::fanout::stats::Stats;
use crate::fanout::Fanout;
use crate::log::listener::Listener;
use crate::log::status::ListenerStatus;
use crate::log::store::Store;

/// Pending connections the kernel queues for us. warp's own bind uses 128, which makes a storm
/// of reconnecting dashboards hit SYN retransmits (seconds of delay); the kernel caps this at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;
/// How long shutdown waits for sockets to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A server that is up: its address, its shared state, and the handles to stop it.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub status: Arc<ListenerStatus>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The parts every other part is built on.
struct Core {
    store: Store,
    hub: Arc<Hub>,
    status: Arc<ListenerStatus>,
    stats: Option<Arc<Stats>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Binds, starts the listener and the HTTP server, and returns at once: the listener connects
/// (and reconnects) in the background, and `/health` says when it is live.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    let tasks = TaskTracker::new();
    let verifier = verifier(config, &tasks).await?;
    let tcp = bind(config.bind_addr)
        .with_context(|| format!("cannot listen on {} (BIND_ADDR)", config.bind_addr))?;
    let local_addr = tcp.local_addr()?;
    let store = Store::new(
        config
            .database
            .pool(config.db_pool_size)
            .context("DATABASE_URL")?,
    );
    let hub = Arc::new(Hub::new());
    let stats = config
        .stats
        .map(|settings| Stats::new(settings, hub.clone(), store.clone(), tasks.clone()));
    let core = Core {
        store,
        hub,
        status: Arc::new(ListenerStatus::default()),
        stats,
        shutdown: CancellationToken::new(),
        tasks,
    };
    start_log_side(config, &core);
    let http_counters = Arc::new(HttpCounters::default());
    let endpoints = endpoints(config, &core, verifier, http_counters.clone())?;
    core.tasks.spawn(
        Server {
            listener: tcp,
            routes: crate::edge::routes(endpoints),
            settings: config.http.clone(),
            counters: http_counters,
            hub: core.hub.clone(),
            open_file_limit: raise_open_file_limit(),
            shutdown: core.shutdown.clone(),
            tasks: core.tasks.clone(),
        }
        .run(),
    );
    announce(config, local_addr);
    Ok(RunningServer {
        local_addr,
        hub: core.hub,
        status: core.status,
        shutdown: core.shutdown,
        tasks: core.tasks,
    })
}

/// Token verification: the HS256 secret and/or the JWKS keys (loaded now: a bad source stops
/// the server).
async fn verifier(config: &Config, tasks: &TaskTracker) -> anyhow::Result<Arc<Verifier>> {
    let jwks = match &config.jwks {
        Some(settings) => Some(
            Jwks::load(settings, tasks.clone())
                .await
                .context("JWT_JWKS_URL: cannot load the signing keys")?,
        ),
        None => None,
    };
    let verifier = Verifier::with_checks(config.jwt_secret.as_ref(), jwks, &config.token_checks)
        .context("JWT_SECRET is unusable")?;
    Ok(Arc::new(verifier))
}

/// The listener (feeding the fan-out), the statistics engine and pruning.
fn start_log_side(config: &Config, core: &Core) {
    let fanout = Fanout {
        hub: core.hub.clone(),
        stats: core.stats.clone(),
    };
    let listener = Listener::new(
        config.database.clone(),
        Arc::new(fanout),
        core.status.clone(),
        core.shutdown.clone(),
        core.tasks.clone(),
    );
    core.tasks.spawn(listener.run());
    if let Some(engine) = &core.stats {
        core.tasks.spawn(engine.clone().run(core.shutdown.clone()));
    }
    if let Some(keep) = config.event_retention {
        let run = crate::log::retention::run(core.store.clone(), keep, core.shutdown.clone());
        core.tasks.spawn(run);
    }
}

/// What the routes serve.
fn endpoints(
    config: &Config,
    core: &Core,
    verifier: Arc<Verifier>,
    http: Arc<HttpCounters>,
) -> anyhow::Result<Endpoints> {
    let counters = Arc::new(EdgeCounters::default());
    let access = Arc::new(Access::new(config.access_hook.clone(), core.store.clone()));
    let metrics = Metrics::new(Sources {
        hub: core.hub.clone(),
        status: core.status.clone(),
        stats: core.stats.clone(),
        access: access.clone(),
        edge: counters.clone(),
        http,
    })
    .context("cannot set up metrics")?;
    Ok(Endpoints {
        notify: Notify {
            verifier: verifier.clone(),
            store: core.store.clone(),
            counters: counters.clone(),
            body_timeout: config.http.body_timeout,
        },
        ws: WsContext {
            hub: core.hub.clone(),
            store: core.store.clone(),
            stats: core.stats.clone(),
            verifier,
            access,
            limits: config.limits.clone(),
            replay_budgets: Arc::new(ReplayBudgets::new(config.limits.replay_quota)),
            counters,
            shutdown: core.shutdown.clone(),
            tasks: core.tasks.clone(),
        },
        status: core.status.clone(),
        metrics: Arc::new(metrics),
        dashboard: config.dashboard,
    })
}

fn announce(config: &Config, local_addr: SocketAddr) {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        address = %local_addr,
        database = %config.database,
        "citas-realtime serving"
    );
    if config.database.tls_unverified() {
        tracing::warn!(
            "DATABASE_URL uses sslmode={:?} without sslrootcert: the connection is encrypted but \
             the server's certificate is not checked; use sslmode=verify-full and sslrootcert",
            config.database.ssl_mode()
        );
    }
}

impl RunningServer {
    /// Stops accepting, closes every socket with 1001 (going away), stops the listener and
    /// every other task, and waits for all of it, at most a few seconds.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not end in time");
        }
        tracing::info!("stopped");
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
