//! A private, throw-away PostgreSQL cluster: `initdb` in a temporary directory, a server on a
//! free loopback port, everything removed at the end. The demo and the tests share this code.
//!
//! The server runs under a small `sh` *guardian* whose standard input is a pipe from us. We
//! drive it with `stop`/`start` lines (tests restart PostgreSQL that way); when the pipe closes
//! (we dropped the handle, returned, panicked or were killed) the guardian stops PostgreSQL and
//! deletes the directory. So no test run, however it ends, leaves a server or a data directory
//! behind. The guardian has its own process group: Ctrl-C in a terminal reaches us, not it, and
//! we shut down in order.
//!
//! As root, `initdb` and the server run as the `postgres` user (PostgreSQL refuses root).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// How long PostgreSQL may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

const GUARDIAN: &str = r#"
trap '' PIPE INT
bindir=$1 data=$2 port=$3 root=$4
start() {
  "$bindir/postgres" -D "$data" -p "$port" -k "$root" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=300 -c shared_buffers=32MB >>"$root/postgres.log" 2>&1 &
  pid=$!
  echo "started $pid"
}
stop() {
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
start
while read -r cmd; do
  case "$cmd" in
    stop) stop; echo stopped ;;
    start) start ;;
  esac
done
stop
rm -rf "$root"
"#;

/// A running private PostgreSQL. Superuser `postgres`, trust authentication, loopback only.
pub struct TempPostgres {
    port: u16,
    root: PathBuf,
    bindir: PathBuf,
    guardian: Child,
    commands: Option<ChildStdin>,
    replies: BufReader<ChildStdout>,
    pid: i32,
}

impl TempPostgres {
    /// initdb + start, on a free port. Blocking: a second or two.
    pub fn start() -> anyhow::Result<TempPostgres> {
        let bindir = find_bindir()?;
        let owner = server_user()?;
        let root = tempfile::Builder::new()
            .prefix("citas-realtime-pg-")
            .tempdir()
            .context("cannot create a temporary directory")?
            .keep();
        let data = root.join("data");
        let started = initdb(&bindir, owner, &root, &data)
            .and_then(|()| TempPostgres::start_on_a_free_port(&bindir, owner, &root, &data));
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&root);
        }
        started
    }

    /// Starts the cluster in `data` under its guardian, retrying when the port was taken.
    fn start_on_a_free_port(
        bindir: &Path,
        owner: Owner,
        root: &Path,
        data: &Path,
    ) -> anyhow::Result<TempPostgres> {
        let mut last_error = anyhow!("no attempt made");
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(GUARDIAN)
                .arg("citas-realtime-pg")
                .arg(bindir)
                .arg(data)
                .arg(port.to_string())
                .arg(root)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .process_group(0);
            let mut guardian = as_owner(&mut cmd, owner, root)
                .spawn()
                .context("cannot run sh")?;
            let (Some(commands), Some(replies)) = (guardian.stdin.take(), guardian.stdout.take())
            else {
                bail!("guardian pipes missing");
            };
            let mut pg = TempPostgres {
                port,
                root: root.to_path_buf(),
                bindir: bindir.to_path_buf(),
                guardian,
                commands: Some(commands),
                replies: BufReader::new(replies),
                pid: 0,
            };
            match pg.read_started().and_then(|()| pg.wait_ready()) {
                Ok(()) => return Ok(pg),
                Err(e) => {
                    // Most likely the port was taken between our probe and the bind: retry.
                    last_error = e;
                    pg.stop_quietly();
                    // The guardian removed the directory with the data; only retry if it remains.
                    if !data.exists() {
                        break;
                    }
                }
            }
        }
        Err(last_error.context("PostgreSQL did not start"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `dbname`, as superuser `postgres`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    /// Stops the server (fast shutdown), keeping the data. Blocking.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.command("stop")?;
        let mut line = String::new();
        self.replies.read_line(&mut line)?;
        if line.trim() != "stopped" {
            bail!("unexpected reply from the guardian: {line:?}");
        }
        Ok(())
    }

    /// Starts the server again after [`TempPostgres::stop`], on the same port. Blocking.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.command("start")?;
        self.read_started()?;
        self.wait_ready()
    }

    /// Turns TLS on with this certificate and key (PEM), restarting the server. Blocking.
    /// Plain connections keep working; clients choose with `sslmode`.
    pub fn enable_tls(&mut self, cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.root.join("data");
        let owner = server_user()?;
        for (name, content) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, content)?;
            // PostgreSQL refuses a key readable by others.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                nix::unistd::chown(&path, Some(uid), Some(gid))?;
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(conf, "\nssl = on")?;
        self.stop()?;
        self.restart()
    }

    /// The tail of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        let pipe = self
            .commands
            .as_mut()
            .ok_or_else(|| anyhow!("the guardian is gone"))?;
        writeln!(pipe, "{cmd}")?;
        pipe.flush()?;
        Ok(())
    }

    fn read_started(&mut self) -> anyhow::Result<()> {
        let mut line = String::new();
        self.replies.read_line(&mut line)?;
        self.pid = line
            .trim()
            .strip_prefix("started ")
            .and_then(|pid| pid.parse().ok())
            .ok_or_else(|| anyhow!("the guardian did not start PostgreSQL: {line:?}"))?;
        Ok(())
    }

    /// Waits until the server accepts connections, or fails with its log if it died.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), None).is_ok();
            let ready = Command::new(self.bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if !alive || Instant::now() > deadline {
                bail!(
                    "PostgreSQL {} on port {}; its log:\n{}",
                    if alive { "did not get ready" } else { "exited" },
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_quietly(&mut self) {
        // Closing the pipe tells the guardian to stop PostgreSQL and delete the directory.
        drop(self.commands.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.guardian.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.guardian.kill();
        let _ = self.guardian.wait();
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop_quietly();
        if self.root.exists() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A new cluster in `data` (under `root`, given to the server's user when we are root).
fn initdb(bindir: &Path, owner: Owner, root: &Path, data: &Path) -> anyhow::Result<()> {
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(root, Some(uid), Some(gid))
            .context("cannot give the temporary directory to the postgres user")?;
    }
    let mut initdb = Command::new(bindir.join("initdb"));
    initdb
        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        .args(["--locale=C", "-D"])
        .arg(data);
    let out = as_owner(&mut initdb, owner, root)
        .output()
        .context("cannot run initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Where the server binaries are: `$PG_BIN`, then `pg_config --bindir`, then the directory of
/// an `initdb` on `PATH`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!("PG_BIN={} holds no initdb and postgres", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(real) = dir.join("initdb").canonicalize() {
                if let Some(parent) = real.parent().filter(|p| has_server(p)) {
                    return Ok(parent.to_path_buf());
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        anyhow!(
            "PostgreSQL server binaries (initdb, postgres) not found in PG_BIN, PATH or \
             /usr/lib/postgresql/*/bin: install them (Debian/Ubuntu: apt-get install postgresql)"
        )
    })
}

type Owner = Option<(nix::unistd::Uid, nix::unistd::Gid)>;

/// The user to run PostgreSQL as: ourselves, or `postgres` when we are root.
fn server_user() -> anyhow::Result<Owner> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("cannot look up the postgres user")?
        .ok_or_else(|| {
            anyhow!(
                "running as root, but there is no `postgres` user to run PostgreSQL as \
                 (PostgreSQL refuses root): install the postgresql package or run as another user"
            )
        })?;
    Ok(Some((user.uid, user.gid)))
}

fn as_owner<'a>(cmd: &'a mut Command, owner: Owner, dir: &Path) -> &'a mut Command {
    cmd.current_dir(dir);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid.as_raw()).gid(gid.as_raw()).env("HOME", dir);
    }
    cmd
}

