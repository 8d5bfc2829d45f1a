//! Resuming with `since`.
//!
//! `subscribe` with `since: N` first registers the subscription in the hub, which returns the
//! listener's position at that instant, then reads the negocio's events after N from the log
//! (in pages) and sends them, then goes on with the live queue. An event is in both the replay
//! and the live queue only if the position says the listener may still publish it; those seqs
//! (a handful: what committed between the listener's last read and the replay's read) are
//! remembered and skipped once when they arrive live. So there is no gap (registration comes
//! before the read) and no duplicate at the seam. If N is older than what retention kept, or
//! newer than anything in the log, or the log cannot be read, the client gets `resync`.
//!
//! A replay is bounded: one at a time per connection (the connection's task runs it), pages
//! no larger than the room left in the client's queue (a replay counts against it like live
//! events), and a budget of events per minute (`CLIENT_REPLAY_BUDGET`) beyond which the
//! subscription gets `resync` instead.

use crate::edge::ws::connection::{Flow, Io};
use crate::edge::ws::session::Session;
use crate::fanout::frames;
use crate::log::cursor::LogPosition;
use crate::log::store::{Page, Store, StoreError};

/// Events read from the log per page, at most.
const REPLAY_PAGE: i64 = 1000;

/// Sends `negocio`'s events after `since`, page by page, then returns to live delivery.
pub(crate) async fn replay<S: Io>(
    session: &mut Session<S>,
    channel: &str,
    negocio: &str,
    since: i64,
    position: &LogPosition,
) -> Flow {
    let mut after = since;
    let mut first_page = true;
    loop {
        let limit = page_limit(session);
        let read = read_page(&session.ctx.store, negocio, after, first_page, limit).await;
        let page = match read {
            Ok(Some(page)) => page,
            Ok(None) => return resync(session, channel, negocio).await,
            Err(error) => {
                tracing::warn!(conn = session.me.id, negocio, %error, "cannot replay; telling the client to resync");
                return resync(session, channel, negocio).await;
            }
        };
        first_page = false;
        if !session.charge_replay(page.rows) {
            tracing::debug!(conn = session.me.id, negocio, "replay budget spent: resync");
            return resync(session, channel, negocio).await;
        }
        after = page.last_seq.unwrap_or(after);
        let flow = send_page(session, negocio, &page, position).await;
        if !flow.is_continue() || (page.rows as i64) < limit {
            return flow;
        }
    }
}

/// Tells the client to reload: from here on it gets every live event, whatever its `since` was
/// (which may be far beyond the log, or the replay stopped short of it).
async fn resync<S: Io>(session: &mut Session<S>, channel: &str, negocio: &str) -> Flow {
    session.conn.outlet().lift_floor(negocio);
    session.reply(frames::resync(channel)).await
}

/// Never more frames held than the queue could take, nor more than the budget could ever pay
/// for at once.
fn page_limit<S: Io>(session: &Session<S>) -> i64 {
    let burst = session.ctx.limits.replay_quota.burst_size().get();
    (session.conn.outlet().queue_room() as i64)
        .clamp(1, REPLAY_PAGE)
        .min(i64::from(burst))
}

/// Sends one page, remembering the seqs the listener may still publish live.
async fn send_page<S: Io>(
    session: &mut Session<S>,
    negocio: &str,
    page: &Page,
    position: &LogPosition,
) -> Flow {
    let mut out = Vec::with_capacity(page.events.len());
    for event in &page.events {
        if position.may_publish_later(event.seq) {
            session
                .replayed
                .entry(negocio.to_string())
                .or_default()
                .insert(event.seq);
        }
        out.push(frames::event_for(event, negocio));
    }
    session.ctx.hub.replayed(out.len());
    session.write(out.into_iter()).await
}

/// Reads the next page of `negocio`'s events after `after`. On the first page, `None` when the
/// log cannot serve `after` (older than retention kept, or newer than the log): resync.
async fn read_page(
    store: &Store,
    negocio: &str,
    after: i64,
    first_page: bool,
    limit: i64,
) -> Result<Option<Page>, StoreError> {
    if first_page {
        let window = store.replay_window().await?;
        if after < window.pruned_upto || after > window.newest {
            return Ok(None);
        }
    }
    store.replay_page(negocio, after, limit).await.map(Some)
}
