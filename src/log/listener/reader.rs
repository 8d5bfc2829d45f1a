//! Reading the log: the first start's priming, reads after the cursor, probes of pending seqs,
//! and handing what was read to the fan-out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};

use super::{Publish, SessionError};
use crate::log::cursor::{LogCursor, Running};
use crate::log::event::{
    lacks_record_columns, Event, EVENT_COLUMNS, EVENT_COLUMNS_V5, EVENT_COLUMN_COUNT,
};
use crate::log::status::ListenerStatus;
use crate::log::store::listener as sql;

/// Rows read from the log at a time.
pub const READ_BATCH: i64 = 1000;
/// A read that takes longer than this means the connection is not healthy.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// At first start, the events this far below the newest are read again to learn which were
/// written since the server started (they are delivered); every seq missing below is checked
/// for writers still in flight, however far back.
const PRIME_WINDOW: i64 = 1000;

/// Reads the log on one connection and publishes what it reads.
pub(super) struct Reader<'a> {
    pub(super) client: &'a Client,
    pub(super) read: Statement,
    /// The event columns `read` selects (see [`prepare_read`]).
    pub(super) columns: &'static str,
    /// The connection's backend: a read answered by another is a transaction pooler's.
    pub(super) pid: i32,
    pub(super) sink: &'a dyn Publish,
    pub(super) status: &'a Arc<ListenerStatus>,
}

impl Reader<'_> {
    /// At the first start: the cursor, and the seqs below it that open transactions may still
    /// commit. Then the events written since `started` are delivered, older ones are history.
    pub(super) async fn prime(
        &self,
        log: &mut LogCursor,
        started: Instant,
    ) -> Result<(), SessionError> {
        let prime = sql::prime();
        let rows = timed(
            self.client
                .query_typed(&prime, &[(&PRIME_WINDOW, Type::INT8)]),
        )
        .await?;
        let row = rows.first().ok_or(SessionError::Closed)?;
        let start: i64 = row.try_get("start")?;
        let running = running_of(row)?;
        let lows: Vec<i64> = row.try_get("los")?;
        let highs: Vec<i64> = row.try_get("his")?;
        log.cursor = Some(start);
        log.hold(lows.into_iter().zip(highs), &running);
        // Ages are measured on the database's clock: clock skew between machines is no matter.
        let since_start = started.elapsed().as_secs_f64();
        self.catch_up(log, Some(since_start)).await
    }

    /// True when the log had no record columns at connect (install.sql older than version 6)
    /// and has them now: an upgrade ran, and the session must start again to read them.
    pub(super) async fn log_was_upgraded(&self) -> bool {
        self.columns == EVENT_COLUMNS_V5
            && timed(self.client.prepare(&sql::read(EVENT_COLUMNS)))
                .await
                .is_ok()
    }

    /// Reads until the log has nothing newer, handing what it finds on. With
    /// `only_last_secs`, only rows written at most that many seconds ago are handed on.
    pub(super) async fn catch_up(
        &self,
        log: &mut LogCursor,
        only_last_secs: Option<f64>,
    ) -> Result<(), SessionError> {
        loop {
            let cursor = log.cursor.unwrap_or(0);
            self.status.reads.fetch_add(1, Ordering::Relaxed);
            let rows = timed(self.client.query(&self.read, &[&cursor, &READ_BATCH])).await?;
            let read = Read::parse(&rows)?;
            if read.pid != self.pid {
                return Err(SessionError::TransactionPooler(format!(
                    "the listener's server session changed between two reads (pid {}, then {})",
                    self.pid, read.pid
                )));
            }
            log.advance(read.rows.iter().map(|r| &r.seq), &read.running);
            let full = read.rows.len() >= READ_BATCH as usize;
            let mut batch: Vec<LogRow> = read
                .rows
                .into_iter()
                .filter(|r| only_last_secs.is_none_or(|max| r.age.is_some_and(|age| age <= max)))
                .collect();
            batch.extend(self.probe(log, &read.running).await?);
            batch.sort_by_key(|r| r.seq);
            self.publish(batch, log);
            if !full {
                return Ok(());
            }
        }
    }

    /// Reads the pending seqs whose writers may have ended, and gives up those whose writers
    /// all have; the rows that showed up.
    async fn probe(
        &self,
        log: &mut LogCursor,
        running: &Running,
    ) -> Result<Vec<LogRow>, SessionError> {
        let ranges = log.to_probe(running);
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let (lows, highs): (Vec<i64>, Vec<i64>) = ranges.into_iter().unzip();
        let probe = sql::probe(self.columns);
        let params = [
            (&lows as _, Type::INT8_ARRAY),
            (&highs as _, Type::INT8_ARRAY),
        ];
        let rows = timed(self.client.query_typed(&probe, &params)).await?;
        let mut found = Vec::new();
        for row in &rows {
            let row = LogRow::from_row(row)?;
            if log.take(row.seq) {
                found.push(row);
            }
        }
        let given_up = log.settle(running);
        if given_up > 0 {
            tracing::debug!(given_up, pending = log.pending_len(), "rolled-back seqs");
        }
        Ok(found)
    }

    /// Hands a batch on (always, even empty: the fan-out records how far the listener has got,
    /// which is what resuming clients de-duplicate against).
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

