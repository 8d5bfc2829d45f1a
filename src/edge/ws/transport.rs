//! The WebSocket: the upgrade, done only after the token is verified, and the task that serves
//! one connection.
//!
//! We finish the HTTP upgrade ourselves instead of using warp's `ws()` filter, because warp
//! offers no way to set tungstenite's read buffer, which it allocates eagerly at 128 KiB per
//! connection (about 134 KB of RSS per idle client, measured); with our own
//! [`WebSocketConfig`] an idle client costs a few KB. warp still routes and answers every other
//! request; it leaves hyper's `OnUpgrade` in the request extensions for us.
//!
//! One task per connection owns both halves of the socket. It waits on, in priority order:
//! server shutdown (close 1001), being kicked by the hub for overflowing its queue (close 1013),
//! the ping timer, frames from the client (control messages), and its queue of event frames,
//! which it writes in batches: every queued frame is fed, then the socket is flushed once.
//!
//! # Resuming with `since`
//!
//! `subscribe` with `since: N` first registers the subscription in the hub, which returns the
//! listener's position at that instant, then reads the negocio's events after N from the log
//! (in pages) and sends them, then goes on with the live queue. An event is in both the replay
//! and the live queue only if the position says the listener may still publish it; those seqs
//! (a handful: what committed between the listener's last read and the replay's read) are
//! remembered and skipped once when they arrive live. So there is no gap (registration comes
//! before the read) and no duplicate at the seam. If N is older than what retention kept, or
//! newer than anything in the log, or the log cannot be read, the client gets `resync`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::access::Access;
use crate::auth::jwt::{now_secs, Principal, Verifier};
use crate::edge::ws::protocol::{self, ClientMessage};
use crate::fanout::frames::{self, ErrorCode, Outbound};
use crate::fanout::hub::{ConnId, ConnectionPermit, Hub, Subscriber};
use crate::fanout::stats::Stats;
use crate::log::cursor::LogPosition;
use crate::log::store::{Page, Store, StoreError};

/// Clients only send small control messages: anything larger is refused by tungstenite.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// Frames the connection task takes from its queue per write.
const WRITE_BATCH: usize = 256;
/// A client that accepts no data for this long is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing handshake may take before the socket is simply dropped. A client kicked
/// for being slow needs time to drain what is already on its way before it sees the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Events read from the log per page when a client resumes.
const REPLAY_PAGE: i64 = 1000;

/// The socket settings: a small read buffer (clients send little), bounded frames, and a write
/// buffer cap so a client that stops reading errors out instead of growing memory.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct WsContext {
    pub hub: Arc<Hub>,
    pub queue_capacity: usize,
    /// A ping goes out this often; a client silent for two intervals is dropped.
    pub ping_interval: Duration,
    /// For replays (clients resuming with `since`); never used for LISTEN.
    pub store: Store,
    /// The statistics engine, unless turned off.
    pub stats: Option<Arc<Stats>>,
    /// Verifies the fresh tokens of `auth` messages.
    pub verifier: Arc<Verifier>,
    /// Decides which negocios a principal may subscribe to.
    pub access: Arc<Access>,
    pub max_subscriptions: usize,
    /// Messages a client may send: a sustained rate and a burst.
    pub message_quota: governor::Quota,
    /// Events a connection may have replayed: per minute, and at once.
    pub replay_quota: governor::Quota,
    pub security: Arc<crate::edge::http::metrics::EdgeCounters>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// Spawns the task that waits for the upgrade to complete and then serves the connection.
pub fn spawn_connection(
    ctx: WsContext,
    on_upgrade: OnUpgrade,
    principal: Principal,
    permit: ConnectionPermit,
) {
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        // Holds the connection's slot until the task ends, however it ends.
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner();
                // Events are small and latency is the product: never wait for Nagle.
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
                if parts.read_buf.is_empty() {
                    serve(ctx, tcp, principal).await;
                } else {
                    // The client sent frames before our 101 reached it: replay those bytes.
                    let (rd, wr) = tcp.into_split();
                    let rd = std::io::Cursor::new(parts.read_buf).chain(rd);
                    serve(ctx, tokio::io::join(rd, wr), principal).await;
                }
            }
            Err(upgraded) => serve(ctx, TokioIo::<Upgraded>::new(upgraded), principal).await,
        }
    });
}

type Sink<S> = futures::stream::SplitSink<WebSocketStream<S>, Message>;

