//! The configuration, read and validated in one place and passed down: nothing deeper in the
//! crate reads the environment.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::auth::access::{FunctionName, HookSettings};
use crate::auth::jwks::JwksSource;
use crate::auth::jwt::TokenChecks;
use crate::auth::SecretString;
use crate::cli::ServeArgs;
use crate::edge::http::serve::HttpSettings;
use crate::fanout::stats::StatsSettings;
use crate::log::db::DbConfig;

/// Default address, as the server this one replaces used.
pub const DEFAULT_BIND_ADDR: &str = "0.0.0.0:8080";
/// Default per-client queue: enough for a burst of a few thousand events to one negocio while the
/// client drains its socket; each slot holds a shared, reference-counted frame, so a full queue
/// costs tens of KiB, not copies of every message.
pub const DEFAULT_CLIENT_QUEUE_CAPACITY: usize = 4096;
/// Default age at which events are pruned: a dashboard away for up to a day resumes exactly.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default ping interval: well under the idle timeouts of common proxies (60 s).
pub const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default pool size: replays are short reads; four keep a reconnect storm moving without
/// taking many of the database's connections.
pub const DEFAULT_DB_POOL_SIZE: usize = 4;

/// A configuration problem, named by the variable an operator has to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (see .env.example)")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
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
    pub client_queue_capacity: usize,
    /// `None`: the server does not prune (a DBA schedules `citas_realtime.prune`).
    pub event_retention: Option<Duration>,
    pub ws_ping_interval: Duration,
    pub db_pool_size: usize,
    /// `None`: statistics are off (`STATS=off`).
    pub stats: Option<StatsSettings>,
    pub limits: Limits,
    /// Serve the dashboard page at `GET /`.
    pub dashboard: bool,
    /// What a connection may hold before it is upgraded.
    pub http: HttpSettings,
}

/// Where the JWKS comes from and how often an unknown `kid` may refetch it.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub source: JwksSource,
    pub cooldown: Duration,
}

/// What one client, one subject and the whole server may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Empty: any origin.
    pub allowed_origins: Vec<String>,
    pub max_subscriptions: usize,
    pub max_connections: usize,
    pub max_connections_per_subject: usize,
    /// Messages per second a client may send, sustained.
    pub client_message_rate: u32,
    /// Messages a client may send at once.
    pub client_message_burst: u32,
    /// Events a connection may have replayed per minute.
    pub replay_budget: u32,
}

impl Limits {
    /// The per-connection replay budget: `replay_budget` events per minute, all of them at once.
    pub fn replay_quota(&self) -> governor::Quota {
        let budget = NonZeroU32::new(self.replay_budget).unwrap_or(NonZeroU32::MIN);
        governor::Quota::per_minute(budget).allow_burst(budget)
    }

    /// The per-connection message quota.
    pub fn message_quota(&self) -> governor::Quota {
        let rate = NonZeroU32::new(self.client_message_rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.client_message_burst).unwrap_or(NonZeroU32::MIN);
        governor::Quota::per_second(rate).allow_burst(burst)
    }
}

