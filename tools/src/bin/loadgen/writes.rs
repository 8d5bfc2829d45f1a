//! The writes: timed single-row transactions (or as fast as PostgreSQL commits), one bulk
//! statement, or, with `--floor`, control messages paced the same way. Each records when it
//! started in the [`Clock`], and the events each negocio should get are returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::target::{Control, Target};
use crate::{cita_id, Args, Clock};

/// Runs the writes the arguments ask for; the events each negocio should get.
pub(crate) async fn run(
    args: &Args,
    target: &mut Target,
    clock: &Arc<Clock>,
) -> anyhow::Result<Vec<u64>> {
    if let Some(control) = target.control.as_mut() {
        return floor(args, control, clock).await;
    }
    if args.idle {
        return Ok(vec![0; args.negocios]);
    }
    let db = target
        .db
        .as_ref()
        .context("PostgreSQL runs unless --floor")?;
    if let Some(rows) = args.bulk_rows {
        return bulk(args, db, clock, rows).await;
    }
    timed(args, &target.url, clock).await?;
    written_per_negocio(args, db).await
}

/// The floor: the same pacing, but each write is a control message naming the event.
async fn floor(args: &Args, control: &mut Control, clock: &Clock) -> anyhow::Result<Vec<u64>> {
    let mut expected = vec![0u64; args.negocios];
    let pace = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let start = Instant::now();
    for i in 0..clock.started.len() as u64 {
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep_until((start + pace.mul_f64(i as f64)).into()).await;
        clock.started[i as usize].store(clock.now_us(), Ordering::Relaxed);
        control.send(Message::text(i.to_string())).await?;
        expected[(i % args.negocios as u64) as usize] += 1;
    }
    Ok(expected)
}

/// One `INSERT ... SELECT` of `rows` rows into negocio 0.
async fn bulk(
    args: &Args,
    db: &tokio_postgres::Client,
    clock: &Clock,
    rows: u64,
) -> anyhow::Result<Vec<u64>> {
    let now = clock.now_us();
    for c in clock.started.iter() {
        c.store(now, Ordering::Relaxed);
    }
    db.batch_execute(&format!(
        "insert into citas (id, negocio_id)
         select ('00000000-0000-4000-8000-' || lpad(to_hex(g - 1), 12, '0'))::uuid, 'n0'
         from generate_series(1, {rows}) g"
    ))
    .await?;
    let mut expected = vec![0u64; args.negocios];
    expected[0] = rows;
    Ok(expected)
}

/// Single-row transactions from `--flood` writers (or 4 paced ones) until the clock's writes
/// or the duration run out.
async fn timed(args: &Args, url: &str, clock: &Arc<Clock>) -> anyhow::Result<()> {
    let writers = args.flood.unwrap_or(4).max(1);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let next = Arc::new(AtomicU64::new(0));
    let pace = args
        .flood
        .is_none()
        .then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let (clock, next) = (clock.clone(), next.clone());
        let negocios = args.negocios as u64;
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
                let began = clock.now_us();
                clock.started[i as usize].store(began, Ordering::Relaxed);
                client
                    .execute(&stmt, &[&cita_id(i), &format!("n{}", i % negocios)])
                    .await?;
                let took = clock.now_us().saturating_sub(began).max(1);
                clock.committed_in[i as usize].store(took, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The rows each negocio got, as PostgreSQL counts them.
async fn written_per_negocio(args: &Args, db: &tokio_postgres::Client) -> anyhow::Result<Vec<u64>> {
    let mut expected = vec![0u64; args.negocios];
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
            expected[i] = count as u64;
        }
    }
    Ok(expected)
}
