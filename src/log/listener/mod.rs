//! The listener: the only code that speaks `LISTEN`.
//!
//! It keeps one PostgreSQL connection. Notifications on `citas_realtime` only *wake it up*; what
//! it delivers always comes from reading `citas_realtime.events` by `seq`. That single path
//! serves live delivery, batching under load (one read picks up every commit since the last),
//! and catching up after a reconnect: the cursor survives the connection, so whatever committed
//! while it was away is read on the first pass after `LISTEN` is re-issued. A payload is only
//! ever used to *skip* a read whose events were all read already (see
//! [`connection::Announced`]).
//!
//! # Out-of-order commits
//!
//! Transactions commit out of `seq` order, so a read can skip seqs that commit later. Each read
//! also returns its snapshot's running transactions; the skipped seqs are tracked, with the
//! transactions that may hold them, in [`LogCursor`] (see [`crate::log::cursor`]), and read again
//! (*probed*) only when one of those transactions ends. No event is delivered twice: every seq
//! is handed to the hub at most once per process.
//!
//! # Failure handling
//!
//! Any error (connection lost, query failure, a read that takes longer than [`reader::QUERY_TIMEOUT`])
//! ends the session; the listener reports itself down on `/health` and reconnects with capped,
//! jittered exponential backoff. A read every [`POLL_INTERVAL`] even without notifications
//! resolves gaps and proves the connection alive; TCP keepalives (see [`crate::log::db`]) catch a
//! half-open connection beneath it.

mod connection;
mod reader;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::log::cursor::{LogCursor, LogPosition};
use crate::log::db::{with_causes, ConnectError, DbConfig};
use crate::log::event::Event;
use crate::log::status::{
    ListenerStatus, STATE_CONNECTED, STATE_DISCONNECTED, STATE_TRANSACTION_POOLER,
};
use connection::Connection;
use reader::{prepare_read, Reader};

/// Read even when no notification came: resolves gaps, and detects a dead connection.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[from] ConnectError),
    #[error("{}", with_causes(.0))]
    Postgres(tokio_postgres::Error),
    #[error("connection closed")]
    Closed,
    #[error(
        "LISTEN does not deliver notifications on this connection: a transaction-mode pooler \
         (Supabase: port 6543)? Use the direct connection or the session-mode pooler (port 5432)"
    )]
    ListenBroken,
    #[error("{advice}: {0}", advice = crate::log::pooler::ADVICE)]
    TransactionPooler(String),
    #[error(transparent)]
    Snapshot(#[from] crate::log::cursor::BadSnapshot),
    #[error("a read of the event log took longer than {0:?}")]
    Timeout(Duration),
    #[error("the event log was upgraded to hold records: reconnecting to read them")]
    Upgraded,
    #[error("the event log is not readable: run sql/install.sql on this database and grant the server's role access (see README) ({})", with_causes(.0))]
    NotInstalled(tokio_postgres::Error),
}

impl SessionError {
    /// An error retrying soon will not fix: the configuration or the database's setup (a
    /// snapshot PostgreSQL itself would never write means something else answers).
    fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            SessionError::TransactionPooler(_)
                | SessionError::ListenBroken
                | SessionError::NotInstalled(_)
                | SessionError::Snapshot(_)
        )
    }
}

impl From<tokio_postgres::Error> for SessionError {
    /// A prepared statement of this session that the server does not know is proof that the
    /// session is not ours (a transaction-mode pooler ran the statement elsewhere).
    fn from(error: tokio_postgres::Error) -> SessionError {
        if error.code() == Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME) {
            SessionError::TransactionPooler(format!(
                "a prepared statement of this session disappeared between two transactions ({})",
                with_causes(&error)
            ))
        } else {
            SessionError::Postgres(error)
        }
    }
}

/// Where the listener hands what it reads (the fan-out, in the server): the log knows nothing
/// of subscribers.
pub trait Publish: Send + Sync {
    /// `events` in the order to deliver them, and how far the listener has read: called after
    /// every read, even one that found nothing.
    fn publish(&self, events: &[Event], position: LogPosition);
}

