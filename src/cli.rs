//! The command line. Every flag of `serve` can also come from the environment or a `.env` file;
//! values are kept as text here and validated in one place, [`crate::config::Config`], so a bad
//! value yields one line naming the variable.

use clap::{Args, Parser, Subcommand};

/// Real-time change notifier: PostgreSQL triggers -> LISTEN -> authenticated WebSocket fan-out.
#[derive(Debug, Parser)]
#[command(
    name = "citas-realtime",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        citas-realtime                       serve, configured by the environment or .env\n  \
        citas-realtime serve --bind-addr 127.0.0.1:9000\n  \
        citas-realtime demo --simulate       private database, seeded data, random changes\n  \
        citas-realtime sql install           install or upgrade the SQL on DATABASE_URL\n  \
        citas-realtime check                 diagnose DATABASE_URL and the configuration\n  \
        citas-realtime token --negocio n1    a development token signed with JWT_SECRET"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `serve` is the default command: its flags work without naming it.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Log format: `text` or `json`. Verbosity comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    #[command(after_help = "Example:\n  \
        DATABASE_URL='postgres://user:pass@db.example.com:5432/postgres?sslmode=require' \\\n  \
        JWT_SECRET=... citas-realtime serve")]
    Serve(ServeArgs),
    /// Start a private PostgreSQL with example data and serve it: the quickest way to see it work.
    #[command(after_help = "Example:\n  cargo run --release -- demo --simulate")]
    Demo(DemoArgs),
    /// Sign a development token with JWT_SECRET.
    #[command(after_help = "Examples:\n  \
        citas-realtime token --negocio negocio_123\n  \
        citas-realtime token --negocio a --negocio b --ttl 8h\n  \
        citas-realtime token --role service_role")]
    Token(TokenArgs),
    /// Print, install or uninstall the SQL embedded in this binary (one transaction).
    #[command(after_help = "Examples:\n  \
        citas-realtime sql print > install.sql\n  \
        DATABASE_URL=postgres://... citas-realtime sql install\n  \
        citas-realtime sql uninstall --database-url postgres://...")]
    Sql(SqlArgs),
    /// Diagnose DATABASE_URL and the configuration: one line per check, exit 1 if any fails.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://... JWT_SECRET=... citas-realtime check"
    )]
    Check(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// A negocio the token grants (repeat for several).
    #[arg(long = "negocio")]
    pub negocios: Vec<String>,
    /// `role` claim; `service_role` grants every negocio.
    #[arg(long, default_value = "authenticated")]
    pub role: String,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// `sub` claim.
    #[arg(long, default_value = "dev")]
    pub sub: String,
    /// HS256 secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SqlArgs {
    #[command(subcommand)]
    pub action: SqlAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SqlAction {
    /// Print a SQL file to standard output.
    Print {
        /// Which file.
        #[arg(value_enum, default_value = "install")]
        file: SqlFile,
    },
    /// Apply install.sql to DATABASE_URL (installs, or upgrades in place).
    Install {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Also create the example public.citas when it does not exist (development only).
        #[arg(long)]
        with_example_schema: bool,
    },
    /// Apply uninstall.sql to DATABASE_URL (never touches a row of citas).
    Uninstall {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SqlFile {
    Install,
    Uninstall,
    ExampleSchema,
}

/// The settings of `serve` (and `check`). clap owns every default: the help shows it, and
/// [`ServeArgs::default`] is exactly what an empty command line gives. Values are kept as text
/// and validated in one place, [`crate::config::Config::from_args`], so that a bad one yields
/// one line naming the variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PostgreSQL URL (libpq form). sslmode: disable | prefer | require | verify-ca | verify-full.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// HS256 secret that signs client tokens (Supabase's legacy JWT secret). Required unless
    /// JWT_JWKS_URL is set.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWKS with the public keys (RS256, ES256, ...) that sign client tokens: an https:// URL
    /// (Supabase: https://<ref>.supabase.co/auth/v1/.well-known/jwks.json) or a file path.
    /// Unset: HS256 only.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// Shortest time between two JWKS fetches caused by tokens with an unknown kid.
    #[arg(long, env = "JWT_JWKS_COOLDOWN", default_value = "30s")]
    pub jwt_jwks_cooldown: String,

    /// SQL function that decides subscriptions the token's claims do not grant, called as
    /// fn(claims jsonb, negocio_id text) returns boolean, e.g. citas_realtime.can_subscribe.
    /// Unset: claims only.
    #[arg(long, env = "CAN_SUBSCRIBE_FUNCTION")]
    pub can_subscribe_function: Option<String>,

    /// How long an answer of CAN_SUBSCRIBE_FUNCTION is reused.
    #[arg(long, env = "CAN_SUBSCRIBE_CACHE", default_value = "10s")]
    pub can_subscribe_cache: String,

    /// Require this `aud` claim (Supabase user tokens: `authenticated`). Unset: not checked.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Require this `iss` claim (Supabase: `https://<ref>.supabase.co/auth/v1`). Unset: not
    /// checked.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew tolerated on exp and nbf (`0`: none).
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s")]
    pub jwt_leeway: String,

    /// Largest token accepted, in bytes; 401 beyond.
    #[arg(long, env = "MAX_TOKEN_BYTES", default_value = "16384")]
    pub max_token_bytes: String,

    /// Most negocios one token's claims may grant; 401 beyond.
    #[arg(long, env = "MAX_TOKEN_NEGOCIOS", default_value = "1000")]
    pub max_token_negocios: String,

    /// Address the HTTP/WebSocket server listens on.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0:8080")]
    pub bind_addr: String,

    /// Frames queued per client before it counts as too slow and is disconnected (1013).
    #[arg(long, env = "CLIENT_QUEUE_CAPACITY", default_value = "4096")]
    pub client_queue_capacity: String,

    /// How long events stay in the log for resuming clients, e.g. 24h, 90m; `off` leaves pruning
    /// to the DBA (citas_realtime.prune).
    #[arg(long, env = "EVENT_RETENTION", default_value = "24h")]
    pub event_retention: String,

    /// Interval of WebSocket pings; a client silent for two intervals is dropped.
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "30s")]
    pub ws_ping_interval: String,

    /// Database connections for replays, statistics and pruning (the listener has its own).
    #[arg(long, env = "DB_POOL_SIZE", default_value = "4")]
    pub db_pool_size: String,

    /// Live statistics pushed to subscribers: `on` or `off`.
    #[arg(long, env = "STATS", default_value = "on")]
    pub stats: String,

    /// Statistics coalescing window: one query per negocio per window.
    #[arg(long, env = "STATS_INTERVAL", default_value = "150ms")]
    pub stats_interval: String,

    /// Longest a statistics query may run.
    #[arg(long, env = "STATS_TIMEOUT", default_value = "2s")]
    pub stats_timeout: String,

    /// Statistics queries at a time.
    #[arg(long, env = "STATS_CONCURRENCY", default_value = "2")]
    pub stats_concurrency: String,

    /// Browser origins allowed to open a WebSocket, comma-separated (e.g.
    /// https://app.example.com). Unset or empty: any. Clients that send no Origin are not
    /// affected.
    #[arg(long, env = "ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// Channels one connection may subscribe to.
    #[arg(long, env = "MAX_SUBSCRIPTIONS", default_value = "100")]
    pub max_subscriptions: String,

    /// Open WebSocket connections in total.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "50000")]
    pub max_connections: String,

    /// Open WebSocket connections per token subject (`sub`; tokens without one share a count).
    #[arg(long, env = "MAX_CONNECTIONS_PER_SUBJECT", default_value = "200")]
    pub max_connections_per_subject: String,

    /// Frames per second one client may send (pings included), sustained; beyond it (and its
    /// burst) the socket is closed with 1008.
    #[arg(long, env = "CLIENT_MESSAGE_RATE", default_value = "20")]
    pub client_message_rate: String,

    /// Frames a client may send at once above the sustained rate.
    #[arg(long, env = "CLIENT_MESSAGE_BURST", default_value = "200")]
    pub client_message_burst: String,

    /// Events a connection may have replayed (subscribe with since) per minute; beyond it the
    /// subscription gets resync instead. Unset: 10 x CLIENT_QUEUE_CAPACITY.
    #[arg(long, env = "CLIENT_REPLAY_BUDGET")]
    pub client_replay_budget: Option<String>,

    /// Longest a client may take to send a request's headers; also how long an idle keep-alive
    /// HTTP connection is kept.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s")]
    pub http_header_timeout: String,

    /// Longest a client may take to send a request's body (POST /notify/cita).
    #[arg(long, env = "HTTP_BODY_TIMEOUT", default_value = "10s")]
    pub http_body_timeout: String,

    /// Largest request line plus headers, in bytes; 431 beyond.
    #[arg(long, env = "HTTP_MAX_HEADER_BYTES", default_value = "32768")]
    pub http_max_header_bytes: String,

    /// Connections accepted and not yet upgraded to a WebSocket; a new one beyond this closes
    /// the oldest.
    #[arg(long, env = "MAX_PENDING_CONNECTIONS", default_value = "1000")]
    pub max_pending_connections: String,

    /// The live dashboard page at GET /: `on` or `off`.
    #[arg(long, env = "DASHBOARD", default_value = "on")]
    pub dashboard: String,
}

