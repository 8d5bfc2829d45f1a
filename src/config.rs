//! The configuration, read and validated in one place and passed down: nothing deeper in the
//! crate reads the environment.

use std::fmt;
use std::net::SocketAddr;

use crate::cli::ServeArgs;
use crate::db::DbConfig;

/// Default address, as the server this one replaces used.
pub const DEFAULT_BIND_ADDR: &str = "0.0.0.0:8080";
/// Default per-client queue: enough for a burst of a few thousand events to one negocio while the
/// client drains its socket; each slot holds a shared, reference-counted frame, so a full queue
/// costs tens of KiB, not copies of every message.
pub const DEFAULT_CLIENT_QUEUE_CAPACITY: usize = 4096;

/// A configuration problem, named by the variable an operator has to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (see .env.example)")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DbConfig,
    pub jwt_secret: Secret,
    pub bind_addr: SocketAddr,
    pub client_queue_capacity: usize,
}

impl Config {
    /// Validates what the command line and the environment gave.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let url = non_empty(&args.database_url).ok_or(ConfigError::Missing("DATABASE_URL"))?;
        let database = DbConfig::parse(url).map_err(|reason| ConfigError::Invalid {
            var: "DATABASE_URL",
            reason,
        })?;
        let secret = non_empty(&args.jwt_secret).ok_or(ConfigError::Missing("JWT_SECRET"))?;
        let bind = non_empty(&args.bind_addr).unwrap_or(DEFAULT_BIND_ADDR);
        let bind_addr = bind.parse().map_err(|_| ConfigError::Invalid {
            var: "BIND_ADDR",
            reason: format!("'{bind}' is not an address like 0.0.0.0:8080"),
        })?;
        let client_queue_capacity = match non_empty(&args.client_queue_capacity) {
            None => DEFAULT_CLIENT_QUEUE_CAPACITY,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (16..=1_000_000).contains(&n) => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        var: "CLIENT_QUEUE_CAPACITY",
                        reason: format!("'{text}' is not a number from 16 to 1000000"),
                    })
                }
            },
        };
        Ok(Config {
            database,
            jwt_secret: Secret::new(secret),
            bind_addr,
            client_queue_capacity,
        })
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}
