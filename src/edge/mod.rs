//! Where clients meet the server: HTTP (routes, the accept loop and its limits) and the
//! WebSocket (upgrade, transport, sessions, the protocol).

pub mod http;
pub mod ws;
