//! Who is subscribed to which negocio, and the fan-out of events to them.
//!
//! Every connection has an [`Outlet`]: its socket, written directly when the connection is idle,
//! and one bounded queue of ready-to-send frames for its task otherwise (see
//! [`crate::fanout::outlet`]). Publishing an event serializes and frames it once, then offers
//! the same bytes (a reference-count increment) to each subscriber. An offer never waits, so one
//! slow client can never delay the others or the listener: a client whose queue is full is
//! *kicked* (its connection closes with 1013 and it can resume) instead of being allowed to grow
//! memory or to be skipped silently, which would break the "every event once, in order" promise.
//!
//! Lock choice: a `std::sync::RwLock` around the map. Publishing takes the read lock once per
//! batch of events and never awaits while holding it; (un)subscribing takes the write lock for a
//! vector push or remove. Negocios without subscribers have no entry, so their events cost a
//! hash lookup and nothing else (not even serialization).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio_util::sync::CancellationToken;

use crate::fanout::frames::{self, Outbound};
use crate::fanout::lane::{Beside, Lane};
use crate::fanout::outlet::{Offered, Outlet};
use crate::log::cursor::LogPosition;
use crate::log::event::{Action, Event};

/// Identifies one WebSocket connection.
pub type ConnId = u64;

/// The hub's handle on one connection: where its frames go, and how to kick it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: ConnId,
    pub outlet: Arc<dyn Outlet>,
    /// Cancelled by the hub when the queue overflowed: the connection must close with 1013.
    pub kicked: CancellationToken,
}

/// One subscription: the connection, and whether it wants statistics snapshots.
#[derive(Debug, Clone)]
struct Entry {
    sub: Subscriber,
    stats: bool,
}

/// Each negocio's subscribers, shared (a reference-count increment) with the [`Lane`] during a
/// split fan-out; changed only under the write lock, when no fan-out holds a clone, so
/// `Arc::make_mut` never copies.
type Channels = HashMap<String, Arc<Vec<Entry>>>;

#[derive(Debug, Default)]
pub struct Hub {
    channels: RwLock<Channels>,
    /// Updated by `publish` while it holds the read lock, read by `subscribe` under the write
    /// lock: a subscriber learns exactly which events it will, and will not, receive live.
    position: Mutex<LogPosition>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    delivered: AtomicU64,
    /// Of those, written straight to the socket by the publishing thread (or the lane).
    written_directly: AtomicU64,
    /// The second writer of large direct fan-outs, started by the first (`None`: no thread).
    lane: OnceLock<Option<Lane>>,
    kicked: AtomicU64,
    replayed: AtomicU64,
    /// Open connections per token subject.
    per_subject: Mutex<HashMap<String, usize>>,
}

/// Why a connection was refused before its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    ServerFull,
    SubjectFull,
}

/// The per-subject key of tokens without a `sub` claim (a token whose `sub` is `""` shares it
/// too, which is no way around the limit either).
const NO_SUBJECT: &str = "";

/// Events with at most this many subscribers are written straight to idle sockets by the
/// publishing thread (the listener's), with the [`Lane`] past [`SPLIT_FANOUT`]. A direct write
/// costs about 5-9 µs (mostly the kernel's), so this bounds how long one event holds up the
/// next ones, of every negocio, to about 10 ms with two threads writing. Larger fan-outs are
/// queued: about 0.3 µs each for the listener, and every worker thread shares the writes.
pub const DIRECT_FANOUT: usize = 2048;

/// Direct fan-outs over this many subscribers are shared between the publishing thread and the
/// [`Lane`] (see `Hub::fan_out`): for 2,000 subscribers the last frame leaves in about half the
/// time. Below it, waking the lane would cost more than it saves.
pub const SPLIT_FANOUT: usize = 512;

/// A reserved connection slot; released when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    hub: Arc<Hub>,
    subject: String,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::Relaxed);
        let mut per = self
            .hub
            .per_subject
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.subject);
            }
        }
    }
}

