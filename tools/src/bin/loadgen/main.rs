//! loadgen: end-to-end benchmark of citas-realtime. It starts a private PostgreSQL, runs the
//! server (this same executable in `--serve` mode, i.e. the library's `server::start`, in its
//! own process so its CPU and memory are measured apart), opens WebSocket clients spread over
//! negocios and over 127.0.0.x source addresses, writes real SQL at a set rate, and measures, at
//! every client, the time from the write to the event's arrival.
//!
//!   cargo run --release -p citas-realtime-tools --bin loadgen -- --clients 1000 --negocios 100 --rate 200 --duration 10
//!   cargo run --release -p citas-realtime-tools --bin loadgen -- --clients 10000 --idle          # memory per connection
//!   cargo run --release -p citas-realtime-tools --bin loadgen -- --clients 100 --negocios 1 --bulk-rows 100000
//!
//! Latency is measured from just before the write is sent to the event's arrival (so it
//! includes the writer's commit): each write's cita ids encode its index, so a client maps an
//! event back to its write without any shared lookup. It prints a table and, with `--json`,
//! writes the figures as JSON.
//!
//! With `--floor`, the same clients and writes run against a minimal fan-out that writes
//! pre-encoded frames straight to the sockets (see `floor.rs`): what any server would pay on
//! this machine, to compare the real server with.

mod client;
mod figures;
mod floor;
mod procfs;
mod target;
mod writes;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

use crate::figures::{Cpu, Measured};
use crate::procfs::rss_kib;

#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", about = "End-to-end benchmark of citas-realtime")]
struct Args {
    /// WebSocket clients (each subscribes to one negocio, round robin).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Negocios the clients and the writes are spread over.
    #[arg(long, default_value_t = 10)]
    negocios: usize,
    /// Single-row write transactions per second (spread over the negocios).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds of writing.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Instead of the timed writes: one INSERT ... SELECT of this many rows into negocio 0.
    #[arg(long)]
    bulk_rows: Option<u64>,
    /// Write as fast as PostgreSQL commits, with this many writer connections (ignores --rate).
    #[arg(long)]
    flood: Option<usize>,
    /// Only connect and subscribe, then report memory per connection.
    #[arg(long)]
    idle: bool,
    /// Source addresses 127.0.0.1 .. 127.0.0.N, to pass the ephemeral-port limit.
    #[arg(long, default_value_t = 16)]
    source_addrs: u8,
    /// Statistics on: the server computes and pushes `estadisticas` snapshots, and every
    /// client asks for them (default: off, events only).
    #[arg(long)]
    stats: bool,
    /// Instead of citas-realtime and PostgreSQL, serve the clients from a minimal fan-out that
    /// writes pre-encoded frames straight to the sockets: this machine's floor (timed writes
    /// only).
    #[arg(long)]
    floor: bool,
    /// Threads writing the frames in `--floor` mode.
    #[arg(long, default_value_t = 2)]
    floor_threads: usize,
    /// Records on: the server's events carry six columns of each cita (fecha, hora_inicio,
    /// hora_fin, estado, cliente_id, servicio_id).
    #[arg(long)]
    records: bool,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// Internal: run the server (DATABASE_URL, JWT_SECRET, BIND_ADDR from the environment).
    #[arg(long, hide = true)]
    serve: bool,
    /// Internal: run the `--floor` fan-out (BIND_ADDR from the environment).
    #[arg(long, hide = true)]
    serve_floor: bool,
}

const SECRET: &str = "loadgen-secret-loadgen-secret-0123456789";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile();
    let runtime = tokio::runtime::Runtime::new()?;
    if args.serve {
        return runtime.block_on(serve());
    }
    if args.serve_floor {
        let bind: SocketAddr = std::env::var("BIND_ADDR")?.parse()?;
        return runtime.block_on(floor::serve(bind, args.negocios, args.floor_threads));
    }
    runtime.block_on(run(args))
}

/// The open-file limit up to its hard limit: every client is a socket.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn serve() -> anyhow::Result<()> {
    // The settings as `citas-realtime serve` reads them: the environment the parent set.
    use clap::{Args, FromArgMatches};
    let command = citas_realtime::cli::ServeArgs::augment_args(clap::Command::new("serve"));
    let matches = command.try_get_matches_from(["serve"])?;
    let args = citas_realtime::cli::ServeArgs::from_arg_matches(&matches)?;
    let config = citas_realtime::config::Config::from_args(&args)?;
    let server = citas_realtime::commands::serve::start(&config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    server.shutdown().await;
    Ok(())
}

