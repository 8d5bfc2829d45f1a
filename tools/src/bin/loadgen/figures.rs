//! The figures of a run: computed from what every client counted, printed as a table and
//! written as JSON.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{json, Value};

use crate::client::ClientResult;
use crate::Args;

/// CPU seconds used so far by the server, this generator and PostgreSQL, and of PostgreSQL's
/// the part spent serving the server's own sessions (its listener and pool: reads of the log,
/// never the writes).
#[derive(Clone, Copy)]
pub(crate) struct Cpu {
    server: f64,
    loadgen: f64,
    postgres: f64,
    postgres_for_server: f64,
}

impl Cpu {
    /// Now; `backends` are the PostgreSQL processes serving the server's sessions.
    pub(crate) fn now(server_pid: u32, backends: &[u32]) -> Cpu {
        Cpu {
            server: crate::procfs::cpu_secs(server_pid),
            loadgen: crate::procfs::cpu_secs(std::process::id()),
            postgres: crate::procfs::postgres_cpu_secs(),
            postgres_for_server: backends
                .iter()
                .map(|&pid| crate::procfs::cpu_secs(pid))
                .sum(),
        }
    }
}

/// What was measured around the clients' counts.
pub(crate) struct Measured {
    /// The events each client should have received.
    pub(crate) expect: Vec<u64>,
    pub(crate) writes: u64,
    pub(crate) write_secs: f64,
    pub(crate) connect_secs: f64,
    /// From the first write to the clients' stop.
    pub(crate) wall_secs: f64,
    /// When the writes began, in µs since the clock's epoch.
    pub(crate) writes_began_us: u64,
    pub(crate) cpu: (Cpu, Cpu),
    /// Server RSS (KiB) at start, with every client connected, and at the end.
    pub(crate) rss: (u64, u64, u64),
    pub(crate) stats_queries: Option<u64>,
    /// The listener's reads of the log and the notifications that woke none, from the server's
    /// `/metrics` at the end (none for the floor).
    pub(crate) listener: Option<(u64, u64)>,
    /// How long each timed write took to commit, by write index (µs; 0 when not measured, as
    /// for the floor, whose writes are control messages): the part of every latency no server
    /// can save.
    pub(crate) commits: Vec<u64>,
}

/// Latencies (µs) and counts over every client.
struct Totals {
    latencies: Vec<u64>,
    /// For each write, its latency to the last client that got it.
    last_client: Vec<u64>,
    received: u64,
    duplicates: u64,
    snapshots: u64,
    last_arrival_us: u64,
}

fn totals(results: &[ClientResult]) -> Totals {
    let mut t = Totals {
        latencies: Vec::new(),
        last_client: Vec::new(),
        received: 0,
        duplicates: 0,
        snapshots: 0,
        last_arrival_us: 0,
    };
    let mut per_write_max: HashMap<u64, u64> = HashMap::new();
    for r in results {
        t.received += r.received;
        t.snapshots += r.snapshots;
        t.duplicates += r.duplicates;
        t.last_arrival_us = t.last_arrival_us.max(r.last_arrival_us);
        for &(index, lat) in &r.samples {
            t.latencies.push(lat);
            let e = per_write_max.entry(index).or_default();
            *e = (*e).max(lat);
        }
    }
    t.latencies.sort_unstable();
    t.last_client = per_write_max.into_values().collect();
    t.last_client.sort_unstable();
    t
}

/// The writes' commit times, and each delivery's latency counted from its write's commit
/// (`null` when no commit was timed: the floor).
fn commit_figures(results: &[ClientResult], commits: &[u64]) -> Value {
    let mut times: Vec<u64> = commits.iter().copied().filter(|&us| us > 0).collect();
    if times.is_empty() {
        return Value::Null;
    }
    times.sort_unstable();
    let mut after: Vec<u64> = results
        .iter()
        .flat_map(|r| r.samples.iter())
        .filter_map(|&(index, lat)| {
            let commit = *commits.get(index as usize)?;
            (commit > 0).then(|| lat.saturating_sub(commit))
        })
        .collect();
    after.sort_unstable();
    json!({"p50": pct(&times, 0.5), "p99": pct(&times, 0.99),
           "latency_after_commit_p50": pct(&after, 0.5),
           "latency_after_commit_p99": pct(&after, 0.99)})
}

/// The `p` quantile of sorted µs values, in ms.
fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

