//! Who may subscribe to which negocio.
//!
//! First the token's own grants ([`crate::auth::jwt::Grants`]: `negocio_id`, `negocio_ids`,
//! `service_role`). Apps that keep the user-to-negocio mapping in a table instead can name a SQL
//! function a DBA defines (`CAN_SUBSCRIBE_FUNCTION`, for example
//! `citas_realtime.can_subscribe(claims jsonb, negocio_id text) returns boolean`): when the
//! claims do not grant a negocio, the server asks the function, with the token's claims and the
//! negocio id (the claims without `exp`, `iat`, `nbf` and `jti`). `true` allows; `false`, `NULL` or an error refuses (an error is reported to the
//! client as `unavailable`, so it can try again).
//!
//! Answers are cached per (those claims, negocio) for `CAN_SUBSCRIBE_CACHE` (default 10 s): a
//! dashboard reconnecting with many channels costs one query per channel, once. A revoked
//! mapping therefore takes effect on the next subscribe after the cache entry expires; open
//! subscriptions are not re-checked until the client sends a fresh token (`auth`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::jwt::Principal;
use crate::log::store::Store;

/// Longest the function may take before the subscribe is answered `unavailable`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Cached answers kept at most; the cache is emptied when it grows past this (entries are
/// cheap to recompute and short-lived anyway).
const CACHE_LIMIT: usize = 10_000;

/// A name that is not `name` or `schema.name` of lowercase identifiers.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a function name like citas_realtime.can_subscribe (lowercase letters, digits and _)")]
pub struct BadFunctionName(String);

/// The SQL function's name, validated: `name` or `schema.name`, lowercase identifiers only, so
/// it can be quoted into the query without any way to inject SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionName {
    schema: Option<String>,
    name: String,
}

impl FunctionName {
    pub fn parse(text: &str) -> Result<FunctionName, BadFunctionName> {
        let text = text.trim();
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, text),
        };
        if !valid(name) || schema.is_some_and(|s| !valid(s)) {
            return Err(BadFunctionName(text.to_string()));
        }
        Ok(FunctionName {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        })
    }

    /// The call, with `$1` the claims and `$2` the negocio id.
    pub fn call_sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!(
                "select \"{schema}\".\"{}\"($1::text::jsonb, $2::text)",
                self.name
            ),
            None => format!("select \"{}\"($1::text::jsonb, $2::text)", self.name),
        }
    }

    /// The signature, for `to_regprocedure` and privilege checks.
    pub fn signature(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}(jsonb, text)", self.name),
            None => format!("{}(jsonb, text)", self.name),
        }
    }
}

impl std::fmt::Display for FunctionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.signature())
    }
}

/// The SQL hook's settings.
#[derive(Debug, Clone)]
pub struct HookSettings {
    pub function: FunctionName,
    pub cache_ttl: Duration,
}

/// Access could not be decided. What went wrong is logged, not told: the client learns only
/// that it may try again (a database's error text is no business of a stranger's).
#[derive(Debug, thiserror::Error)]
#[error("cannot check access to this negocio right now; try again")]
pub struct Unavailable;

/// Calls of the SQL hook (cache misses), and those that failed or timed out.
#[derive(Debug, Default)]
pub(crate) struct AccessCounters {
    pub checks: AtomicU64,
    pub failures: AtomicU64,
}

/// Decides subscriptions; shared by every connection.
pub struct Access {
    hook: Option<(HookSettings, Store)>,
    counters: AccessCounters,
    /// (claims as JSON text, negocio) -> (answer, when asked). A plain mutex: held for a map
    /// lookup or insert only, never across an await.
    cache: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("hook", &self.hook.as_ref().map(|(h, _)| h))
            .finish()
    }
}

impl Access {
    pub fn new(hook: Option<HookSettings>, store: Store) -> Access {
        Access {
            hook: hook.map(|h| (h, store)),
            counters: AccessCounters::default(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// May `principal` see `negocio`?
    pub async fn allows(&self, principal: &Principal, negocio: &str) -> Result<bool, Unavailable> {
        if principal.grants.allows(negocio) {
            return Ok(true);
        }
        let Some((settings, store)) = &self.hook else {
            return Ok(false);
        };
        let key = (principal.claims.to_string(), negocio.to_string());
        if let Some((answer, at)) = self.lock().get(&key) {
            if at.elapsed() < settings.cache_ttl {
                return Ok(*answer);
            }
        }
        self.counters.checks.fetch_add(1, Ordering::Relaxed);
        let call_sql = settings.function.call_sql();
        let call = store.can_subscribe(&call_sql, &key.0, negocio, CHECK_TIMEOUT);
        // The database ends the call at CHECK_TIMEOUT; this bound covers a pool that cannot
        // hand out a connection, and the round trips around the call.
        let answer = tokio::time::timeout(CHECK_TIMEOUT * 2, call)
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|reason| {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(function = %settings.function, reason, "access check failed");
                Unavailable
            })?;
        let mut cache = self.lock();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, (answer, Instant::now()));
        Ok(answer)
    }

    /// Calls of the SQL hook so far: (calls, failures).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counters.checks.load(Ordering::Relaxed),
            self.counters.failures.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (bool, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names() {
        let f = FunctionName::parse("citas_realtime.can_subscribe").unwrap();
        assert_eq!(
            f.call_sql(),
            "select \"citas_realtime\".\"can_subscribe\"($1::text::jsonb, $2::text)"
        );
        assert_eq!(f.signature(), "citas_realtime.can_subscribe(jsonb, text)");
        assert!(FunctionName::parse("can_subscribe").is_ok());
        for bad in [
            "",
            "a.b.c",
            "x; drop table citas",
            "\"x\"",
            "A.b",
            "1x",
            "a.",
        ] {
            assert!(FunctionName::parse(bad).is_err(), "{bad}");
        }
    }
}