/// Prepares the read on `client`, and says which event columns the log has (a log written by
/// install.sql before version 6 has no record columns). A log we cannot read means our SQL is
/// missing.
pub(super) async fn prepare_read(
    client: &Client,
) -> Result<(Statement, &'static str), SessionError> {
    match client.prepare(&sql::read(EVENT_COLUMNS)).await {
        Ok(read) => Ok((read, EVENT_COLUMNS)),
        Err(e) if lacks_record_columns(&e) => {
            let read = client
                .prepare(&sql::read(EVENT_COLUMNS_V5))
                .await
                .map_err(SessionError::NotInstalled)?;
            tracing::warn!("the event log has no record columns: run `citas-realtime sql install` to upgrade it");
            Ok((read, EVENT_COLUMNS_V5))
        }
        Err(e) => Err(SessionError::NotInstalled(e)),
    }
}

/// One row of the log as the listener reads it.
struct LogRow {
    seq: i64,
    /// `None` for an action this version does not know (skipped, logged).
    event: Option<Event>,
    /// Seconds since it was written.
    age: Option<f64>,
}

/// Where a read's (and a probe's) columns are, after the event's (see `store::listener::read`):
/// by position, not by name, which every row would search for.
const AGE: usize = EVENT_COLUMN_COUNT;
const SNAPSHOT: usize = AGE + 1;
const AHEAD: usize = AGE + 2;
const PID: usize = AGE + 3;

impl LogRow {
    fn from_row(row: &Row) -> Result<LogRow, tokio_postgres::Error> {
        Ok(LogRow {
            seq: row.try_get(0)?,
            event: Event::from_row(row)?,
            age: row.try_get(AGE)?,
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
    fn parse(rows: &[Row]) -> Result<Read, SessionError> {
        let mut read = Read {
            running: Running::default(),
            pid: 0,
            rows: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            if row.try_get::<_, Option<i64>>(0)?.is_none() {
                read.running = Running::from_snapshot(row.try_get(SNAPSHOT)?, row.try_get(AHEAD)?)?;
                read.pid = row.try_get(PID)?;
            } else {
                read.rows.push(LogRow::from_row(row)?);
            }
        }
        Ok(read)
    }
}

/// The running transactions of the first start's snapshot (see `store::listener::RUNNING`).
fn running_of(row: &Row) -> Result<Running, tokio_postgres::Error> {
    Ok(Running {
        xip: row.try_get::<_, Vec<i64>>("running")?.into_iter().collect(),
        xmax: row.try_get("xmax")?,
        next: row.try_get("next_xid")?,
    })
}
