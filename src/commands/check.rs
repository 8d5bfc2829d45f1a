//! `citas-realtime check`: diagnoses the configuration and the database the way the server will
//! use them, one line per check (`ok`, `warn` or `FAIL`), then exits 1 if anything failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_postgres::AsyncMessage;

use crate::auth::access::HookSettings;
use crate::auth::jwks::Jwks;
use crate::cli::ServeArgs;
use crate::config::{database_from, jwt_secret_from, Config};
use crate::log::db::{with_causes, DbConfig, SslMode};
use crate::log::sql::SQL_VERSION;
use crate::log::store::StoreError;

/// How long the LISTEN/NOTIFY round trip may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn ok(&mut self, name: &str, detail: impl std::fmt::Display) {
        println!("ok   {name}: {}", detail);
    }
    fn warn(&mut self, name: &str, detail: impl std::fmt::Display) {
        println!("warn {name}: {}", detail);
    }
    fn fail(&mut self, name: &str, detail: impl std::fmt::Display) {
        self.failed = true;
        println!("FAIL {name}: {}", detail);
    }
}

pub async fn run(args: &ServeArgs) -> ExitCode {
    let mut r = Report::default();
    let config = match Config::from_args(args) {
        Ok(config) => {
            r.ok("config", "every variable is valid");
            Some(config)
        }
        Err(error) => {
            r.fail("config", error.to_string());
            None
        }
    };
    let jwks = config.as_ref().and_then(|c| c.jwks.clone());
    if let Some(settings) = &jwks {
        match Jwks::load(settings, tokio_util::task::TaskTracker::new()).await {
            Ok(keys) => r.ok(
                "jwks",
                format!(
                    "{} signing key(s) from {}",
                    keys.current().len(),
                    settings.source
                ),
            ),
            Err(error) => r.fail("jwks", format!("{error:#}")),
        }
    }
    match jwt_secret_from(&args.jwt_secret) {
        Err(_) if jwks.is_some() => r.ok("jwt", "no JWT_SECRET: JWKS keys only, exp required"),
        Ok(secret) if secret.len() >= 32 => r.ok(
            "jwt",
            format!(
                "JWT_SECRET set ({} bytes), HS256, exp required",
                secret.len()
            ),
        ),
        Ok(secret) => r.warn(
            "jwt",
            format!(
                "JWT_SECRET is only {} bytes: use at least 32 random bytes",
                secret.len()
            ),
        ),
        Err(error) => r.fail("jwt", error.to_string()),
    }
    let hook = config.as_ref().and_then(|c| c.access_hook.clone());
    match database_from(&args.database_url) {
        Ok(db) => database(&mut r, &db, hook.as_ref()).await,
        Err(error) => r.fail("database", error.to_string()),
    }
    if r.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn database(r: &mut Report, db: &DbConfig, hook: Option<&HookSettings>) {
    let started = Instant::now();
    let (client, mut connection) = match db.connect().await {
        Ok(pair) => pair,
        Err(error) => return r.fail("reachable", format!("{db}: {error}")),
    };
    // Drive the connection through poll_message so notifications reach us.
    let (notified_tx, mut notified) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = notified_tx.send(n.channel().to_string());
            }
        }
    });
    let version = one_row(
        &client,
        "select current_setting('server_version'), current_user",
        &[],
    )
    .await
    .and_then(
        |row| match (row.try_get::<_, String>(0), row.try_get::<_, String>(1)) {
            (Ok(v), Ok(user)) => Ok((v, user)),
            _ => Err(StoreError::NoRow),
        },
    );
    match &version {
        Ok((v, user)) => r.ok(
            "reachable",
            format!(
                "{db} as {user}, PostgreSQL {v}, in {} ms",
                started.elapsed().as_millis()
            ),
        ),
        Err(error) => return r.fail("reachable", error),
    }
    let user = version.map(|(_, u)| u).unwrap_or_default();

    tls(r, db, &client).await;
    listen(r, db, &client, &mut notified).await;
    installed(r, &client, &user).await;
    records(r, &client).await;
    if let Some(hook) = hook {
        access_hook(r, &client, &user, hook).await;
    }
    driver.abort();
}

