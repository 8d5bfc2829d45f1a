//! The pool's SQL on `citas_realtime.*`: replays, statistics, `POST /notify/cita`, the access
//! hook and pruning, each one typed method with one error type.
//!
//! Every query goes out as one unnamed statement with its parameters' types (`query_typed`:
//! parse, bind and execute in one round trip), never as a named prepared statement reused
//! later. So none of them depends on a server session surviving between transactions, and the
//! pool could run through a transaction-mode pooler (the listener cannot: see
//! [`crate::log::pooler`]). Statistics run in a transaction of their own, which such a pooler keeps
//! on one session.

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use crate::log::db::with_causes;
use crate::log::event::{lacks_record_columns, Event, EVENT_COLUMNS, EVENT_COLUMNS_V5};

/// Why a query of the pool failed. Shown with its causes, on one line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no database connection: {}", with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", with_causes(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("the query returned no row")]
    NoRow,
}

/// One page of a negocio's events, as a replay reads it.
#[derive(Debug)]
pub struct Page {
    /// The events this version understands, in seq order.
    pub events: Vec<Event>,
    /// Rows read (events of unknown actions included).
    pub rows: usize,
    /// The last seq read, if any.
    pub last_seq: Option<i64>,
}

/// What the log can replay: seqs after `pruned_upto`, up to `newest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    pub pruned_upto: i64,
    pub newest: i64,
}

/// The pool, with one method per query.
#[derive(Clone)]
pub struct Store {
    pool: deadpool_postgres::Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

type Param<'a> = (&'a (dyn ToSql + Sync), Type);

impl Store {
    pub fn new(pool: deadpool_postgres::Pool) -> Store {
        Store { pool }
    }

