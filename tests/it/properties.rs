//! Property tests: no input from a socket, a token's claims or a NOTIFY payload makes the
//! parsers panic, and what they accept is well-formed.

use citas_realtime::auth::access::FunctionName;
use citas_realtime::auth::jwt::{grants_from_claims, Grants};
use citas_realtime::edge::ws::protocol::{negocio_of, parse, ClientMessage, MAX_NEGOCIO_ID_LEN};
use citas_realtime::log::event::Announcement;
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("channel".to_string()),
                    Just("since".to_string()),
                    Just("negocio_id".to_string()),
                    Just("negocio_ids".to_string()),
                    Just("app_metadata".to_string()),
                    Just("role".to_string()),
                    Just("first_seq".to_string()),
                    Just("last_seq".to_string()),
                    Just("count".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_text_parses_or_is_refused(text in ".{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn any_json_parses_or_is_refused(value in json_value()) {
        if let Ok(ClientMessage::Subscribe { channel, .. }) = parse(&value.to_string()) {
            let _ = negocio_of(&channel);
        }
    }

    #[test]
    fn accepted_channels_name_a_bounded_negocio(channel in ".{0,300}") {
        if let Ok(negocio) = negocio_of(&channel) {
            prop_assert!(!negocio.is_empty() && negocio.len() <= MAX_NEGOCIO_ID_LEN);
            prop_assert_eq!(format!("estadisticas:{negocio}"), channel);
        }
    }

    #[test]
    fn any_claims_give_grants(claims in json_value()) {
        match grants_from_claims(&claims) {
            Grants::All => prop_assert!(claims.to_string().contains("service_role")),
            Grants::Negocios(set) => prop_assert!(set.iter().all(|n| !n.is_empty())),
        }
    }

    #[test]
    fn any_notify_payload_parses_or_is_refused(text in ".{0,200}") {
        let _ = Announcement::parse(&text);
    }

    #[test]
    fn accepted_announcements_are_consistent(value in json_value(), first in 1i64..1_000_000, span in 0i64..1000) {
        let _ = Announcement::parse(&value.to_string());
        let payload = serde_json::json!({
            "first_seq": first, "last_seq": first + span, "count": span + 1,
            "negocio_id": value.as_str(), "action": null,
        });
        let a = Announcement::parse(&payload.to_string());
        prop_assert!(a.is_ok_and(|a| a.first_seq <= Some(a.last_seq) && a.count >= 1));
        // install.sql version 4's form, without first_seq and negocio_id.
        let payload = serde_json::json!({"last_seq": first + span, "count": span + 1, "action": value.as_str()});
        let a = Announcement::parse(&payload.to_string());
        prop_assert!(a.is_ok_and(|a| a.first_seq.is_none() && a.last_seq >= 1 && a.count >= 1));
    }

    #[test]
    fn accepted_function_names_cannot_inject(text in ".{0,80}") {
        if let Ok(name) = FunctionName::parse(&text) {
            let sql = name.call_sql();
            prop_assert!(!sql.contains(';') && sql.matches('"').count() % 2 == 0);
            prop_assert!(text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.' || c.is_whitespace()));
        }
    }
}