/// How a write went.
enum Written {
    Ok,
    /// The client does not take data fast enough (timeout, full write buffer, or the hub
    /// kicked it meanwhile): close with 1013.
    Slow,
    /// The socket is gone.
    Gone,
}

/// What the connection loop does next.
enum Flow {
    Continue,
    /// Close: with this frame (then wait for the client's reply), or at once when `None`.
    Close(Option<CloseFrame>),
    /// The client sent a Close frame: send tungstenite's reply (RFC 6455 §5.5.1), then close.
    ClientClosed,
}

fn too_slow() -> Flow {
    Flow::Close(Some(close_frame(
        CloseCode::Again,
        "too slow: event queue overflowed; reconnect and resume with since",
    )))
}

impl From<Written> for Flow {
    fn from(w: Written) -> Flow {
        match w {
            Written::Ok => Flow::Continue,
            Written::Slow => too_slow(),
            Written::Gone => Flow::Close(None),
        }
    }
}

/// One connection's state, owned by its task.
struct Connection<S> {
    ctx: WsContext,
    me: Subscriber,
    principal: Principal,
    sink: Sink<S>,
    subscriptions: Subscriptions,
    /// Per negocio, seqs a replay already sent that the listener may still publish live.
    replayed: HashMap<String, HashSet<i64>>,
    /// What replays may still cost (`CLIENT_REPLAY_BUDGET` events per minute).
    replay_budget: Limiter,
}

type Limiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::MonotonicClock,
>;

