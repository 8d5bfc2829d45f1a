//! The task that serves one connection. It owns both halves of the socket and waits on, in
//! priority order: server shutdown (close 1001), being kicked by the hub for overflowing its
//! queue (close 1013), the token's expiry (close 1008), the ping timer, frames from the client
//! (each counted against its message rate), and its queue of frames, which it writes in batches:
//! every queued frame is fed, then the socket is flushed once.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Interval, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::{now_secs, Principal};
use crate::edge::ws::cmd;
use crate::edge::ws::connection::{close_frame, Connection, Flow, Incoming, Io};
use crate::edge::ws::metered::{byte_quota, metered, Limiter, OverBudget};
use crate::edge::ws::outlet::{Release, SharedIo, SocketOutlet};
use crate::edge::ws::session::Session;
use crate::edge::ws::WsContext;
use crate::fanout::frames::{self, ErrorCode, Outbound};
use crate::fanout::hub::{ConnId, Subscriber};
use crate::fanout::outlet::Outlet;

/// Clients only send small control messages: anything larger is refused by tungstenite.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// Frames the connection task takes from its queue per write.
const WRITE_BATCH: usize = 256;

/// The socket settings: a small read buffer (clients send little), bounded frames, and a write
/// buffer cap so a client that stops reading errors out instead of growing memory.
pub(crate) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// Serves one upgraded connection until it closes, however it closes.
pub(crate) async fn serve<S: Io>(ctx: WsContext, io: S, principal: Principal) {
    let (queue, frames) = mpsc::channel::<Arc<Outbound>>(ctx.limits.queue_capacity);
    let outlet = SocketOutlet::new(io, queue);
    let io = metered(
        SharedIo(outlet.clone()),
        byte_quota(ctx.limits.message_quota),
    );
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(socket_config())).await;
    let me = Subscriber {
        id: ctx.hub.next_conn_id(),
        outlet: outlet.clone(),
        kicked: CancellationToken::new(),
    };
    let (conn, incoming) = Connection::new(socket, outlet, me.kicked.clone());
    let id = me.id;
    tracing::debug!(conn = id, subject = ?principal.subject, "client connected");
    let mut session = Session::new(ctx, me, principal, conn);
    let mut transport = Transport::new(&session, incoming, frames);
    let end = transport.run(&mut session).await;
    if end.is_too_slow() && session.conn.outlet().claim_drop() {
        // Found slow by its own writes (the hub counts the clients it kicks, having claimed
        // them the same way, so each is counted once); with the token cancelled, the hub will
        // not try to kick this one before it has left.
        session.me.kicked.cancel();
        session.ctx.hub.count_slow_drop();
    }
    if let Flow::Close(Some(frame)) = &end {
        tracing::debug!(conn = id, code = %frame.code, reason = %frame.reason, "closing client");
    }
    // Leave the hub first, then take the time the closing handshake needs.
    let Session {
        conn,
        subscriptions,
        ..
    } = session;
    drop(subscriptions);
    conn.close(transport.incoming, end).await;
    tracing::debug!(conn = id, "client gone");
}

/// The connection loop's own state: its inputs and timers.
struct Transport<S> {
    incoming: Incoming<S>,
    frames: mpsc::Receiver<Arc<Outbound>>,
    /// Grows on the first burst; idle connections keep no capacity.
    batch: Vec<Arc<Outbound>>,
    ping: Interval,
    last_heard: Instant,
    /// The client's frames: a sustained rate and a burst, beyond which it is closed with 1008.
    limiter: Limiter,
    expiry: Pin<Box<Sleep>>,
}

impl<S: Io> Transport<S> {
    fn new(
        session: &Session<S>,
        incoming: Incoming<S>,
        frames: mpsc::Receiver<Arc<Outbound>>,
    ) -> Transport<S> {
        let limits = &session.ctx.limits;
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset(); // the first tick would fire at once
        Transport {
            incoming,
            frames,
            batch: Vec::new(),
            ping,
            last_heard: Instant::now(),
            limiter: Limiter::direct_with_clock(
                limits.message_quota,
                governor::clock::MonotonicClock,
            ),
            expiry: Box::pin(tokio::time::sleep_until(expiry_instant(&session.principal))),
        }
    }

