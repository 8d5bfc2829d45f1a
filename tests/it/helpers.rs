//! Shared test helpers: a real PostgreSQL (one private cluster per test binary, one database per
//! test), real servers on real ports, real WebSocket clients.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use citas_realtime::auth::jwt::mint_token;
use citas_realtime::auth::SecretString;
use citas_realtime::cli::ServeArgs;
use citas_realtime::commands::serve::RunningServer;
use citas_realtime::config::Config;
use citas_realtime::log::sql;
use futures::{SinkExt, StreamExt};
use pgtemp::TempPostgres;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any expected message may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);
pub const SECRET: &str = "test-secret-for-citas-realtime-0123456789";

static CLUSTER: OnceLock<Result<TempPostgres, String>> = OnceLock::new();

/// The test binary's private cluster, started on first use and removed when the process exits.
pub fn cluster() -> &'static TempPostgres {
    let cluster = CLUSTER.get_or_init(|| TempPostgres::start().map_err(|e| format!("{e:#}")));
    match cluster {
        Ok(pg) => pg,
        Err(e) => panic!("the tests need PostgreSQL server binaries and could not start one: {e}"),
    }
}

/// Connects a plain client and drives its connection in the background.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A connection that LISTENs on `channel`: the payloads it receives arrive on the returned
/// queue, in order.
pub async fn listen(
    url: &str,
    channel: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("listen {channel}"))
        .await
        .expect("listen");
    (client, rx)
}