async fn serve<S>(ctx: WsContext, io: S, principal: Principal)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(socket_config())).await;
    let (sink, mut stream) = socket.split();
    let (queue, mut frames) = mpsc::channel::<Arc<Outbound>>(ctx.queue_capacity);
    let me = Subscriber {
        id: ctx.hub.next_conn_id(),
        queue,
        kicked: CancellationToken::new(),
    };
    tracing::debug!(conn = me.id, subject = ?principal.subject, "client connected");
    let ctx_replay_quota = ctx.replay_quota;
    let mut conn = Connection {
        subscriptions: Subscriptions {
            hub: ctx.hub.clone(),
            id: me.id,
            negocios: HashSet::new(),
        },
        ctx,
        me,
        principal,
        sink,
        replayed: HashMap::new(),
        replay_budget: Limiter::direct_with_clock(
            ctx_replay_quota,
            governor::clock::MonotonicClock,
        ),
    };
    // Grows on the first burst; idle connections keep no capacity.
    let mut batch = Vec::new();
    let mut ping = tokio::time::interval(conn.ctx.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset(); // the first tick would fire at once
    let mut last_heard = Instant::now();
    // Control messages a client may send: pings, auth and a burst of subscribes when a
    // dashboard (re)connects fit easily; a client flooding the server is closed with 1008.
    let limiter = governor::RateLimiter::direct_with_clock(
        conn.ctx.message_quota,
        governor::clock::MonotonicClock,
    );
    let expiry = tokio::time::sleep_until(expiry_instant(&conn.principal));
    tokio::pin!(expiry);

    let close = loop {
        let flow = tokio::select! {
            biased;
            _ = conn.ctx.shutdown.cancelled() => {
                Flow::Close(Some(close_frame(CloseCode::Away, "server shutting down")))
            }
            _ = conn.me.kicked.cancelled() => too_slow(),
            _ = &mut expiry => {
                Flow::Close(Some(close_frame(CloseCode::Policy, "token expired")))
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > conn.ctx.ping_interval * 2 {
                    tracing::debug!(conn = conn.me.id, "client stopped answering pings");
                    Flow::Close(None)
                } else {
                    conn.write(std::iter::once(Message::Ping(Default::default()))).await.into()
                }
            }
            incoming = stream.next() => {
                last_heard = Instant::now();
                match incoming {
                    // Every frame a client sends counts, pings and pongs included (a ping costs
                    // us a pong); only its Close does not.
                    Some(Ok(ref message)) if !message.is_close() && limiter.check().is_err() => {
                        tracing::debug!(conn = conn.me.id, "client exceeded its message rate");
                        conn.ctx.security.rate_limited.inc();
                        Flow::Close(Some(close_frame(
                            CloseCode::Policy,
                            "too many messages: slow down",
                        )))
                    }
                    Some(Ok(Message::Text(text))) => {
                        let flow = conn.handle(text.as_str()).await;
                        // An `auth` may have moved the deadline.
                        expiry.as_mut().reset(expiry_instant(&conn.principal));
                        flow
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let reply = frames::error(
                            ErrorCode::BadRequest, "binary frames are not accepted: send JSON text", None);
                        conn.write(std::iter::once(reply)).await.into()
                    }
                    Some(Ok(Message::Close(_))) => Flow::ClientClosed,
                    None => Flow::Close(None),
                    Some(Ok(_)) => Flow::Continue, // ping/pong: tungstenite answers pings itself
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(error))) => {
                        tracing::debug!(conn = conn.me.id, %error, "client message too big");
                        Flow::Close(Some(close_frame(
                            CloseCode::Size,
                            "message too big: clients send control messages of up to 16 KiB",
                        )))
                    }
                    Some(Err(error)) => read_failed(conn.me.id, error),
                }
            }
            n = frames.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    Flow::Close(None)
                } else {
                    conn.send_live(&mut batch).await.into()
                }
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::Close(frame) => break Some(frame),
            Flow::ClientClosed => break None,
        }
    };

    let Connection {
        me,
        mut sink,
        subscriptions,
        ..
    } = conn;
    drop(subscriptions);
    let Some(close) = close else {
        // The client closed: tungstenite queued the reply; flushing sends it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.flush()).await;
        tracing::debug!(conn = me.id, "client closed");
        return;
    };
    if let Some(frame) = close {
        tracing::debug!(conn = me.id, code = %frame.code, reason = %frame.reason, "closing client");
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            sink.send(Message::Close(Some(frame))).await?;
            // Wait for the client's close reply so the close frame is not lost in a reset.
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_close() {
                    break;
                }
            }
            Ok::<_, tokio_tungstenite::tungstenite::Error>(())
        })
        .await;
    }
    tracing::debug!(conn = me.id, "client gone");
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Feeds every frame and flushes once.
    async fn write(&mut self, frames: impl Iterator<Item = Message>) -> Written {
        let sink = &mut self.sink;
        let io = async {
            for frame in frames {
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        // Biased, the write first: it almost always completes at once, and then the kick
        // future is never polled (polling it registers a waiter).
        tokio::select! {
            biased;
            result = tokio::time::timeout(WRITE_TIMEOUT, io) => match result {
                Ok(Ok(())) => Written::Ok,
                Ok(Err(tokio_tungstenite::tungstenite::Error::WriteBufferFull(_))) | Err(_) => Written::Slow,
                Ok(Err(_)) => Written::Gone,
            },
            _ = self.me.kicked.cancelled() => Written::Slow,
        }
    }

    /// Writes a batch from the live queue, skipping what a replay already sent.
    async fn send_live(&mut self, batch: &mut Vec<Arc<Outbound>>) -> Written {
        let replayed = &mut self.replayed;
        let frames: Vec<Message> = batch
            .drain(..)
            .filter(|out| {
                let Some(seqs) = replayed.get_mut(&out.negocio_id).filter(|_| out.is_event) else {
                    return true;
                };
                let duplicate = seqs.remove(&out.seq);
                if seqs.is_empty() {
                    replayed.remove(&out.negocio_id);
                }
                !duplicate
            })
            .map(|out| out.frame.clone())
            .collect();
        if frames.is_empty() {
            return Written::Ok;
        }
        self.write(frames.into_iter()).await
    }

    /// Answers one control message.
    async fn handle(&mut self, text: &str) -> Flow {
        let message = match protocol::parse(text) {
            Ok(message) => message,
            Err(reason) => {
                return self
                    .reply(frames::error(ErrorCode::BadRequest, &reason, None))
                    .await
            }
        };
        match message {
            ClientMessage::Ping => self.reply(frames::pong()).await,
            ClientMessage::Auth { token } => self.reauthenticate(&token).await,
            ClientMessage::Subscribe {
                channel,
                since,
                stats,
            } => {
                let negocio = match negocio_or_error(&channel) {
                    Ok(negocio) => negocio,
                    Err(reply) => return self.reply(reply).await,
                };
                match self.ctx.access.allows(&self.principal, &negocio).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let reply = frames::error(
                            ErrorCode::Forbidden,
                            "this token does not grant that negocio",
                            Some(&channel),
                        );
                        return self.reply(reply).await;
                    }
                    Err(unavailable) => {
                        let reply = frames::error(
                            ErrorCode::Unavailable,
                            &unavailable.to_string(),
                            Some(&channel),
                        );
                        return self.reply(reply).await;
                    }
                }
                if since.is_some_and(|s| s < 0) {
                    let reply = frames::error(
                        ErrorCode::BadRequest,
                        "since must be a seq (0 or more)",
                        Some(&channel),
                    );
                    return self.reply(reply).await;
                }
                if self.subscriptions.contains(&negocio) {
                    // Already subscribed: events are flowing; nothing to replay or change.
                    return self.reply(frames::subscribed(&channel)).await;
                }
                if self.subscriptions.len() >= self.ctx.max_subscriptions {
                    let reply = frames::error(
                        ErrorCode::TooManySubscriptions,
                        &format!(
                            "at most {} channels per connection",
                            self.ctx.max_subscriptions
                        ),
                        Some(&channel),
                    );
                    return self.reply(reply).await;
                }
                let engine = self.ctx.stats.clone().filter(|_| stats != Some(false));
                let position = self.subscriptions.add(&negocio, &self.me, engine.is_some());
                if let Flow::Close(frame) = self.reply(frames::subscribed(&channel)).await {
                    return Flow::Close(frame);
                }
                if let Some(since) = since {
                    if let Flow::Close(frame) =
                        self.replay(&channel, &negocio, since, &position).await
                    {
                        return Flow::Close(frame);
                    }
                }
                // The snapshot goes through the queue, so it follows whatever was replayed.
                if let Some(engine) = engine {
                    engine.first_snapshot(&negocio, self.me.id);
                }
                Flow::Continue
            }
            ClientMessage::Unsubscribe { channel } => {
                let negocio = match negocio_or_error(&channel) {
                    Ok(negocio) => negocio,
                    Err(reply) => return self.reply(reply).await,
                };
                if self.subscriptions.remove(&negocio) {
                    self.replayed.remove(&negocio);
                }
                self.reply(frames::unsubscribed(&channel)).await
            }
        }
    }

    /// `auth`: a fresh token replaces the current one if it verifies; subscriptions it no
    /// longer grants end with `forbidden`.
    async fn reauthenticate(&mut self, token: &str) -> Flow {
        let principal = match self.ctx.verifier.verify(token).await {
            Ok(principal) => principal,
            Err(error) => {
                let reply = frames::error(ErrorCode::Unauthorized, &error.to_string(), None);
                return self.reply(reply).await;
            }
        };
        // A connection is one identity: the per-subject connection count is kept under the
        // subject it opened with, so a token for someone else may not take it over.
        if principal.subject != self.principal.subject {
            let reply = frames::error(
                ErrorCode::Unauthorized,
                "the new token is for another subject (sub): open a new connection for it",
                None,
            );
            return self.reply(reply).await;
        }
        self.principal = principal;
        let mut lost = Vec::new();
        for negocio in &self.subscriptions.negocios {
            // An access check that cannot be made keeps the subscription: it was allowed, and
            // the token itself verified.
            if let Ok(false) = self.ctx.access.allows(&self.principal, negocio).await {
                lost.push(negocio.clone());
            }
        }
        let mut replies = vec![frames::authenticated()];
        for negocio in lost {
            self.subscriptions.remove(&negocio);
            self.replayed.remove(&negocio);
            replies.push(frames::error(
                ErrorCode::Forbidden,
                "the new token does not grant this negocio: subscription ended",
                Some(&frames::channel(&negocio)),
            ));
        }
        self.write(replies.into_iter()).await.into()
    }

    /// Takes `rows` events from the connection's replay budget; false when it cannot pay.
    fn charge_replay(&self, rows: usize) -> bool {
        let Some(n) = std::num::NonZeroU32::new(rows.min(u32::MAX as usize) as u32) else {
            return true;
        };
        matches!(self.replay_budget.check_n(n), Ok(Ok(())))
    }

    async fn reply(&mut self, message: Message) -> Flow {
        self.write(std::iter::once(message)).await.into()
    }

    /// Sends the negocio's events after `since`, page by page, then returns to live delivery.
    async fn replay(
        &mut self,
        channel: &str,
        negocio: &str,
        since: i64,
        position: &LogPosition,
    ) -> Flow {
        let mut after = since;
        let mut first_page = true;
        loop {
            // Never more frames held than the queue could take (the replay counts against it
            // like live events), nor more than the budget could ever pay for at once.
            let limit = (self.me.queue.capacity() as i64)
                .clamp(1, REPLAY_PAGE)
                .min(i64::from(self.ctx.replay_quota.burst_size().get()));
            let read = read_page(&self.ctx.store, negocio, after, first_page, limit).await;
            let page = match read {
                Ok(Some(page)) => page,
                Ok(None) => return self.reply(frames::resync(channel)).await,
                Err(error) => {
                    tracing::warn!(conn = self.me.id, negocio, %error, "cannot replay; telling the client to resync");
                    return self.reply(frames::resync(channel)).await;
                }
            };
            first_page = false;
            let full = page.rows as i64 == limit;
            if !self.charge_replay(page.rows) {
                tracing::debug!(conn = self.me.id, negocio, "replay budget spent: resync");
                return self.reply(frames::resync(channel)).await;
            }
            after = page.last_seq.unwrap_or(after);
            let mut frames = Vec::with_capacity(page.events.len());
            for event in &page.events {
                if position.may_publish_later(event.seq) {
                    self.replayed
                        .entry(negocio.to_string())
                        .or_default()
                        .insert(event.seq);
                }
                frames.push(frames::event_for(event, negocio));
            }
            self.ctx.hub.replayed(frames.len());
            if let Flow::Close(frame) = Flow::from(self.write(frames.into_iter()).await) {
                return Flow::Close(frame);
            }
            if !full {
                return Flow::Continue;
            }
        }
    }
}

