//! Connecting to PostgreSQL with the TLS mode the URL asks for.
//!
//! tokio-postgres understands `sslmode` disable | prefer | require only, and no `sslrootcert`;
//! libpq (and so every PostgreSQL user) knows five modes and a root certificate. We take both
//! out of the URL, hand the rest to tokio-postgres, and build the native-tls connector here,
//! with libpq's meaning for each mode:
//!
//! | sslmode       | encrypted        | certificate checked                                   |
//! |---------------|------------------|-------------------------------------------------------|
//! | `disable`     | no               | -                                                     |
//! | `prefer`      | if the server can | no (as libpq)                                        |
//! | `require`     | yes              | no, unless `sslrootcert` is given (then as verify-ca)  |
//! | `verify-ca`   | yes              | chain against `sslrootcert` or the system roots        |
//! | `verify-full` | yes              | chain and host name                                    |
//!
//! Absent, `sslmode` depends on the host: `prefer` (libpq's default) for a Unix socket or a
//! loopback address, `verify-full` for any other host. A database across a network gets
//! encrypted, verified TLS unless the URL says otherwise: a provider with its own CA (Supabase)
//! needs `sslrootcert`, and the handshake error says so.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};

/// `application_name` of the listener's connection, unless the URL sets one.
pub(crate) const LISTENER_APPLICATION_NAME: &str = "citas-realtime-listener";

/// The five libpq TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// What is wrong with a `DATABASE_URL`.
#[derive(Debug, thiserror::Error)]
pub enum DbUrlError {
    #[error("sslmode '{0}' is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    #[error("{0}")]
    Url(#[from] tokio_postgres::Error),
    #[error("no host given")]
    NoHost,
    #[error("sslrootcert '{0}' cannot be read: {1}")]
    RootCert(String, std::io::Error),
    #[error("sslrootcert is not a PEM certificate: {0}")]
    NotPem(native_tls::Error),
    #[error("'{0}' is not UTF-8 once percent-decoded")]
    NotUtf8(String),
}

impl FromStr for SslMode {
    type Err = DbUrlError;
    fn from_str(s: &str) -> Result<Self, DbUrlError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(DbUrlError::SslMode(other.to_string())),
        })
    }
}

/// A parsed `DATABASE_URL`. Its `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct DbConfig {
    pg: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<Vec<u8>>,
    /// True when the URL named no application: the listener's connection is then called
    /// `citas-realtime-listener` and the pool's `citas-realtime`, so a DBA can tell them apart
    /// in pg_stat_activity.
    name_listener: bool,
    /// The TLS settings, built once (loading the system's trusted certificates took 102 ms)
    /// and shared by the pool and every connection of the listener, whose reconnects after a
    /// failover are not held up by it again. So an update of the system's certificates takes
    /// effect at the next start, as `sslrootcert` (read when the URL is parsed) always did.
    tls: Arc<OnceLock<MakeTlsConnector>>,
}

/// The connection half that must be polled for the client to make progress.
pub(crate) type PgConnection =
    Connection<Socket, <MakeTlsConnector as MakeTlsConnect<Socket>>::Stream>;

