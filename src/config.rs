//! The configuration, read and validated in one place and passed down: nothing deeper in the
//! crate reads the environment. Defaults are clap's ([`crate::cli::ServeArgs`]); here each value
//! is checked, and a bad one is one [`ConfigError`] naming the variable to fix. Each setting's
//! type lives with the component that uses it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::access::{FunctionName, HookSettings};
use crate::auth::jwks::{JwksSettings, JwksSource};
use crate::auth::jwt::TokenChecks;
use crate::auth::SecretString;
use crate::cli::ServeArgs;
use crate::edge::http::serve::HttpSettings;
use crate::edge::ws::Limits;
use crate::fanout::stats::StatsSettings;
use crate::log::db::DbConfig;

/// A configuration problem, named by the variable an operator has to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (see .env.example)")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

impl ConfigError {
    fn invalid(var: &'static str, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            var,
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DbConfig,
    /// `None` when tokens are verified by JWKS keys only.
    pub jwt_secret: Option<SecretString>,
    pub jwks: Option<JwksSettings>,
    /// The optional SQL access hook.
    pub access_hook: Option<HookSettings>,
    pub token_checks: TokenChecks,
    pub bind_addr: SocketAddr,
    /// `None`: the server does not prune (a DBA schedules `citas_realtime.prune`).
    pub event_retention: Option<Duration>,
    pub db_pool_size: usize,
    /// `None`: statistics are off (`STATS=off`).
    pub stats: Option<StatsSettings>,
    /// What clients may hold once upgraded.
    pub limits: Arc<Limits>,
    /// What a connection may hold before it is upgraded.
    pub http: HttpSettings,
    /// Serve the dashboard page at `GET /`.
    pub dashboard: bool,
}

impl Config {
    /// Validates what the command line and the environment gave.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let jwks = jwks(args)?;
        // One of the two is needed; both may be set (Supabase projects moving to asymmetric
        // keys accept both kinds for a while).
        let jwt_secret = match (non_empty(&args.jwt_secret), &jwks) {
            (Some(secret), _) => Some(SecretString::from(secret)),
            (None, Some(_)) => None,
            (None, None) => return Err(ConfigError::Missing("JWT_SECRET")),
        };
        let access_hook = access_hook(args)?;
        let bind_addr = args.bind_addr.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "BIND_ADDR",
                format!("'{}' is not an address like 0.0.0.0:8080", args.bind_addr),
            )
        })?;
        let event_retention = match args.event_retention.trim() {
            "off" => None,
            _ => Some(duration(&args.event_retention, "EVENT_RETENTION", 1_000)?),
        };
        Ok(Config {
            database: database_from(&args.database_url)?,
            token_checks: token_checks(args, access_hook.is_some())?,
            jwt_secret,
            jwks,
            access_hook,
            bind_addr,
            event_retention,
            db_pool_size: number(&args.db_pool_size, "DB_POOL_SIZE", 1..=100)?,
            stats: stats(args)?,
            limits: Arc::new(limits(args)?),
            http: http(args)?,
            dashboard: switch(&args.dashboard, "DASHBOARD")?,
        })
    }
}

fn jwks(args: &ServeArgs) -> Result<Option<JwksSettings>, ConfigError> {
    let Some(text) = non_empty(&args.jwt_jwks_url) else {
        return Ok(None);
    };
    Ok(Some(JwksSettings {
        source: JwksSource::parse(text).map_err(|e| ConfigError::invalid("JWT_JWKS_URL", e))?,
        cooldown: duration(&args.jwt_jwks_cooldown, "JWT_JWKS_COOLDOWN", 1_000)?,
    }))
}

fn access_hook(args: &ServeArgs) -> Result<Option<HookSettings>, ConfigError> {
    let Some(text) = non_empty(&args.can_subscribe_function) else {
        return Ok(None);
    };
    Ok(Some(HookSettings {
        function: FunctionName::parse(text)
            .map_err(|e| ConfigError::invalid("CAN_SUBSCRIBE_FUNCTION", e))?,
        cache_ttl: duration(&args.can_subscribe_cache, "CAN_SUBSCRIBE_CACHE", 0)?,
    }))
}

fn token_checks(args: &ServeArgs, keep_claims: bool) -> Result<TokenChecks, ConfigError> {
    let leeway = match args.jwt_leeway.trim() {
        "0" => Duration::ZERO,
        _ => duration(&args.jwt_leeway, "JWT_LEEWAY", 1_000)?,
    };
    Ok(TokenChecks {
        audience: non_empty(&args.jwt_audience).map(str::to_string),
        issuer: non_empty(&args.jwt_issuer).map(str::to_string),
        leeway_secs: leeway.as_secs(),
        max_token_bytes: number(&args.max_token_bytes, "MAX_TOKEN_BYTES", 256..=1_048_576)?,
        max_negocios: number(
            &args.max_token_negocios,
            "MAX_TOKEN_NEGOCIOS",
            1..=1_000_000,
        )?,
        keep_claims,
    })
}

