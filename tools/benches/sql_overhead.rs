//! What our triggers cost a writer: the same statements on a database without them, with them
//! and with them and records on (six columns chosen), a server LISTENing on each, on one private
//! PostgreSQL.
//!
//! Run: `cargo bench -p citas-realtime-tools --bench sql_overhead` (add `-- --rows 100000 --seconds 5` to change sizes).
//! The private cluster runs with fsync and synchronous_commit off, which makes commits cheaper
//! than on a production server: the ratios here are, if anything, pessimistic for us.

use std::time::{Duration, Instant};

use citas_realtime::log::sql::{EXAMPLE_SCHEMA, INSTALL, NOTIFY_CHANNEL};
use futures::StreamExt;
use pgtemp::TempPostgres;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The record columns of the third database: issue #18's six.
const RECORD_COLUMNS: &str = "select citas_realtime.set_record_columns(array['fecha', \
     'hora_inicio', 'hora_fin', 'estado', 'cliente_id', 'servicio_id'])";

struct Args {
    rows: u32,
    seconds: u64,
    repeats: usize,
}

fn args() -> Args {
    let mut a = Args {
        rows: 100_000,
        seconds: 5,
        repeats: 3,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (argv[i].as_str(), value) {
            ("--rows", Some(v)) => a.rows = v as u32,
            ("--seconds", Some(v)) => a.seconds = v,
            ("--repeats", Some(v)) => a.repeats = v as usize,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// A connection that LISTENs and drains notifications, as the server does.
async fn listen(url: &str) -> (Client, tokio::task::JoinHandle<u64>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let handle = tokio::spawn(async move {
        let mut n = 0u64;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message {
                n += 1;
            }
        }
        n
    });
    client
        .batch_execute(&format!("listen {NOTIFY_CHANNEL}"))
        .await
        .expect("listen");
    (client, handle)
}

async fn timed(client: &Client, sql: &str) -> Duration {
    let start = Instant::now();
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Figures {
    insert: Duration,
    update: Duration,
    delete: Duration,
    commits_per_sec: f64,
}

/// One round of the bulk statements: INSERT ... SELECT, UPDATE and DELETE of `rows` rows.
async fn bulk_round(client: &Client, rows: u32) -> [Duration; 3] {
    let insert = timed(
        client,
        &format!(
            "insert into citas (negocio_id, cliente_id, fecha, hora_inicio) \
             select 'n' || (g % 100), 'c' || g, current_date, '10:00' \
             from generate_series(1, {rows}) g"
        ),
    )
    .await;
    let update = timed(client, "update citas set estado = 'confirmada'").await;
    let delete = timed(client, "delete from citas").await;
    client.batch_execute("vacuum citas").await.expect("vacuum");
    [insert, update, delete]
}

/// Single-row autocommit INSERTs for one second, added to `total` (commits, time taken).
async fn commit_for_a_second(
    client: &Client,
    statement: &tokio_postgres::Statement,
    total: &mut (u64, Duration),
) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        client.execute(statement, &[&"n1"]).await.expect("insert");
        total.0 += 1;
    }
    total.1 += start.elapsed();
}

impl Figures {
    /// Medians of the bulk rounds, and the commit rate over all slices.
    fn from_rounds(rounds: &[[Duration; 3]], commits: (u64, Duration)) -> Figures {
        let column = |i: usize| median(rounds.iter().map(|r| r[i]).collect());
        Figures {
            insert: column(0),
            update: column(1),
            delete: column(2),
            commits_per_sec: commits.0 as f64 / commits.1.as_secs_f64(),
        }
    }
}

/// A database of the cluster with the example schema, and `setup` run on it.
async fn database(pg: &TempPostgres, name: &str, setup: &[&str]) -> (Client, String) {
    let admin = connect(&pg.url("postgres")).await;
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create database");
    let url = pg.url(name);
    let client = connect(&url).await;
    client.batch_execute(EXAMPLE_SCHEMA).await.expect("schema");
    for sql in setup {
        client.batch_execute(sql).await.expect("setup");
    }
    (client, url)
}

/// Every database's figures, the rounds interleaved: this machine's speed drifts by tens of
/// percent within minutes, so each round measures every database back to back.
async fn measure(a: &Args, dbs: [&Client; 3]) -> [Figures; 3] {
    let mut bulk = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..a.repeats {
        for (db, rounds) in dbs.iter().zip(bulk.iter_mut()) {
            rounds.push(bulk_round(db, a.rows).await);
        }
    }
    let insert = "insert into citas (negocio_id, fecha, hora_inicio, cliente_id) \
                  values ($1, current_date, '10:00', 'c')";
    let mut statements = Vec::new();
    for db in dbs {
        statements.push(db.prepare(insert).await.expect("prepare"));
    }
    let mut commits = [(0, Duration::ZERO); 3];
    for _ in 0..a.seconds {
        for ((db, statement), total) in dbs.iter().zip(&statements).zip(commits.iter_mut()) {
            commit_for_a_second(db, statement, total).await;
        }
    }
    [0, 1, 2].map(|i| Figures::from_rounds(&bulk[i], commits[i]))
}

/// The table: no trigger, with our triggers (and the ratio), with records on (and the ratio to
/// records off).
fn print_figures(a: &Args, [b, w, r]: &[Figures; 3]) {
    let row = |name: &str, f: fn(&Figures) -> Duration| {
        let (bare, with, rec) = (f(b), f(w), f(r));
        println!(
            "{name:<34} {:>10.1} ms {:>10.1} ms {:>7.2}x {:>10.1} ms {:>7.2}x",
            bare.as_secs_f64() * 1e3,
            with.as_secs_f64() * 1e3,
            with.as_secs_f64() / bare.as_secs_f64(),
            rec.as_secs_f64() * 1e3,
            rec.as_secs_f64() / with.as_secs_f64()
        );
    };
    println!(
        "{:<34} {:>13} {:>13} {:>8} {:>13} {:>8}",
        "statement", "no trigger", "citas-realtime", "ratio", "with records", "vs off"
    );
    row(&format!("INSERT ... SELECT {} rows", a.rows), |f| f.insert);
    row(&format!("UPDATE {} rows (estado)", a.rows), |f| f.update);
    row(&format!("DELETE {} rows", a.rows), |f| f.delete);
    println!(
        "{:<34} {:>10.0} /s {:>10.0} /s {:>6.0} % {:>10.0} /s {:>6.0} %",
        "single-row INSERT commits",
        b.commits_per_sec,
        w.commits_per_sec,
        100.0 * w.commits_per_sec / b.commits_per_sec,
        r.commits_per_sec,
        100.0 * r.commits_per_sec / w.commits_per_sec
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .expect("join")
        .expect("a private PostgreSQL (install the postgresql package)");
    let (bare, _) = database(&pg, "bare", &[]).await;
    let (with, with_url) = database(&pg, "with_triggers", &[INSTALL]).await;
    let (records, records_url) = database(&pg, "with_records", &[INSTALL, RECORD_COLUMNS]).await;
    let (listener, drain) = listen(&with_url).await;
    let (records_listener, records_drain) = listen(&records_url).await;
    println!(
        "sql_overhead: {} rows per statement (median of {}), single-row commits for {} s each; \
         the databases alternate, so all see the same noise",
        a.rows, a.repeats, a.seconds
    );
    let figures = measure(&a, [&bare, &with, &records]).await;
    drop((with, records, listener, records_listener));
    let notifications = drain.await.unwrap_or(0) + records_drain.await.unwrap_or(0);
    print_figures(&a, &figures);
    println!("notifications received by the listening connections: {notifications}");
    drop(pg);
}
