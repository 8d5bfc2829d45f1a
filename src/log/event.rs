//! One change of one cita, as read from `citas_realtime.events` (its wire form is
//! [`crate::fanout::frames`]'s), and the triggers' `NOTIFY` payload.

use serde::Serialize;
use tokio_postgres::Row;

/// The most bytes of `cita_id`, `estado` and `estado_anterior` an event carries; longer values
/// are cut (at a character boundary) and the event says so (`fields_truncated`). With this
/// bound no event frame comes near what a socket's write buffer takes.
pub(crate) const MAX_TEXT_BYTES: usize = 1024;

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
}

/// One row of the event log.
#[derive(Debug, Clone)]
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
    /// The cita's chosen columns, when the DBA turned records on (`None`: records off).
    pub records: Option<Records>,
}

/// The most bytes of JSON a `record` or `old_record` carries; the log's records are read cut
/// one character past it (`left(record::text, 8193)`), so a larger one is never transferred.
pub(crate) const MAX_RECORD_BYTES: usize = 8192;

/// The record columns a DBA chose (`citas_realtime.set_record_columns`), after and before the
/// change, as the JSON PostgreSQL's `to_json` gives.
#[derive(Debug, Clone)]
pub struct Records {
    /// The chosen columns after the change; `None` for a delete, or when too large.
    pub record: Option<Box<serde_json::value::RawValue>>,
    /// Before the change: every chosen column for a delete, those that changed for an update;
    /// `None` for a create, or when too large.
    pub old_record: Option<Box<serde_json::value::RawValue>>,
    /// One of them was over [`MAX_RECORD_BYTES`] and was left out.
    pub truncated: bool,
}

impl Records {
    /// From the log's `record` and `old_record`, as JSON text read at most
    /// [`MAX_RECORD_BYTES`] + 1 characters long; `None` when both are null (records were off
    /// when the event was written). A record over [`MAX_RECORD_BYTES`] (or not JSON: only a
    /// hand-written row could hold one) is left out, and flagged.
    fn from_columns(record: Option<String>, old_record: Option<String>) -> Option<Records> {
        if record.is_none() && old_record.is_none() {
            return None;
        }
        let mut truncated = false;
        let mut json = |text: Option<String>| {
            let text = text?;
            let raw = (text.len() <= MAX_RECORD_BYTES)
                .then(|| serde_json::value::RawValue::from_string(text).ok())
                .flatten();
            truncated |= raw.is_none();
            raw
        };
        Some(Records {
            record: json(record),
            old_record: json(old_record),
            truncated,
        })
    }
}

/// The columns [`Event::from_row`] reads, for `select {EVENT_COLUMNS} from citas_realtime.events e`.
pub(crate) const EVENT_COLUMNS: &str = "e.seq, e.negocio_id, e.cita_id, e.action, e.estado, \
     e.estado_anterior, \
     to_char(e.created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') as ts, \
     left(e.record::text, 8193) as record, left(e.old_record::text, 8193) as old_record";

/// The names of [`EVENT_COLUMNS`], in order (checked in debug builds).
const EVENT_NAMES: [&str; EVENT_COLUMN_COUNT] = [
    "seq",
    "negocio_id",
    "cita_id",
    "action",
    "estado",
    "estado_anterior",
    "ts",
    "record",
    "old_record",
];

/// How many columns [`EVENT_COLUMNS`] (and [`EVENT_COLUMNS_V5`]) select: [`Event::from_row`]
/// reads them by position, first in every row it is given.
pub(crate) const EVENT_COLUMN_COUNT: usize = 9;

/// [`EVENT_COLUMNS`] for a log written by install.sql before version 6, which has no record
/// columns: a server upgraded before its database keeps delivering (without records).
pub(crate) const EVENT_COLUMNS_V5: &str = "e.seq, e.negocio_id, e.cita_id, e.action, e.estado, \
     e.estado_anterior, \
     to_char(e.created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') as ts, \
     null::text as record, null::text as old_record";

/// True when `error` says the log has no record columns (install.sql older than version 6):
/// the query is then made again with [`EVENT_COLUMNS_V5`].
pub(crate) fn lacks_record_columns(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN)
}

impl Event {
    /// Reads a row whose first columns are [`EVENT_COLUMNS`], by position (a lookup by name
    /// compares every column's name, for every row); `None` (logged) for an action this version
    /// does not know, so that one odd row never stops delivery.
    pub(crate) fn from_row(row: &Row) -> Result<Option<Event>, tokio_postgres::Error> {
        debug_assert!(EVENT_NAMES
            .iter()
            .zip(row.columns())
            .all(|(name, column)| column.name() == *name));
        let seq: i64 = row.try_get(0)?;
        let action: &str = row.try_get(3)?;
        let Some(action) = Action::parse(action) else {
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
        let cita_id = text(row.try_get(2)?).unwrap_or_default();
        let estado = text(row.try_get(4)?);
        let estado_anterior = text(row.try_get(5)?);
        Ok(Some(Event {
            seq,
            negocio_id: row.try_get(1)?,
            cita_id,
            action,
            estado,
            estado_anterior,
            timestamp: row.try_get(6)?,
            fields_truncated: cut,
            records: Records::from_columns(row.try_get(7)?, row.try_get(8)?),
        }))
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
    pub(crate) const MAX_PAYLOAD: usize = 8000;

    pub fn parse(payload: &str) -> Result<Announcement, NotAnAnnouncement> {
        if payload.len() > Self::MAX_PAYLOAD {
            return Err(NotAnAnnouncement::TooLong(payload.len()));
        }
        let a: Announcement = serde_json::from_str(payload)?;
        let first = a.first_seq.unwrap_or(a.last_seq);
        if first < 1 || a.last_seq < first || a.count < 1 {
            return Err(NotAnAnnouncement::Inconsistent {
                first: a.first_seq,
                last: a.last_seq,
                count: a.count,
            });
        }
        Ok(a)
    }
}

/// Why a `NOTIFY citas_realtime` payload is no trigger's announcement.
#[derive(Debug, thiserror::Error)]
pub enum NotAnAnnouncement {
    #[error("payload of {0} bytes")]
    TooLong(usize),
    #[error("not an announcement: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("inconsistent announcement: seqs {first:?}..={last}, count {count}")]
    Inconsistent {
        first: Option<i64>,
        last: i64,
        count: i64,
    },
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
}