fn stats(args: &ServeArgs) -> Result<Option<StatsSettings>, ConfigError> {
    if !switch(&args.stats, "STATS")? {
        return Ok(None);
    }
    Ok(Some(StatsSettings {
        interval: duration(&args.stats_interval, "STATS_INTERVAL", 10)?,
        timeout: duration(&args.stats_timeout, "STATS_TIMEOUT", 10)?,
        concurrency: number(&args.stats_concurrency, "STATS_CONCURRENCY", 1..=64)?,
    }))
}

fn limits(args: &ServeArgs) -> Result<Limits, ConfigError> {
    let queue_capacity = number(
        &args.client_queue_capacity,
        "CLIENT_QUEUE_CAPACITY",
        16..=1_000_000,
    )?;
    let replay_budget = match non_empty(&args.client_replay_budget) {
        None => queue_capacity * 10,
        Some(text) => number(text, "CLIENT_REPLAY_BUDGET", 1..=100_000_000)?,
    };
    let rate = number(
        &args.client_message_rate,
        "CLIENT_MESSAGE_RATE",
        1..=100_000,
    )?;
    let burst = number(
        &args.client_message_burst,
        "CLIENT_MESSAGE_BURST",
        1..=100_000,
    )?;
    Ok(Limits {
        allowed_origins: non_empty(&args.allowed_origins)
            .map(|list| {
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        max_subscriptions: number(&args.max_subscriptions, "MAX_SUBSCRIPTIONS", 1..=100_000)?,
        max_connections: number(&args.max_connections, "MAX_CONNECTIONS", 1..=10_000_000)?,
        max_connections_per_subject: number(
            &args.max_connections_per_subject,
            "MAX_CONNECTIONS_PER_SUBJECT",
            1..=10_000_000,
        )?,
        queue_capacity,
        ping_interval: duration(&args.ws_ping_interval, "WS_PING_INTERVAL", 100)?,
        message_quota: governor::Quota::per_second(nonzero(rate)).allow_burst(nonzero(burst)),
        replay_quota: governor::Quota::per_minute(nonzero(replay_budget))
            .allow_burst(nonzero(replay_budget)),
    })
}

fn http(args: &ServeArgs) -> Result<HttpSettings, ConfigError> {
    Ok(HttpSettings {
        header_timeout: duration(&args.http_header_timeout, "HTTP_HEADER_TIMEOUT", 100)?,
        body_timeout: duration(&args.http_body_timeout, "HTTP_BODY_TIMEOUT", 100)?,
        max_header_bytes: number(
            &args.http_max_header_bytes,
            "HTTP_MAX_HEADER_BYTES",
            4096..=1_048_576,
        )?,
        max_pending: number(
            &args.max_pending_connections,
            "MAX_PENDING_CONNECTIONS",
            1..=10_000_000,
        )?,
    })
}

/// A whole number within `range`.
fn number(
    text: &str,
    var: &'static str,
    range: RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    match text.trim().parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::invalid(
            var,
            format!(
                "'{text}' is not a number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn nonzero(n: usize) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

/// `on` or `off`.
fn switch(text: &str, var: &'static str) -> Result<bool, ConfigError> {
    match text.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(ConfigError::invalid(
            var,
            format!("'{other}' is not on or off"),
        )),
    }
}

/// A duration like `30s`, `90m`, `24h` (humantime), at least `min_ms` milliseconds.
fn duration(text: &str, var: &'static str, min_ms: u64) -> Result<Duration, ConfigError> {
    let min = Duration::from_millis(min_ms);
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d >= min => Ok(d),
        Ok(_) => Err(ConfigError::invalid(
            var,
            format!(
                "'{text}' is shorter than {}",
                humantime::format_duration(min)
            ),
        )),
        Err(e) => Err(ConfigError::invalid(
            var,
            format!("'{text}' is not a duration like 30s, 15m or 24h ({e})"),
        )),
    }
}

/// `DATABASE_URL`, parsed, for commands that need only the database.
pub(crate) fn database_from(value: &Option<String>) -> Result<DbConfig, ConfigError> {
    let url = non_empty(value).ok_or(ConfigError::Missing("DATABASE_URL"))?;
    DbConfig::parse(url).map_err(|e| ConfigError::invalid("DATABASE_URL", e))
}

/// `JWT_SECRET`, for commands that sign or verify tokens.
pub(crate) fn jwt_secret_from(value: &Option<String>) -> Result<&str, ConfigError> {
    non_empty(value).ok_or(ConfigError::Missing("JWT_SECRET"))
}

/// A duration argument like `1h` (humantime), at least a second, named for errors.
pub(crate) fn parse_duration(text: &str, var: &'static str) -> Result<Duration, ConfigError> {
    duration(text, var, 1_000)
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_make_a_configuration() {
        let args = ServeArgs {
            database_url: Some("postgres://u@localhost/db".into()),
            jwt_secret: Some("s".repeat(32)),
            ..ServeArgs::default()
        };
        let config = Config::from_args(&args).unwrap();
        assert_eq!(config.bind_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(config.limits.queue_capacity, 4096);
        assert_eq!(config.limits.replay_quota.burst_size().get(), 40960);
        assert_eq!(config.token_checks.leeway_secs, 30);
        assert_eq!(config.event_retention, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(config.http.max_pending, 1000);
    }
}