/// The connection's subscriptions. Leaving the hub is tied to this value's life: however the
/// connection's task ends (a close, an error, a panic), dropping it unsubscribes everything.
struct Subscriptions {
    hub: Arc<Hub>,
    id: ConnId,
    negocios: HashSet<String>,
}

impl Subscriptions {
    fn contains(&self, negocio: &str) -> bool {
        self.negocios.contains(negocio)
    }

    fn len(&self) -> usize {
        self.negocios.len()
    }

    /// Subscribes in the hub; returns the listener's position at that instant.
    fn add(&mut self, negocio: &str, me: &Subscriber, stats: bool) -> LogPosition {
        self.negocios.insert(negocio.to_string());
        self.hub.subscribe(negocio, me, stats)
    }

    /// Unsubscribes from the hub; false when not subscribed.
    fn remove(&mut self, negocio: &str) -> bool {
        let removed = self.negocios.remove(negocio);
        if removed {
            self.hub.unsubscribe(negocio, self.id);
        }
        removed
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.hub.unsubscribe_all(&self.negocios, self.id);
    }
}

/// Reads the next page of `negocio`'s events after `after`. On the first page, `None` when the
/// log cannot serve `after` (older than retention kept, or newer than the log): resync.
async fn read_page(
    store: &Store,
    negocio: &str,
    after: i64,
    first_page: bool,
    limit: i64,
) -> Result<Option<Page>, StoreError> {
    if first_page {
        let window = store.replay_window().await?;
        if after < window.pruned_upto || after > window.newest {
            return Ok(None);
        }
    }
    store.replay_page(negocio, after, limit).await.map(Some)
}