impl DbConfig {
    /// Parses a libpq URL (`postgres://user:pass@host:port/db?sslmode=...`) or keyword string
    /// (`host=... user=... sslmode=...`). Returns the reason when it cannot.
    pub fn parse(url: &str) -> Result<DbConfig, DbUrlError> {
        let (rest, ssl_mode, root_cert_path) = take_tls_params(url)?;
        let mut pg = tokio_postgres::Config::from_str(&rest)?;
        if pg.get_hosts().is_empty() {
            return Err(DbUrlError::NoHost);
        }
        let ssl_mode = ssl_mode.unwrap_or_else(|| default_ssl_mode(pg.get_hosts()));
        let root_cert = match root_cert_path {
            None => None,
            Some(path) => {
                Some(std::fs::read(&path).map_err(|e| DbUrlError::RootCert(path.clone(), e))?)
            }
        };
        if let Some(pem) = &root_cert {
            native_tls::Certificate::from_pem(pem).map_err(DbUrlError::NotPem)?;
        }
        pg.ssl_mode(match ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        let name_listener = pg.get_application_name().is_none();
        if name_listener {
            pg.application_name("citas-realtime");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        // A dead peer behind a NAT or a failover must not look alive for two hours: keepalives
        // make the kernel notice a half-open connection within about half a minute.
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        Ok(DbConfig {
            pg,
            ssl_mode,
            root_cert,
            name_listener,
            tls: Arc::default(),
        })
    }

    pub(crate) fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// True when TLS may be used without checking the server's certificate.
    pub(crate) fn tls_unverified(&self) -> bool {
        matches!(self.ssl_mode, SslMode::Prefer | SslMode::Require) && self.root_cert.is_none()
    }

    /// Host and port, for logs.
    pub(crate) fn host_display(&self) -> String {
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        format!("{}:{port}", hosts.join(","))
    }

    /// The TLS settings, built on first use (a failure is not kept: the next call tries again).
    fn tls_connector(&self) -> Result<MakeTlsConnector, native_tls::Error> {
        if let Some(tls) = self.tls.get() {
            return Ok(tls.clone());
        }
        let built = self.build_tls_connector()?;
        Ok(self.tls.get_or_init(|| built).clone())
    }

    fn build_tls_connector(&self) -> Result<MakeTlsConnector, native_tls::Error> {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(pem) = &self.root_cert {
            builder.add_root_certificate(native_tls::Certificate::from_pem(pem)?);
        }
        match self.ssl_mode {
            SslMode::Disable | SslMode::VerifyFull => {}
            SslMode::VerifyCa => {
                builder.danger_accept_invalid_hostnames(true);
            }
            SslMode::Prefer | SslMode::Require => {
                if self.root_cert.is_none() {
                    builder.danger_accept_invalid_certs(true);
                }
                builder.danger_accept_invalid_hostnames(true);
            }
        }
        Ok(MakeTlsConnector::new(builder.build()?))
    }

    /// A pool for short queries (replays, pruning), with the same TLS settings. Connections are
    /// opened lazily; waiting for one is bounded so a client never hangs on a busy pool.
    pub fn pool(&self, size: usize) -> Result<deadpool_postgres::Pool, ConnectError> {
        let tls = self.tls_connector().map_err(ConnectError::Tls)?;
        let manager = deadpool_postgres::Manager::from_config(
            self.pg.clone(),
            tls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| ConnectError::Pool(e.to_string()))
    }

    /// Opens one connection. The caller must poll the returned [`PgConnection`].
    pub async fn connect(&self) -> Result<(Client, PgConnection), ConnectError> {
        let tls = self.tls_connector().map_err(ConnectError::Tls)?;
        self.pg.connect(tls).await.map_err(ConnectError::Postgres)
    }

    /// Opens the listener's connection (see `name_listener`).
    pub(crate) async fn connect_listener(&self) -> Result<(Client, PgConnection), ConnectError> {
        let tls = self.tls_connector().map_err(ConnectError::Tls)?;
        let mut pg = self.pg.clone();
        if self.name_listener {
            pg.application_name(LISTENER_APPLICATION_NAME);
        }
        pg.connect(tls).await.map_err(ConnectError::Postgres)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot set up TLS: {0}")]
    Tls(native_tls::Error),
    /// Shown with its causes ("error performing TLS handshake: ... certificate verify failed"):
    /// tokio-postgres' own message alone does not say what went wrong.
    #[error("{}", explain(.0))]
    Postgres(tokio_postgres::Error),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
}

/// A connection error with its causes, and what to do when it is the certificate check.
fn explain(error: &tokio_postgres::Error) -> String {
    let text = with_causes(error);
    if text.contains("certificate") {
        format!(
            "{text} (the server's certificate could not be verified: add \
             sslrootcert=<CA file> to DATABASE_URL, e.g. Supabase's CA from the project's \
             database settings, or sslmode=require to encrypt without verifying)"
        )
    } else {
        text
    }
}

/// An error and its chain of sources, on one line.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("host", &self.host_display())
            .field("dbname", &self.pg.get_dbname())
            .field("user", &self.pg.get_user())
            .field("ssl_mode", &self.ssl_mode)
            .finish()
    }
}

impl fmt::Display for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.host_display(),
            self.pg.get_dbname().unwrap_or("")
        )
    }
}

