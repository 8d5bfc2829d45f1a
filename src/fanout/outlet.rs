//! Where the hub hands one connection its frames.
//!
//! A connection's [`Outlet`] takes each frame in one of two ways: written straight to the socket
//! by the publishing thread, when the connection is idle (nothing queued, nothing half-written,
//! its task not busy) and the socket takes it at once; or queued for the connection's task, the
//! slow path. The direct write is what makes a trickle of events cheap: no task is woken, no
//! worker thread unparked, per recipient. The socket side is [`crate::edge::ws::outlet`].

use std::fmt::Debug;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::fanout::frames::Outbound;

/// How offering a frame to a connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Written to the socket (the kernel has it, or the connection's task will finish it).
    Written,
    /// Queued for the connection's task.
    Queued,
    /// The connection's queue is full: it must be kicked (closed with 1013).
    Full,
    /// The connection is closing; it removes itself from the hub.
    Closed,
    /// Not for this connection: an event at or below the `since` its subscription resumed
    /// from (the client has it already).
    Skipped,
}

/// One connection, as the hub sees it.
pub trait Outlet: Send + Sync + Debug {
    /// Hands `frame` over without waiting: written directly when `direct` allows it and the
    /// connection is idle, queued otherwise. Frames offered to one outlet reach the client in
    /// the order offered, whichever way each went.
    fn offer(&self, frame: &Arc<Outbound>, direct: bool) -> Offered;

    /// True the first time only: whoever gives the client up as too slow (the hub, for a full
    /// queue, or the connection, for a write that took nothing) claims the drop, and only the
    /// claimant counts it. An outlet only the hub can give up may keep this default.
    fn claim_drop(&self) -> bool {
        true
    }
}

/// `try_send`, as an [`Offered`].
pub fn queue(queue: &mpsc::Sender<Arc<Outbound>>, frame: &Arc<Outbound>) -> Offered {
    match queue.try_send(frame.clone()) {
        Ok(()) => Offered::Queued,
        Err(mpsc::error::TrySendError::Full(_)) => Offered::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Offered::Closed,
    }
}