async fn tls(r: &mut Report, db: &DbConfig, client: &tokio_postgres::Client) {
    let row = one_row(
        client,
        "select ssl, coalesce(version, '') from pg_stat_ssl where pid = pg_backend_pid()",
        &[],
    )
    .await;
    let encrypted = match row {
        Ok(row) => match (row.try_get::<_, bool>(0), row.try_get::<_, String>(1)) {
            (Ok(true), Ok(version)) => Some(version),
            _ => None,
        },
        _ => None,
    };
    let local = db.host_display().starts_with("127.")
        || db.host_display().starts_with("localhost")
        || db.host_display().starts_with('/');
    match (encrypted, db.ssl_mode()) {
        (Some(version), SslMode::VerifyFull) => r.ok(
            "tls",
            format!("{version}, certificate and host name verified"),
        ),
        (Some(version), SslMode::VerifyCa) => r.ok(
            "tls",
            format!("{version}, certificate verified (not the host name: use verify-full)"),
        ),
        (Some(version), _) if !db.tls_unverified() => r.ok(
            "tls",
            format!("{version}, certificate verified against sslrootcert"),
        ),
        (Some(version), mode) => r.warn(
            "tls",
            format!(
                "{version}, but sslmode={mode:?} does not check the certificate: use \
                 sslmode=verify-full with sslrootcert"
            ),
        ),
        (None, _) if local => r.ok("tls", "not encrypted (local connection)"),
        (None, _) => r.warn(
            "tls",
            "not encrypted: add sslmode=verify-full (with sslrootcert) to DATABASE_URL",
        ),
    }
}

