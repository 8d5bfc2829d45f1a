//! One client's session: who it is, what it is subscribed to, what a replay already sent, and
//! what replays may still cost. The client's messages act on it ([`crate::edge::ws::cmd`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use tokio_tungstenite::tungstenite::Message;

use crate::auth::jwt::Principal;
use crate::edge::ws::connection::{Connection, Flow, Io, Written};
use crate::edge::ws::WsContext;
use crate::fanout::frames::Outbound;
use crate::fanout::hub::{ConnId, Hub, Subscriber};
use crate::log::cursor::LogPosition;

/// One connection's state, owned by its task.
pub(crate) struct Session<S> {
    pub(crate) ctx: WsContext,
    /// The hub's handle on this connection.
    pub(crate) me: Subscriber,
    pub(crate) principal: Principal,
    pub(crate) conn: Connection<S>,
    pub(crate) subscriptions: Subscriptions,
    /// Per negocio, seqs a replay already sent that the listener may still publish live.
    pub(crate) replayed: HashMap<String, HashSet<i64>>,
    /// Negocios left while their frames may still wait in the queue: the number of the last
    /// frame queued when left (counted as [`Session::taken`] counts). Those frames, events and
    /// statistics alike, are dropped, so none follows `unsubscribed`, or a new subscription's
    /// replay. An entry goes once its frames have been taken (or the queue was seen empty), so
    /// the map never outgrows the queue.
    pub(crate) left: HashMap<String, u64>,
    /// Frames taken from the queue since the connection opened: the queue is first in, first
    /// out, so this numbers every queued frame.
    taken: u64,
}

impl<S: Io> Session<S> {
    pub(crate) fn new(
        ctx: WsContext,
        me: Subscriber,
        principal: Principal,
        conn: Connection<S>,
    ) -> Session<S> {
        Session {
            subscriptions: Subscriptions {
                hub: ctx.hub.clone(),
                id: me.id,
                negocios: HashSet::new(),
            },
            ctx,
            me,
            principal,
            conn,
            replayed: HashMap::new(),
            left: HashMap::new(),
            taken: 0,
        }
    }

    pub(crate) async fn reply(&mut self, message: Message) -> Flow {
        self.conn.write(std::iter::once(message)).await.into()
    }

    pub(crate) async fn write(&mut self, frames: impl Iterator<Item = Message>) -> Flow {
        self.conn.write(frames).await.into()
    }

    /// Writes a batch from the live queue, skipping what a replay already sent, frames of
    /// negocios left since they were queued, and the empty frames that only ask for a flush
    /// (which [`crate::edge::ws::transport`] does anyway). (Events at or below a resumed
    /// subscription's `since` never get here: the outlet skips them.)
    pub(crate) async fn send_live(&mut self, batch: &mut Vec<Arc<Outbound>>) -> Flow {
        let (replayed, left, taken) = (&mut self.replayed, &self.left, &mut self.taken);
        let frames: Vec<Bytes> = batch
            .drain(..)
            .filter(|out| {
                *taken += 1;
                if out.wire.is_empty() {
                    return false;
                }
                if left
                    .get(&out.negocio_id)
                    .is_some_and(|last_before| *taken <= *last_before)
                {
                    return false;
                }
                if !out.is_event {
                    return true;
                }
                let Some(seqs) = replayed.get_mut(&out.negocio_id) else {
                    return true;
                };
                let duplicate = seqs.remove(&out.seq);
                if seqs.is_empty() {
                    replayed.remove(&out.negocio_id);
                }
                !duplicate
            })
            .map(|out| out.wire.clone())
            .collect();
        if !self.left.is_empty() {
            // Whatever was queued before these leaves has been taken.
            let taken = self.taken;
            self.left.retain(|_, last_before| *last_before > taken);
        }
        if frames.is_empty() {
            return Written::Ok.into();
        }
        self.conn.write_wire(frames.into_iter()).await.into()
    }

    /// Ends the subscription to `negocio`; false when there was none.
    pub(crate) fn leave(&mut self, negocio: &str) -> bool {
        self.replayed.remove(negocio);
        self.conn.outlet().lift_floor(negocio);
        let left = self.subscriptions.remove(negocio);
        if left {
            // After the hub let go (it offers under its read lock, and letting go takes the
            // write lock): nothing more is queued for `negocio` until a new subscribe, so every
            // frame of it still to come was queued by now. Frames of other negocios counted in
            // as well are not touched.
            let last_before = self.taken + self.conn.outlet().queued() as u64;
            self.left.insert(negocio.to_string(), last_before);
        }
        left
    }

    /// Takes `rows` events from the replay budget of this connection's subject; false when it
    /// cannot pay.
    pub(crate) fn charge_replay(&self, rows: usize) -> bool {
        let subject = self.principal.subject.as_deref().unwrap_or("");
        self.ctx.replay_budgets.charge(subject, rows)
    }
}

/// The connection's subscriptions. Leaving the hub is tied to this value's life: however the
/// connection's task ends (a close, an error, a panic), dropping it unsubscribes everything.
pub(crate) struct Subscriptions {
    hub: Arc<Hub>,
    id: ConnId,
    negocios: HashSet<String>,
}

impl Subscriptions {
    pub(crate) fn contains(&self, negocio: &str) -> bool {
        self.negocios.contains(negocio)
    }

    pub(crate) fn len(&self) -> usize {
        self.negocios.len()
    }

    pub(crate) fn negocios(&self) -> impl Iterator<Item = &String> {
        self.negocios.iter()
    }

    /// Subscribes in the hub; returns the listener's position at that instant.
    pub(crate) fn add(&mut self, negocio: &str, me: &Subscriber, stats: bool) -> LogPosition {
        self.negocios.insert(negocio.to_string());
        self.hub.subscribe(negocio, me, stats)
    }

    /// Unsubscribes from the hub; false when not subscribed.
    fn remove(&mut self, negocio: &str) -> bool {
        let removed = self.negocios.remove(negocio);
        if removed {
            self.hub.unsubscribe(negocio, self.id);
        }
        removed
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.hub.unsubscribe_all(&self.negocios, self.id);
    }
}
