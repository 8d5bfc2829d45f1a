//! One file per client message: what `subscribe`, `unsubscribe`, `ping` and `auth` do to a
//! [`Session`].

mod auth;
mod ping;
mod subscribe;
mod unsubscribe;

use tokio_tungstenite::tungstenite::Message;

use crate::edge::ws::connection::{Flow, Io};
use crate::edge::ws::protocol::{self, ClientMessage};
use crate::edge::ws::session::Session;
use crate::fanout::frames::{self, ErrorCode};

/// Answers one text frame from the client.
pub(crate) async fn handle<S: Io>(session: &mut Session<S>, text: &str) -> Flow {
    let message = match protocol::parse(text) {
        Ok(message) => message,
        Err(error) => {
            let reply = frames::error(ErrorCode::BadRequest, &error.to_string(), None);
            return session.reply(reply).await;
        }
    };
    match message {
        ClientMessage::Ping => ping::ping(session).await,
        ClientMessage::Auth { token } => auth::auth(session, &token).await,
        ClientMessage::Subscribe {
            channel,
            since,
            stats,
        } => subscribe::subscribe(session, &channel, since, stats).await,
        ClientMessage::Unsubscribe { channel } => unsubscribe::unsubscribe(session, &channel).await,
    }
}

/// The negocio of `channel`, or the `bad_channel` reply.
fn negocio_or_error(channel: &str) -> Result<String, Message> {
    protocol::negocio_of(channel)
        .map(str::to_string)
        .map_err(|error| frames::error(ErrorCode::BadChannel, &error.to_string(), Some(channel)))
}
