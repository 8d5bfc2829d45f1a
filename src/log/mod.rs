//! The event log: what the triggers write to `citas_realtime.events`, and every way the server
//! reads it. The only part of the crate that speaks SQL to `citas_realtime.*`.

pub mod cursor;
pub mod db;
pub mod event;
pub mod listener;
pub mod pooler;
pub mod retention;
pub mod sql;
pub mod status;
pub mod store;