async fn listen(
    r: &mut Report,
    db: &DbConfig,
    client: &tokio_postgres::Client,
    notified: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    // A session of its own first: behind a transaction-mode pooler the round trip below can
    // pass (the pooler hands a lone client the same session back) and prove nothing.
    let own = match crate::log::pooler::backend_pid(client).await {
        Ok(pid) => {
            crate::log::pooler::transaction_pooler(
                db,
                client,
                pid,
                10,
                &tokio_util::task::TaskTracker::new(),
            )
            .await
        }
        Err(error) => Err(error),
    };
    match own {
        Ok(None) => {}
        Ok(Some(evidence)) => {
            return r.fail(
                "listen",
                format!("{}: {evidence}", crate::log::pooler::ADVICE),
            )
        }
        Err(error) => return r.fail("listen", with_causes(&error)),
    }
    let channel = format!("citas_realtime_check_{}", std::process::id());
    let round_trip = async {
        client.batch_execute(&format!("listen {channel}")).await?;
        client
            .execute("select pg_notify($1, 'check')", &[&channel])
            .await?;
        Ok::<_, tokio_postgres::Error>(())
    };
    if let Err(error) = round_trip.await {
        return r.fail("listen", with_causes(&error));
    }
    let arrived = tokio::time::timeout(NOTIFY_TIMEOUT, async {
        while let Some(c) = notified.recv().await {
            if c == channel {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = client.batch_execute(&format!("unlisten {channel}")).await;
    if arrived {
        r.ok("listen", "LISTEN/NOTIFY round trip works")
    } else {
        let hint = if db.host_display().ends_with(":6543") {
            " (port 6543 is Supabase's transaction-mode pooler, which cannot LISTEN)"
        } else {
            ""
        };
        r.fail(
            "listen",
            format!(
                "a notification sent on this connection never came back{hint}: connect \
                 directly or through a session-mode pooler (Supabase: port 5432)"
            ),
        )
    }
}

async fn installed(r: &mut Report, client: &tokio_postgres::Client, user: &str) {
    match one_row(client, "select citas_realtime.version()", &[]).await {
        Ok(row) => {
            let version: i32 = row.try_get(0).unwrap_or(0);
            if version == SQL_VERSION {
                r.ok("sql", format!("citas_realtime version {version} installed"))
            } else if version < SQL_VERSION {
                r.warn(
                    "sql",
                    format!(
                        "citas_realtime version {version} installed, this server ships \
                         {SQL_VERSION}: run `citas-realtime sql install` to upgrade in place"
                    ),
                )
            } else {
                r.warn(
                    "sql",
                    format!(
                        "citas_realtime version {version} is newer than this server's \
                         ({SQL_VERSION}): upgrade the server"
                    ),
                )
            }
        }
        Err(error) => {
            return r.fail(
                "sql",
                format!(
                    "citas_realtime is not installed or not readable by {user} ({}): run \
                     `citas-realtime sql install`, then `grant citas_realtime_reader to {user}`",
                    error
                ),
            )
        }
    }
    match one_row(
        client,
        "select count(*) filter (where tgenabled <> 'D'), count(*) from pg_trigger
             where tgrelid = to_regclass('public.citas') and tgname like 'citas_realtime_%'",
        &[],
    )
    .await
    {
        Ok(row) => {
            let (enabled, all): (i64, i64) =
                (row.try_get(0).unwrap_or(0), row.try_get(1).unwrap_or(0));
            if enabled == 4 {
                r.ok("triggers", "4 triggers on public.citas, all enabled")
            } else {
                r.fail(
                    "triggers",
                    format!(
                        "{enabled} of 4 triggers enabled on public.citas ({all} present): run \
                         `citas-realtime sql install`"
                    ),
                )
            }
        }
        Err(error) => r.fail("triggers", error),
    }
    match one_row(
        client,
        "select (select count(*) from (select 1 from citas_realtime.events limit 1) e),
                    (select pruned_upto from citas_realtime.retention)",
        &[],
    )
    .await
    {
        Ok(_) => r.ok("privileges", format!("{user} can read the event log")),
        Err(error) => r.fail(
            "privileges",
            format!(
                "{user} cannot read the event log ({}): grant citas_realtime_reader to {user}",
                error
            ),
        ),
    }
}

/// The record columns events carry (`citas_realtime.set_record_columns`): every subscriber of
/// a negocio receives them.
async fn records(r: &mut Report, client: &tokio_postgres::Client) {
    let sql = "select citas_realtime.record_columns(),
                      array(select c from unnest(citas_realtime.record_columns()) as c
                             where not exists (
                                 select 1 from pg_catalog.pg_attribute a
                                  where a.attrelid = to_regclass('public.citas') and a.attname = c
                                    and a.attnum > 0 and not a.attisdropped))";
    match one_row(client, sql, &[]).await {
        Ok(row) => match (
            row.try_get::<_, Vec<String>>(0),
            row.try_get::<_, Vec<String>>(1),
        ) {
            (Ok(columns), _) if columns.is_empty() => {
                r.ok("records", "off (events carry no row data)")
            }
            (Ok(_), Ok(missing)) if !missing.is_empty() => r.fail(
                "records",
                format!(
                    "chosen column(s) {} no longer in public.citas (renamed or dropped): every \
                     write to citas fails until you run citas_realtime.set_record_columns() again",
                    missing.join(", ")
                ),
            ),
            (Ok(columns), _) => r.ok(
                "records",
                format!(
                    "events carry {} of each cita to every subscriber of its negocio",
                    columns.join(", ")
                ),
            ),
            (Err(error), _) => r.fail("records", error),
        },
        // Older SQL (checked above) has no records.
        Err(_) => r.warn("records", "unknown: install.sql is older than version 6"),
    }
}

/// `CAN_SUBSCRIBE_FUNCTION` exists with the right signature and the server's role may call it.
async fn access_hook(
    r: &mut Report,
    client: &tokio_postgres::Client,
    user: &str,
    hook: &HookSettings,
) {
    let signature = hook.function.signature();
    match one_row(
            client,
            "select to_regprocedure($1) is not null,
                    to_regprocedure($1) is not null
                    and has_function_privilege(to_regprocedure($1), 'execute')",
            &[&signature],
        )
        .await
    {
        Ok(row) => match (row.try_get(0).unwrap_or(false), row.try_get(1).unwrap_or(false)) {
            (true, true) => r.ok("access", format!("{signature} exists and {user} may call it")),
            (true, false) => r.fail(
                "access",
                format!("{user} may not call {signature}: grant execute on function {signature} to {user}"),
            ),
            _ => r.fail(
                "access",
                format!(
                    "CAN_SUBSCRIBE_FUNCTION names {signature}, which does not exist: create it \
                     (returns boolean; see the README) or unset the variable"
                ),
            ),
        },
        Err(error) => r.fail("access", error),
    }
}

/// The first row of `sql`, sent as one unnamed statement (`query_typed`): a named prepared
/// statement would fail behind a transaction pooler with a less useful message. `params` are
/// text. The error is the database's, with its causes.
async fn one_row(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&str],
) -> Result<tokio_postgres::Row, StoreError> {
    let typed: Vec<(
        &(dyn tokio_postgres::types::ToSql + Sync),
        tokio_postgres::types::Type,
    )> = params
        .iter()
        .map(|p| {
            (
                p as &(dyn tokio_postgres::types::ToSql + Sync),
                tokio_postgres::types::Type::TEXT,
            )
        })
        .collect();
    client
        .query_typed(sql, &typed)
        .await?
        .into_iter()
        .next()
        .ok_or(StoreError::NoRow)
}
