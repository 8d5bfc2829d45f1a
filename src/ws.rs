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
//! frames from the client (control messages), and its queue of event frames, which it writes
//! in batches: every queued frame is fed, then the socket is flushed once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

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

use crate::auth::Principal;
use crate::hub::{Hub, Subscriber};
use crate::protocol::{self, ClientMessage, ErrorCode};

/// Clients only send small control messages: anything larger is refused by tungstenite.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// Frames the connection task takes from its queue per write.
const WRITE_BATCH: usize = 256;
/// A client that accepts no data for this long is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket settings: a small read buffer (clients send little), bounded frames, and a write
/// buffer cap so a client that stops reading errors out instead of growing memory.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct WsContext {
    pub hub: Arc<Hub>,
    pub queue_capacity: usize,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// Spawns the task that waits for the upgrade to complete and then serves the connection.
pub fn spawn_connection(ctx: WsContext, on_upgrade: OnUpgrade, principal: Principal) {
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
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

async fn serve<S>(ctx: WsContext, io: S, principal: Principal)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(socket_config())).await;
    let (mut sink, mut stream) = socket.split();
    let (queue, mut frames) = mpsc::channel(ctx.queue_capacity);
    let me = Subscriber {
        id: ctx.hub.next_conn_id(),
        queue,
        kicked: CancellationToken::new(),
    };
    let mut subscriptions: HashSet<String> = HashSet::new();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    ctx.hub.connection_opened();
    tracing::debug!(conn = me.id, subject = ?principal.subject, "client connected");

    let close: Option<CloseFrame> = loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break Some(close_frame(CloseCode::Away, "server shutting down")),
            _ = me.kicked.cancelled() => {
                break Some(close_frame(CloseCode::Again, "too slow: event queue overflowed; reconnect and resume"))
            }
            incoming = stream.next() => {
                let reply = match incoming {
                    Some(Ok(Message::Text(text))) => {
                        handle(&ctx, &me, &principal, &mut subscriptions, text.as_str())
                    }
                    Some(Ok(Message::Binary(_))) => Some(protocol::error(
                        ErrorCode::BadRequest, "binary frames are not accepted: send JSON text", None)),
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => None, // ping/pong: tungstenite answers pings itself
                    Some(Err(error)) => {
                        tracing::debug!(conn = me.id, %error, "client read failed");
                        break None;
                    }
                };
                if let Some(reply) = reply {
                    if !write(&mut sink, &me.kicked, std::iter::once(reply)).await {
                        break None;
                    }
                }
            }
            n = frames.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    break None;
                }
                if !write(&mut sink, &me.kicked, batch.drain(..)).await {
                    break if me.kicked.is_cancelled() {
                        Some(close_frame(CloseCode::Again, "too slow: event queue overflowed; reconnect and resume"))
                    } else {
                        None
                    };
                }
            }
        }
    };

    ctx.hub.unsubscribe_all(&subscriptions, me.id);
    ctx.hub.connection_closed();
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

/// Feeds every frame and flushes once. False when the socket is unusable, the client accepts
/// nothing for [`WRITE_TIMEOUT`], or the hub kicks it meanwhile.
async fn write<S>(
    sink: &mut futures::stream::SplitSink<WebSocketStream<S>, Message>,
    kicked: &CancellationToken,
    frames: impl Iterator<Item = Message>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        result = tokio::time::timeout(WRITE_TIMEOUT, io) => matches!(result, Ok(Ok(()))),
        _ = kicked.cancelled() => false,
    }
}

/// Answers one control message.
fn handle(
    ctx: &WsContext,
    me: &Subscriber,
    principal: &Principal,
    subscriptions: &mut HashSet<String>,
    text: &str,
) -> Option<Message> {
    let message = match protocol::parse(text) {
        Ok(message) => message,
        Err(reason) => return Some(protocol::error(ErrorCode::BadRequest, &reason, None)),
    };
    Some(match message {
        ClientMessage::Ping => protocol::pong(),
        ClientMessage::Subscribe { channel } => {
            let negocio = match protocol::negocio_of(&channel) {
                Ok(negocio) => negocio,
                Err(reason) => {
                    return Some(protocol::error(
                        ErrorCode::BadChannel,
                        &reason,
                        Some(&channel),
                    ))
                }
            };
            if !principal.grants.allows(negocio) {
                return Some(protocol::error(
                    ErrorCode::Forbidden,
                    "this token does not grant that negocio",
                    Some(&channel),
                ));
            }
            ctx.hub.subscribe(negocio, me);
            subscriptions.insert(negocio.to_string());
            protocol::subscribed(&channel)
        }
        ClientMessage::Unsubscribe { channel } => {
            let negocio = match protocol::negocio_of(&channel) {
                Ok(negocio) => negocio,
                Err(reason) => {
                    return Some(protocol::error(
                        ErrorCode::BadChannel,
                        &reason,
                        Some(&channel),
                    ))
                }
            };
            if subscriptions.remove(negocio) {
                ctx.hub.unsubscribe(negocio, me.id);
            }
            protocol::unsubscribed(&channel)
        }
    })
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