impl Config {
    /// Validates what the command line and the environment gave.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let database = database_from(&args.database_url)?;
        let jwks = match non_empty(&args.jwt_jwks_url) {
            None => None,
            Some(text) => Some(JwksSettings {
                source: JwksSource::parse(text).map_err(|reason| ConfigError::Invalid {
                    var: "JWT_JWKS_URL",
                    reason,
                })?,
                cooldown: duration(
                    &args.jwt_jwks_cooldown,
                    "JWT_JWKS_COOLDOWN",
                    Duration::from_secs(1),
                    crate::auth::jwks::DEFAULT_COOLDOWN,
                )?,
            }),
        };
        // One of the two is needed; both may be set (Supabase projects moving to asymmetric
        // keys accept both kinds for a while).
        let jwt_secret = match (non_empty(&args.jwt_secret), &jwks) {
            (Some(secret), _) => Some(SecretString::from(secret)),
            (None, Some(_)) => None,
            (None, None) => return Err(ConfigError::Missing("JWT_SECRET")),
        };
        let access_hook = match non_empty(&args.can_subscribe_function) {
            None => None,
            Some(text) => Some(HookSettings {
                function: FunctionName::parse(text).map_err(|reason| ConfigError::Invalid {
                    var: "CAN_SUBSCRIBE_FUNCTION",
                    reason,
                })?,
                cache_ttl: duration(
                    &args.can_subscribe_cache,
                    "CAN_SUBSCRIBE_CACHE",
                    Duration::ZERO,
                    crate::auth::access::DEFAULT_CACHE_TTL,
                )?,
            }),
        };
        let bind = non_empty(&args.bind_addr).unwrap_or(DEFAULT_BIND_ADDR);
        let bind_addr = bind.parse().map_err(|_| ConfigError::Invalid {
            var: "BIND_ADDR",
            reason: format!("'{bind}' is not an address like 0.0.0.0:8080"),
        })?;
        let client_queue_capacity = number(
            &args.client_queue_capacity,
            "CLIENT_QUEUE_CAPACITY",
            16..=1_000_000,
            DEFAULT_CLIENT_QUEUE_CAPACITY,
        )?;
        let event_retention = match non_empty(&args.event_retention) {
            None => Some(DEFAULT_EVENT_RETENTION),
            Some("off") => None,
            Some(_) => Some(duration(
                &args.event_retention,
                "EVENT_RETENTION",
                Duration::from_secs(1),
                DEFAULT_EVENT_RETENTION,
            )?),
        };
        let ws_ping_interval = duration(
            &args.ws_ping_interval,
            "WS_PING_INTERVAL",
            Duration::from_millis(100),
            DEFAULT_WS_PING_INTERVAL,
        )?;
        let db_pool_size = number(
            &args.db_pool_size,
            "DB_POOL_SIZE",
            1..=100,
            DEFAULT_DB_POOL_SIZE,
        )?;
        let stats = match switch(&args.stats, "STATS", true)? {
            true => Some(StatsSettings {
                interval: duration(
                    &args.stats_interval,
                    "STATS_INTERVAL",
                    Duration::from_millis(10),
                    Duration::from_millis(150),
                )?,
                timeout: duration(
                    &args.stats_timeout,
                    "STATS_TIMEOUT",
                    Duration::from_millis(10),
                    Duration::from_secs(2),
                )?,
                concurrency: number(&args.stats_concurrency, "STATS_CONCURRENCY", 1..=64, 2)?,
            }),
            false => None,
        };
        let limits = Limits {
            replay_budget: number(
                &args.client_replay_budget,
                "CLIENT_REPLAY_BUDGET",
                1..=100_000_000,
                client_queue_capacity * 10,
            )? as u32,
            allowed_origins: non_empty(&args.allowed_origins)
                .map(|list| {
                    list.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_string())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            max_subscriptions: number(
                &args.max_subscriptions,
                "MAX_SUBSCRIPTIONS",
                1..=100_000,
                100,
            )?,
            max_connections: number(
                &args.max_connections,
                "MAX_CONNECTIONS",
                1..=10_000_000,
                50_000,
            )?,
            max_connections_per_subject: number(
                &args.max_connections_per_subject,
                "MAX_CONNECTIONS_PER_SUBJECT",
                1..=10_000_000,
                200,
            )?,
            client_message_rate: number(
                &args.client_message_rate,
                "CLIENT_MESSAGE_RATE",
                1..=100_000,
                20,
            )? as u32,
            client_message_burst: number(
                &args.client_message_burst,
                "CLIENT_MESSAGE_BURST",
                1..=100_000,
                200,
            )? as u32,
        };
        let token_checks = TokenChecks {
            audience: non_empty(&args.jwt_audience).map(str::to_string),
            issuer: non_empty(&args.jwt_issuer).map(str::to_string),
            keep_claims: access_hook.is_some(),
            max_token_bytes: number(
                &args.max_token_bytes,
                "MAX_TOKEN_BYTES",
                256..=1_048_576,
                crate::auth::jwt::DEFAULT_MAX_TOKEN_BYTES,
            )?,
            max_negocios: number(
                &args.max_token_negocios,
                "MAX_TOKEN_NEGOCIOS",
                1..=1_000_000,
                crate::auth::jwt::DEFAULT_MAX_NEGOCIOS,
            )?,
            leeway_secs: match non_empty(&args.jwt_leeway) {
                None => crate::auth::jwt::LEEWAY_SECS,
                Some("0") | Some("0s") => 0,
                Some(_) => duration(
                    &args.jwt_leeway,
                    "JWT_LEEWAY",
                    Duration::from_secs(1),
                    Duration::ZERO,
                )?
                .as_secs(),
            },
        };
        let dashboard = switch(&args.dashboard, "DASHBOARD", true)?;
        let http = HttpSettings {
            header_timeout: duration(
                &args.http_header_timeout,
                "HTTP_HEADER_TIMEOUT",
                Duration::from_millis(100),
                Duration::from_secs(10),
            )?,
            body_timeout: duration(
                &args.http_body_timeout,
                "HTTP_BODY_TIMEOUT",
                Duration::from_millis(100),
                Duration::from_secs(10),
            )?,
            max_header_bytes: number(
                &args.http_max_header_bytes,
                "HTTP_MAX_HEADER_BYTES",
                4096..=1_048_576,
                32 * 1024,
            )?,
            max_pending: number(
                &args.max_pending_connections,
                "MAX_PENDING_CONNECTIONS",
                1..=10_000_000,
                1000,
            )?,
        };
        Ok(Config {
            http,
            dashboard,
            database,
            jwt_secret,
            jwks,
            access_hook,
            token_checks,
            bind_addr,
            client_queue_capacity,
            event_retention,
            ws_ping_interval,
            db_pool_size,
            stats,
            limits,
        })
    }
}

