//! The listener's connection: opened, proved to be a session of its own, listening, and driven
//! by a task that turns notifications into wake-ups.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{oneshot, Notify};
use tokio_postgres::{AsyncMessage, Client, Error};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::SessionError;
use crate::log::cursor::LogPosition;
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
    /// A notification arrived: read the log (unless [`Announced::all_read`]).
    pub(super) wake: Arc<Notify>,
    /// The newest seq announced since the listener last looked.
    pub(super) announced: Arc<Announced>,
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
        let announced = Arc::new(Announced::default());
        let (closed_tx, closed) = oneshot::channel();
        let driver = Driver {
            wake: wake.clone(),
            probe_seen: probe_seen.clone(),
            probe_channel: probe_channel.clone(),
            status: status.clone(),
            announced: announced.clone(),
        };
        let task = tasks.spawn(async move {
            let _ = closed_tx.send(driver.run(connection).await);
        });
        let pid = pooler::backend_pid(&client).await?;
        let conn = Connection {
            client,
            pid,
            wake,
            announced,
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

/// The newest seq the notifications announced since the listener last looked (`i64::MAX` for
/// a payload it could not parse). A notification that follows a read's answer often announces
/// events that read already took in (they committed before its snapshot, and PostgreSQL
/// delivers notifications only between queries): those wake the listener, but no read. The
/// payload is trusted only to *skip* a read: a seq not yet read, or a payload that cannot be
/// parsed, always leads to one, so a forged or odd payload can cost a read but never delay an
/// event.
#[derive(Debug, Default)]
pub(super) struct Announced(AtomicI64);

impl Announced {
    fn up_to(&self, last_seq: i64) {
        self.0.fetch_max(last_seq, Ordering::AcqRel);
    }

    /// Takes what was announced; true (and counted) when `position` shows every seq up to it
    /// handed on already (or given up as rolled back), so no read is needed.
    pub(super) fn all_read(&self, position: &LogPosition, status: &ListenerStatus) -> bool {
        let announced = self.0.swap(0, Ordering::AcqRel);
        let all_read = !position.may_publish_up_to(announced);
        if all_read {
            status.already_read.fetch_add(1, Ordering::Relaxed);
        }
        all_read
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
    announced: Arc<Announced>,
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

    /// Whatever a payload says, the log is the truth: read it, unless every event announced
    /// since the last read was read already (see [`Announced`]). The payload is also parsed to
    /// log it, and to count those that are no trigger's announcement.
    fn announced(&self, payload: &str) {
        match Announcement::parse(payload) {
            Ok(a) => {
                tracing::trace!(
                    last_seq = a.last_seq,
                    count = a.count,
                    action = a.action.as_deref(),
                    "announced"
                );
                self.announced.up_to(a.last_seq);
            }
            Err(reason) => {
                // Nothing known of what it announces: read.
                self.announced.up_to(i64::MAX);
                self.status.unrecognised.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%reason, "unrecognised NOTIFY payload; reading the log anyway")
            }
        }
        self.wake.notify_one()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn only_announcements_of_what_was_read_save_a_read() {
        let status = ListenerStatus::default();
        let position = LogPosition {
            cursor: 10,
            pending: Arc::new([4u64].into_iter().collect()),
        };
        let announced = Announced::default();
        // Nothing announced since the last look (a second wake-up for the same batch).
        assert!(announced.all_read(&position, &status));
        announced.up_to(3);
        assert!(announced.all_read(&position, &status));
        // 4 is still pending, 11 not read yet.
        for last_seq in [4, 5, 11, i64::MAX] {
            announced.up_to(last_seq);
            assert!(!announced.all_read(&position, &status), "{last_seq}");
        }
        // Of several announcements, the newest counts: a low one cannot hide a high one.
        announced.up_to(11);
        announced.up_to(2);
        assert!(!announced.all_read(&position, &status));
        assert_eq!(status.already_read.load(Ordering::Relaxed), 2);
    }
}
