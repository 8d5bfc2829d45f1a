//! `citas-realtime demo`: a private PostgreSQL with the example schema, our SQL and seeded
//! citas for two negocios, a server on top, and ready tokens, in one command.

use std::time::Duration;

use anyhow::Context;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::mint_token;
use crate::auth::SecretString;
use crate::cli::{DemoArgs, ServeArgs};
use crate::config::Config;
use crate::log::sql;
use pgtemp::TempPostgres;
use secrecy::ExposeSecret;

/// The demo's negocios (the names of the original design note).
pub(crate) const NEGOCIOS: [&str; 2] = ["negocio_123", "negocio_456"];
const ESTADOS: [&str; 4] = ["pendiente", "confirmada", "completada", "cancelada"];

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs, stop: CancellationToken) -> anyhow::Result<()> {
    println!("starting a private PostgreSQL ...");
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await?
        .context("cannot start the demo database")?;
    let url = pg.url("postgres");

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(sql::EXAMPLE_SCHEMA).await?;
    client.batch_execute(sql::INSTALL).await?;
    seed(&client).await?;

    let secret = SecretString::from(
        args.jwt_secret
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(random_secret),
    );
    let config = Config::from_args(&ServeArgs {
        database_url: Some(url.clone()),
        jwt_secret: Some(secret.expose_secret().to_string()),
        bind_addr: args.bind_addr.clone(),
        jwt_leeway: args.jwt_leeway.clone(),
        ..ServeArgs::default()
    })?;
    let server = crate::commands::serve::start(&config).await?;
    let addr = server.local_addr;

    println!("\ncitas-realtime demo is up.\n");
    println!("  database:  {url}");
    println!("  health:    http://{addr}/health");
    for negocio in NEGOCIOS {
        let token = mint_token(
            &secret,
            json!({"sub": format!("demo-{negocio}"), "role": "authenticated", "negocio_id": negocio}),
            Duration::from_secs(24 * 3600),
        )?;
        println!("\n  token for {negocio} (24 h):\n    {token}");
        println!("  dashboard: http://{addr}/#negocio={negocio}&token={token}");
        println!("  connect and subscribe (with websocat):");
        println!("    websocat 'ws://{addr}/ws?token={token}'");
        println!("    {{\"type\":\"subscribe\",\"channel\":\"estadisticas:{negocio}\"}}");
    }
    println!("\n  then change a cita from any SQL client, for example:");
    println!(
        "    psql '{url}' -c \"update citas set estado = 'confirmada' where negocio_id = '{}'\"",
        NEGOCIOS[0]
    );
    if args.simulate {
        println!("\n  --simulate: one random change every second.");
    }
    println!("\nCtrl-C stops the server and removes the database.");

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick(), if args.simulate => {
                if let Err(error) = simulate_one(&client).await {
                    tracing::warn!(%error, "simulated change failed");
                }
            }
        }
    }
    println!("stopping ...");
    server.shutdown().await;
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    println!("demo database removed.");
    Ok(())
}

async fn seed(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    for (i, negocio) in NEGOCIOS.iter().enumerate() {
        client
            .execute(
                "insert into citas (negocio_id, cliente_id, servicio_id, fecha, hora_inicio, hora_fin, estado)
                 select $1, 'cliente_' || g, 'servicio_' || (g % 3), current_date + (g % 5),
                        time '09:00' + g * interval '30 minutes',
                        time '09:30' + g * interval '30 minutes',
                        (array['pendiente','confirmada','completada','cancelada'])[1 + g % 4]
                 from generate_series(1, $2::int) as g",
                &[negocio, &(6 + 2 * i as i32)],
            )
            .await?;
    }
    Ok(())
}

async fn simulate_one(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let (negocio, kind, estado) = {
        let mut rng = rand::rng();
        let negocio = *NEGOCIOS.choose(&mut rng).unwrap_or(&NEGOCIOS[0]);
        let estado = *ESTADOS.choose(&mut rng).unwrap_or(&ESTADOS[0]);
        (negocio, rng.random_range(0..10), estado)
    };
    let pick = "(select id from citas where negocio_id = $1 order by random() limit 1)";
    match kind {
        0..=3 => {
            client
                .execute(
                    "insert into citas (negocio_id, cliente_id, fecha, hora_inicio, hora_fin)
                     values ($1, 'cliente_sim', current_date, '10:00', '10:30')",
                    &[&negocio],
                )
                .await?
        }
        4..=7 => {
            client
                .execute(
                    &format!("update citas set estado = $2, updated_at = now() where id = {pick}"),
                    &[&negocio, &estado],
                )
                .await?
        }
        8 => {
            client
                .execute(
                    &format!("update citas set hora_fin = hora_fin + interval '15 minutes', updated_at = now() where id = {pick}"),
                    &[&negocio],
                )
                .await?
        }
        _ => {
            client
                .execute(&format!("delete from citas where id = {pick}"), &[&negocio])
                .await?
        }
    };
    Ok(())
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