/// Counters for `/health` and later for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HubStats {
    pub connections: usize,
    pub channels: usize,
    pub subscriptions: usize,
    pub delivered: u64,
    /// Of the delivered frames, those written straight to an idle socket (no task woken).
    pub written_directly: u64,
    /// Clients closed with 1013: kicked for a full queue, or found slow by their own writes.
    pub slow_clients_kicked: u64,
    pub replayed: u64,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    // A panic elsewhere cannot leave the map half-updated (every change is a single push or
    // retain), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, Channels> {
        self.channels.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Channels> {
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Reserves a connection slot for `subject`, within the limits; the slot is freed when the
    /// permit is dropped (the connection ends, or its upgrade fails).
    pub fn admit(
        self: &Arc<Self>,
        subject: Option<&str>,
        max_total: usize,
        max_per_subject: usize,
    ) -> Result<ConnectionPermit, Refused> {
        let mut per = self
            .per_subject
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.connections.load(Ordering::Relaxed) >= max_total {
            return Err(Refused::ServerFull);
        }
        // Tokens without `sub` all count under one shared key: leaving the claim out is no
        // way around the per-subject limit.
        let key = subject.unwrap_or(NO_SUBJECT);
        let n = per.entry(key.to_string()).or_default();
        if *n >= max_per_subject {
            return Err(Refused::SubjectFull);
        }
        *n += 1;
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            hub: self.clone(),
            subject: key.to_string(),
        })
    }

    /// Open (or upgrading) WebSocket connections: cheaper than [`Hub::stats`].
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts events sent by replays (clients resuming with `since`).
    pub fn replayed(&self, n: usize) {
        self.replayed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds `sub` to the subscribers of `negocio_id` (subscribing twice is harmless) and returns
    /// the listener's position at that instant: the events `sub` will receive live are exactly
    /// those for which [`LogPosition::may_publish_later`] holds.
    pub fn subscribe(&self, negocio_id: &str, sub: &Subscriber, stats: bool) -> LogPosition {
        let mut channels = self.write();
        let list = Arc::make_mut(channels.entry(negocio_id.to_string()).or_default());
        if !list.iter().any(|e| e.sub.id == sub.id) {
            list.push(Entry {
                sub: sub.clone(),
                stats,
            });
        }
        self.position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Removes connection `id` from `negocio_id`'s subscribers.
    pub fn unsubscribe(&self, negocio_id: &str, id: ConnId) {
        remove_from(&mut self.write(), negocio_id, id);
    }

    /// Removes connection `id` from all the given negocios (when it closes).
    pub fn unsubscribe_all<'a>(&self, negocios: impl IntoIterator<Item = &'a String>, id: ConnId) {
        let mut channels = self.write();
        for negocio_id in negocios {
            remove_from(&mut channels, negocio_id, id);
        }
    }

    /// The listener's position now.
    pub fn position(&self) -> LogPosition {
        self.position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The negocios that have at least one subscriber wanting statistics, among `negocios`
    /// (all of them when `negocios` is `None`).
    pub fn with_stats_subscribers(&self, negocios: Option<&[String]>) -> Vec<String> {
        let channels = self.read();
        let wants = |list: &Arc<Vec<Entry>>| list.iter().any(|e| e.stats);
        match negocios {
            Some(negocios) => negocios
                .iter()
                .filter(|n| channels.get(*n).is_some_and(wants))
                .cloned()
                .collect(),
            None => channels
                .iter()
                .filter(|(_, list)| wants(list))
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }

    /// Queues a statistics snapshot for the subscribers of `negocio_id` that want it (only
    /// connection `only`, when given).
    pub fn push_stats(&self, negocio_id: &str, frame: Arc<Outbound>, only: Option<ConnId>) {
        let mut overflowed = Vec::new();
        {
            let channels = self.read();
            for entry in channels.get(negocio_id).into_iter().flat_map(|l| l.iter()) {
                if entry.stats && only.is_none_or(|id| id == entry.sub.id) {
                    if let Err(id) = offer(&entry.sub, &frame, true) {
                        overflowed.push((negocio_id.to_string(), id));
                    }
                }
            }
        }
        self.kick(overflowed);
    }

    /// Queues each event, in order, for every subscriber of its negocio, and records that the
    /// listener has got to `position`.
    pub fn publish(&self, events: &[Event], position: LogPosition) {
        let mut tally = Tally::default();
        {
            let channels = self.read();
            for event in events {
                // A truncate concerns every channel; any other event, its negocio's only.
                let targets: Vec<(&String, &Arc<Vec<Entry>>)> = if event.action == Action::Truncated
                {
                    channels.iter().collect()
                } else {
                    channels
                        .get_key_value(&event.negocio_id)
                        .into_iter()
                        .collect()
                };
                for (negocio_id, subs) in targets {
                    let frame = frames::outbound(event, negocio_id);
                    tally.add(self.fan_out(negocio_id, subs, &frame));
                }
            }
            *self.position.lock().unwrap_or_else(PoisonError::into_inner) = position;
        }
        self.delivered.fetch_add(tally.delivered, Ordering::Relaxed);
        self.written_directly
            .fetch_add(tally.direct, Ordering::Relaxed);
        self.kick(tally.overflowed);
    }

    /// Offers `frame` to every subscriber of one negocio. A direct fan-out over
    /// [`SPLIT_FANOUT`] is shared with the [`Lane`]: both threads take the next [`CHUNK`]
    /// subscribers until none is left, and this one waits for the lane. All is written before
    /// the next event's frames and before `publish` gives up the read lock, so a subscriber's
    /// frames stay in order and none is written after an unsubscribe (which takes the write
    /// lock). Each subscriber is offered the frame by exactly one of the threads.
    fn fan_out(&self, negocio_id: &str, subs: &Arc<Vec<Entry>>, frame: &Arc<Outbound>) -> Tally {
        let direct = subs.len() <= DIRECT_FANOUT;
        let lane = (direct && subs.len() > SPLIT_FANOUT)
            .then(|| self.lane.get_or_init(Lane::start).as_ref())
            .flatten();
        let Some(lane) = lane else {
            return offer_all(negocio_id, subs, frame, direct);
        };
        let split = Arc::new(Split {
            negocio_id: negocio_id.to_string(),
            subs: subs.clone(),
            frame: frame.clone(),
            next: AtomicUsize::new(0),
        });
        let theirs = split.clone();
        let (mut tally, beside) = lane.beside(move || theirs.work(), || split.work());
        match beside {
            Beside::Done(theirs) => tally.add(theirs),
            // Every chunk was taken here.
            Beside::NotRun => {}
            // Which of its frames went out is unknown: every subscriber is kicked, and resumes
            // without a gap.
            Beside::Failed => {
                tracing::error!(
                    negocio_id,
                    "a fan-out thread failed: its subscribers are kicked"
                );
                for entry in subs.iter() {
                    tally.count(negocio_id, judge(&entry.sub, Offered::Full));
                }
            }
        }
        tally
    }

    /// Counts a client its own connection closed with 1013 (a write that took no data for the
    /// write timeout, or a buffer at its bound) with the clients the hub kicked.
    pub fn count_slow_drop(&self) {
        self.kicked.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes the subscriptions of connections whose queue overflowed (already kicked).
    fn kick(&self, overflowed: Vec<(String, ConnId)>) {
        if overflowed.is_empty() {
            return;
        }
        self.kicked
            .fetch_add(overflowed.len() as u64, Ordering::Relaxed);
        let mut channels = self.write();
        for (negocio_id, id) in overflowed {
            remove_from(&mut channels, &negocio_id, id);
        }
    }

    pub fn stats(&self) -> HubStats {
        let channels = self.read();
        HubStats {
            connections: self.connections.load(Ordering::Relaxed),
            channels: channels.len(),
            subscriptions: channels.values().map(|l| l.len()).sum(),
            delivered: self.delivered.load(Ordering::Relaxed),
            written_directly: self.written_directly.load(Ordering::Relaxed),
            slow_clients_kicked: self.kicked.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
        }
    }
}

/// What a fan-out did.
#[derive(Default)]
struct Tally {
    delivered: u64,
    direct: u64,
    /// Kicked connections, to unsubscribe.
    overflowed: Vec<(String, ConnId)>,
}

impl Tally {
    fn count(&mut self, negocio_id: &str, offered: Result<Offered, ConnId>) {
        match offered {
            Ok(Offered::Skipped) => {}
            Ok(offered) => {
                self.delivered += 1;
                self.direct += u64::from(offered == Offered::Written);
            }
            Err(id) => self.overflowed.push((negocio_id.to_string(), id)),
        }
    }

    fn add(&mut self, other: Tally) {
        self.delivered += other.delivered;
        self.direct += other.direct;
        self.overflowed.extend(other.overflowed);
    }
}

/// Subscribers a thread takes at a time in a split fan-out.
const CHUNK: usize = 32;

/// Outlets touched ahead of their offers at a time (see [`offer_all`]): about as many cache
/// misses as a core keeps in flight.
const WARM: usize = 16;

/// One direct fan-out that the publisher and the [`Lane`] share.
struct Split {
    negocio_id: String,
    subs: Arc<Vec<Entry>>,
    frame: Arc<Outbound>,
    /// The first subscriber no thread has taken yet.
    next: AtomicUsize,
}

impl Split {
    /// Takes chunks of subscribers until none is left; what they were offered.
    fn work(&self) -> Tally {
        let mut tally = Tally::default();
        loop {
            let start = self.next.fetch_add(CHUNK, Ordering::Relaxed);
            let Some(chunk) = self.subs.get(start..(start + CHUNK).min(self.subs.len())) else {
                return tally;
            };
            if chunk.is_empty() {
                return tally;
            }
            tally.add(offer_all(&self.negocio_id, chunk, &self.frame, true));
        }
    }
}

fn offer_all(negocio_id: &str, subs: &[Entry], frame: &Arc<Outbound>, direct: bool) -> Tally {
    let mut tally = Tally::default();
    for group in subs.chunks(WARM) {
        // Each outlet is a cache miss on its first touch (its lock). Touched here, with loads
        // that do not wait for one another, the group's misses overlap instead of costing one
        // full miss per offer below (a lock is a barrier: those would be taken one at a time).
        for entry in group {
            std::hint::black_box(Arc::strong_count(&entry.sub.outlet));
        }
        for entry in group {
            tally.count(negocio_id, offer(&entry.sub, frame, direct));
        }
    }
    tally
}

/// Hands `frame` to `sub` without waiting (written directly if `direct` and it is idle). Fails
/// with the connection's id when its queue is full: it is kicked (its connection closes with
/// 1013) and must be unsubscribed.
fn offer(sub: &Subscriber, frame: &Arc<Outbound>, direct: bool) -> Result<Offered, ConnId> {
    judge(sub, sub.outlet.offer(frame, direct))
}

/// What the hub does about how an offer to `sub` went.
fn judge(sub: &Subscriber, offered: Offered) -> Result<Offered, ConnId> {
    match offered {
        // Kicked once: until the hub removes it, its full queue refuses every frame.
        Offered::Full if sub.kicked.is_cancelled() => Ok(Offered::Closed),
        Offered::Full => {
            sub.kicked.cancel();
            if sub.outlet.claim_drop() {
                Err(sub.id)
            } else {
                // Given up already (another thread of the hub, or its own connection, which
                // counted it and is leaving the hub).
                Ok(Offered::Closed)
            }
        }
        // Closed: the connection is closing; it removes itself.
        offered => Ok(offered),
    }
}

fn remove_from(channels: &mut Channels, negocio_id: &str, id: ConnId) {
    if let Some(list) = channels.get_mut(negocio_id) {
        Arc::make_mut(list).retain(|e| e.sub.id != id);
        if list.is_empty() {
            channels.remove(negocio_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, negocio: &str) -> Event {
        Event {
            seq,
            negocio_id: negocio.into(),
            cita_id: format!("c{seq}"),
            action: Action::Created,
            estado: Some("pendiente".into()),
            estado_anterior: None,
            timestamp: "2026-11-28T10:00:00.000Z".into(),
            fields_truncated: false,
            records: None,
        }
    }

    use tokio::sync::mpsc;

    use crate::fanout::outlet::queue;

    /// A bare queue: every frame is queued.
    impl Outlet for mpsc::Sender<Arc<Outbound>> {
        fn offer(&self, frame: &Arc<Outbound>, _direct: bool) -> Offered {
            queue(self, frame)
        }
    }

    fn subscriber(hub: &Hub, capacity: usize) -> (Subscriber, mpsc::Receiver<Arc<Outbound>>) {
        let (queue, rx) = mpsc::channel(capacity);
        let sub = Subscriber {
            id: hub.next_conn_id(),
            outlet: Arc::new(queue),
            kicked: CancellationToken::new(),
        };
        (sub, rx)
    }

    #[test]
    fn a_full_queue_kicks_only_its_owner() {
        let hub = Hub::new();
        let (slow, _slow_rx) = subscriber(&hub, 2);
        let (fast, mut fast_rx) = subscriber(&hub, 16);
        hub.subscribe("a", &slow, false);
        hub.subscribe("a", &fast, false);
        let events = [event(1, "a"), event(2, "a"), event(3, "a")];
        hub.publish(&events, LogPosition::default());
        assert!(slow.kicked.is_cancelled());
        assert!(!fast.kicked.is_cancelled());
        for _ in 0..3 {
            assert!(fast_rx.try_recv().is_ok());
        }
        let stats = hub.stats();
        assert_eq!(stats.subscriptions, 1);
        assert_eq!(stats.slow_clients_kicked, 1);
    }

    /// A queue whose client its own connection already gave up (and counted).
    #[derive(Debug)]
    struct GivenUp(mpsc::Sender<Arc<Outbound>>);

    impl Outlet for GivenUp {
        fn offer(&self, frame: &Arc<Outbound>, _direct: bool) -> Offered {
            queue(&self.0, frame)
        }

        fn claim_drop(&self) -> bool {
            false
        }
    }

    /// Found too slow by its own connection and by the hub at the same moment: counted once,
    /// by the connection, which leaves the hub itself.
    #[test]
    fn a_client_given_up_by_its_connection_is_not_counted_again() {
        let hub = Hub::new();
        let (queue, _rx) = mpsc::channel(1);
        let sub = Subscriber {
            id: hub.next_conn_id(),
            outlet: Arc::new(GivenUp(queue)),
            kicked: CancellationToken::new(),
        };
        hub.subscribe("a", &sub, false);
        hub.publish(&[event(1, "a"), event(2, "a")], LogPosition::default());
        assert!(sub.kicked.is_cancelled());
        assert_eq!(hub.stats().slow_clients_kicked, 0);
    }

    #[test]
    fn events_reach_only_their_negocio() {
        let hub = Hub::new();
        let (a, mut a_rx) = subscriber(&hub, 16);
        hub.subscribe("a", &a, true);
        let position = LogPosition {
            cursor: 2,
            pending: Arc::new([1u64].into_iter().collect()),
        };
        hub.publish(&[event(1, "b"), event(2, "a")], position.clone());
        let queued = a_rx.try_recv().expect("queued");
        assert_eq!((queued.seq, queued.negocio_id.as_str()), (2, "a"));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(hub.subscribe("a", &a, true), position);
        assert_eq!(hub.with_stats_subscribers(None), ["a"]);
        assert!(position.may_publish_later(1) && position.may_publish_later(3));
        assert!(!position.may_publish_later(2));
        hub.unsubscribe("a", a.id);
        assert_eq!(hub.stats().channels, 0);
    }

    /// A fan-out split between two threads: every subscriber of both halves gets every event
    /// once and in order, and a kicked one in the second half is unsubscribed like any other.
    #[test]
    fn a_split_fan_out_reaches_everyone_in_order() {
        let hub = Hub::new();
        let subs: Vec<_> = (0..SPLIT_FANOUT * 2).map(|_| subscriber(&hub, 3)).collect();
        for (sub, _) in &subs {
            hub.subscribe("a", sub, false);
        }
        let (last, _last_rx) = subscriber(&hub, 1);
        hub.subscribe("a", &last, false);
        hub.publish(&[event(1, "a"), event(2, "a")], LogPosition::default());
        hub.publish(&[event(3, "a")], LogPosition::default());
        for (_, mut rx) in subs {
            let seqs: Vec<i64> = std::iter::from_fn(|| rx.try_recv().ok().map(|f| f.seq)).collect();
            assert_eq!(seqs, [1, 2, 3]);
        }
        assert!(last.kicked.is_cancelled());
        let stats = hub.stats();
        assert_eq!(stats.subscriptions, SPLIT_FANOUT * 2);
        assert_eq!(stats.slow_clients_kicked, 1);
    }

    /// An outlet whose offers panic on the lane's thread and queue elsewhere, once the lane
    /// has taken some (else the publisher could take every chunk before the lane starts).
    #[derive(Debug)]
    struct PanicsInLane {
        queue: mpsc::Sender<Arc<Outbound>>,
        lane_reached: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Outlet for PanicsInLane {
        fn offer(&self, frame: &Arc<Outbound>, _direct: bool) -> Offered {
            if std::thread::current().name() == Some("citas-fanout") {
                self.lane_reached.store(true, Ordering::SeqCst);
                panic!("test panic");
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !self.lane_reached.load(Ordering::SeqCst) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lane took nothing"
                );
                std::thread::yield_now();
            }
            queue(&self.queue, frame)
        }
    }

    /// Should the lane fail during a fan-out, which frames went out is unknown: every subscriber
    /// of that fan-out is kicked (they resume without a gap), and later fan-outs are written
    /// by the publisher alone.
    #[test]
    fn a_lane_that_fails_kicks_the_fan_out_and_is_not_used_again() {
        let hub = Hub::new();
        let lane_reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let subscribe = || -> Vec<(Subscriber, mpsc::Receiver<Arc<Outbound>>)> {
            (0..SPLIT_FANOUT * 2)
                .map(|_| {
                    let (queue, rx) = mpsc::channel(4);
                    let sub = Subscriber {
                        id: hub.next_conn_id(),
                        outlet: Arc::new(PanicsInLane {
                            queue,
                            lane_reached: lane_reached.clone(),
                        }),
                        kicked: CancellationToken::new(),
                    };
                    hub.subscribe("a", &sub, false);
                    (sub, rx)
                })
                .collect()
        };
        let first = subscribe();
        hub.publish(&[event(1, "a")], LogPosition::default());
        assert!(first.iter().all(|(sub, _)| sub.kicked.is_cancelled()));
        assert_eq!(hub.stats().subscriptions, 0);
        let second = subscribe();
        hub.publish(&[event(2, "a")], LogPosition::default());
        for (sub, mut rx) in second {
            assert!(!sub.kicked.is_cancelled());
            assert_eq!(rx.try_recv().map(|f| f.seq).ok(), Some(2));
        }
    }
}
