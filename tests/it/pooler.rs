//! Behind a real PgBouncer: a transaction-mode pooler is detected whatever its other clients
//! do (never healthy, one ERROR line with the cure, `check` fails), and a session-mode pooler
//! works as a direct connection does.

use std::time::{Duration, Instant};

use pgtemp::{PoolMode, TempPgBouncer};
use tokio_util::sync::CancellationToken;

use crate::helpers::{cluster, BinaryServer, TestApp, TestDb, DEADLINE, SECRET};

/// Starts PgBouncer in `mode` in front of the test cluster.
async fn bouncer(mode: PoolMode, pool_size: u32) -> TempPgBouncer {
    let port = cluster().port();
    tokio::task::spawn_blocking(move || TempPgBouncer::start(port, mode, pool_size))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the pooler tests need PgBouncer: {e:#}"))
}

/// Other clients of the pooler, each running short transactions until stopped.
fn background_traffic(url: String, clients: usize, stop: CancellationToken) {
    for _ in 0..clients {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(connection);
            while !stop.is_cancelled() {
                let _ = client
                    .simple_query("begin; select pg_sleep(0.005); commit")
                    .await;
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 5)).await;
            }
        });
    }
}

/// `citas-realtime check` against `url`: (exit code, output).
fn check(url: &str) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_citas-realtime"))
        .arg("check")
        .env("DATABASE_URL", url)
        .env("JWT_SECRET", SECRET)
        .output()
        .expect("run check");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Waits for `/health` to say `listener: transaction_pooler`, then watches it for a while:
/// never 200.
async fn assert_refused(server: &BinaryServer) {
    let app = TestApp {
        addr: server.addr,
        server: None,
    };
    let health = app.wait_health(503).await;
    let deadline = Instant::now() + DEADLINE;
    let mut health = health;
    while health["listener"] != "transaction_pooler" {
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        health = app.wait_health(503).await;
    }
    let watch = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch {
        let response = reqwest::get(app.url("/health")).await.unwrap();
        assert_eq!(
            response.status(),
            503,
            "healthy behind a transaction pooler"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the server binary on `url` without waiting for it to be healthy.
async fn serve(url: &str) -> BinaryServer {
    BinaryServer::start_unready(url, &[("RUST_LOG", "info")]).await
}

#[tokio::test]
async fn a_transaction_pooler_is_refused_with_the_cure_even_with_other_clients() {
    let db = TestDb::new().await;
    for (pool_size, clients) in [(1, 0), (3, 4)] {
        let pooler = bouncer(PoolMode::Transaction, pool_size).await;
        let url = pooler.url(&db.name);
        let stop = CancellationToken::new();
        background_traffic(url.clone(), clients, stop.clone());
        let server = serve(&url).await;
        assert_refused(&server).await;
        let logs = server.logs();
        let errors: Vec<&str> = logs.lines().filter(|l| l.contains("Z ERROR ")).collect();
        assert_eq!(errors.len(), 1, "one ERROR line:\n{logs}");
        assert!(
            errors[0].contains("transaction-mode pooler"),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("5432"), "{}", errors[0]);
        let (code, output) = check(&url);
        assert_eq!(code, 1, "{output}");
        assert!(
            output
                .lines()
                .any(|l| l.starts_with("FAIL listen") && l.contains("transaction-mode pooler")),
            "{output}"
        );
        stop.cancel();
    }
}

#[tokio::test]
async fn a_session_pooler_works_like_a_direct_connection() {
    let db = TestDb::new().await;
    let pooler = bouncer(PoolMode::Session, 8).await;
    let url = pooler.url(&db.name);
    let stop = CancellationToken::new();
    background_traffic(url.clone(), 3, stop.clone());
    let server = BinaryServer::start(&url, &[]).await;
    let app = TestApp {
        addr: server.addr,
        server: None,
    };
    let health = app.wait_health(200).await;
    assert_eq!(health["listener"], "connected");
    let mut ws = app.subscriber(&["s"]).await;
    for _ in 0..3 {
        db.execute("insert into citas (negocio_id) values ('s')")
            .await;
    }
    let seqs: Vec<i64> = ws
        .events(3)
        .await
        .iter()
        .map(|e| e["data"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        db.logged("s")
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
    );
    let (code, output) = check(&url);
    assert!(output.contains("ok   listen"), "{output}");
    assert_eq!(code, 0, "{output}");
    stop.cancel();
}

/// The pool's queries use no named prepared statement, so they work through a transaction
/// pooler with other clients (a future split: pool through the pooler, listener direct).
#[tokio::test]
async fn the_pool_queries_work_through_a_transaction_pooler() {
    use citas_realtime::log::store::Store;
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "create function public.can_subscribe(claims jsonb, negocio_id text)
             returns boolean language sql as $$ select negocio_id = 'p' $$",
        )
        .await
        .unwrap();
    let pooler = bouncer(PoolMode::Transaction, 2).await;
    let url = pooler.url(&db.name);
    let stop = CancellationToken::new();
    background_traffic(url.clone(), 4, stop.clone());
    let store = Store::new(
        citas_realtime::log::db::DbConfig::parse(&url)
            .unwrap()
            .pool(2)
            .unwrap(),
    );
    for round in 0..20 {
        let seq = store
            .notify_cita("p", "created", Some("c"), Some("pendiente"))
            .await
            .unwrap();
        let window = store.replay_window().await.unwrap();
        assert!(window.newest >= seq);
        let page = store.replay_page("p", 0, 1000).await.unwrap();
        assert_eq!(page.events.len(), round + 1);
        let (stats_seq, figures) = store
            .estadisticas("p", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(stats_seq >= seq && figures.is_some());
        let call = "select \"public\".\"can_subscribe\"($1::text::jsonb, $2::text)";
        assert!(store
            .can_subscribe(call, "{}", "p", Duration::from_secs(2))
            .await
            .unwrap());
        assert!(!store
            .can_subscribe(call, "{}", "q", Duration::from_secs(2))
            .await
            .unwrap());
        store.prune(Duration::from_secs(3600)).await.unwrap();
    }
    stop.cancel();
}
