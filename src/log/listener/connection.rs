//! The listener's connection: opened, proved to be a session of its own, listening, and driven
//! by a task that turns notifications into wake-ups.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{oneshot, Notify};
use tokio_postgres::{AsyncMessage, Client, Error};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::SessionError;
use crate::log::db::{DbConfig, PgConnection};
use crate::log::event::Announcement;
use crate::log::pooler;
use crate::log::sql::NOTIFY_CHANNEL;
use crate::log::status::ListenerStatus;

/// How long the LISTEN self-test may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A live listening connection.
pub(super) struct Connection {
    pub(super) client: Client,
    /// Its backend: every read checks it is still the same.
    pub(super) pid: i32,
    /// A notification arrived: read the log.
    pub(super) wake: Arc<Notify>,
    _driver: AbortOnDropHandle<()>,
}

impl Connection {
    /// Connects, makes sure the session is ours (no transaction-mode pooler) and that
    /// notifications reach it, and LISTENs. With it, what says when it ended (with its error,
    /// if any).
    pub(super) async fn open(
        db: &DbConfig,
        status: &Arc<ListenerStatus>,
        tasks: &TaskTracker,
        reached: &mut bool,
    ) -> Result<(Connection, oneshot::Receiver<Option<Error>>), SessionError> {
        let (client, connection) = db.connect_listener().await?;
        *reached = true;
        let probe_channel = format!("citas_realtime_probe_{:08x}", rand::random::<u32>());
        let (wake, probe_seen) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (closed_tx, closed) = oneshot::channel();
        let driver = Driver {
            wake: wake.clone(),
            probe_seen: probe_seen.clone(),
            probe_channel: probe_channel.clone(),
            status: status.clone(),
        };
        let task = tasks.spawn(async move {
            let _ = closed_tx.send(driver.run(connection).await);
        });
        let pid = pooler::backend_pid(&client).await?;
        let conn = Connection {
            client,
            pid,
            wake,
            _driver: AbortOnDropHandle::new(task),
        };
        conn.prove(db, tasks, &probe_channel, &probe_seen).await?;
        Ok((conn, closed))
    }

    /// A session of our own (LISTEN and the read's prepared statement need one), then LISTEN,
    /// then a notification of our own must come back.
    async fn prove(
        &self,
        db: &DbConfig,
        tasks: &TaskTracker,
        probe_channel: &str,
        probe_seen: &Notify,
    ) -> Result<(), SessionError> {
        let client = &self.client;
        let rounds = pooler::ROUNDS;
        if let Some(evidence) =
            pooler::transaction_pooler(db, client, self.pid, rounds, tasks).await?
        {
            return Err(SessionError::TransactionPooler(evidence));
        }
        // Its queries are small: JIT compiling one costs more than running it. And each reads
        // seqs by range, which the primary key serves: a log the planner has no statistics
        // for yet (a fresh install, before autovacuum's first ANALYZE) would otherwise be read
        // by scanning it whole, on every read (measured: 3x PostgreSQL's CPU per read).
        client
            .batch_execute(&format!(
                "SET jit = off; SET enable_seqscan = off; LISTEN {NOTIFY_CHANNEL}"
            ))
            .await?;
        client
            .batch_execute(&format!("LISTEN {probe_channel}; NOTIFY {probe_channel}"))
            .await?;
        if tokio::time::timeout(PROBE_TIMEOUT, probe_seen.notified())
            .await
            .is_err()
        {
            return Err(SessionError::ListenBroken);
        }
        client
            .batch_execute(&format!("UNLISTEN {probe_channel}"))
            .await?;
        Ok(())
    }
}

/// Polls the connection. It must be polled for anything to happen, and through
/// `poll_message`: its plain `Future` impl drops notifications. It never blocks: a
/// notification only stores a wake-up permit, so PostgreSQL's queue never backs up behind us.
struct Driver {
    wake: Arc<Notify>,
    probe_seen: Arc<Notify>,
    probe_channel: String,
    status: Arc<ListenerStatus>,
}

impl Driver {
    /// Runs until the connection ends; its error, if any.
    async fn run(self, mut connection: PgConnection) -> Option<Error> {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == self.probe_channel => {
                    self.probe_seen.notify_one()
                }
                Some(Ok(AsyncMessage::Notification(n))) => self.announced(n.payload()),
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(message = notice.message(), "postgres notice")
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Some(error),
                None => return None,
            }
        }
    }

    /// Whatever a payload says, the log is the truth: read it. The payload is parsed only to
    /// log it, and to count those that are no trigger's announcement.
    fn announced(&self, payload: &str) {
        match Announcement::parse(payload) {
            Ok(a) => tracing::trace!(
                last_seq = a.last_seq,
                count = a.count,
                action = a.action.as_deref(),
                "announced"
            ),
            Err(reason) => {
                self.status.unrecognised.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%reason, "unrecognised NOTIFY payload; reading the log anyway")
            }
        }
        self.wake.notify_one()
    }
}