fn cita_id(index: u64) -> String {
    format!("00000000-0000-4000-8000-{index:012x}")
}

fn index_of(cita_id: &str) -> Option<u64> {
    u64::from_str_radix(cita_id.rsplit('-').next()?, 16).ok()
}

/// What every client shares: when each write started (µs since `epoch`), by write index; and
/// how long each timed write took to commit (µs; 0 when not measured).
struct Clock {
    epoch: Instant,
    started: Vec<AtomicU64>,
    committed_in: Vec<AtomicU64>,
}

impl Clock {
    fn new(writes: u64) -> Clock {
        Clock {
            epoch: Instant::now(),
            started: (0..writes).map(|_| AtomicU64::new(0)).collect(),
            committed_in: (0..writes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How long each write took to commit (µs; 0 when not measured), by write index.
    fn commit_times(&self) -> Vec<u64> {
        self.committed_in
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Microseconds since the epoch.
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.floor
            || (args.bulk_rows.is_none()
                && args.flood.is_none()
                && !args.idle
                && !args.stats
                && !args.records),
        "--floor measures timed writes only: drop --bulk-rows, --flood, --idle, --stats and --records"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut target = target::start(&args, server_addr).await?;
    let server_pid = target.server.id();
    let rss_start = rss_kib(server_pid);
    let clock = Arc::new(Clock::new(planned_writes(&args)));

    let clients = client::connect_all(&args, server_addr, &clock).await?;
    let rss_connected = rss_kib(server_pid);
    println!(
        "{} clients subscribed over {} negocios in {:.1} s",
        args.clients, args.negocios, clients.connect_secs
    );

    let backends = target.server_backends().await;
    let cpu0 = Cpu::now(server_pid, &backends);
    let wall0 = Instant::now();
    let expected_per_negocio = writes::run(&args, &mut target, &clock).await?;
    let write_secs = wall0.elapsed().as_secs_f64();

    // Wait until every client has what its negocio got (or 30 s of silence).
    let expect: Vec<u64> = (0..args.clients)
        .map(|i| expected_per_negocio[i % args.negocios])
        .collect();
    let connect_secs = clients.connect_secs;
    let wait_until = Instant::now() + Duration::from_secs(30 + args.duration);
    let results = clients.finish(&expect, wait_until).await?;
    let measured = Measured {
        expect,
        writes: expected_per_negocio.iter().sum(),
        write_secs,
        connect_secs,
        wall_secs: wall0.elapsed().as_secs_f64(),
        writes_began_us: figures::micros_between(clock.epoch, wall0),
        cpu: (cpu0, Cpu::now(server_pid, &backends)),
        rss: (rss_start, rss_connected, rss_kib(server_pid)),
        stats_queries: stats_queries(&args, server_addr).await,
        listener: listener_reads(&args, server_addr).await,
        commits: clock.commit_times(),
    };
    let (figures, lost, duplicates) = figures::compute(&args, &results, &measured);
    figures::print_table(&figures);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
        println!("figures written to {path}");
    }
    target.stop().await?;
    if lost > 0 || duplicates > 0 {
        anyhow::bail!("{lost} events lost, {duplicates} duplicated");
    }
    Ok(())
}

/// How many writes the run may make (the clock's size).
fn planned_writes(args: &Args) -> u64 {
    if let Some(rows) = args.bulk_rows {
        rows
    } else if args.idle {
        0
    } else if args.flood.is_some() {
        2_000_000
    } else {
        args.rate * args.duration
    }
}

/// The server's statistics queries so far (`--stats` only).
async fn stats_queries(args: &Args, addr: SocketAddr) -> Option<u64> {
    if !args.stats {
        return None;
    }
    health(addr).await.and_then(|h| h["stats_queries"].as_u64())
}

/// The listener's reads of the log and the notifications that woke none, from `/metrics`.
async fn listener_reads(args: &Args, addr: SocketAddr) -> Option<(u64, u64)> {
    if args.floor {
        return None;
    }
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counter = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((
        counter("citas_realtime_log_reads_total ")?,
        counter("citas_realtime_notifications_already_read_total ").unwrap_or(0),
    ))
}

/// The server's `/health` body.
async fn health(addr: SocketAddr) -> Option<Value> {
    let body = reqwest::get(format!("http://{addr}/health"))
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    serde_json::from_slice(&body).ok()
}
