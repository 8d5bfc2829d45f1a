//! citas-realtime: every change to a cita reaches the dashboards of its negocio, whoever wrote it.
//!
//! The modules read like the pipeline (the code map and the invariants each one keeps are in
//! `ARCHITECTURE.md`; imports run downwards only):
//!
//! ```text
//!  sql/install.sql   triggers write citas_realtime.events and NOTIFY
//!        │
//!  log               the listener reads the log by seq (and all other SQL on it)
//!        │ events
//!  fanout            hub: each negocio's subscribers' outlets; stats: pushed statistics
//!        │ frames
//!  edge              http: accept loop and endpoints; ws: one task per WebSocket
//!        ▲
//!  auth              tokens and who may see which negocio (used by edge)
//!  config, cli       the configuration, read once
//!  commands          serve (the composition root), demo, check, token, sql
//! ```

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod edge;
pub(crate) mod fanout;
pub mod log;