/// When the connection's token stops being valid (`exp` plus the leeway), as a timer deadline.
/// Tokens come from strangers: an `exp` too far away for the clock to add is "never" (a
/// timer a century ahead), not an overflow.
fn expiry_instant(principal: &Principal) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let left = Duration::from_secs(principal.valid_until.saturating_sub(now_secs())).min(FAR);
    let now = tokio::time::Instant::now();
    now.checked_add(left)
        .unwrap_or(now + Duration::from_secs(24 * 3600))
}

/// The negocio of `channel`, or the `bad_channel` reply.
fn negocio_or_error(channel: &str) -> Result<String, Message> {
    protocol::negocio_of(channel)
        .map(str::to_string)
        .map_err(|reason| frames::error(ErrorCode::BadChannel, &reason, Some(channel)))
}

/// A failed read: a protocol error gets the close code RFC 6455 gives it (1007 for text that
/// is not UTF-8, 1002 for a broken frame); a lost connection is just closed.
fn read_failed(conn: ConnId, error: tokio_tungstenite::tungstenite::Error) -> Flow {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::Error;
    tracing::debug!(conn, %error, "client read failed");
    match error {
        Error::Utf8(_) => Flow::Close(Some(close_frame(
            CloseCode::Invalid,
            "text frames must be UTF-8",
        ))),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Flow::Close(None),
        Error::Protocol(_) => Flow::Close(Some(close_frame(
            CloseCode::Protocol,
            "WebSocket protocol error",
        ))),
        _ => Flow::Close(None),
    }
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
