//! `citas-realtime`: parses the command line, sets up logging, runs the command.

use std::process::ExitCode;

use citas_realtime::cli::{Cli, Command};
use citas_realtime::config::Config;
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // A .env file is optional; a broken one is a configuration error like any other.
    if let Err(error) = dotenvy::dotenv() {
        if !error.not_found() {
            eprintln!("error: .env: {error}");
            return ExitCode::from(2);
        }
    }
    citas_realtime::cli::forget_empty_variables();
    let cli = Cli::parse();
    if let Err(message) = init_logging(&cli.log_format) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Some(Command::Demo(args)) => runtime.block_on(async {
            citas_realtime::commands::demo::run(args, stop_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Some(Command::Serve(args)) => serve(&runtime, &args),
        Some(Command::Check(args)) => {
            Ok(runtime.block_on(citas_realtime::commands::check::run(&args)))
        }
        Some(Command::Sql(args)) => {
            runtime.block_on(citas_realtime::commands::admin::sql(&args.action))
        }
        Some(Command::Token(args)) => match citas_realtime::commands::admin::token(&args) {
            Ok(code) => Ok(code),
            Err(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::from(2))
            }
        },
        None => serve(&runtime, &cli.serve),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    runtime: &tokio::runtime::Runtime,
    args: &citas_realtime::cli::ServeArgs,
) -> anyhow::Result<ExitCode> {
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    runtime.block_on(async {
        let server = citas_realtime::commands::serve::start(&config).await?;
        stop_signal().cancelled().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Cancelled on Ctrl-C or SIGTERM.
fn stop_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
        cancel.cancel();
    });
    token
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    // PostgreSQL's NOTICEs (e.g. "already exists, skipping") are not news to an operator.
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    // Tokens must never reach a log, whatever RUST_LOG says: tungstenite traces every message
    // a client sends (`auth` carries a token), and tokio-postgres' debug lines print query
    // parameters (the access hook receives the token's claims). Capped.
    for directive in [
        "tungstenite=info",
        "tokio_tungstenite=info",
        "tokio_postgres=warn",
    ] {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Colours only for a terminal: a log file or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => anyhow::bail!("LOG_FORMAT is invalid: '{other}' is not text or json"),
    }
    Ok(())
}