    /// Runs until the connection must end; returns how.
    async fn run(&mut self, session: &mut Session<S>) -> Flow {
        loop {
            let flow = self.settle(session).await;
            if !flow.is_continue() {
                return flow;
            }
            let flow = tokio::select! {
                biased;
                _ = session.ctx.shutdown.cancelled() => {
                    Flow::Close(Some(close_frame(CloseCode::Away, "server shutting down")))
                }
                _ = session.me.kicked.cancelled() => Flow::too_slow(),
                _ = &mut self.expiry => {
                    Flow::Close(Some(close_frame(CloseCode::Policy, "token expired")))
                }
                // The client's frames before the ping: after a long write (while the task waits
                // for the socket it reads nothing), what the client sent meanwhile must count
                // before its silence is judged.
                incoming = self.incoming.next() => self.on_frame(session, incoming).await,
                _ = self.ping.tick() => self.ping(session).await,
                n = self.frames.recv_many(&mut self.batch, WRITE_BATCH) => {
                    if n == 0 {
                        Flow::Close(None)
                    } else {
                        session.send_live(&mut self.batch).await
                    }
                }
            };
            if !flow.is_continue() {
                return flow;
            }
        }
    }

    /// Hands the socket's writes back to the hub once nothing is queued, half-written, or
    /// expected again from a replay; until then the hub queues, and this task writes.
    async fn settle(&mut self, session: &mut Session<S>) -> Flow {
        loop {
            if self.frames.is_empty() {
                // Whatever was queued before a negocio was left has been through.
                session.left.clear();
            }
            let (frames, replayed) = (&self.frames, &session.replayed);
            match session
                .conn
                .outlet()
                .release(|| frames.is_empty() && replayed.is_empty())
            {
                Release::Idle | Release::Busy => return Flow::Continue,
                Release::Flush => {
                    let flow = Flow::from(session.conn.flush().await);
                    if !flow.is_continue() {
                        return flow;
                    }
                }
            }
        }
    }

    /// A ping, or the end of a client that stopped answering them.
    async fn ping(&mut self, session: &mut Session<S>) -> Flow {
        if self.last_heard.elapsed() > session.ctx.limits.ping_interval * 2 {
            tracing::debug!(conn = session.me.id, "client stopped answering pings");
            return Flow::Close(None);
        }
        session.reply(Message::Ping(Default::default())).await
    }

    /// One frame (or error) from the client.
    async fn on_frame(
        &mut self,
        session: &mut Session<S>,
        incoming: Option<Result<Message, WsError>>,
    ) -> Flow {
        self.last_heard = Instant::now();
        // Whatever the message does (subscribe, replay), no live event may overtake it.
        session.conn.outlet().hold();
        match incoming {
            // Every frame a client sends counts, pings and pongs included (a ping costs us a
            // pong); only its Close does not.
            Some(Ok(ref message)) if !message.is_close() && self.limiter.check().is_err() => {
                tracing::debug!(conn = session.me.id, "client exceeded its message rate");
                session.ctx.counters.rate_limited.inc();
                Flow::Close(Some(close_frame(
                    CloseCode::Policy,
                    "too many messages: slow down",
                )))
            }
            Some(Ok(Message::Text(text))) => {
                let flow = cmd::handle(session, text.as_str()).await;
                // An `auth` may have moved the deadline.
                self.expiry
                    .as_mut()
                    .reset(expiry_instant(&session.principal));
                flow
            }
            Some(Ok(Message::Binary(_))) => {
                let reply = frames::error(
                    ErrorCode::BadRequest,
                    "binary frames are not accepted: send JSON text",
                    None,
                );
                session.reply(reply).await
            }
            Some(Ok(Message::Close(_))) => Flow::ClientClosed,
            // Pings and pongs: tungstenite answers pings itself.
            Some(Ok(_)) => Flow::Continue,
            Some(Err(error)) => read_failed(session.me.id, error),
            None => Flow::Close(None),
        }
    }
}

/// A failed read: a frame too big gets 1009, a protocol error the close code RFC 6455 gives it
/// (1007 for text that is not UTF-8, 1002 for a broken frame); a lost connection is just closed.
fn read_failed(conn: ConnId, error: WsError) -> Flow {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    tracing::debug!(conn, %error, "client read failed");
    let (code, reason) = match error {
        WsError::Io(ref io) if OverBudget::is(io) => {
            (CloseCode::Policy, "too many messages: slow down")
        }
        WsError::Capacity(_) => (
            CloseCode::Size,
            "message too big: clients send control messages of up to 16 KiB",
        ),
        WsError::Utf8(_) => (CloseCode::Invalid, "text frames must be UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return Flow::Close(None),
        WsError::Protocol(_) => (CloseCode::Protocol, "WebSocket protocol error"),
        _ => return Flow::Close(None),
    };
    Flow::Close(Some(close_frame(code, reason)))
}

/// When the connection's token stops being valid (`exp` plus the leeway), as a timer deadline.
/// Tokens come from strangers: an `exp` too far away for the clock to add is "never" (a timer
/// a century ahead), not an overflow.
fn expiry_instant(principal: &Principal) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let left = Duration::from_secs(principal.valid_until.saturating_sub(now_secs())).min(FAR);
    let now = tokio::time::Instant::now();
    now.checked_add(left)
        .unwrap_or(now + Duration::from_secs(24 * 3600))
}
