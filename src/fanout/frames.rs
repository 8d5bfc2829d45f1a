//! What the server sends: the JSON text frames of the protocol, built once and shared. An
//! event's frame is serialized once, when it has a subscriber, and every subscriber's queue
//! holds the same bytes (a `Utf8Bytes` clone is a reference-count increment, not a copy).
//!
//! Server to client: the `cita_*` events, `resync`, `estadisticas` snapshots, `subscribed`,
//! `unsubscribed`, `authenticated`, `pong`, and `error` with an [`ErrorCode`]. (What clients
//! send is [`crate::edge::ws::protocol`].)

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::log::event::{Action, Event};

/// The channel prefix of the protocol: `estadisticas:<negocio_id>`.
pub const CHANNEL_PREFIX: &str = "estadisticas:";

/// The channel subscribers of `negocio_id` listen on.
pub fn channel(negocio_id: &str) -> String {
    format!("{CHANNEL_PREFIX}{negocio_id}")
}

/// A frame ready to go out, shared by every subscriber's queue (an `Arc` clone each), with what
/// a connection needs to de-duplicate it.
#[derive(Debug)]
pub struct Outbound {
    pub seq: i64,
    pub negocio_id: String,
    /// The whole WebSocket frame, header included: the bytes every subscriber's socket gets.
    pub wire: Bytes,
    /// True for events (subject to replay de-duplication), false for statistics snapshots.
    pub is_event: bool,
}

impl Outbound {
    pub fn new(seq: i64, negocio_id: &str, message: Message, is_event: bool) -> Outbound {
        Outbound {
            seq,
            negocio_id: negocio_id.to_string(),
            wire: encode(message),
            is_event,
        }
    }
}

/// `message` as one unmasked server frame (RFC 6455 §5.2), framed by tungstenite once, so that
/// each subscriber's write is a copy of ready bytes.
pub fn encode(message: Message) -> Bytes {
    let frame = match message {
        Message::Text(text) => Frame::message(text, OpCode::Data(Data::Text), true),
        other => Frame::message(other.into_data(), OpCode::Data(Data::Binary), true),
    };
    let mut wire = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut wire);
    Bytes::from(wire)
}

/// Error codes clients branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    BadChannel,
    Forbidden,
    StatsUnavailable,
    Unauthorized,
    TooManySubscriptions,
    /// The access check (the optional SQL hook) could not be made: try again.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::StatsUnavailable => "stats_unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: String,
    data: WireData<'a>,
}

#[derive(Serialize)]
struct WireData<'a> {
    action: Action,
    negocio_id: &'a str,
    /// `null` for an event announced through `POST /notify/cita` without a cita id.
    cita_id: Option<&'a str>,
    estado: Option<&'a str>,
    estado_anterior: Option<&'a str>,
    seq: i64,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    fields_truncated: bool,
    /// With records on: the chosen columns after the change (`null` for a delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<Option<&'a RawValue>>,
    /// With records on: the chosen columns before it (`null` for a create).
    #[serde(skip_serializing_if = "Option::is_none")]
    old_record: Option<Option<&'a RawValue>>,
    /// A record was over 8 KiB and left out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    record_truncated: bool,
}

/// The message `type` clients filter on: `cita_` + action.
fn message_type(action: Action) -> &'static str {
    match action {
        Action::Created => "cita_created",
        Action::Updated => "cita_updated",
        Action::Deleted => "cita_deleted",
        Action::StatusChanged => "cita_status_changed",
        Action::Truncated => "resync",
    }
}

/// The shared, ready-to-send form of `event` for subscribers of `negocio_id` (its own negocio,
/// or any negocio for a truncate).
pub fn outbound(event: &Event, negocio_id: &str) -> std::sync::Arc<Outbound> {
    std::sync::Arc::new(Outbound::new(
        event.seq,
        negocio_id,
        event_for(event, negocio_id),
        true,
    ))
}

/// What a subscriber of `negocio_id` receives for `event`: the event itself, or, for a
/// truncate, `resync` on its channel.
pub fn event_for(event: &Event, negocio_id: &str) -> Message {
    if event.action == Action::Truncated {
        resync(&channel(negocio_id))
    } else {
        event_frame(event)
    }
}

/// The JSON text frame every subscriber of the event's negocio receives.
pub fn event_frame(event: &Event) -> Message {
    let wire = Wire {
        kind: message_type(event.action),
        channel: channel(&event.negocio_id),
        data: WireData {
            action: event.action,
            negocio_id: &event.negocio_id,
            cita_id: Some(event.cita_id.as_str()).filter(|id| !id.is_empty()),
            estado: event.estado.as_deref(),
            estado_anterior: event.estado_anterior.as_deref(),
            seq: event.seq,
            timestamp: &event.timestamp,
            fields_truncated: event.fields_truncated,
            record: event.records.as_ref().map(|r| r.record.as_deref()),
            old_record: event.records.as_ref().map(|r| r.old_record.as_deref()),
            record_truncated: event.records.as_ref().is_some_and(|r| r.truncated),
        },
    };
    // Serializing plain strings and integers cannot fail.
    let text = serde_json::to_string(&wire).unwrap_or_default();
    Message::Text(Utf8Bytes::from(text))
}

/// A statistics snapshot: the figures, plus `seq`, the newest event they include.
pub fn snapshot(channel: &str, mut data: Value, seq: i64) -> Message {
    if let Value::Object(map) = &mut data {
        map.insert("seq".into(), seq.into());
    }
    frame(json!({"type": "estadisticas", "channel": channel, "data": data}))
}

fn frame(value: Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

pub fn subscribed(channel: &str) -> Message {
    frame(json!({"type": "subscribed", "channel": channel}))
}

pub fn unsubscribed(channel: &str) -> Message {
    frame(json!({"type": "unsubscribed", "channel": channel}))
}

/// The client must reload its data for `channel`: events it asked for are no longer available.
pub fn resync(channel: &str) -> Message {
    frame(json!({"type": "resync", "channel": channel}))
}

pub fn authenticated() -> Message {
    frame(json!({"type": "authenticated"}))
}

pub fn pong() -> Message {
    frame(json!({"type": "pong"}))
}

/// An error reply; `channel` is set when the error is about one.
pub fn error(code: ErrorCode, message: &str, channel: Option<&str>) -> Message {
    let mut value = json!({"type": "error", "code": code.as_str(), "message": message});
    if let Some(channel) = channel {
        value["channel"] = channel.into();
    }
    frame(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_the_protocol() {
        let ev = Event {
            seq: 42,
            negocio_id: "negocio_123".into(),
            cita_id: "c1".into(),
            action: Action::StatusChanged,
            estado: Some("confirmada".into()),
            estado_anterior: Some("pendiente".into()),
            timestamp: "2026-11-28T10:00:00.123Z".into(),
            fields_truncated: false,
            records: None,
        };
        let Message::Text(text) = event_frame(&ev) else {
            panic!("not a text frame")
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "cita_status_changed",
                "channel": "estadisticas:negocio_123",
                "data": {"action": "status_changed", "negocio_id": "negocio_123", "cita_id": "c1",
                         "estado": "confirmada", "estado_anterior": "pendiente", "seq": 42,
                         "timestamp": "2026-11-28T10:00:00.123Z"}
            })
        );
    }
}
