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

mod floor;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

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

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of every `postgres` process.
fn postgres_cpu_secs() -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu_secs)
        .sum()
}

fn cita_id(index: u64) -> String {
    format!("00000000-0000-4000-8000-{index:012x}")
}

fn index_of(cita_id: &str) -> Option<u64> {
    u64::from_str_radix(cita_id.rsplit('-').next()?, 16).ok()
}

/// What every client shares: when each write started (µs since `epoch`), by write index.
struct Clock {
    epoch: Instant,
    started: Vec<AtomicU64>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.floor
            || (args.bulk_rows.is_none() && args.flood.is_none() && !args.idle && !args.stats),
        "--floor measures timed writes only: drop --bulk-rows, --flood, --idle and --stats"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (pg, db, url, mut server, control) = if args.floor {
        println!(
            "starting the floor fan-out ({} threads) ...",
            args.floor_threads
        );
        let server = std::process::Command::new(std::env::current_exe()?)
            .args(["--serve-floor", "--negocios", &args.negocios.to_string()])
            .args(["--floor-threads", &args.floor_threads.to_string()])
            .env("BIND_ADDR", server_addr.to_string())
            .spawn()?;
        let control = connect_control(server_addr).await?;
        (None, None, String::new(), server, Some(control))
    } else {
        println!("starting a private PostgreSQL ...");
        let pg = tokio::task::spawn_blocking(pgtemp::TempPostgres::start).await??;
        let url = pg.url("postgres");
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        db.batch_execute(citas_realtime::log::sql::EXAMPLE_SCHEMA)
            .await?;
        db.batch_execute(citas_realtime::log::sql::INSTALL).await?;
        let server = std::process::Command::new(std::env::current_exe()?)
            .arg("--serve")
            .env("DATABASE_URL", &url)
            .env("JWT_SECRET", SECRET)
            .env("BIND_ADDR", server_addr.to_string())
            .env("CLIENT_QUEUE_CAPACITY", "65536")
            .env("STATS", if args.stats { "on" } else { "off" })
            .env("RUST_LOG", "warn")
            .spawn()?;
        wait_ready(server_addr).await?;
        (Some(pg), Some(db), url, server, None)
    };
    let server_pid = server.id();
    let rss_start = rss_kib(server_pid);

    let writes = if let Some(rows) = args.bulk_rows {
        rows
    } else if args.idle {
        0
    } else if args.flood.is_some() {
        2_000_000
    } else {
        args.rate * args.duration
    };
    let clock = Arc::new(Clock {
        epoch: Instant::now(),
        started: (0..writes).map(|_| AtomicU64::new(0)).collect(),
    });

