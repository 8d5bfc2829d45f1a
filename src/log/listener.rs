//! The listener: the only code that speaks `LISTEN`.
//!
//! It keeps one PostgreSQL connection. Notifications on `citas_realtime` only *wake it up*; what
//! it delivers always comes from reading `citas_realtime.events` by `seq`. That single path
//! serves live delivery, batching under load (one read picks up every commit since the last),
//! and catching up after a reconnect: the cursor survives the connection, so whatever committed
//! while it was away is read on the first pass after `LISTEN` is re-issued.
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
//! Any error (connection lost, query failure, a read that takes longer than [`QUERY_TIMEOUT`])
//! ends the session; the listener reports itself down on `/health` and reconnects with capped,
//! jittered exponential backoff. A read every [`POLL_INTERVAL`] even without notifications
//! resolves gaps and proves the connection alive; TCP keepalives (see [`crate::log::db`]) catch a
//! half-open connection beneath it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use tokio::sync::{oneshot, Notify};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Row, Statement};

use crate::log::cursor::{LogCursor, Running};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::log::cursor::LogPosition;
use crate::log::db::{with_causes, ConnectError, DbConfig};
use crate::log::event::{Announcement, Event, EVENT_COLUMNS};
use crate::log::sql::NOTIFY_CHANNEL;
use crate::log::status::{
    ListenerStatus, STATE_CONNECTED, STATE_DISCONNECTED, STATE_TRANSACTION_POOLER,
};

/// How long the LISTEN self-test may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows read from the log at a time.
pub const READ_BATCH: i64 = 1000;
/// A read that takes longer than this means the connection is not healthy.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read even when no notification came: resolves gaps, and detects a dead connection.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// At first start, seqs this far below the newest are checked for writers still in flight.
const PRIME_WINDOW: i64 = 1000;
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
    #[error("a read of the event log took longer than {0:?}")]
    Timeout(Duration),
    #[error("the event log is not readable: run sql/install.sql on this database and grant the server's role access (see README) ({})", with_causes(.0))]
    NotInstalled(tokio_postgres::Error),
}