pub struct Listener {
    /// When this server started: events committed since then are news, older ones history.
    started: Instant,
    db: DbConfig,
    sink: Arc<dyn Publish>,
    status: Arc<ListenerStatus>,
    shutdown: CancellationToken,
    /// Its connection's driver (and the pooler check's witness) run as the server's tasks.
    tasks: TaskTracker,
}

impl Listener {
    pub fn new(
        db: DbConfig,
        sink: Arc<dyn Publish>,
        status: Arc<ListenerStatus>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Listener {
        Listener {
            started: Instant::now(),
            db,
            sink,
            status,
            shutdown,
            tasks,
        }
    }

    /// Runs until shutdown, reconnecting as long as it takes.
    pub async fn run(self) {
        let mut log = LogCursor::default();
        let mut retry = Retry::default();
        while !self.shutdown.is_cancelled() {
            let mut reached = false;
            let error = match self.session(&mut log, &mut reached).await {
                Ok(()) => break,
                Err(error) => error,
            };
            let delay = retry.after(&error, reached, &self.status);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.status
            .state
            .store(STATE_DISCONNECTED, Ordering::Release);
        tracing::debug!("listener stopped");
    }

    /// One connection's life; sets `reached` once connected.
    async fn session(&self, log: &mut LogCursor, reached: &mut bool) -> Result<(), SessionError> {
        let (conn, mut closed) =
            Connection::open(&self.db, &self.status, &self.tasks, reached).await?;
        let (read, columns) = prepare_read(&conn.client).await?;
        let reader = Reader {
            client: &conn.client,
            read,
            columns,
            pid: conn.pid,
            sink: &*self.sink,
            status: &self.status,
        };
        if log.cursor.is_none() {
            reader.prime(log, self.started).await?;
        }
        // Whatever committed while we were away is delivered before we call ourselves live.
        reader.catch_up(log, None).await?;
        self.status.state.store(STATE_CONNECTED, Ordering::Release);
        tracing::info!(database = %self.db, last_seq = log.cursor.unwrap_or(0), "listener live");
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = conn.wake.notified() => {
                    if conn.announced.all_read(&log.position(), &self.status) {
                        continue;
                    }
                }
                _ = poll.tick() => {
                    if reader.log_was_upgraded().await {
                        return Err(SessionError::Upgraded);
                    }
                }
                outcome = &mut closed => {
                    return Err(match outcome {
                        Ok(Some(error)) => SessionError::Postgres(error),
                        _ => SessionError::Closed,
                    });
                }
                _ = self.shutdown.cancelled() => return Ok(()),
            }
            reader.catch_up(log, None).await?;
        }
    }
}

/// The reconnection policy, and what it tells `/health` and the log.
#[derive(Default)]
struct Retry {
    failures: u32,
    pooler_reported: bool,
}

impl Retry {
    /// Records a failed session; how long to wait before the next.
    fn after(&mut self, error: &SessionError, reached: bool, status: &ListenerStatus) -> Duration {
        let pooler = matches!(error, SessionError::TransactionPooler(_));
        let state = if pooler {
            STATE_TRANSACTION_POOLER
        } else {
            STATE_DISCONNECTED
        };
        if status.state.swap(state, Ordering::AcqRel) == STATE_CONNECTED {
            status.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        // Back off while the database is unreachable or misconfigured; a session that reached
        // it and then was cut (a killed backend, a failover) is retried at once.
        self.failures = if reached && !error.is_misconfiguration() {
            0
        } else {
            self.failures.saturating_add(1)
        };
        let delay = backoff(self.failures);
        let retry_in_ms = delay.as_millis() as u64;
        // A misconfiguration is one ERROR line, not one per retry.
        match (pooler, self.pooler_reported) {
            (true, false) => tracing::error!(%error, retry_in_ms, "listener refused"),
            (true, true) => tracing::debug!(%error, retry_in_ms, "listener refused"),
            (false, _) => tracing::warn!(%error, retry_in_ms, "listener down"),
        }
        self.pooler_reported = pooler;
        delay
    }
}

/// Capped exponential backoff with jitter (50-100% of the step), so that many instances that
/// lost the same database do not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let step = BACKOFF_MIN
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_MAX);
    step.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= BACKOFF_MIN);
        assert!(backoff(3) >= BACKOFF_MIN * 4);
        assert!(backoff(40) <= BACKOFF_MAX);
    }
}
