//! One change of one cita, as read from `citas_realtime.events`, and its wire form.
//!
//! The wire form is built once per event ([`Event::to_frame`]) and the resulting frame is shared
//! by every subscriber: a `Utf8Bytes` clone is a reference-count increment, not a copy.

use std::sync::Arc;

use serde::Serialize;
use tokio_postgres::Row;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The channel prefix of the protocol: `estadisticas:<negocio_id>`.
pub const CHANNEL_PREFIX: &str = "estadisticas:";
/// The most bytes of `cita_id`, `estado` and `estado_anterior` an event carries; longer values
/// are cut (at a character boundary) and the event says so (`fields_truncated`). With this
/// bound no event frame comes near what a socket's write buffer takes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// What happened to the cita.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Deleted,
    StatusChanged,
    /// `TRUNCATE citas`: every negocio must reload; each subscriber receives `resync` for its
    /// channels instead of an event. Marked by its action, which only the TRUNCATE trigger
    /// writes: no row value can forge it (a row whose negocio is `''` is just an event nobody
    /// can subscribe to).
    Truncated,
}

impl Action {
    /// Parses the `action` column; `None` for anything this version does not know.
    pub fn parse(text: &str) -> Option<Action> {
        Some(match text {
            "created" => Action::Created,
            "updated" => Action::Updated,
            "deleted" => Action::Deleted,
            "status_changed" => Action::StatusChanged,
            "truncated" => Action::Truncated,
            _ => return None,
        })
    }

    /// The message `type` clients filter on: `cita_` + action.
    pub fn message_type(self) -> &'static str {
        match self {
            Action::Created => "cita_created",
            Action::Updated => "cita_updated",
            Action::Deleted => "cita_deleted",
            Action::StatusChanged => "cita_status_changed",
            Action::Truncated => "resync",
        }
    }
}

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: i64,
    pub negocio_id: String,
    pub cita_id: String,
    pub action: Action,
    pub estado: Option<String>,
    pub estado_anterior: Option<String>,
    /// When the change was written, UTC, RFC 3339 with milliseconds (formatted by the query).
    pub timestamp: String,
    /// A text field was longer than [`MAX_TEXT_BYTES`] and was cut.
    pub fields_truncated: bool,
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
}

/// The columns [`Event::from_row`] reads, for `select {EVENT_COLUMNS} from citas_realtime.events e`.
pub const EVENT_COLUMNS: &str = "e.seq, e.negocio_id, e.cita_id, e.action, e.estado, \
     e.estado_anterior, \
     to_char(e.created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') as ts";

/// An event ready to go out: its frame, serialized once and shared by every subscriber's queue
/// (an `Arc` clone per subscriber), with what a connection needs to de-duplicate it.
#[derive(Debug)]
pub struct Outbound {
    pub seq: i64,
    pub negocio_id: String,
    pub frame: Message,
    /// True for events (subject to replay de-duplication), false for statistics snapshots.
    pub is_event: bool,
}

impl Event {
    /// Reads a row selected with [`EVENT_COLUMNS`]; `None` (logged) for an action this version
    /// does not know, so that one odd row never stops delivery.
    pub fn from_row(row: &Row) -> Result<Option<Event>, tokio_postgres::Error> {
        let seq: i64 = row.try_get("seq")?;
        let action: String = row.try_get("action")?;
        let Some(action) = Action::parse(&action) else {
            tracing::warn!(seq, action, "skipping an event with an unknown action");
            return Ok(None);
        };
        let mut cut = false;
        let mut text = |value: Option<String>| {
            value.map(|v| {
                let (v, was_cut) = bounded(v, MAX_TEXT_BYTES);
                cut |= was_cut;
                v
            })
        };
        let cita_id = text(row.try_get("cita_id")?).unwrap_or_default();
        let estado = text(row.try_get("estado")?);
        let estado_anterior = text(row.try_get("estado_anterior")?);
        Ok(Some(Event {
            seq,
            negocio_id: row.try_get("negocio_id")?,
            cita_id,
            action,
            estado,
            estado_anterior,
            timestamp: row.try_get("ts")?,
            fields_truncated: cut,
        }))
    }

    /// True when subscribers of `negocio_id` receive this event (a truncate reaches every
    /// negocio; any other event only its own).
    pub fn concerns(&self, negocio_id: &str) -> bool {
        self.action == Action::Truncated || self.negocio_id == negocio_id
    }

    /// The shared, ready-to-send form of this event for subscribers of `negocio_id` (its own
    /// negocio, or any negocio for a truncate).
    pub fn to_outbound(&self, negocio_id: &str) -> Arc<Outbound> {
        Arc::new(Outbound {
            seq: self.seq,
            negocio_id: negocio_id.to_string(),
            frame: self.frame_for(negocio_id),
            is_event: true,
        })
    }

