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
//! `seq` is taken when a row is written, but rows become visible when their transaction commits,
//! and transactions can commit out of `seq` order: a long transaction takes seq 10 and commits
//! after seq 11 has been read. So the cursor alone would skip 10. Each read therefore also
//! returns its snapshot's `xmin`, and every seq skipped below the cursor is remembered as a
//! *gap*. Whoever holds that seq already had a transaction id when the read ran (it wrote its
//! `citas` row before taking the seq, and a later seq was already committed). Right after a read
//! that found new gaps, the listener asks for `pg_current_xact_id()` in a transaction of its
//! own: that id is above every id assigned before, the gap's writer's included, and becomes the
//! gap's *tag*. (The snapshot's `xmax` is not such a bound: it is one past the latest
//! *completed* id, and a running writer's id can be above it.) Later reads ask for the gaps
//! again; a gap is delivered when it shows up, and forgotten once a snapshot's `xmin` passes its
//! tag, because then its writer has ended without committing it (a rollback). No event is
//! delivered twice: every seq is handed to the hub at most once per process.
//!
//! # Failure handling
//!
//! Any error (connection lost, query failure, a read that takes longer than [`QUERY_TIMEOUT`])
//! ends the session; the listener reports itself down on `/health` and reconnects with capped,
//! jittered exponential backoff. A read every [`POLL_INTERVAL`] even without notifications
//! resolves gaps and proves the connection alive; TCP keepalives (see [`crate::db`]) catch a
//! half-open connection beneath it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use tokio::sync::{oneshot, Notify};
use tokio_postgres::{AsyncMessage, Client, Row, Statement};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::db::{with_causes, ConnectError, DbConfig};
use crate::event::{Announcement, Event, EVENT_COLUMNS};
use crate::hub::{Hub, LogPosition};
use crate::sql::NOTIFY_CHANNEL;
use crate::stats::Stats;

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
/// The tag of a gap whose bound is not known yet: never given up.
const UNTAGGED: i64 = i64::MAX;
/// Gap ranges remembered at most; past this the oldest are given up (and logged).
const MAX_GAP_RANGES: usize = 10_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Shared, lock-free view of the listener for `/health`.
#[derive(Debug)]
pub struct ListenerStatus {
    connected: AtomicBool,
    last_seq: AtomicI64,
    reconnects: AtomicU64,
    events_read: AtomicU64,
    /// Seconds from an event's write to the listener handing it to the hub.
    pub lag: prometheus::Histogram,
    /// Notifications on our channel whose payload is not an [`Announcement`].
    pub unrecognised: prometheus::IntCounter,
}

impl Default for ListenerStatus {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new(
            "citas_realtime_event_lag_seconds",
            "Time from a change being written to its event being handed to subscribers' queues",
        )
        .buckets(vec![
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        ListenerStatus {
            connected: AtomicBool::new(false),
            last_seq: AtomicI64::new(0),
            reconnects: AtomicU64::new(0),
            events_read: AtomicU64::new(0),
            // Fixed, valid options: creation cannot fail.
            lag: prometheus::Histogram::with_opts(opts)
                .unwrap_or_else(|_| unreachable!("valid histogram options")),
            unrecognised: prometheus::IntCounter::new(
                "citas_realtime_unrecognised_notifications_total",
                "NOTIFY citas_realtime payloads that are not a trigger's announcement \
                 (another install.sql version, or someone else using the channel)",
            )
            .unwrap_or_else(|_| unreachable!("valid counter options")),
        }
    }
}

impl ListenerStatus {
    /// Events read from the log and handed to the hub.
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    /// The highest seq read from the log so far.
    pub fn last_seq(&self) -> i64 {
        self.last_seq.load(Ordering::Relaxed)
    }
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[from] ConnectError),
    #[error("{}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connection closed")]
    Closed,
    #[error(
        "LISTEN does not deliver notifications on this connection: a transaction-mode pooler \
         (Supabase: port 6543)? Use the direct connection or the session-mode pooler (port 5432)"
    )]
    ListenBroken,
    #[error("a read of the event log took longer than {0:?}")]
    Timeout(Duration),
    #[error("the event log is not readable: run sql/install.sql on this database and grant the server's role access (see README) ({})", with_causes(.0))]
    NotInstalled(tokio_postgres::Error),
}

pub struct Listener {
    /// When this server started: events committed since then are news, older ones history.
    started: Instant,
    db: DbConfig,
    hub: Arc<Hub>,
    stats: Option<Arc<Stats>>,
    status: Arc<ListenerStatus>,
    shutdown: CancellationToken,
}