    // Connect and subscribe every client.
    let connect_started = Instant::now();
    let mut handles = Vec::with_capacity(args.clients);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.clients.max(1));
    let stop = tokio_util::sync::CancellationToken::new();
    let counters: Vec<Arc<AtomicU64>> = (0..args.clients).map(|_| Arc::default()).collect();
    for (i, counter) in counters.iter().enumerate() {
        let negocio = format!("n{}", i % args.negocios);
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % args.source_addrs as usize) as u8,
        ));
        let clock = clock.clone();
        let ready = ready_tx.clone();
        let stop = stop.clone();
        let counter = counter.clone();
        let spec = ClientSpec {
            server: server_addr,
            source,
            negocio,
            stats: args.stats,
        };
        handles.push(tokio::spawn(async move {
            client(spec, clock, ready, stop, counter).await
        }));
    }
    drop(ready_tx);
    for _ in 0..args.clients {
        if ready_rx.recv().await.is_none() {
            anyhow::bail!("a client failed to connect");
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let rss_connected = rss_kib(server_pid);
    println!(
        "{} clients subscribed over {} negocios in {connect_secs:.1} s",
        args.clients, args.negocios
    );

    let cpu0 = (
        cpu_secs(server_pid),
        cpu_secs(std::process::id()),
        postgres_cpu_secs(),
    );
    let wall0 = Instant::now();
    let mut expected_per_negocio = vec![0u64; args.negocios];
    // Held to the end: closing it stops the floor fan-out.
    let mut control = control;
    if let Some(control) = control.as_mut() {
        // The floor: the same pacing, but each write is a control message naming the event.
        let pace = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        let deadline = Instant::now() + Duration::from_secs(args.duration);
        let start = Instant::now();
        for i in 0..writes {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until((start + pace.mul_f64(i as f64)).into()).await;
            clock.started[i as usize]
                .store(clock.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            control.send(Message::text(i.to_string())).await?;
            expected_per_negocio[(i % args.negocios as u64) as usize] += 1;
        }
    } else if args.idle {
        // nothing to write
    } else if let Some(rows) = args.bulk_rows {
        let db = db.as_ref().context("PostgreSQL runs unless --floor")?;
        let now = clock.epoch.elapsed().as_micros() as u64;
        for c in clock.started.iter() {
            c.store(now, Ordering::Relaxed);
        }
        db.batch_execute(&format!(
            "insert into citas (id, negocio_id)
             select ('00000000-0000-4000-8000-' || lpad(to_hex(g - 1), 12, '0'))::uuid, 'n0'
             from generate_series(1, {rows}) g"
        ))
        .await?;
        expected_per_negocio[0] = rows;
    } else {
        let writers = args.flood.unwrap_or(4).max(1);
        let deadline = Instant::now() + Duration::from_secs(args.duration);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let clock = clock.clone();
            let next = next.clone();
            let negocios = args.negocios as u64;
            let pace = args
                .flood
                .is_none()
                .then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
            let start = Instant::now();
            tasks.push(tokio::spawn(async move {
                let stmt = client
                    .prepare("insert into citas (id, negocio_id) values ($1::text::uuid, $2)")
                    .await?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= clock.started.len() as u64 || Instant::now() >= deadline {
                        return Ok::<u64, anyhow::Error>(i);
                    }
                    if let Some(pace) = pace {
                        let due = start + pace.mul_f64(i as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    clock.started[i as usize]
                        .store(clock.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                    client
                        .execute(&stmt, &[&cita_id(i), &format!("n{}", i % negocios)])
                        .await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let db = db.as_ref().context("PostgreSQL runs unless --floor")?;
        let rows = db
            .query("select negocio_id, count(*) from citas group by 1", &[])
            .await?;
        for row in rows {
            let negocio: String = row.get(0);
            let count: i64 = row.get(1);
            if let Some(i) = negocio
                .strip_prefix('n')
                .and_then(|n| n.parse::<usize>().ok())
            {
                expected_per_negocio[i] = count as u64;
            }
        }
    }
    let write_secs = wall0.elapsed().as_secs_f64();

    // Wait until every client has what its negocio got (or 30 s of silence).
    let mut results = Vec::with_capacity(handles.len());
    let expect: Vec<u64> = (0..args.clients)
        .map(|i| expected_per_negocio[i % args.negocios])
        .collect();
    let wait_until = Instant::now() + Duration::from_secs(30 + args.duration);
    stop_when_done(&counters, &expect, wait_until).await;
    stop.cancel();
    for h in handles {
        results.push(h.await?);
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu1 = (
        cpu_secs(server_pid),
        cpu_secs(std::process::id()),
        postgres_cpu_secs(),
    );
    let rss_end = rss_kib(server_pid);
    let stats_queries = if args.stats {
        health(server_addr)
            .await
            .and_then(|h| h["stats_queries"].as_u64())
    } else {
        None
    };

    // Figures.
    let mut latencies: Vec<u64> = Vec::new();
    let mut received = 0u64;
    let mut duplicates = 0u64;
    let mut last_arrival = 0u64;
    let mut per_write_max: std::collections::HashMap<u64, u64> = Default::default();
    let mut snapshots = 0u64;
    for r in &results {
        received += r.received;
        snapshots += r.snapshots;
        duplicates += r.duplicates;
        last_arrival = last_arrival.max(r.last_arrival_us);
        for &(index, lat) in &r.samples {
            latencies.push(lat);
            let e = per_write_max.entry(index).or_default();
            *e = (*e).max(lat);
        }
    }
    let expected_total: u64 = expect.iter().sum();
    let lost = expected_total.saturating_sub(received - duplicates);
    latencies.sort_unstable();
    let mut last_client: Vec<u64> = per_write_max.into_values().collect();
    last_client.sort_unstable();
    let pct = |v: &Vec<u64>, p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    let delivery_secs = (last_arrival as f64 / 1e6 - (wall0 - clock.epoch).as_secs_f64()).max(1e-6);
    let msgs_per_sec = received as f64 / delivery_secs;
    let figures = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "clients": args.clients, "negocios": args.negocios,
        "writes": expected_per_negocio.iter().sum::<u64>(),
        "write_seconds": write_secs,
        "connect_seconds": connect_secs,
        "messages_expected": expected_total, "messages_received": received,
        "lost": lost, "duplicates": duplicates,
        "latency_ms": {"p50": pct(&latencies, 0.5), "p99": pct(&latencies, 0.99),
                        "p999": pct(&latencies, 0.999), "max": pct(&latencies, 1.0)},
        "last_client_latency_ms": {"p50": pct(&last_client, 0.5), "p99": pct(&last_client, 0.99),
                                    "max": pct(&last_client, 1.0)},
        "delivered_msgs_per_sec": msgs_per_sec,
        "time_to_last_delivery_s": delivery_secs,
        "server": {"rss_kib_start": rss_start, "rss_kib_connected": rss_connected, "rss_kib_end": rss_end,
                    "rss_per_connection_kib": if args.clients > 0 { (rss_connected.saturating_sub(rss_start)) as f64 / args.clients as f64 } else { 0.0 },
                    "cpu_cores": (cpu1.0 - cpu0.0) / wall},
        "loadgen_cpu_cores": (cpu1.1 - cpu0.1) / wall,
        "postgres_cpu_cores": (cpu1.2 - cpu0.2) / wall,
        "stats": if args.stats { json!({"snapshots_received": snapshots, "queries": stats_queries}) } else { Value::Null },
    });
    print_table(&figures);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
        println!("figures written to {path}");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
    drop(db);
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    if lost > 0 || duplicates > 0 {
        anyhow::bail!("{lost} events lost, {duplicates} duplicated");
    }
    Ok(())
}

fn print_table(f: &Value) {
    let l = &f["latency_ms"];
    let lc = &f["last_client_latency_ms"];
    let s = &f["server"];
    println!("----------------------------------------------------------------");
    println!(
        "clients / negocios         {} / {}",
        f["clients"], f["negocios"]
    );
    println!(
        "writes                     {} in {:.2} s",
        f["writes"],
        f["write_seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "messages received/expected {} / {}  (lost {}, duplicated {})",
        f["messages_received"], f["messages_expected"], f["lost"], f["duplicates"]
    );
    println!(
        "latency write->client ms   p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l["p50"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p999"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0)
    );
    println!(
        "latency to last client ms  p50 {:.2}  p99 {:.2}  max {:.2}",
        lc["p50"].as_f64().unwrap_or(0.0),
        lc["p99"].as_f64().unwrap_or(0.0),
        lc["max"].as_f64().unwrap_or(0.0)
    );
    println!(
        "delivered msgs/s           {:.0}",
        f["delivered_msgs_per_sec"].as_f64().unwrap_or(0.0)
    );
    println!(
        "time to last delivery s    {:.3}",
        f["time_to_last_delivery_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "server RSS KiB             start {}  connected {}  end {}  ({:.1} KiB/connection)",
        s["rss_kib_start"],
        s["rss_kib_connected"],
        s["rss_kib_end"],
        s["rss_per_connection_kib"].as_f64().unwrap_or(0.0)
    );
    println!(
        "CPU cores used             server {:.2}  postgres {:.2}  loadgen {:.2}",
        s["cpu_cores"].as_f64().unwrap_or(0.0),
        f["postgres_cpu_cores"].as_f64().unwrap_or(0.0),
        f["loadgen_cpu_cores"].as_f64().unwrap_or(0.0)
    );
    if let Some(stats) = f["stats"].as_object() {
        println!(
            "statistics                 {} snapshots received, {} queries",
            stats["snapshots_received"], stats["queries"]
        );
    }
    println!("----------------------------------------------------------------");
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

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").await?;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200") {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the server did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `--floor` fan-out's control connection, once it accepts one.
async fn connect_control(
    addr: SocketAddr,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("ws://{addr}{}", floor::CONTROL_PATH);
    loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => return Ok(ws),
            Err(error) if Instant::now() >= deadline => {
                anyhow::bail!("the floor fan-out did not start: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[derive(Default)]
struct ClientResult {
    received: u64,
    /// Statistics snapshots received (`--stats`).
    snapshots: u64,
    duplicates: u64,
    last_arrival_us: u64,
    /// (write index, latency µs)
    samples: Vec<(u64, u64)>,
}

/// Waits until every client has counted what it should get, or `until`.
async fn stop_when_done(counters: &[Arc<AtomicU64>], expect: &[u64], until: Instant) {
    while Instant::now() < until {
        if counters
            .iter()
            .zip(expect)
            .all(|(got, want)| got.load(Ordering::Relaxed) >= *want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Who one client is: where it connects from and to, and what it subscribes to.
struct ClientSpec {
    server: SocketAddr,
    source: IpAddr,
    negocio: String,
    /// Ask for statistics snapshots.
    stats: bool,
}

async fn client(
    spec: ClientSpec,
    clock: Arc<Clock>,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: tokio_util::sync::CancellationToken,
    counter: Arc<AtomicU64>,
) -> ClientResult {
    let ClientSpec {
        server,
        source,
        negocio,
        stats,
    } = spec;
    let mut result = ClientResult::default();
    let socket = match TcpSocket::new_v4() {
        Ok(s) => s,
        Err(_) => return result,
    };
    let _ = socket.bind(SocketAddr::new(source, 0));
    let Ok(stream) = socket.connect(server).await else {
        return result;
    };
    let _ = stream.set_nodelay(true);
    let token = citas_realtime::auth::jwt::mint_token(
        &citas_realtime::auth::SecretString::from(SECRET),
        json!({"negocio_id": negocio}),
        Duration::from_secs(3600),
    )
    .unwrap_or_default();
    let url = format!("ws://{server}/ws?token={token}");
    // tungstenite's default 128 KiB read buffer is zero-filled before every read: with it,
    // memset was half of this generator's CPU (perf), starving the server it measures.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024);
    let Ok((mut ws, _)) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await
    else {
        return result;
    };
    let sub =
        json!({"type": "subscribe", "channel": format!("estadisticas:{negocio}"), "stats": stats});
    if ws.send(Message::text(sub.to_string())).await.is_err() {
        return result;
    }
    let mut seen = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => {
                let Some(Ok(Message::Text(text))) = msg else {
                    if matches!(msg, Some(Ok(_))) { continue; }
                    break;
                };
                let now = clock.epoch.elapsed().as_micros() as u64;
                // Borrowed fields only: the generator must not be what limits the figures.
                let Ok(v) = serde_json::from_str::<Wire>(&text) else { continue };
                match v.kind {
                    "subscribed" => {
                        let _ = ready.send(()).await;
                    }
                    "estadisticas" => result.snapshots += 1,
                    t if t.starts_with("cita_") => {
                        result.received += 1;
                        counter.fetch_add(1, Ordering::Relaxed);
                        result.last_arrival_us = now;
                        let data = v.data.unwrap_or_default();
                        if !seen.insert(data.seq) {
                            result.duplicates += 1;
                        }
                        if let Some(index) = index_of(data.cita_id) {
                            if let Some(start) = clock.started.get(index as usize) {
                                let start = start.load(Ordering::Relaxed);
                                result.samples.push((index, now.saturating_sub(start)));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    result
}

#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    data: Option<WireData<'a>>,
}

#[derive(Default, serde::Deserialize)]
struct WireData<'a> {
    #[serde(default)]
    seq: i64,
    #[serde(default, borrow)]
    cita_id: &'a str,
}
