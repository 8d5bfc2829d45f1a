//! Live statistics: `citas_realtime.estadisticas(negocio_id)` computed once per negocio and
//! pushed to every subscriber who wants it, instead of every dashboard querying after every event.
//!
//! * **Coalesced.** The listener marks the negocios it published events for as *dirty*; every
//!   `STATS_INTERVAL` the engine queries each dirty negocio that has subscribers wanting
//!   statistics, once, however many writes and subscribers there were. Negocios without such
//!   subscribers cost nothing.
//! * **Beside the event path.** Queries run on the pool in their own tasks, at most
//!   `STATS_CONCURRENCY` at a time, each bounded by `STATS_TIMEOUT`; the listener only inserts
//!   into a set. A slow or failing function delays no event; a failure reaches the subscribers as
//!   an `error` with code `stats_unavailable`.
//! * **After the events they reflect.** A snapshot carries `seq`, the newest event of its negocio
//!   visible to the query. It is queued only once the listener has published that seq (so it
//!   follows those events in every queue); otherwise it is dropped and the negocio stays dirty.
//! * **Cached.** The last snapshot per negocio serves new subscribers at once while the negocio
//!   is not dirty; a first subscriber triggers a query.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::frames::{self, ErrorCode, Outbound};
use crate::fanout::hub::{ConnId, Hub};
use crate::log::event::{Action, Event};
use crate::log::store::Store;

/// Settings, from [`crate::config::Config`].
#[derive(Debug, Clone, Copy)]
pub struct StatsSettings {
    /// The coalescing window.
    pub interval: Duration,
    /// Longest a query may run.
    pub timeout: Duration,
    /// Queries at a time.
    pub concurrency: usize,
}

#[derive(Default)]
struct State {
    /// Negocios whose figures may have changed since their last snapshot.
    dirty: HashSet<String>,
    /// Connections waiting for their first snapshot, per negocio.
    waiting: HashMap<String, Vec<ConnId>>,
    /// The last snapshot per negocio (with its seq).
    cache: HashMap<String, (i64, Arc<Outbound>)>,
    /// Negocios with a query in flight.
    running: HashSet<String>,
}

