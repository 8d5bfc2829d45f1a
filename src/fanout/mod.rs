//! From the log to the subscribers: who is subscribed to which negocio, one shared frame per
//! event, and the statistics pushed beside the events.

pub mod hub;
pub mod stats;
