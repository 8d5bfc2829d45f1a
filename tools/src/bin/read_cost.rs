//! read_cost: what one read of the event log costs PostgreSQL, in CPU time of the backend that
//! serves it. The listener's reads are most of what the server costs a database beyond the
//! writes themselves (see BENCHMARKS.md).
//!
//!   cargo run --release -p citas-realtime-tools --bin read_cost -- [--reads 20000] [--rounds 5] [SQL_FILE ...]
//!
//! Starts a private PostgreSQL, installs the example schema and `sql/install.sql`, writes 5,000
//! events, and prepares each statement on one connection set up as the listener's is (`jit` and
//! sequential scans off). Then, round after round, it runs each statement `--reads` times with
//! `$1` = the newest seq minus one and `$2` = 1000 (one row, as a read per event finds), results
//! in binary as the server gets them, and prints the backend's CPU time per read
//! (`/proc/<pid>/schedstat`, nanoseconds on the CPU), the median over the rounds. Without
//! files: the listener's read as this build prepares it. Alternating the statements within each
//! round lets the machine's noise fall on all of them.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_postgres::NoTls;

#[derive(Debug, Parser)]
#[command(
    name = "read_cost",
    about = "PostgreSQL's CPU per read of the event log"
)]
struct Args {
    /// Reads per statement per round.
    #[arg(long, default_value_t = 20_000)]
    reads: u32,
    /// Rounds (the median is printed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Statements to compare (each with parameters $1 bigint, $2 bigint); default: this build's.
    sql: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut statements: Vec<(String, String)> = Vec::new();
    for path in &args.sql {
        let sql = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        statements.push((path.clone(), sql));
    }
    if statements.is_empty() {
        statements.push((
            "this build's read".into(),
            citas_realtime::log::store::listener_read_sql(),
        ));
    }
    let pg = tokio::task::spawn_blocking(pgtemp::TempPostgres::start).await??;
    let (client, connection) = tokio_postgres::connect(&pg.url("postgres"), NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(citas_realtime::log::sql::EXAMPLE_SCHEMA)
        .await?;
    client
        .batch_execute(citas_realtime::log::sql::INSTALL)
        .await?;
    client
        .batch_execute(
            "insert into citas (id, negocio_id) select gen_random_uuid(), 'n' || (g % 1000)
               from generate_series(1, 5000) g;
             analyze citas_realtime.events;
             set jit = off; set enable_seqscan = off",
        )
        .await?;
    let newest: i64 = client
        .query_one("select max(seq) from citas_realtime.events", &[])
        .await?
        .get(0);
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0);
    let mut prepared = Vec::new();
    for (name, sql) in &statements {
        let statement = client
            .prepare(sql)
            .await
            .with_context(|| format!("cannot prepare {name}"))?;
        prepared.push(statement);
    }
    let cursor = newest - 1;
    let limit = 1000i64;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); prepared.len()];
    for round in 0..=args.rounds {
        for (i, statement) in prepared.iter().enumerate() {
            let before = backend_cpu_ns(pid)?;
            for _ in 0..args.reads {
                let rows = client.query(statement, &[&cursor, &limit]).await?;
                std::hint::black_box(rows);
            }
            let after = backend_cpu_ns(pid)?;
            // Round 0 warms the caches up and is not counted.
            if round > 0 {
                samples[i].push((after - before) as f64 / f64::from(args.reads));
            }
        }
    }
    for ((name, _), mut s) in statements.iter().zip(samples) {
        s.sort_by(f64::total_cmp);
        let median = s[s.len() / 2];
        let all: Vec<String> = s.iter().map(|ns| format!("{:.1}", ns / 1000.0)).collect();
        println!(
            "{name}: {:.1} µs of PostgreSQL CPU per read (median of {}: {})",
            median / 1000.0,
            s.len(),
            all.join(" ")
        );
    }
    drop(client);
    tokio::time::sleep(Duration::from_millis(10)).await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}

/// Nanoseconds the process has run on a CPU.
fn backend_cpu_ns(pid: i32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .context("cannot read the backend's schedstat (is it on this machine?)")?;
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .context("unexpected schedstat")
}
