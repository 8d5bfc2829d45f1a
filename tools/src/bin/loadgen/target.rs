//! What the clients are measured against: citas-realtime on a private PostgreSQL (this
//! executable in `--serve` mode, its own process), or the `--floor` fan-out.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{floor, Args, SECRET};

/// The `--floor` fan-out's control connection: each message names one event.
pub(crate) type Control = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The server process and, for the real server, its database.
pub(crate) struct Target {
    pub(crate) server: Child,
    pub(crate) pg: Option<pgtemp::TempPostgres>,
    pub(crate) db: Option<tokio_postgres::Client>,
    pub(crate) url: String,
    /// Held to the end with `--floor`: closing it stops the fan-out.
    pub(crate) control: Option<Control>,
}

/// Starts the floor fan-out or PostgreSQL and the server, listening on `addr`, and waits until
/// it is ready.
pub(crate) async fn start(args: &Args, addr: SocketAddr) -> anyhow::Result<Target> {
    if args.floor {
        println!(
            "starting the floor fan-out ({} threads) ...",
            args.floor_threads
        );
        let server = std::process::Command::new(std::env::current_exe()?)
            .args(["--serve-floor", "--negocios", &args.negocios.to_string()])
            .args(["--floor-threads", &args.floor_threads.to_string()])
            .env("BIND_ADDR", addr.to_string())
            .spawn()?;
        let control = connect_control(addr).await?;
        return Ok(Target {
            server,
            pg: None,
            db: None,
            url: String::new(),
            control: Some(control),
        });
    }
    println!("starting a private PostgreSQL ...");
    let pg = tokio::task::spawn_blocking(pgtemp::TempPostgres::start).await??;
    let url = pg.url("postgres");
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(citas_realtime::log::sql::EXAMPLE_SCHEMA)
        .await?;
    db.batch_execute(citas_realtime::log::sql::INSTALL).await?;
    if args.records {
        db.batch_execute(
            "select citas_realtime.set_record_columns(array['fecha', 'hora_inicio', 'hora_fin', \
             'estado', 'cliente_id', 'servicio_id'])",
        )
        .await?;
    }
    let server = server_command()?
        .arg("--serve")
        .env("DATABASE_URL", &url)
        .env("JWT_SECRET", SECRET)
        .env("BIND_ADDR", addr.to_string())
        .env("CLIENT_QUEUE_CAPACITY", "65536")
        .env("STATS", if args.stats { "on" } else { "off" })
        .env("RUST_LOG", "warn")
        .spawn()?;
    wait_ready(addr).await?;
    Ok(Target {
        server,
        pg: Some(pg),
        db: Some(db),
        url,
        control: None,
    })
}

impl Target {
    /// The PostgreSQL backends serving the server's sessions (the listener's and the pool's,
    /// by their `application_name`); none for the floor.
    pub(crate) async fn server_backends(&self) -> Vec<u32> {
        let Some(db) = &self.db else {
            return Vec::new();
        };
        let rows = db
            .query(
                "select pid from pg_stat_activity where application_name like 'citas-realtime%'",
                &[],
            )
            .await
            .unwrap_or_default();
        rows.iter()
            .filter_map(|r| r.try_get::<_, i32>(0).ok())
            .filter_map(|pid| u32::try_from(pid).ok())
            .collect()
    }

    /// Stops the server (SIGTERM, then waits for it) and removes the private cluster.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.server.wait();
        drop(self.control.take());
        drop(self.db.take());
        let pg = self.pg.take();
        tokio::task::spawn_blocking(move || drop(pg)).await?;
        Ok(())
    }
}

/// Runs the server under this command when set (whitespace-separated, e.g. `valgrind
/// --tool=callgrind`): see `tools/benches/listen_instructions.sh`.
pub(crate) const WRAPPER_ENV: &str = "LOADGEN_SERVER_WRAPPER";

/// The command that starts this executable as the server, inside [`WRAPPER_ENV`] if set.
fn server_command() -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe()?;
    let wrapper = std::env::var(WRAPPER_ENV).unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let Some(program) = words.next() else {
        return Ok(std::process::Command::new(exe));
    };
    let mut command = std::process::Command::new(program);
    command.args(words).arg(exe);
    Ok(command)
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    // A server under a wrapper such as valgrind starts many times slower.
    let wrapped = std::env::var_os(WRAPPER_ENV).is_some_and(|w| !w.is_empty());
    let deadline = Instant::now() + Duration::from_secs(if wrapped { 300 } else { 30 });
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
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
async fn connect_control(addr: SocketAddr) -> anyhow::Result<Control> {
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
