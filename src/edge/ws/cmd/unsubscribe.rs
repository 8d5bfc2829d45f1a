//! `{"type":"unsubscribe","channel":...}`: the subscription ends (or there was none); answered
//! `unsubscribed` either way.

use super::negocio_or_error;
use crate::edge::ws::connection::{Flow, Io};
use crate::edge::ws::session::Session;
use crate::fanout::frames;

pub(super) async fn unsubscribe<S: Io>(session: &mut Session<S>, channel: &str) -> Flow {
    let negocio = match negocio_or_error(channel) {
        Ok(negocio) => negocio,
        Err(reply) => return session.reply(reply).await,
    };
    session.leave(&negocio);
    session.reply(frames::unsubscribed(channel)).await
}