/// Variables of ours that are set but empty count as unset (their default applies), as an
/// operator who writes `STATS_INTERVAL=` in a `.env` file means. Call before parsing, while the
/// process has one thread.
pub fn forget_empty_variables() {
    use clap::CommandFactory;
    let command = Cli::command();
    let names: Vec<std::ffi::OsString> = command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .chain(command.get_arguments())
        .filter_map(|arg| arg.get_env().map(|name| name.to_os_string()))
        .collect();
    for name in names {
        if std::env::var_os(&name).is_some_and(|value| value.is_empty()) {
            std::env::remove_var(&name);
        }
    }
}

impl Default for ServeArgs {
    /// Every setting at clap's default, whatever the environment holds: what the demo, the
    /// tests and the benchmarks start from.
    fn default() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command()
            .find_subcommand("serve")
            .cloned()
            .unwrap_or_else(|| unreachable!("serve is a command"))
            .no_binary_name(true)
            .mut_args(|arg| arg.env(None::<&str>));
        command
            .try_get_matches_from(Vec::<String>::new())
            .and_then(|matches| ServeArgs::from_arg_matches(&matches))
            .unwrap_or_else(|error| unreachable!("the built-in defaults parse: {error}"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind_addr: String,

    /// Write a random change (insert, status change, update or delete) every second.
    #[arg(long)]
    pub simulate: bool,

    /// Sign the demo's tokens with this secret [default: a random one].
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Clock skew tolerated on exp and nbf, as for serve (`0` closes a socket at its token's
    /// exact exp).
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s")]
    pub jwt_leeway: String,
}
