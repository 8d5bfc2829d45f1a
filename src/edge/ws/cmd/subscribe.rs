//! `{"type":"subscribe","channel":...,"since":N,"stats":false}`: checks the channel, the
//! token's access and the limits, subscribes, answers `subscribed`, replays after `since`
//! (see [`crate::edge::ws::replay`]), then queues the statistics snapshot, which therefore
//! follows whatever was replayed.

use tokio_tungstenite::tungstenite::Message;

use super::negocio_or_error;
use crate::edge::ws::connection::{Flow, Io};
use crate::edge::ws::replay::replay;
use crate::edge::ws::session::Session;
use crate::fanout::frames::{self, ErrorCode};

pub(super) async fn subscribe<S: Io>(
    session: &mut Session<S>,
    channel: &str,
    since: Option<i64>,
    stats: Option<bool>,
) -> Flow {
    let negocio = match admit(session, channel, since).await {
        Ok(Some(negocio)) => negocio,
        // Already subscribed: events are flowing; nothing to replay or change.
        Ok(None) => return session.reply(frames::subscribed(channel)).await,
        Err(reply) => return session.reply(reply).await,
    };
    let engine = session.ctx.stats.clone().filter(|_| stats != Some(false));
    // Before the hub offers this subscription anything: the listener may be behind the log
    // the replay reads, and what it publishes later at or below `since`, the client has.
    if let Some(since) = since {
        session.conn.outlet().set_floor(&negocio, since);
    }
    let position = session
        .subscriptions
        .add(&negocio, &session.me, engine.is_some());
    let flow = session.reply(frames::subscribed(channel)).await;
    if !flow.is_continue() {
        return flow;
    }
    if let Some(since) = since {
        if !position.may_publish_up_to(since) {
            // Nothing at or below it can come live: offers need not check.
            session.conn.outlet().lift_floor(&negocio);
        }
        let flow = replay(session, channel, &negocio, since, &position).await;
        if !flow.is_continue() {
            return flow;
        }
    }
    if let Some(engine) = engine {
        engine.first_snapshot(&negocio, session.me.id);
    }
    Flow::Continue
}

/// The negocio to subscribe to (`None`: already subscribed), or the error reply.
async fn admit<S: Io>(
    session: &Session<S>,
    channel: &str,
    since: Option<i64>,
) -> Result<Option<String>, Message> {
    let negocio = negocio_or_error(channel)?;
    let refuse = |code, message: &str| frames::error(code, message, Some(channel));
    match session
        .ctx
        .access
        .allows(&session.principal, &negocio)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(refuse(
                ErrorCode::Forbidden,
                "this token does not grant that negocio",
            ))
        }
        Err(unavailable) => return Err(refuse(ErrorCode::Unavailable, &unavailable.to_string())),
    }
    if since.is_some_and(|s| s < 0) {
        return Err(refuse(
            ErrorCode::BadRequest,
            "since must be a seq (0 or more)",
        ));
    }
    if session.subscriptions.contains(&negocio) {
        return Ok(None);
    }
    let max = session.ctx.limits.max_subscriptions;
    if session.subscriptions.len() >= max {
        let message = format!("at most {max} channels per connection");
        return Err(refuse(ErrorCode::TooManySubscriptions, &message));
    }
    Ok(Some(negocio))
}
