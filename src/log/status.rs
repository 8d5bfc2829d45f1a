//! What the listener shows of itself: its state for `/health`, and plain counters that
//! `/metrics` reads at scrape time (no metrics library down here).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};

pub(crate) const STATE_DISCONNECTED: u8 = 0;
pub(crate) const STATE_CONNECTED: u8 = 1;
pub(crate) const STATE_TRANSACTION_POOLER: u8 = 2;

/// Upper bounds of the lag histogram's buckets, in seconds.
pub const LAG_BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Seconds from an event's write to the listener handing it on: a histogram of atomics.
#[derive(Debug, Default)]
pub struct LagHistogram {
    /// Observations per bucket of [`LAG_BUCKETS`] (not cumulative), and one above the last.
    counts: [AtomicU64; LAG_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl LagHistogram {
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let bucket = LAG_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LAG_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket of [`LAG_BUCKETS`], the total count and the sum (seconds).
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut cumulative = Vec::with_capacity(LAG_BUCKETS.len());
        let mut total = 0;
        for count in &self.counts {
            total += count.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        cumulative.pop();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (cumulative, total, sum)
    }
}

/// Shared, lock-free view of the listener.
#[derive(Debug, Default)]
pub struct ListenerStatus {
    /// One of the `STATE_*` values.
    pub(crate) state: AtomicU8,
    pub(crate) last_seq: AtomicI64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) events_read: AtomicU64,
    /// Reads of the log (one per wake-up, more while catching up; probes not counted).
    pub(crate) reads: AtomicU64,
    /// Wake-ups by notifications that needed no read: every event announced had been read already.
    pub(crate) already_read: AtomicU64,
    /// Notifications on our channel whose payload is not a trigger's announcement.
    pub(crate) unrecognised: AtomicU64,
    pub lag: LagHistogram,
}

impl ListenerStatus {
    /// Events read from the log and handed on.
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    /// Reads of the log so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Wake-ups by notifications that announced only events already read, so needed no read.
    pub fn already_read(&self) -> u64 {
        self.already_read.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.state.load(Ordering::Acquire) == STATE_CONNECTED
    }

    /// What `/health` says of the listener: `connected`, `disconnected`, or
    /// `transaction_pooler` (DATABASE_URL cannot give it a session of its own).
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            STATE_CONNECTED => "connected",
            STATE_TRANSACTION_POOLER => "transaction_pooler",
            _ => "disconnected",
        }
    }

    /// The highest seq read from the log so far.
    pub fn last_seq(&self) -> i64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// NOTIFY payloads on our channel that were not a trigger's announcement.
    pub fn unrecognised(&self) -> u64 {
        self.unrecognised.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_buckets_are_cumulative() {
        let lag = LagHistogram::default();
        for seconds in [0.0005, 0.003, 0.003, 20.0] {
            lag.observe(seconds);
        }
        let (buckets, count, sum) = lag.snapshot();
        assert_eq!((buckets[0], buckets[2], buckets[12], count), (1, 3, 3, 4));
        assert!((sum - 20.0065).abs() < 1e-3);
    }
}
