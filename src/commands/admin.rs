//! `citas-realtime token` and `citas-realtime sql`: small tools for developers and DBAs.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::auth::jwt::mint_token;
use crate::auth::SecretString;
use crate::cli::{SqlAction, SqlFile, TokenArgs};
use crate::config::{database_from, jwt_secret_from, parse_duration, ConfigError};
use crate::log::db::with_causes;
use crate::log::sql;

/// Prints a signed development token.
pub fn token(args: &TokenArgs) -> Result<ExitCode, ConfigError> {
    let secret = SecretString::from(jwt_secret_from(&args.jwt_secret)?);
    let ttl = parse_duration(&args.ttl, "--ttl")?;
    let mut claims = json!({"sub": args.sub, "role": args.role});
    match args.negocios.as_slice() {
        [] => {}
        [one] => claims["negocio_id"] = one.clone().into(),
        many => claims["negocio_ids"] = many.to_vec().into(),
    }
    let token = mint_token(&secret, claims, ttl).map_err(|e| ConfigError::Invalid {
        var: "JWT_SECRET",
        reason: e.to_string(),
    })?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// Prints or applies the embedded SQL.
pub async fn sql(action: &SqlAction) -> anyhow::Result<ExitCode> {
    let (url, steps): (&Option<String>, Vec<(&str, &str)>) = match action {
        SqlAction::Print { file } => {
            print!(
                "{}",
                match file {
                    SqlFile::Install => sql::INSTALL,
                    SqlFile::Uninstall => sql::UNINSTALL,
                    SqlFile::ExampleSchema => sql::EXAMPLE_SCHEMA,
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        SqlAction::Install {
            database_url,
            with_example_schema,
        } => {
            let mut steps = Vec::new();
            if *with_example_schema {
                steps.push(("example schema", sql::EXAMPLE_SCHEMA));
            }
            steps.push(("install.sql", sql::INSTALL));
            (database_url, steps)
        }
        SqlAction::Uninstall { database_url } => {
            (database_url, vec![("uninstall.sql", sql::UNINSTALL)])
        }
    };
    let db = match database_from(url) {
        Ok(db) => db,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let (client, connection) = db
        .connect()
        .await
        .with_context(|| format!("cannot connect to {db}"))?;
    tokio::spawn(connection);
    for (name, text) in steps {
        sql::apply(&client, text)
            .await
            .map_err(|e| anyhow::anyhow!("{name} failed on {db}: {}", with_causes(&e)))?;
        println!("{name} applied to {db}");
    }
    if matches!(action, SqlAction::Install { .. }) {
        let version: i32 = client
            .query_one("select citas_realtime.version()", &[])
            .await?
            .get(0);
        println!("citas_realtime version {version} installed");
    }
    Ok(ExitCode::SUCCESS)
}
