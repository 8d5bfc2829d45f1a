//! From the log to the subscribers: who is subscribed to which negocio, one shared frame per
//! event, and the statistics pushed beside the events.

pub mod frames;
pub mod hub;
mod lane;
pub mod outlet;
pub mod stats;

use std::sync::Arc;

use crate::log::cursor::LogPosition;
use crate::log::event::Event;
use crate::log::listener::Publish;

/// What the listener publishes to: the hub (events to subscribers' queues), then the
/// statistics engine (the negocios those events touched are now stale).
pub struct Fanout {
    pub hub: Arc<hub::Hub>,
    pub stats: Option<Arc<stats::Stats>>,
}

impl Publish for Fanout {
    fn publish(&self, events: &[Event], position: LogPosition) {
        self.hub.publish(events, position);
        if let Some(stats) = &self.stats {
            stats.mark_dirty(events);
        }
    }
}