/// The statistics engine, shared by the listener (dirty marks), the connections (first
/// snapshots) and its own task.
pub struct Stats {
    settings: StatsSettings,
    hub: Arc<Hub>,
    store: Store,
    state: Mutex<State>,
    wake: Notify,
    limit: Semaphore,
    queries: std::sync::atomic::AtomicU64,
    /// Queries run as the server's tasks: shutdown waits for them.
    tasks: TaskTracker,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Stats {
    pub fn new(
        settings: StatsSettings,
        hub: Arc<Hub>,
        store: Store,
        tasks: TaskTracker,
    ) -> Arc<Stats> {
        Arc::new(Stats {
            limit: Semaphore::new(settings.concurrency.max(1)),
            settings,
            hub,
            store,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            queries: Default::default(),
            tasks,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many statistics queries ran (for `/health` and the tests).
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The listener read these events. Every negocio they touched, watched or not, loses its
    /// cached snapshot (a negocio nobody watches now must not be served stale figures to its
    /// next subscriber); those with subscribers are queried next window. A truncate touches
    /// every negocio.
    pub fn mark_dirty(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut state = self.state();
        for event in events {
            let negocio = event.negocio_id.as_str();
            if event.action == Action::Truncated {
                state.cache.clear();
                let subscribed = self.hub.with_stats_subscribers(None);
                state.dirty.extend(subscribed);
            } else if !state.dirty.contains(negocio) {
                state.cache.remove(negocio);
                state.dirty.insert(negocio.to_string());
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// A connection subscribed with statistics: it gets the cached snapshot now, or the next one.
    pub fn first_snapshot(&self, negocio: &str, conn: ConnId) {
        let mut state = self.state();
        if let Some((_, frame)) = state.cache.get(negocio) {
            let frame = frame.clone();
            drop(state);
            self.hub.push_stats(negocio, frame, Some(conn));
            return;
        }
        state
            .waiting
            .entry(negocio.to_string())
            .or_default()
            .push(conn);
        drop(state);
        self.wake.notify_one();
    }

    /// Runs until shutdown: every window, queries what is dirty or awaited.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            // Coalesce: whatever else changes within the window rides on the same query.
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let due: Vec<String> = {
                let mut state = self.state();
                let mut due: Vec<String> = state.waiting.keys().cloned().collect();
                let dirty: Vec<String> = state.dirty.drain().collect();
                due.extend(self.hub.with_stats_subscribers(Some(&dirty)));
                due.sort();
                due.dedup();
                due.retain(|n| !state.running.contains(n));
                state.running.extend(due.iter().cloned());
                due
            };
            for negocio in due {
                let this = self.clone();
                self.tasks.spawn(async move {
                    this.refresh(&negocio).await;
                    this.state().running.remove(&negocio);
                });
            }
        }
    }

    /// Queries one negocio and pushes the result (or the error) to its subscribers.
    async fn refresh(&self, negocio: &str) {
        let Ok(_permit) = self.limit.acquire().await else {
            return;
        };
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let channel = frames::channel(negocio);
        // statement_timeout ends a slow query in the database; this outer bound only covers a
        // pool that cannot hand out a connection.
        let bound = self.settings.timeout * 2 + Duration::from_secs(1);
        let outcome =
            tokio::time::timeout(bound, query(&self.store, negocio, self.settings.timeout)).await;
        match outcome {
            Ok(Ok((seq, data))) => {
                let position = self.hub.position();
                if position.may_publish_later(seq) {
                    // Events up to `seq` are still on their way: a snapshot now would overtake
                    // them. The listener marks this negocio dirty again when it publishes them.
                    let mut state = self.state();
                    state.dirty.insert(negocio.to_string());
                    return;
                }
                let frame = Arc::new(Outbound::new(
                    seq,
                    negocio,
                    frames::snapshot(&channel, data, seq),
                    false,
                ));
                {
                    let mut state = self.state();
                    if !state.dirty.contains(negocio) {
                        state
                            .cache
                            .insert(negocio.to_string(), (seq, frame.clone()));
                    }
                    state.waiting.remove(negocio);
                }
                // Everyone who wants statistics gets the fresh figures (waiters included).
                self.hub.push_stats(negocio, frame, None);
            }
            outcome => {
                let reason = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("took longer than {:?}", self.settings.timeout),
                };
                tracing::warn!(negocio, %reason, "statistics unavailable");
                self.state().waiting.remove(negocio);
                let frame = Arc::new(Outbound::new(
                    0,
                    negocio,
                    frames::error(
                        ErrorCode::StatsUnavailable,
                        &format!("citas_realtime.estadisticas failed: {reason}"),
                        Some(&channel),
                    ),
                    false,
                ));
                self.hub.push_stats(negocio, frame, None);
            }
        }
    }
}

/// The figures and the newest seq of the negocio (truncates included), read under one snapshot.
async fn query(
    store: &Store,
    negocio: &str,
    timeout: Duration,
) -> Result<(i64, Value), StatsError> {
    let (seq, text) = store.estadisticas(negocio, timeout).await?;
    if let Some(text) = text.as_ref().filter(|t| t.len() > MAX_SNAPSHOT_BYTES) {
        // Every frame must fit what a socket takes; figures this large are a bug in the
        // DBA's function, reported as such rather than closing every subscriber.
        return Err(StatsError::TooLarge(text.len()));
    }
    let data = match text.map(|t| serde_json::from_str::<Value>(&t)) {
        Some(Ok(Value::Object(map))) => Value::Object(map),
        Some(Ok(other)) => json!({ "value": other }),
        Some(Err(e)) => return Err(StatsError::NotJson(e)),
        None => Value::Object(Default::default()),
    };
    Ok((seq, data))
}

/// Why a negocio's figures could not be had.
#[derive(Debug, thiserror::Error)]
enum StatsError {
    #[error("{0}")]
    Query(#[from] crate::log::store::StoreError),
    #[error("the figures are {0} bytes of JSON, more than the {MAX_SNAPSHOT_BYTES} a snapshot may carry")]
    TooLarge(usize),
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
}

/// The most JSON a statistics snapshot may carry.
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024;
