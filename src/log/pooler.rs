//! Is this connection's session its own? Behind a transaction-mode pooler (PgBouncer with
//! `pool_mode = transaction`, Supabase's port 6543) it is not: each transaction may run on
//! another server session, so `LISTEN` and prepared statements are lost between them, and a
//! self-NOTIFY round trip proves nothing (with one client, the pooler hands the same session
//! back). What proves it whatever the pooler's other clients do:
//!
//! 1. note this connection's `pg_backend_pid()`;
//! 2. a second connection through the same URL (the *witness*) opens a transaction and holds
//!    it: in its own session, whichever backend it gets;
//! 3. ask `pg_backend_pid()` again on the first connection, in a new transaction.
//!
//! On a direct connection or through a session-mode pooler the two pids are equal and the
//! witness's differs. Behind a transaction pooler, one of three things happens: the witness is
//! given this connection's backend (the pooler's idle session, most recently used first), or
//! the first connection is given another backend, or it waits for the witness's transaction (a
//! pool of one). Each is proof. The check is repeated a few times; and while running, a pid
//! that changes between two of the listener's reads is proof too (see the listener).
//!
//! Only the simple query protocol is used here: a prepared statement would itself fail behind
//! such a pooler, with a less useful message.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::log::db::DbConfig;

/// What an operator is told, in the log and by `citas-realtime check`.
pub const ADVICE: &str = "DATABASE_URL goes through a transaction-mode pooler (Supabase: port \
     6543), where LISTEN and a session of our own are impossible: use the direct connection \
     (db.<project-ref>.supabase.co:5432) or the session-mode pooler (port 5432 on the pooler \
     host)";

/// Rounds of the witness check at every (re)connection of the listener; `check`, run once by
/// hand, makes more.
pub const ROUNDS: usize = 3;
/// How long one step may take: a query that waits longer for another client's transaction is
/// proof; a witness that cannot connect in time leaves the check inconclusive.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// This connection's backend pid, with the simple query protocol.
pub async fn backend_pid(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let messages = client.simple_query("select pg_backend_pid()").await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .unwrap_or(0))
}

/// `Ok(Some(evidence))` when `client` (connected through `db`, its backend pid `pid`) is
/// behind a transaction-mode pooler; `Ok(None)` when no round found any (a witness that cannot
/// connect makes the check inconclusive, which is `None` as well: the listener's reads keep
/// watching the pid).
pub async fn transaction_pooler(
    db: &DbConfig,
    client: &Client,
    pid: i32,
    rounds: usize,
    tasks: &TaskTracker,
) -> Result<Option<String>, tokio_postgres::Error> {
    let Some(witness) = open_witness(db, tasks).await else {
        return Ok(None);
    };
    for _ in 0..rounds {
        let Some(witness_pid) = witness.hold().await else {
            return Ok(None);
        };
        if witness_pid == pid {
            return Ok(Some(format!(
                "another client of the pooler was given this connection's server session (pid {pid})"
            )));
        }
        let again = tokio::time::timeout(STEP_TIMEOUT, backend_pid(client)).await;
        let _ = witness.client.batch_execute("rollback").await;
        match again {
            Err(_) => {
                return Ok(Some(format!(
                    "a query on this connection waited for another client's transaction \
                     (server session {witness_pid})"
                )))
            }
            Ok(again) => {
                let again = again?;
                if again != pid {
                    return Ok(Some(format!(
                        "this connection's server session changed between two transactions \
                         (pid {pid}, then {again})"
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// The witness: its client, and the task driving its connection (ended when dropped).
struct Witness {
    client: Client,
    _driver: AbortOnDropHandle<()>,
}

impl Witness {
    /// Opens a transaction and holds it; the backend pid it runs on (`None`: inconclusive).
    async fn hold(&self) -> Option<i32> {
        let held = tokio::time::timeout(STEP_TIMEOUT, async {
            self.client.batch_execute("begin").await.ok()?;
            backend_pid(&self.client).await.ok()
        })
        .await;
        held.ok().flatten()
    }
}

/// A second connection through the same URL (`None` when it cannot open in time: the check is
/// then inconclusive).
async fn open_witness(db: &DbConfig, tasks: &TaskTracker) -> Option<Witness> {
    let opened = tokio::time::timeout(STEP_TIMEOUT, db.connect()).await;
    match opened {
        Ok(Ok((client, connection))) => Some(Witness {
            client,
            _driver: AbortOnDropHandle::new(tasks.spawn(async move {
                let _ = connection.await;
            })),
        }),
        _ => {
            tracing::debug!("pooler check inconclusive: the witness connection did not open");
            None
        }
    }
}