impl SessionError {
    /// An error retrying soon will not fix: the configuration or the database's setup.
    fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            SessionError::TransactionPooler(_)
                | SessionError::ListenBroken
                | SessionError::NotInstalled(_)
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
        let mut failures = 0u32;
        let mut pooler_reported = false;
        while !self.shutdown.is_cancelled() {
            let mut reached = false;
            match self.session(&mut log, &mut reached).await {
                Ok(()) => break,
                Err(error) => {
                    let pooler = matches!(error, SessionError::TransactionPooler(_));
                    let state = if pooler {
                        STATE_TRANSACTION_POOLER
                    } else {
                        STATE_DISCONNECTED
                    };
                    if self.status.state.swap(state, Ordering::AcqRel) == STATE_CONNECTED {
                        self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    // Back off while the database is unreachable or misconfigured; a session
                    // that reached it and then was cut (a killed backend, a failover) is
                    // retried at once.
                    failures = if reached && !error.is_misconfiguration() {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                    let delay = backoff(failures);
                    let retry_in_ms = delay.as_millis() as u64;
                    // A misconfiguration is one ERROR line, not one per retry.
                    match (pooler, pooler_reported) {
                        (true, false) => tracing::error!(%error, retry_in_ms, "listener refused"),
                        (true, true) => tracing::debug!(%error, retry_in_ms, "listener refused"),
                        (false, _) => tracing::warn!(%error, retry_in_ms, "listener down"),
                    }
                    pooler_reported = pooler;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.status
            .state
            .store(STATE_DISCONNECTED, Ordering::Release);
        tracing::debug!("listener stopped");
    }

    /// One connection's life; sets `reached` once connected.
    async fn session(&self, log: &mut LogCursor, reached: &mut bool) -> Result<(), SessionError> {
        let (client, mut connection) = self.db.connect_listener().await?;
        *reached = true;
        let wake = Arc::new(Notify::new());
        let (closed_tx, mut closed_rx) = oneshot::channel();
        // The connection future must be polled for anything to happen, and polled through
        // `poll_message`: its plain `Future` impl drops notifications. This task never blocks:
        // a notification only stores a wake-up permit, so PostgreSQL's queue never backs up
        // behind us.
        let wake_driver = wake.clone();
        let status = self.status.clone();
        let probe_channel = format!("citas_realtime_probe_{:08x}", rand::random::<u32>());
        let probe_seen = Arc::new(Notify::new());
        let (probe_driver, probe_name) = (probe_seen.clone(), probe_channel.clone());
        let _driver = AbortOnDropHandle::new(self.tasks.spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            let outcome = loop {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == probe_name => {
                        probe_driver.notify_one()
                    }
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        match Announcement::parse(n.payload()) {
                            Ok(a) => tracing::trace!(
                                last_seq = a.last_seq,
                                count = a.count,
                                action = a.action.as_deref(),
                                "announced"
                            ),
                            Err(reason) => {
                                status.unrecognised.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(
                                    %reason,
                                    "unrecognised NOTIFY payload; reading the log anyway"
                                )
                            }
                        }
                        // Whatever the payload says, the log is the truth: read it.
                        wake_driver.notify_one()
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        tracing::debug!(message = notice.message(), "postgres notice")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break Some(error),
                    None => break None,
                }
            };
            let _ = closed_tx.send(outcome);
        }));

        // A session of our own, or nothing: LISTEN and the read's prepared statement need one.
        let pid = crate::log::pooler::backend_pid(&client).await?;
        if let Some(evidence) = crate::log::pooler::transaction_pooler(
            &self.db,
            &client,
            pid,
            crate::log::pooler::ROUNDS,
            &self.tasks,
        )
        .await?
        {
            return Err(SessionError::TransactionPooler(evidence));
        }
        client
            // Its queries are small: JIT compiling one costs more than running it.
            .batch_execute(&format!("SET jit = off; LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        // Prove that notifications reach this connection: behind a transaction-mode pooler
        // (Supabase's port 6543) LISTEN "succeeds" and nothing ever arrives.
        client
            .batch_execute(&format!("LISTEN {probe_channel}; NOTIFY {probe_channel}"))
            .await?;
        if tokio::time::timeout(PROBE_TIMEOUT, probe_seen.notified())
            .await
            .is_err()
        {
            return Err(SessionError::ListenBroken);
        }
        client
            .batch_execute(&format!("UNLISTEN {probe_channel}"))
            .await?;
        let statements = Statements::prepare(&client, pid).await?;

        if log.cursor.is_none() {
            let row = client
                .query_one(
                    "select coalesce(max(seq), 0) from citas_realtime.events",
                    &[],
                )
                .await?;
            let newest: i64 = row.try_get(0)?;
            log.cursor = Some((newest - PRIME_WINDOW).max(0));
            // Rows written before this server started are history, not news: the first read
            // only learns which recent seqs are still held by open transactions. Rows written
            // since the start (a client may have subscribed before the listener was live) are
            // delivered. Ages are measured on the database's clock, so clock skew between the
            // two machines does not matter.
            let since_start = self.started.elapsed().as_secs_f64();
            self.catch_up(&client, &statements, log, Some(since_start))
                .await?;
        }

        // Whatever committed while we were away is delivered before we call ourselves live.
        self.catch_up(&client, &statements, log, None).await?;
        self.status.state.store(STATE_CONNECTED, Ordering::Release);
        tracing::info!(database = %self.db, last_seq = log.cursor.unwrap_or(0), "listener live");

        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = poll.tick() => {}
                outcome = &mut closed_rx => {
                    return Err(match outcome {
                        Ok(Some(error)) => SessionError::Postgres(error),
                        _ => SessionError::Closed,
                    });
                }
                _ = self.shutdown.cancelled() => return Ok(()),
            }
            self.catch_up(&client, &statements, log, None).await?;
        }
    }

    /// Reads until the log has nothing newer, handing what it finds to the hub. With
    /// `only_last_secs`, only rows written at most that many seconds ago are handed over.
    async fn catch_up(
        &self,
        client: &Client,
        statements: &Statements,
        log: &mut LogCursor,
        only_last_secs: Option<f64>,
    ) -> Result<(), SessionError> {
        loop {
            let cursor = log.cursor.unwrap_or(0);
            let rows = timed(client.query(&statements.read, &[&cursor, &READ_BATCH])).await?;
            let read = Read::parse(&rows)?;
            if read.pid != statements.pid {
                return Err(SessionError::TransactionPooler(format!(
                    "the listener's server session changed between two reads (pid {}, then {})",
                    statements.pid, read.pid
                )));
            }
            log.advance(read.rows.iter().map(|r| &r.seq), &read.running);
            let full = read.rows.len() >= READ_BATCH as usize;
            let mut batch: Vec<LogRow> = read
                .rows
                .into_iter()
                .filter(|r| only_last_secs.is_none_or(|max| r.age.is_some_and(|age| age <= max)))
                .collect();
            let probe = log.to_probe(&read.running);
            if !probe.is_empty() {
                let (lows, highs): (Vec<i64>, Vec<i64>) = probe.into_iter().unzip();
                let rows = timed(client.query_typed(
                    &statements.probe,
                    &[(&lows, Type::INT8_ARRAY), (&highs, Type::INT8_ARRAY)],
                ))
                .await?;
                for row in &rows {
                    let row = LogRow::from_row(row)?;
                    if log.take(row.seq) {
                        batch.push(row);
                    }
                }
                let given_up = log.settle(&read.running);
                if given_up > 0 {
                    tracing::debug!(given_up, pending = log.pending_len(), "rolled-back seqs");
                }
            }
            batch.sort_by_key(|r| r.seq);
            self.publish(batch, log);
            if !full {
                return Ok(());
            }
        }
    }

    /// Hands a batch to the hub (always, even empty: the hub records how far the listener has
    /// got, which is what resuming clients de-duplicate against).
    fn publish(&self, batch: Vec<LogRow>, log: &LogCursor) {
        let mut events = Vec::with_capacity(batch.len());
        for row in batch {
            if let Some(event) = row.event {
                events.push(event);
                if let Some(age) = row.age {
                    self.status.lag.observe(age);
                }
            }
        }
        self.status
            .last_seq
            .store(log.cursor.unwrap_or(0), Ordering::Relaxed);
        self.status
            .events_read
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.sink.publish(&events, log.position());
    }
}

/// A query that must answer within [`QUERY_TIMEOUT`].
async fn timed<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, SessionError> {
    tokio::time::timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| SessionError::Timeout(QUERY_TIMEOUT))?
        .map_err(SessionError::from)
}