/// `sslmode` when the URL gives none: `prefer` when every host is local (a Unix socket or a
/// loopback address), else `verify-full`.
fn default_ssl_mode(hosts: &[Host]) -> SslMode {
    let local = hosts.iter().all(|host| match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    });
    if local {
        SslMode::Prefer
    } else {
        SslMode::VerifyFull
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL's query or a keyword string.
type TlsParams = (String, Option<SslMode>, Option<String>);

fn take_tls_params(url: &str) -> Result<TlsParams, DbUrlError> {
    let mut ssl_mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: String| -> Result<bool, DbUrlError> {
        match key {
            "sslmode" => ssl_mode = Some(value.parse()?),
            "sslrootcert" => root_cert = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), ssl_mode, root_cert));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_decode(value)?;
            if !take(key, decoded)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, ssl_mode, root_cert))
    } else {
        // Keyword form; values with spaces must not be quoted for these two keys.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if take(key, value.trim_matches('\'').to_string())? => {}
                _ => kept.push(word),
            }
        }
        Ok((kept.join(" "), ssl_mode, root_cert))
    }
}

fn percent_decode(value: &str) -> Result<String, DbUrlError> {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| DbUrlError::NotUtf8(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built on first use, then shared by every copy of the configuration (the pool's, the
    /// listener's): a reconnect does not load the system's certificates again.
    #[test]
    fn tls_settings_are_built_once_and_shared() {
        let db = DbConfig::parse("postgres://u@db.example.com/x").expect("a URL");
        let copy = db.clone();
        assert!(copy.tls.get().is_none());
        db.tls_connector().expect("TLS settings");
        assert!(copy.tls.get().is_some());
        copy.tls_connector().expect("TLS settings");
    }

    #[test]
    fn tls_params_are_taken_out_of_urls() {
        let (rest, mode, cert) = take_tls_params(
            "postgres://u:p@db.example.com:5432/postgres?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt&connect_timeout=30",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:5432/postgres?connect_timeout=30"
        );
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(cert.as_deref(), Some("/tmp/ca.crt"));
    }

    #[test]
    fn keyword_strings_and_defaults() {
        let (rest, mode, _) = take_tls_params("host=localhost sslmode=require user=x").unwrap();
        assert_eq!(rest, "host=localhost user=x");
        assert_eq!(mode, Some(SslMode::Require));
        let (_, mode, _) = take_tls_params("postgres://localhost/db").unwrap();
        assert_eq!(mode, None);
        assert!(take_tls_params("postgres://h/db?sslmode=sometimes").is_err());
    }

    #[test]
    fn remote_hosts_default_to_verified_tls() {
        let mode = |url: &str| DbConfig::parse(url).unwrap().ssl_mode();
        assert_eq!(
            mode("postgres://u@db.abc.supabase.co:5432/postgres"),
            SslMode::VerifyFull
        );
        assert_eq!(mode("postgres://u@10.0.0.5/app"), SslMode::VerifyFull);
        assert_eq!(mode("postgres://u@localhost/app"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@127.0.0.1:5433/app"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@[::1]:5433/app"), SslMode::Prefer);
        assert_eq!(mode("host=/var/run/postgresql user=u"), SslMode::Prefer);
        assert_eq!(
            mode("postgres://u@db.example.com/app?sslmode=disable"),
            SslMode::Disable
        );
    }

    #[test]
    fn display_hides_the_password() {
        let db = DbConfig::parse("postgres://user:hunter2@db.example.com:6543/app?sslmode=require")
            .unwrap();
        assert_eq!(db.to_string(), "db.example.com:6543/app");
        assert!(!format!("{db:?}").contains("hunter2"));
        assert!(db.tls_unverified());
    }
}
