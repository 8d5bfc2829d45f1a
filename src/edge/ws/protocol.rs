//! What clients send: the four JSON messages `subscribe`, `unsubscribe`, `ping` and `auth`, and
//! channel names. Unknown fields are ignored, so newer clients can send more. (What the server
//! sends is [`crate::fanout::frames`].)

use serde::Deserialize;

use crate::fanout::frames::CHANNEL_PREFIX;

/// Longest negocio id accepted in a channel name.
pub const MAX_NEGOCIO_ID_LEN: usize = 256;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    /// `since`: resume after this seq (the last one the client saw).
    Subscribe {
        channel: String,
        #[serde(default)]
        since: Option<i64>,
        /// `false`: no statistics snapshots for this channel.
        #[serde(default)]
        stats: Option<bool>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping,
    /// A fresh token for this connection, before the current one expires.
    Auth {
        token: String,
    },
}

/// A text frame that is no message of the protocol (`bad_request`).
#[derive(Debug, thiserror::Error)]
#[error("invalid message: {0}")]
pub struct InvalidMessage(#[from] serde_json::Error);

/// A channel name that names no negocio (`bad_channel`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadChannel {
    #[error("negocio id longer than {MAX_NEGOCIO_ID_LEN} bytes")]
    TooLong,
    #[error("channel must be '{CHANNEL_PREFIX}<negocio_id>', got '{0}'")]
    NotAChannel(String),
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<ClientMessage, InvalidMessage> {
    Ok(serde_json::from_str(text)?)
}

/// The negocio id of a channel name `estadisticas:<negocio_id>`.
pub fn negocio_of(channel: &str) -> Result<&str, BadChannel> {
    match channel.strip_prefix(CHANNEL_PREFIX) {
        Some(id) if !id.is_empty() && id.len() <= MAX_NEGOCIO_ID_LEN => Ok(id),
        Some(id) if !id.is_empty() => Err(BadChannel::TooLong),
        _ => Err(BadChannel::NotAChannel(truncate(channel, 100).to_string())),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_messages() {
        assert_eq!(
            parse(r#"{"type":"subscribe","channel":"estadisticas:a","since":3}"#).ok(),
            Some(ClientMessage::Subscribe {
                channel: "estadisticas:a".into(),
                since: Some(3),
                stats: None,
            })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#).ok(), Some(ClientMessage::Ping));
        assert!(parse(r#"{"type":"subscribe"}"#).is_err());
        assert!(parse(r#"{"type":"dance"}"#).is_err());
        assert!(parse("[1,2").is_err());
    }

    #[test]
    fn channel_names() {
        assert_eq!(negocio_of("estadisticas:negocio_1"), Ok("negocio_1"));
        assert!(negocio_of("estadisticas:").is_err());
        assert!(negocio_of("stats:a").is_err());
        assert!(negocio_of(&format!("estadisticas:{}", "x".repeat(300))).is_err());
    }
}