fn number(
    value: &Option<String>,
    var: &'static str,
    range: std::ops::RangeInclusive<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    let Some(text) = non_empty(value) else {
        return Ok(default);
    };
    match text.parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            var,
            reason: format!(
                "'{text}' is not a number from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}

/// `on` or `off`.
fn switch(value: &Option<String>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match non_empty(value) {
        None => Ok(default),
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(ConfigError::Invalid {
            var,
            reason: format!("'{other}' is not on or off"),
        }),
    }
}

/// A duration like `30s`, `90m`, `24h` (humantime), at least `min`.
fn duration(
    value: &Option<String>,
    var: &'static str,
    min: Duration,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = non_empty(value) else {
        return Ok(default);
    };
    match humantime::parse_duration(text) {
        Ok(d) if d >= min => Ok(d),
        Ok(_) => Err(ConfigError::Invalid {
            var,
            reason: format!(
                "'{text}' is shorter than {}",
                humantime::format_duration(min)
            ),
        }),
        Err(e) => Err(ConfigError::Invalid {
            var,
            reason: format!("'{text}' is not a duration like 30s, 15m or 24h ({e})"),
        }),
    }
}

/// `DATABASE_URL`, parsed, for commands that need only the database.
pub fn database_from(value: &Option<String>) -> Result<DbConfig, ConfigError> {
    let url = non_empty(value).ok_or(ConfigError::Missing("DATABASE_URL"))?;
    DbConfig::parse(url).map_err(|reason| ConfigError::Invalid {
        var: "DATABASE_URL",
        reason,
    })
}

/// `JWT_SECRET`, for commands that sign or verify tokens.
pub fn jwt_secret_from(value: &Option<String>) -> Result<&str, ConfigError> {
    non_empty(value).ok_or(ConfigError::Missing("JWT_SECRET"))
}

/// A duration argument like `1h` (humantime), named for errors.
pub fn parse_duration(text: &str, var: &'static str) -> Result<Duration, ConfigError> {
    duration(
        &Some(text.to_string()),
        var,
        Duration::from_secs(1),
        Duration::ZERO,
    )
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}