/// The listener's statements: the read, prepared once per connection (its plan, an index
/// range scan, never changes), and the probe's text, planned with its values each time (a plan
/// made for a few pending seqs in an empty log would be a disaster for 100,000 in a big one;
/// probes are rare: one per writer that ends while holding pending seqs). And the session's
/// backend pid, which every read checks.
struct Statements {
    read: Statement,
    probe: String,
    pid: i32,
}

impl Statements {
    async fn prepare(client: &Client, pid: i32) -> Result<Statements, SessionError> {
        let read = client.prepare(&read_sql()).await;
        Ok(Statements {
            read: read.map_err(SessionError::NotInstalled)?,
            probe: probe_sql(),
            pid,
        })
    }
}

/// One read: a first row with the snapshot's running transactions (and the backend's pid),
/// then up to `$2` rows after the cursor `$1`, all under the statement's one snapshot.
fn read_sql() -> String {
    format!(
        r#"
select null::bigint as seq, null::text as negocio_id, null::text as cita_id,
       null::text as action, null::text as estado, null::text as estado_anterior,
       null::text as ts, null::float8 as age_secs,
       array(select x::text::bigint from pg_snapshot_xip(pg_current_snapshot()) as x) as running,
       pg_backend_pid() as pid
union all
(select {EVENT_COLUMNS},
        extract(epoch from clock_timestamp() - e.created_at)::float8, null, null
   from citas_realtime.events e
  where e.seq > $1
  order by e.seq
  limit $2)
"#
    )
}

/// A probe: the rows of pending seqs, given as inclusive ranges (`$1` lows, `$2` highs). The
/// lateral subquery, fenced by `offset 0`, makes the plan one primary-key range scan per range
/// whatever the statistics say: planned as a join, an unanalyzed log got a nested loop over
/// every pair (100,000 ranges took 12 minutes instead of half a second).
fn probe_sql() -> String {
    format!(
        r#"
select e.*
  from unnest($1::bigint[], $2::bigint[]) as g(lo, hi)
 cross join lateral (
       select {EVENT_COLUMNS},
              extract(epoch from clock_timestamp() - e.created_at)::float8 as age_secs
         from citas_realtime.events e
        where e.seq between g.lo and g.hi
       offset 0) as e
 order by e.seq
"#
    )
}

/// One row of the log as the listener reads it.
struct LogRow {
    seq: i64,
    /// `None` for an action this version does not know (skipped, logged).
    event: Option<Event>,
    /// Seconds since it was written.
    age: Option<f64>,
}

impl LogRow {
    fn from_row(row: &Row) -> Result<LogRow, tokio_postgres::Error> {
        Ok(LogRow {
            seq: row.try_get("seq")?,
            event: Event::from_row(row)?,
            age: row.try_get("age_secs")?,
        })
    }
}

/// What one read returned.
struct Read {
    running: Running,
    /// The backend that ran it.
    pid: i32,
    rows: Vec<LogRow>,
}

impl Read {
    fn parse(rows: &[Row]) -> Result<Read, tokio_postgres::Error> {
        let mut read = Read {
            running: Running::new(),
            pid: 0,
            rows: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            if row.try_get::<_, Option<i64>>("seq")?.is_none() {
                let running: Vec<i64> = row.try_get("running")?;
                read.running = running.into_iter().collect();
                read.pid = row.try_get("pid")?;
            } else {
                read.rows.push(LogRow::from_row(row)?);
            }
        }
        Ok(read)
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
