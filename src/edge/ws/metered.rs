//! A socket whose reads are paid for: every byte a client sends is taken from a budget
//! (`CLIENT_MESSAGE_RATE` × [`BYTES_PER_MESSAGE`] per second, `CLIENT_MESSAGE_BURST` ×
//! [`BYTES_PER_MESSAGE`] at once). tungstenite assembles fragmented messages itself and shows
//! us whole messages only, so counting messages alone let a client stream empty continuation
//! frames forever (millions a second, a core each); counting bytes bounds every kind of frame.
//! Beyond the budget the read fails with [`OverBudget`], and the connection closes with 1008.

use std::io;
use std::num::NonZeroU32;

use crate::edge::tapped::{ReadTap, Tapped};

/// A direct (unkeyed) rate limiter: a client's messages, or its bytes.
pub(crate) type Limiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::MonotonicClock,
>;

/// What one message may cost, on average: control messages are small, an `auth` with a large
/// token is the largest.
pub const BYTES_PER_MESSAGE: u32 = 2048;

/// The budget for a quota of messages.
pub fn byte_quota(messages: governor::Quota) -> governor::Quota {
    let per_second = messages.replenish_interval().as_secs_f64().recip().max(1.0);
    let rate = (per_second * f64::from(BYTES_PER_MESSAGE)).min(f64::from(u32::MAX)) as u32;
    let burst = messages
        .burst_size()
        .get()
        .saturating_mul(BYTES_PER_MESSAGE);
    governor::Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

/// The read error of a client over its budget.
#[derive(Debug, thiserror::Error)]
#[error("the client sent more than its byte budget")]
pub struct OverBudget;

impl OverBudget {
    /// True when `error` (from tungstenite) is this budget's.
    pub fn is(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|e| e.is::<OverBudget>())
    }
}

/// What a client may still send.
pub struct Budget(Limiter);

/// `inner`, its reads taken from a budget of `quota` bytes.
pub fn metered<S>(inner: S, quota: governor::Quota) -> Tapped<S, Budget> {
    Tapped::new(
        inner,
        Budget(Limiter::direct_with_clock(
            quota,
            governor::clock::MonotonicClock,
        )),
    )
}

impl ReadTap for Budget {
    fn on_read(&mut self, bytes: usize) -> io::Result<()> {
        let n =
            NonZeroU32::new(u32::try_from(bytes).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match self.0.check_n(n) {
            Ok(Ok(())) => Ok(()),
            _ => Err(io::Error::other(OverBudget)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_follows_the_message_quota() {
        let messages = governor::Quota::per_second(NonZeroU32::new(20).unwrap())
            .allow_burst(NonZeroU32::new(200).unwrap());
        let bytes = byte_quota(messages);
        assert_eq!(bytes.burst_size().get(), 200 * BYTES_PER_MESSAGE);
        let per_second = bytes.replenish_interval().as_secs_f64().recip();
        assert!((per_second - 20.0 * f64::from(BYTES_PER_MESSAGE)).abs() < 1.0);
    }
}