impl Listener {
    pub fn new(
        db: DbConfig,
        hub: Arc<Hub>,
        stats: Option<Arc<Stats>>,
        status: Arc<ListenerStatus>,
        shutdown: CancellationToken,
    ) -> Listener {
        Listener {
            started: Instant::now(),
            db,
            hub,
            stats,
            status,
            shutdown,
        }
    }

    /// Runs until shutdown, reconnecting as long as it takes.
    pub async fn run(self) {
        let mut log = LogCursor::default();
        let mut failures = 0u32;
        while !self.shutdown.is_cancelled() {
            match self.session(&mut log, &mut failures).await {
                Ok(()) => break,
                Err(error) => {
                    if self.status.connected.swap(false, Ordering::AcqRel) {
                        self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    let delay = backoff(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "listener down");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.status.connected.store(false, Ordering::Release);
        tracing::debug!("listener stopped");
    }

    async fn session(&self, log: &mut LogCursor, failures: &mut u32) -> Result<(), SessionError> {
        let (client, mut connection) = self.db.connect_listener().await?;
        let wake = Arc::new(Notify::new());
        let (closed_tx, mut closed_rx) = oneshot::channel();
        // The connection future must be polled for anything to happen, and polled through
        // `poll_message`: its plain `Future` impl drops notifications. This task never blocks:
        // a notification only stores a wake-up permit, so PostgreSQL's queue never backs up
        // behind us.
        let wake_driver = wake.clone();
        let unrecognised = self.status.unrecognised.clone();
        let probe_channel = format!("citas_realtime_probe_{:08x}", rand::random::<u32>());
        let probe_seen = Arc::new(Notify::new());
        let (probe_driver, probe_name) = (probe_seen.clone(), probe_channel.clone());
        let _driver = AbortOnDropHandle::new(tokio::spawn(async move {
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
                                unrecognised.inc();
                                tracing::debug!(
                                    reason,
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

        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
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
        let read = client
            .prepare(&read_sql())
            .await
            .map_err(SessionError::NotInstalled)?;

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
            self.catch_up(&client, &read, log, Some(since_start))
                .await?;
        }

        // Whatever committed while we were away is delivered before we call ourselves live.
        self.catch_up(&client, &read, log, None).await?;
        self.status.connected.store(true, Ordering::Release);
        *failures = 0;
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
            self.catch_up(&client, &read, log, None).await?;
        }
    }

    /// Reads until the log has nothing newer, handing what it finds to the hub. With
    /// `only_last_secs`, only rows written at most that many seconds ago are handed over.
    async fn catch_up(
        &self,
        client: &Client,
        read: &Statement,
        log: &mut LogCursor,
        only_last_secs: Option<f64>,
    ) -> Result<(), SessionError> {
        loop {
            let cursor = log.cursor.unwrap_or(0);
            let (lows, highs) = log.gap_bounds();
            let rows = tokio::time::timeout(
                QUERY_TIMEOUT,
                client.query(read, &[&cursor, &lows, &highs, &READ_BATCH]),
            )
            .await
            .map_err(|_| SessionError::Timeout(QUERY_TIMEOUT))??;
            let (events, new_rows, ages) = log.absorb(&rows, only_last_secs)?;
            if log.has_untagged() {
                // Its own transaction (autocommit): an id above every id assigned so far.
                let row = client
                    .query_one("select pg_current_xact_id()::text::bigint", &[])
                    .await?;
                log.tag_untagged(row.try_get(0)?);
            }
            self.status
                .last_seq
                .store(log.cursor.unwrap_or(0), Ordering::Relaxed);
            // Always, even with no events: the hub records how far the listener has got, which
            // is what resuming clients de-duplicate against.
            for age in &ages {
                self.status.lag.observe(*age);
            }
            self.status
                .events_read
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.hub.publish(&events, log.position());
            if let Some(stats) = &self.stats {
                stats.mark_dirty(&events);
            }
            if new_rows < READ_BATCH as usize {
                return Ok(());
            }
        }
    }
}

/// One read: the snapshot's bounds, the gaps that have become visible, then up to `$4` new
/// rows after the cursor. The snapshot is the statement's own, so the bounds describe exactly
/// what the rows were read under.
fn read_sql() -> String {
    format!(
        r#"
with snap as (select pg_current_snapshot() as s)
select pg_snapshot_xmin(snap.s)::text::bigint as xmin,
       extract(epoch from clock_timestamp() - e.created_at)::float8 as age_secs,
       {EVENT_COLUMNS}
from snap
left join lateral (
    (select ev.*
       from unnest($2::bigint[], $3::bigint[]) as g(lo, hi)
       join citas_realtime.events ev on ev.seq between g.lo and g.hi)
    union all
    (select ev.*
       from citas_realtime.events ev
      where ev.seq > $1
      order by ev.seq
      limit $4)
) e on true
order by e.seq
"#
    )
}

/// Where the listener is in the log: the highest seq read, and the seqs below it that may
/// still commit (ranges `lo..=hi`, keyed by `lo`, each with a transaction id above its writer's).
#[derive(Debug, Default)]
struct LogCursor {
    cursor: Option<i64>,
    gaps: BTreeMap<i64, (i64, i64)>,
}

impl LogCursor {
    fn has_untagged(&self) -> bool {
        self.gaps.values().any(|(_, tag)| *tag == UNTAGGED)
    }

    fn tag_untagged(&mut self, tag: i64) {
        for (_, t) in self.gaps.values_mut() {
            if *t == UNTAGGED {
                *t = tag;
            }
        }
    }

    fn position(&self) -> LogPosition {
        LogPosition {
            cursor: self.cursor.unwrap_or(0),
            gaps: self.gaps.iter().map(|(lo, (hi, _))| (*lo, *hi)).collect(),
        }
    }

    fn gap_bounds(&self) -> (Vec<i64>, Vec<i64>) {
        self.gaps.iter().map(|(lo, (hi, _))| (*lo, *hi)).unzip()
    }

    /// Takes in one read's rows; returns the events to deliver (with `only_last_secs`, only
    /// those written at most that long ago) and how many rows were new.
    fn absorb(
        &mut self,
        rows: &[Row],
        only_last_secs: Option<f64>,
    ) -> Result<(Vec<Event>, usize, Vec<f64>), tokio_postgres::Error> {
        let Some(first) = rows.first() else {
            return Ok((Vec::new(), 0, Vec::new()));
        };
        let mut ages = Vec::new();
        let xmin: i64 = first.try_get("xmin")?;
        let mut cursor = self.cursor.unwrap_or(0);
        let mut events = Vec::with_capacity(rows.len());
        let mut new_rows = 0;
        for row in rows {
            let Some(seq) = row.try_get::<_, Option<i64>>("seq")? else {
                continue; // the snapshot-only row of an empty read
            };
            if seq <= cursor {
                if !self.take_gap(seq) {
                    continue; // already delivered; cannot happen, but never send twice
                }
            } else {
                if seq > cursor + 1 {
                    // Tagged once the listener knows an id above its writer's (UNTAGGED).
                    self.gaps.insert(cursor + 1, (seq - 1, UNTAGGED));
                }
                cursor = seq;
                new_rows += 1;
            }
            let age: Option<f64> = row.try_get("age_secs")?;
            if let Some(max_age) = only_last_secs {
                if age.is_none_or(|age| age > max_age) {
                    continue;
                }
            }
            if let Some(event) = Event::from_row(row)? {
                events.push(event);
                ages.extend(age);
            }
        }
        self.cursor = Some(cursor);
        // A gap whose writer has certainly ended (its tag is at or below this snapshot's xmin)
        // and that this read did not return was rolled back: it will never appear.
        self.gaps.retain(|_, (_, tag)| *tag > xmin);
        while self.gaps.len() > MAX_GAP_RANGES {
            if let Some((lo, (hi, _))) = self.gaps.pop_first() {
                tracing::warn!(lo, hi, "giving up on an old gap in the event log");
            }
        }
        Ok((events, new_rows, ages))
    }

    /// Removes `seq` from the gaps; false when it was not in one.
    fn take_gap(&mut self, seq: i64) -> bool {
        let Some((&lo, &(hi, tag))) = self.gaps.range(..=seq).next_back() else {
            return false;
        };
        if seq > hi {
            return false;
        }
        self.gaps.remove(&lo);
        if lo < seq {
            self.gaps.insert(lo, (seq - 1, tag));
        }
        if seq < hi {
            self.gaps.insert(seq + 1, (hi, tag));
        }
        true
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
    fn gaps_split_when_filled() {
        let mut log = LogCursor::default();
        log.gaps.insert(10, (14, 100));
        assert!(log.take_gap(12));
        assert_eq!(log.gap_bounds(), (vec![10, 13], vec![11, 14]));
        assert!(log.take_gap(10));
        assert!(log.take_gap(14));
        assert!(!log.take_gap(14));
        assert_eq!(log.gap_bounds(), (vec![11, 13], vec![11, 13]));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= BACKOFF_MIN);
        assert!(backoff(3) >= BACKOFF_MIN * 4);
        assert!(backoff(40) <= BACKOFF_MAX);
    }
}