/// A database of this test's own, with the example schema and our SQL installed. Dropped (with
/// every connection to it) when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// A writer's connection: tests write through plain SQL, as any writer would.
    pub client: Client,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb::empty().await.installed().await
    }

    /// This database with the example schema and our SQL applied.
    async fn installed(self) -> TestDb {
        self.client
            .batch_execute(sql::EXAMPLE_SCHEMA)
            .await
            .expect("example schema");
        self.client
            .batch_execute(sql::INSTALL)
            .await
            .expect("install.sql");
        self
    }

    /// A database with nothing in it.
    pub async fn empty() -> TestDb {
        TestDb::on(cluster().url("postgres")).await
    }

    /// A fresh database on the cluster behind `admin_url` (its `postgres` database).
    pub async fn on(admin_url: String) -> TestDb {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        let url = admin_url.replace("/postgres?", &format!("/{name}?"));
        let client = connect(&url).await;
        TestDb {
            name,
            url,
            client,
            admin_url,
        }
    }

    /// A database with our SQL on a cluster of the test's own (tests that restart PostgreSQL
    /// or need cluster-wide roles).
    pub async fn installed_on(pg: &TempPostgres) -> TestDb {
        TestDb::on(pg.url("postgres")).await.installed().await
    }

    /// The single value `sql` selects.
    pub async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub async fn execute(&self, sql: &str) -> u64 {
        self.client
            .execute(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The events the log holds for a negocio, as (seq, action), in seq order.
    pub async fn logged(&self, negocio: &str) -> Vec<(i64, String)> {
        self.client
            .query(
                "select seq, action from citas_realtime.events where negocio_id = $1 order by seq",
                &[&negocio],
            )
            .await
            .expect("read events")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// The seqs of the events the log holds for a negocio, in order.
    pub async fn logged_seqs(&self, negocio: &str) -> Vec<i64> {
        self.logged(negocio).await.iter().map(|(s, _)| *s).collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop cannot await: a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin_url, NoTls).await.ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("drop database if exists {name} with (force)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A server started for a test, on a free port.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub server: Option<RunningServer>,
}

/// The configuration of a test server on `db_url`, on a free port.
pub fn test_config(db_url: &str) -> Config {
    config_with(db_url, |_| {})
}

/// [`test_config`] with some settings changed, as the command line or environment would.
pub fn config_with(db_url: &str, change: impl FnOnce(&mut ServeArgs)) -> Config {
    let mut args = ServeArgs {
        database_url: Some(db_url.to_string()),
        jwt_secret: Some(SECRET.to_string()),
        bind_addr: "127.0.0.1:0".to_string(),
        ..ServeArgs::default()
    };
    change(&mut args);
    Config::from_args(&args).expect("test config")
}

/// Starts a server on `db` and waits until its listener is live.
pub async fn spawn_app(db_url: &str) -> TestApp {
    let app = spawn_app_unready(test_config(db_url)).await;
    app.wait_health(200).await;
    app
}

/// Starts a server with `config` and waits until its listener is live.
pub async fn spawn_app_ready(config: Config) -> TestApp {
    let app = spawn_app_unready(config).await;
    app.wait_health(200).await;
    app
}

/// Starts a server without waiting for its listener.
pub async fn spawn_app_unready(config: Config) -> TestApp {
    let server = citas_realtime::commands::serve::start(&config)
        .await
        .expect("server starts");
    TestApp {
        addr: server.local_addr,
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Polls `/health` until it answers `status`.
    pub async fn wait_health(&self, status: u16) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(resp) = reqwest::get(self.url("/health")).await {
                if resp.status().as_u16() == status {
                    return resp.json().await.expect("health body is JSON");
                }
            }
            assert!(
                Instant::now() < deadline,
                "/health did not answer {status} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens a WebSocket with `?token=`.
    pub async fn ws(&self, token: &str) -> Ws {
        let url = format!("ws://{}/ws?token={token}", self.addr);
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Ws::new(socket)
    }

    /// A client subscribed to each negocio the list names, with a token for exactly those.
    pub async fn subscriber(&self, negocios: &[&str]) -> Ws {
        let mut ws = self.ws(&token(json!({ "negocio_ids": negocios }))).await;
        for negocio in negocios {
            ws.subscribe(negocio).await;
        }
        ws
    }

    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Best effort when a test ends without shutting down: stop its tasks.
            tokio::spawn(server.shutdown());
        }
    }
}

/// The real binary serving `citas-realtime serve` in its own process (for measuring its memory,
/// and for what only a process shows). Killed when dropped.
pub struct BinaryServer {
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
    /// Where the server's log (stderr) goes.
    log: tempfile::NamedTempFile,
}

impl BinaryServer {
    pub async fn start(db_url: &str, envs: &[(&str, &str)]) -> BinaryServer {
        BinaryServer::start_with_file_limit(db_url, envs, None).await
    }

    /// As [`BinaryServer::start`], without waiting for `/health` to say 200: once it answers.
    pub async fn start_unready(db_url: &str, envs: &[(&str, &str)]) -> BinaryServer {
        BinaryServer::spawn(db_url, envs, None).await
    }

    /// As [`BinaryServer::start`], with the process's open-file limit (soft and hard) set.
    pub async fn start_with_file_limit(
        db_url: &str,
        envs: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> BinaryServer {
        let server = BinaryServer::spawn(db_url, envs, nofile).await;
        TestApp {
            addr: server.addr,
            server: None,
        }
        .wait_health(200)
        .await;
        server
    }

    /// Runs the binary and waits until `/health` answers at all.
    async fn spawn(db_url: &str, envs: &[(&str, &str)], nofile: Option<u64>) -> BinaryServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = std::process::Command::new("sh");
        let limit = nofile.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        cmd.arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_citas-realtime"))
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("JWT_SECRET", SECRET)
            .env("BIND_ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        let log = tempfile::NamedTempFile::new().expect("a log file");
        cmd.stderr(log.reopen().expect("the log file"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("run the server binary");
        let server = BinaryServer { addr, child, log };
        let deadline = Instant::now() + DEADLINE;
        while reqwest::get(format!("http://{addr}/health")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the server did not answer: {}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// What the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The server process's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token signed with the test secret, valid for an hour, with these claims.
pub fn token(claims: Value) -> String {
    mint_token(
        &SecretString::from(SECRET),
        claims,
        Duration::from_secs(3600),
    )
    .expect("mint token")
}

/// A WebSocket client that speaks JSON. Statistics snapshots (`estadisticas`, and
/// `stats_unavailable` errors) are set aside in `snapshots` unless `keep_stats` is set, so tests
/// about events read events.
pub struct Ws {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub keep_stats: bool,
    pub snapshots: Vec<Value>,
}

impl Ws {
    pub fn new(socket: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Ws {
        Ws {
            socket,
            keep_stats: false,
            snapshots: Vec::new(),
        }
    }

    pub async fn send(&mut self, value: Value) {
        self.socket
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    /// Sends `values` in one write, so that the server reads them together.
    pub async fn send_together(&mut self, values: &[Value]) {
        for value in values {
            self.socket
                .feed(Message::text(value.to_string()))
                .await
                .expect("send");
        }
        self.socket.flush().await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.expect("send");
    }

    /// The next JSON message; fails the test after [`DEADLINE`].
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no message within {DEADLINE:?}"))
                .expect("socket closed")
                .expect("socket error");
            match msg {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("server sent JSON");
                    // Statistics, and their failures (a test that stops PostgreSQL may catch
                    // a snapshot query in flight), belong to the statistics tests.
                    let stats =
                        value["type"] == "estadisticas" || value["code"] == "stats_unavailable";
                    if stats && !self.keep_stats {
                        self.snapshots.push(value);
                        continue;
                    }
                    return value;
                }
                Message::Close(frame) => panic!("socket closed by the server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next message, which must be of `type`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let msg = self.next().await;
        assert_eq!(msg["type"], kind, "unexpected message: {msg}");
        msg
    }

    pub async fn subscribe(&mut self, negocio: &str) {
        let channel = format!("estadisticas:{negocio}");
        self.send(json!({"type": "subscribe", "channel": channel}))
            .await;
        let reply = self.expect("subscribed").await;
        assert_eq!(reply["channel"], channel);
    }

    /// The next `n` events (messages whose type starts with `cita_`).
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let msg = self.next().await;
            let kind = msg["type"].as_str().unwrap_or_default();
            assert!(kind.starts_with("cita_"), "expected an event, got {msg}");
            out.push(msg);
        }
        out
    }

    /// Reads until the server closes the socket; returns the close code.
    pub async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("socket not closed within {DEADLINE:?}"));
            match msg {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// The seqs of event messages, in order.
pub fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| brief(e).2).collect()
}

/// A client of `negocio` whose kernel receive buffer is `rcvbuf` bytes, so that not reading
/// soon stalls the server's writes to it; not subscribed yet.
pub async fn small_buffer_client(addr: std::net::SocketAddr, negocio: &str, rcvbuf: u32) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!(
        "ws://{addr}/ws?token={}",
        token(json!({ "negocio_id": negocio }))
    );
    let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    Ws::new(socket)
}

/// `(type, negocio_id, seq)` of an event message, for compact assertions.
pub fn brief(event: &Value) -> (String, String, i64) {
    (
        event["type"].as_str().unwrap_or_default().to_string(),
        event["data"]["negocio_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        event["data"]["seq"].as_i64().unwrap_or_default(),
    )
}

/// One value from `GET /metrics` of the server at `addr`.
pub async fn metric_at(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// One value from `GET /metrics`.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    metric_at(app.addr, name).await
}