    /// What a subscriber of `negocio_id` receives for this event: the event itself, or, for a
    /// truncate, `resync` on its channel.
    pub fn frame_for(&self, negocio_id: &str) -> Message {
        if self.action == Action::Truncated {
            crate::edge::ws::protocol::resync(&format!("{CHANNEL_PREFIX}{negocio_id}"))
        } else {
            self.to_frame()
        }
    }

    /// The channel subscribers of this event's negocio listen on.
    pub fn channel(&self) -> String {
        format!("{CHANNEL_PREFIX}{}", self.negocio_id)
    }

    /// The JSON text frame every subscriber receives, built once.
    pub fn to_frame(&self) -> Message {
        let wire = Wire {
            kind: self.action.message_type(),
            channel: self.channel(),
            data: WireData {
                action: self.action,
                negocio_id: &self.negocio_id,
                cita_id: Some(self.cita_id.as_str()).filter(|id| !id.is_empty()),
                estado: self.estado.as_deref(),
                estado_anterior: self.estado_anterior.as_deref(),
                seq: self.seq,
                timestamp: &self.timestamp,
                fields_truncated: self.fields_truncated,
            },
        };
        // Serializing plain strings and integers cannot fail.
        let text = serde_json::to_string(&wire).unwrap_or_default();
        Message::Text(Utf8Bytes::from(text))
    }
}

/// `text` cut to at most `max` bytes at a character boundary; true when it was cut.
pub fn bounded(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

/// The payload of the triggers' `NOTIFY citas_realtime`: the last seq one statement wrote, how
/// many events, and the action when the statement wrote a single kind. Since install.sql
/// version 4: `{"last_seq":L,"count":N,"action":A}`; version 3's payloads (and
/// `notify_cita()`'s) also carry `first_seq` and `negocio_id`, and are still understood, so a
/// server and a database may be upgraded in either order.
///
/// The listener does not trust it for delivery (it reads the log by seq whatever a payload
/// says, so a lost, merged or foreign notification changes nothing); it parses it to log what
/// was announced and to count payloads it does not recognise, which point at another version
/// of install.sql or at someone else using the channel. It comes from the database, so it is
/// parsed defensively: any text gives a value or an error, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Announcement {
    #[serde(default)]
    pub first_seq: Option<i64>,
    pub last_seq: i64,
    pub count: i64,
    #[serde(default)]
    pub negocio_id: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
}

impl Announcement {
    /// Longest payload PostgreSQL delivers (its limit is 8000 bytes).
    pub const MAX_PAYLOAD: usize = 8000;

    pub fn parse(payload: &str) -> Result<Announcement, String> {
        if payload.len() > Self::MAX_PAYLOAD {
            return Err(format!("payload of {} bytes", payload.len()));
        }
        let a: Announcement =
            serde_json::from_str(payload).map_err(|e| format!("not an announcement: {e}"))?;
        let first = a.first_seq.unwrap_or(a.last_seq);
        if first < 1 || a.last_seq < first || a.count < 1 {
            return Err(format!(
                "inconsistent announcement: seqs {:?}..={}, count {}",
                a.first_seq, a.last_seq, a.count
            ));
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements() {
        let a = Announcement::parse(
            r#"{"first_seq":3,"last_seq":5,"count":3,"negocio_id":"n1","action":"created"}"#,
        )
        .unwrap();
        assert_eq!((a.first_seq, a.last_seq, a.count), (Some(3), 5, 3));
        assert_eq!(a.negocio_id.as_deref(), Some("n1"));
        // install.sql version 4's form.
        let a = Announcement::parse(r#"{"last_seq":7,"count":2,"action":"deleted"}"#).unwrap();
        assert_eq!((a.first_seq, a.last_seq, a.count), (None, 7, 2));
        assert_eq!(a.action.as_deref(), Some("deleted"));
        assert!(Announcement::parse(r#"{"last_seq":0,"count":1}"#).is_err());
        assert!(Announcement::parse(r#"{"last_seq":4,"count":0}"#).is_err());
        let a = Announcement::parse(
            r#"{"first_seq":3,"last_seq":5,"count":3,"negocio_id":null,"action":null}"#,
        )
        .unwrap();
        assert_eq!(a.negocio_id, None);
        assert!(Announcement::parse("").is_err());
        assert!(Announcement::parse(r#"{"first_seq":5,"last_seq":3,"count":1}"#).is_err());
        assert!(Announcement::parse("probe").is_err());
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(bounded("abc".into(), 3), ("abc".into(), false));
        assert_eq!(bounded("abcd".into(), 3), ("abc".into(), true));
        // 'é' is two bytes: a cut inside it keeps the character out.
        assert_eq!(bounded("aéé".into(), 4), ("aé".into(), true));
        assert_eq!(bounded("€".repeat(1000), MAX_TEXT_BYTES).0.len(), 1023);
    }

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
        };
        let Message::Text(text) = ev.to_frame() else {
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