/// The run's figures, as JSON; with the events lost and duplicated.
pub(crate) fn compute(args: &Args, results: &[ClientResult], m: &Measured) -> (Value, u64, u64) {
    let t = totals(results);
    let expected_total: u64 = m.expect.iter().sum();
    let lost = expected_total.saturating_sub(t.received - t.duplicates);
    let delivery_secs = ((t.last_arrival_us as f64 - m.writes_began_us as f64) / 1e6).max(1e-6);
    let (cpu0, cpu1) = m.cpu;
    let (rss_start, rss_connected, rss_end) = m.rss;
    let per_connection = if args.clients > 0 {
        rss_connected.saturating_sub(rss_start) as f64 / args.clients as f64
    } else {
        0.0
    };
    let figures = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "clients": args.clients, "negocios": args.negocios,
        "writes": m.writes,
        "write_seconds": m.write_secs,
        "connect_seconds": m.connect_secs,
        "messages_expected": expected_total, "messages_received": t.received,
        "lost": lost, "duplicates": t.duplicates,
        "latency_ms": {"p50": pct(&t.latencies, 0.5), "p99": pct(&t.latencies, 0.99),
                        "p999": pct(&t.latencies, 0.999), "max": pct(&t.latencies, 1.0)},
        "last_client_latency_ms": {"p50": pct(&t.last_client, 0.5),
                                    "p99": pct(&t.last_client, 0.99),
                                    "max": pct(&t.last_client, 1.0)},
        "commit_ms": commit_figures(results, &m.commits),
        "delivered_msgs_per_sec": t.received as f64 / delivery_secs,
        "time_to_last_delivery_s": delivery_secs,
        "server": {"rss_kib_start": rss_start, "rss_kib_connected": rss_connected,
                    "rss_kib_end": rss_end, "rss_per_connection_kib": per_connection,
                    "cpu_cores": (cpu1.server - cpu0.server) / m.wall_secs},
        "loadgen_cpu_cores": (cpu1.loadgen - cpu0.loadgen) / m.wall_secs,
        "postgres_cpu_cores": (cpu1.postgres - cpu0.postgres) / m.wall_secs,
        "postgres_for_server_cpu_cores":
            (cpu1.postgres_for_server - cpu0.postgres_for_server) / m.wall_secs,
        "listener": match m.listener {
            Some((reads, already_read)) => json!({
                "log_reads": reads,
                "notifications_already_read": already_read,
                "log_reads_per_write": reads as f64 / m.writes.max(1) as f64,
            }),
            None => Value::Null,
        },
        "stats": if args.stats {
            json!({"snapshots_received": t.snapshots, "queries": m.stats_queries})
        } else {
            Value::Null
        },
    });
    (figures, lost, t.duplicates)
}

/// Microseconds from `epoch` to `at`.
pub(crate) fn micros_between(epoch: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(epoch).as_micros() as u64
}

/// The figures as a table.
pub(crate) fn print_table(f: &Value) {
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
        "CPU cores used             server {:.2}  postgres {:.2} (serving the server's reads \
         {:.3})  loadgen {:.2}",
        s["cpu_cores"].as_f64().unwrap_or(0.0),
        f["postgres_cpu_cores"].as_f64().unwrap_or(0.0),
        f["postgres_for_server_cpu_cores"].as_f64().unwrap_or(0.0),
        f["loadgen_cpu_cores"].as_f64().unwrap_or(0.0)
    );
    if let Some(commit) = f["commit_ms"].as_object() {
        println!(
            "writes' commit ms          p50 {:.2}  p99 {:.2}  (latency from the commit: p50 {:.2}  p99 {:.2})",
            commit["p50"].as_f64().unwrap_or(0.0),
            commit["p99"].as_f64().unwrap_or(0.0),
            commit["latency_after_commit_p50"].as_f64().unwrap_or(0.0),
            commit["latency_after_commit_p99"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(listener) = f["listener"].as_object() {
        println!(
            "listener                   {} reads of the log ({:.2} per write), {} notifications already read",
            listener["log_reads"],
            listener["log_reads_per_write"].as_f64().unwrap_or(0.0),
            listener["notifications_already_read"]
        );
    }
    if let Some(stats) = f["stats"].as_object() {
        println!(
            "statistics                 {} snapshots received, {} queries",
            stats["snapshots_received"], stats["queries"]
        );
    }
    println!("----------------------------------------------------------------");
}