    /// Runs `sql` as one unnamed statement; its rows.
    async fn rows(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query_typed(sql, params).await?)
    }

    /// The first row of `sql`.
    async fn row(&self, sql: &str, params: &[Param<'_>]) -> Result<Row, StoreError> {
        self.rows(sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or(StoreError::NoRow)
    }

    /// Which seqs a replay can serve.
    pub async fn replay_window(&self) -> Result<ReplayWindow, StoreError> {
        let row = self
            .row(
                "select r.pruned_upto, (select coalesce(max(seq), 0) from citas_realtime.events)
                   from citas_realtime.retention r",
                &[],
            )
            .await?;
        Ok(ReplayWindow {
            pruned_upto: row.try_get(0)?,
            newest: row.try_get(1)?,
        })
    }

    /// Up to `limit` events of `negocio` (and truncates) after seq `after`, in seq order.
    pub async fn replay_page(
        &self,
        negocio: &str,
        after: i64,
        limit: i64,
    ) -> Result<Page, StoreError> {
        let params: [Param<'_>; 3] = [
            (&negocio, Type::TEXT),
            (&after, Type::INT8),
            (&limit, Type::INT8),
        ];
        let rows = match self.rows(&replay_sql(EVENT_COLUMNS), &params).await {
            Err(StoreError::Query(e)) if lacks_record_columns(&e) => {
                self.rows(&replay_sql(EVENT_COLUMNS_V5), &params).await?
            }
            other => other?,
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.extend(Event::from_row(row)?);
        }
        let last_seq = match rows.last() {
            Some(row) => Some(row.try_get("seq")?),
            None => None,
        };
        Ok(Page {
            rows: rows.len(),
            last_seq,
            events,
        })
    }

    /// Records an event announced by an application (`citas_realtime.notify_cita`); its seq.
    pub async fn notify_cita(
        &self,
        negocio_id: &str,
        action: &str,
        cita_id: Option<&str>,
        estado: Option<&str>,
    ) -> Result<i64, StoreError> {
        let row = self
            .row(
                "select citas_realtime.notify_cita($1, $2, $3, $4)",
                &[
                    (&negocio_id, Type::TEXT),
                    (&action, Type::TEXT),
                    (&cita_id, Type::TEXT),
                    (&estado, Type::TEXT),
                ],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The negocio's figures (`citas_realtime.estadisticas`, as JSON text) and the newest seq
    /// they include, read under one snapshot, the query bounded by `timeout`.
    pub async fn estadisticas(
        &self,
        negocio: &str,
        timeout: Duration,
    ) -> Result<(i64, Option<String>), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "set local statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await?;
        let rows = tx
            .query_typed(
                "select citas_realtime.estadisticas($1)::text,
                        greatest(
                          (select max(seq) from citas_realtime.events where negocio_id = $1),
                          (select max(seq) from citas_realtime.events
                            where negocio_id = '' and action = 'truncated'),
                          0)",
                &[(&negocio, Type::TEXT)],
            )
            .await?;
        tx.commit().await?;
        let row = rows.first().ok_or(StoreError::NoRow)?;
        Ok((row.try_get(1)?, row.try_get(0)?))
    }

    /// Calls the access hook: `call_sql` takes the claims (JSON text) and the negocio. The
    /// database ends it after `timeout` (a DBA's function may wait on a lock): a slow hook
    /// never keeps a pool connection from replays and notifications for longer.
    pub async fn can_subscribe(
        &self,
        call_sql: &str,
        claims: &str,
        negocio: &str,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "set local statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await?;
        let rows = tx
            .query_typed(call_sql, &[(&claims, Type::TEXT), (&negocio, Type::TEXT)])
            .await?;
        tx.commit().await?;
        let row = rows.first().ok_or(StoreError::NoRow)?;
        Ok(row.try_get::<_, Option<bool>>(0)?.unwrap_or(false))
    }

    /// `citas_realtime.prune(keep)`: how many events it deleted.
    pub async fn prune(&self, keep: Duration) -> Result<i64, StoreError> {
        let keep = format!("{} milliseconds", keep.as_millis());
        let row = self
            .row(
                "select citas_realtime.prune($1::text::interval)",
                &[(&keep, Type::TEXT)],
            )
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// One negocio's events and the truncates (logged under negocio '', marked by their action: a
/// row whose negocio is '' is no truncate) after `$2`, at most `$3`, each an ordered range scan
/// of the (negocio_id, seq) index; `negocio_id = any(...)` would read and sort every match.
fn replay_sql(event_columns: &str) -> String {
    format!(
        "select * from (
            (select {event_columns}, e.seq as s from citas_realtime.events e
              where e.negocio_id = $1 and e.seq > $2 order by e.seq limit $3)
            union all
            (select {event_columns}, e.seq as s from citas_realtime.events e
              where e.negocio_id = '' and e.action = 'truncated' and e.seq > $2
              order by e.seq limit $3)
         ) page order by s limit $3"
    )
}

/// The listener's read, as it prepares it on a log with record columns (for `read_cost`, the
/// benchmark of what reads cost PostgreSQL).
pub fn listener_read_sql() -> String {
    listener::read(EVENT_COLUMNS)
}

/// The listener's SQL: it runs on the listener's own connection, not the pool.
pub(crate) mod listener {

    /// The statement snapshot's running transactions, as three columns (for the first start's
    /// query, which uses them in SQL): `running` (its `xip`),
    /// `xmax`, and `next_xid`, the next id to be assigned, read after the snapshot was taken
    /// (`age()` measures from it; the low 32 bits of `xmax` are always a normal id). Every id
    /// from `xmax` to `next_xid` is running too: see `log::cursor`.
    const RUNNING: &str = "\
array(select x::text::bigint from pg_snapshot_xip(pg_current_snapshot()) as x) as running,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint as xmax,
       (select x + age((x % 4294967296)::text::xid)
          from (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as x) as v) as next_xid";

    /// The statement's snapshot, as two columns: `snapshot`, its text (`xmin:xmax:xip,...`),
    /// and `ahead`, how many ids were assigned from its `xmax` on by the time it was read
    /// (`age()` counts from the next id to be assigned; the low 32 bits of `xmax` are always a
    /// normal id). Every id from `xmax` to `xmax + ahead` is running too: see `log::cursor`.
    /// Cheaper for the database than [`RUNNING`]'s array and subqueries (one function call, one
    /// text output): about 20 % of what a read costs it (BENCHMARKS.md).
    const SNAPSHOT: &str = "\
pg_current_snapshot()::text as snapshot,
       age(((pg_snapshot_xmax(pg_current_snapshot())::text::bigint) % 4294967296)::text::xid) as ahead";

    /// One read: a first row with the statement's snapshot (and the backend's pid), then up to
    /// `$2` rows after the cursor `$1`, all under that one snapshot. Prepared once per
    /// connection: its plan, a primary-key range scan, never changes. The columns are read by
    /// position: the event's ([`crate::log::event::EVENT_COLUMNS`]), then `age_secs`,
    /// `snapshot`, `ahead` and `pid` (see `listener::reader`).
    pub(crate) fn read(event_columns: &str) -> String {
        format!(
            r#"
select null::bigint as seq, null::text as negocio_id, null::text as cita_id,
       null::text as action, null::text as estado, null::text as estado_anterior,
       null::text as ts, null::text as record, null::text as old_record,
       null::float8 as age_secs,
       {SNAPSHOT},
       pg_backend_pid() as pid
union all
(select {event_columns},
        date_part('epoch', clock_timestamp() - e.created_at), null, null, null
   from citas_realtime.events e
  where e.seq > $1
  order by e.seq
  limit $2)
"#
        )
    }

    /// A probe: the rows of pending seqs, given as inclusive ranges (`$1` lows, `$2` highs).
    /// The lateral subquery, fenced by `offset 0`, makes the plan one primary-key range scan
    /// per range whatever the statistics say: planned as a join, an unanalyzed log got a
    /// nested loop over every pair (100,000 ranges took 12 minutes instead of half a second).
    /// Sent with its values each time, so planned for them (probes are rare: one per writer
    /// that ends while holding pending seqs).
    pub(crate) fn probe(event_columns: &str) -> String {
        format!(
            r#"
select e.*
  from unnest($1::bigint[], $2::bigint[]) as g(lo, hi)
 cross join lateral (
       select {event_columns},
              date_part('epoch', clock_timestamp() - e.created_at) as age_secs
         from citas_realtime.events e
        where e.seq between g.lo and g.hi
       offset 0) as e
 order by e.seq
"#
        )
    }

    /// At the first start: where to begin reading (`$1` seqs below the newest), the running
    /// transactions, and, when there are any, every seq missing from the log below that start
    /// (back to the last pruned seq), as ranges: each may belong to one of those transactions,
    /// however old, and still commit. One statement, so one snapshot. Without running
    /// transactions nothing below the start can still appear, and the log is not scanned.
    pub(crate) fn prime() -> String {
        format!(
            r#"
with top as (
    select greatest(coalesce(max(seq), 0) - $1, 0) as start from citas_realtime.events
),
floor as (select pruned_upto as seq from citas_realtime.retention),
snap as (select {RUNNING}),
seqs as (
    select s.seq, lag(s.seq) over (order by s.seq) as prev
      from (select e.seq
              from citas_realtime.events e
             where (select cardinality(running) > 0 or next_xid > xmax from snap)
               and e.seq <= (select start from top)
               and e.seq > (select seq from floor)
            union all select seq from floor where seq <= (select start from top)
            union all select start + 1 from top) as s
)
select (select start from top) as start,
       (select running from snap), (select xmax from snap), (select next_xid from snap),
       array(select prev + 1 from seqs where seq > prev + 1 order by seq) as los,
       array(select seq - 1 from seqs where seq > prev + 1 order by seq) as his
"#
        )
    }
}
