//! citas-realtime: every change to a cita reaches the dashboards of its negocio, whoever wrote it.
//!
//! ```text
//!  writers (REST API, psql, batch jobs)
//!        │  INSERT / UPDATE / DELETE on public.citas
//!        ▼
//!  statement triggers (sql/install.sql) ── rows ──▶ citas_realtime.events (seq)
//!        │ pg_notify('citas_realtime', ids only)          ▲
//!        ▼                                                 │ read by seq
//!  listener ── LISTEN on one connection, reads new rows ───┘
//!        │ Event
//!        ▼
//!  hub ── per negocio: subscribers' bounded queues, one serialized frame shared by all
//!        │
//!        ▼
//!  ws ── one task per WebSocket: control messages in, queued frames out
//! ```
//!
//! A map of the crate, one concept per module:
//!
//! * [`config`]: the whole configuration, read once (environment, `.env`, flags) and passed down.
//! * [`db`]: connecting to PostgreSQL with the TLS mode the URL asks for.
//! * [`sql`]: the SQL files of `sql/`, embedded in the binary.
//! * [`event`]: one row of the event log and its wire form.
//! * [`listener`]: the only code that speaks `LISTEN`; turns notifications into log reads.
//! * [`hub`]: who is subscribed to which negocio; fan-out with per-client bounded queues.
//! * [`retention`]: pruning old events on a timer (one instance at a time).
//! * [`stats`]: live statistics, computed once per negocio (coalesced) and pushed.
//! * [`auth`]: JWT verification (HS256 secret and/or JWKS keys) and the negocios a token grants.
//! * [`jwks`]: asymmetric signing keys from a JWKS file or URL, pinned algorithms, refresh.
//! * [`access`]: who may subscribe to which negocio: the token's grants, then the optional SQL
//!   hook (`CAN_SUBSCRIBE_FUNCTION`), cached briefly.
//! * [`protocol`]: the JSON messages clients send and receive.
//! * [`ws`]: the WebSocket upgrade (after the token is verified), the per-connection task, and
//!   resuming with `since`.
//! * [`metrics`]: `GET /metrics` (Prometheus text), mirrored from the counters above.
//! * [`server`]: HTTP routes (`/ws`, `POST /notify/cita`, `/health`, `/metrics`), binding, startup and graceful shutdown of every task.
//! * [`web`]: the dashboard page at `GET /`, embedded (it uses the bundled TypeScript client).
//! * [`pgtemp`]: a private, throw-away PostgreSQL cluster for the demo and the tests.
//! * [`demo`]: `citas-realtime demo`.
//! * [`admin`]: `citas-realtime token` and `citas-realtime sql print|install|uninstall`.
//! * [`check`]: `citas-realtime check`, one line per diagnosis.
//! * [`cli`]: the command line.

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod edge;
pub mod fanout;
pub mod log;
