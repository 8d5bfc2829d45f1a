//! Connections accepted and not yet upgraded (or closed): at most `MAX_PENDING_CONNECTIONS`,
//! and room is made by evicting. Silent ones go first (the oldest connection that has not sent
//! a byte), then the oldest of the rest: an attacker opening sockets as fast as it can evicts
//! its own silent sockets before a client that is sending its request.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::edge::http::counters::HttpCounters;
use crate::edge::tapped::{ReadTap, Tapped};

/// The pending connections, oldest first, each with the token that evicts it.
#[derive(Debug, Default)]
struct Slots {
    /// Connections that have sent nothing yet.
    silent: BTreeMap<u64, CancellationToken>,
    /// Connections that have sent something.
    heard: BTreeMap<u64, CancellationToken>,
}

impl Slots {
    fn len(&self) -> usize {
        self.silent.len() + self.heard.len()
    }
}

#[derive(Debug)]
pub(crate) struct Pending {
    max: usize,
    next: AtomicU64,
    slots: Mutex<Slots>,
    counters: Arc<HttpCounters>,
}

/// One pending connection's place; released when dropped.
pub(crate) struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
    pub(crate) evicted: CancellationToken,
}

impl Pending {
    pub(crate) fn new(max: usize, counters: Arc<HttpCounters>) -> Pending {
        Pending {
            max: max.max(1),
            next: AtomicU64::new(0),
            slots: Mutex::new(Slots::default()),
            counters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection, evicting while `room` (at most the configured maximum)
    /// places are taken; `None` when there is no room at all.
    pub(crate) fn admit(self: &Arc<Self>, room: usize) -> Option<PendingSlot> {
        let room = room.min(self.max);
        if room == 0 {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut slots = self.lock();
        while slots.len() >= room {
            let oldest = slots.silent.pop_first().or_else(|| slots.heard.pop_first());
            match oldest {
                Some((_, token)) => {
                    token.cancel();
                    self.counters.evicted.inc();
                }
                None => break,
            }
        }
        slots.silent.insert(id, evicted.clone());
        self.count(&slots);
        Some(PendingSlot {
            pending: self.clone(),
            id,
            evicted,
        })
    }

    fn count(&self, slots: &Slots) {
        self.counters.pending.set(slots.len() as i64);
        self.counters.silent.set(slots.silent.len() as i64);
    }

    /// Connection `id` sent its first bytes.
    fn heard(&self, id: u64) {
        let mut slots = self.lock();
        if let Some(token) = slots.silent.remove(&id) {
            slots.heard.insert(id, token);
        }
        self.count(&slots);
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut slots = self.pending.lock();
        slots.silent.remove(&self.id);
        slots.heard.remove(&self.id);
        self.pending.count(&slots);
    }
}

/// A socket that tells its pending slot when it first hears from the client.
pub(crate) type Heard<S> = Tapped<S, FirstBytes>;

/// Until the first bytes: whom to tell.
pub(crate) struct FirstBytes(Option<(Arc<Pending>, u64)>);

/// `inner`, telling `slot` when the client first sends something.
pub(crate) fn heard<S>(inner: S, slot: &PendingSlot) -> Heard<S> {
    Tapped::new(inner, FirstBytes(Some((slot.pending.clone(), slot.id))))
}

impl ReadTap for FirstBytes {
    fn on_read(&mut self, _bytes: usize) -> io::Result<()> {
        if let Some((pending, id)) = self.0.take() {
            pending.heard(id);
        }
        Ok(())
    }
}
