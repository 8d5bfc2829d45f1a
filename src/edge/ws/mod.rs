//! The WebSocket: the protocol's messages and the per-connection task.

pub mod protocol;
pub mod transport;
