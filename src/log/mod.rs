//! The event log: what the triggers write to `citas_realtime.events`, and every way the server
//! reads it. The only part of the crate that speaks SQL to `citas_realtime.*`.

pub(crate) mod cursor;
pub mod db;
pub mod event;
pub(crate) mod listener;
pub(crate) mod pooler;
pub(crate) mod retention;
pub mod sql;
pub(crate) mod status;
pub mod store;
