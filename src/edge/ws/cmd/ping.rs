//! `{"type":"ping"}`: `{"type":"pong"}`.

use crate::edge::ws::connection::{Flow, Io};
use crate::edge::ws::session::Session;
use crate::fanout::frames;

pub(super) async fn ping<S: Io>(session: &mut Session<S>) -> Flow {
    session.reply(frames::pong()).await
}