fn free_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(probe.local_addr()?.port())
}

/// PgBouncer's pool modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

/// Keeps PgBouncer running while its standard input is open; stops it and removes its
/// directory when the pipe closes (we dropped the handle, returned, panicked or were killed).
const BOUNCER_GUARDIAN: &str = r#"
trap '' PIPE INT
bin=$1 conf=$2 root=$3
"$bin" "$conf" >>"$root/pgbouncer.out" 2>&1 &
pid=$!
echo "started $pid"
while read -r _; do :; done
kill -INT "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$root"
"#;

/// A real PgBouncer in front of a [`TempPostgres`], on a free loopback port, for the tests
/// that claim something about poolers. Clients connect as `postgres`, without a password.
pub struct TempPgBouncer {
    port: u16,
    root: PathBuf,
    guardian: Child,
    _commands: ChildStdin,
}

impl TempPgBouncer {
    /// Starts PgBouncer (`pgbouncer` on `PATH` or in `/usr/sbin`) in `mode`, with a server
    /// pool of `pool_size` connections, in front of the cluster on `pg_port`. Blocking.
    pub fn start(pg_port: u16, mode: PoolMode, pool_size: u32) -> anyhow::Result<TempPgBouncer> {
        let bin = find_pgbouncer()?;
        let owner = server_user()?;
        let root = tempfile::Builder::new()
            .prefix("citas-realtime-pgbouncer-")
            .tempdir()
            .context("cannot create a temporary directory")?
            .keep();
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&root, Some(uid), Some(gid))
                .context("cannot give the temporary directory to the postgres user")?;
        }
        let port = free_port()?;
        let mode = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let conf = root.join("pgbouncer.ini");
        std::fs::write(
            &conf,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port} user=postgres\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = any\npool_mode = {mode}\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\npidfile = {pid}\n",
                log = root.join("pgbouncer.log").display(),
                pid = root.join("pgbouncer.pid").display(),
            ),
        )?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&conf, Some(uid), Some(gid))?;
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(BOUNCER_GUARDIAN)
            .arg("citas-realtime-pgbouncer")
            .arg(&bin)
            .arg(&conf)
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut guardian = as_owner(&mut cmd, owner, &root)
            .spawn()
            .context("cannot run sh")?;
        let (Some(commands), Some(stdout)) = (guardian.stdin.take(), guardian.stdout.take()) else {
            bail!("guardian pipes missing");
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let bouncer = TempPgBouncer {
            port,
            root,
            guardian,
            _commands: commands,
        };
        bouncer.wait_ready()?;
        Ok(bouncer)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `dbname` through the pooler.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "PgBouncer did not listen within {START_TIMEOUT:?}: {}",
            std::fs::read_to_string(self.root.join("pgbouncer.out")).unwrap_or_default()
        )
    }
}

impl Drop for TempPgBouncer {
    fn drop(&mut self) {
        // Closing the pipe (the field drops after this) makes the guardian stop PgBouncer.
        let _ = self.guardian.try_wait();
    }
}

/// `pgbouncer` on `PATH`, else Debian's `/usr/sbin/pgbouncer`.
fn find_pgbouncer() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbouncer"))
            .find(|bin| bin.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|b| b.is_file()))
        .ok_or_else(|| {
            anyhow!("pgbouncer not found on PATH or in /usr/sbin: install it (apt-get install pgbouncer)")
        })
}
