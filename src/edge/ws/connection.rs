//! One WebSocket's outgoing half: it only frames and writes. Replies go through tungstenite,
//! events (framed once by the hub) straight to the socket's [`SocketOutlet`]; both end up in
//! the same ordered stream of whole frames. Every write flushes once, bounded in time, and gives
//! way at once when the hub kicks the client.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::edge::tapped::Tapped;
use crate::edge::ws::metered::Budget;
pub(crate) use crate::edge::ws::outlet::Io;
use crate::edge::ws::outlet::{Backlogged, SharedIo, SocketOutlet};

/// A client that accepts no data for this long is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
// The stalled client's close reason ([`Flow::stalled`]) and the slow-drop metric's help say so.
const _: () = assert!(WRITE_TIMEOUT.as_secs() == 10);
/// The most bytes of queued frames gathered into one write.
const GATHER: usize = 64 * 1024;
/// How long a closing handshake may take before the socket is simply dropped. A client kicked
/// for being slow needs time to drain what is already on its way before it sees the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What tungstenite runs on: the shared socket, its reads paid for.
pub(crate) type Socket<S> = Tapped<SharedIo<S>, Budget>;

pub(crate) type Incoming<S> = SplitStream<WebSocketStream<Socket<S>>>;

/// How a write went.
pub(crate) enum Written {
    Ok,
    /// The client fell too far behind (the hub kicked it for a full queue, or a write buffer
    /// would outgrow its bound): close with 1013.
    Overflowed,
    /// The client took no data for [`WRITE_TIMEOUT`]: close with 1013.
    Stalled,
    /// The socket is gone.
    Gone,
}

/// What the connection does next.
pub(crate) enum Flow {
    Continue,
    /// Close: with this frame (then wait for the client's reply), or at once when `None`.
    Close(Option<CloseFrame>),
    /// The client sent a Close frame: send tungstenite's reply (RFC 6455 §5.5.1), then close.
    ClientClosed,
}

impl Flow {
    /// The flow of a client too slow for its queue.
    pub(crate) fn too_slow() -> Flow {
        Flow::Close(Some(close_frame(
            CloseCode::Again,
            "too slow: event queue overflowed; reconnect and resume with since",
        )))
    }

    /// The flow of a client that took no data for [`WRITE_TIMEOUT`].
    pub(crate) fn stalled() -> Flow {
        Flow::Close(Some(close_frame(
            CloseCode::Again,
            "too slow: took no data for 10 s; reconnect and resume with since",
        )))
    }

    /// True when this ends the connection with 1013 (too slow, either way).
    pub(crate) fn is_too_slow(&self) -> bool {
        matches!(self, Flow::Close(Some(frame)) if frame.code == CloseCode::Again)
    }

    pub(crate) fn is_continue(&self) -> bool {
        matches!(self, Flow::Continue)
    }
}

impl From<Written> for Flow {
    fn from(w: Written) -> Flow {
        match w {
            Written::Ok => Flow::Continue,
            Written::Overflowed => Flow::too_slow(),
            Written::Stalled => Flow::stalled(),
            Written::Gone => Flow::Close(None),
        }
    }
}

/// `io` within [`WRITE_TIMEOUT`] ([`Written::Stalled`] past it), or [`Written::Overflowed`] as
/// soon as the hub kicks the client.
async fn bounded<E>(
    kicked: &CancellationToken,
    io: impl Future<Output = Result<(), E>>,
    failed: impl FnOnce(E) -> Written,
) -> Written {
    // Biased, the write first: it almost always completes at once, and then the kick future is
    // never polled (polling it registers a waiter).
    tokio::select! {
        biased;
        result = tokio::time::timeout(WRITE_TIMEOUT, io) => match result {
            Ok(Ok(())) => Written::Ok,
            Ok(Err(error)) => failed(error),
            Err(_) => Written::Stalled,
        },
        _ = kicked.cancelled() => Written::Overflowed,
    }
}

/// A client whose backlog is full is slow; any other failure means the socket is gone.
fn io_failed(error: &io::Error) -> Written {
    if Backlogged::is(error) {
        Written::Overflowed
    } else {
        Written::Gone
    }
}

pub(crate) fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The writing half of one client's socket.
pub(crate) struct Connection<S> {
    sink: SplitSink<WebSocketStream<Socket<S>>, Message>,
    /// The socket's ordered writes, shared with the hub.
    outlet: Arc<SocketOutlet<S>>,
    /// Cancelled by the hub when the client's queue overflowed.
    kicked: CancellationToken,
}

impl<S: Io> Connection<S> {
    pub(crate) fn new(
        socket: WebSocketStream<Socket<S>>,
        outlet: Arc<SocketOutlet<S>>,
        kicked: CancellationToken,
    ) -> (Self, Incoming<S>) {
        let (sink, incoming) = socket.split();
        (
            Connection {
                sink,
                outlet,
                kicked,
            },
            incoming,
        )
    }

    pub(crate) fn outlet(&self) -> &SocketOutlet<S> {
        &self.outlet
    }

    /// Feeds every message to tungstenite and flushes once.
    pub(crate) async fn write(&mut self, frames: impl Iterator<Item = Message>) -> Written {
        let sink = &mut self.sink;
        let io = async {
            for frame in frames {
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        let kicked = &self.kicked;
        bounded(kicked, io, |error| match error {
            WsError::WriteBufferFull(_) => Written::Overflowed,
            WsError::Io(error) => io_failed(&error),
            _ => Written::Gone,
        })
        .await
    }

    /// Writes frames the hub framed (whole WebSocket frames), gathered into writes of up to
    /// [`GATHER`] bytes (one system call each, not one per frame), then flushes once.
    pub(crate) async fn write_wire(&mut self, frames: impl Iterator<Item = Bytes>) -> Written {
        let mut socket = SharedIo(self.outlet.clone());
        let io = async {
            let mut gathered = BytesMut::new();
            for frame in frames {
                if !gathered.is_empty() && gathered.len() + frame.len() > GATHER {
                    socket.write_all(&gathered.split()).await?;
                }
                gathered.extend_from_slice(&frame);
            }
            if !gathered.is_empty() {
                socket.write_all(&gathered).await?;
            }
            socket.flush().await
        };
        bounded(&self.kicked, io, |error| io_failed(&error)).await
    }

    /// Writes out what waits in the socket's backlog.
    pub(crate) async fn flush(&mut self) -> Written {
        self.write_wire(std::iter::empty()).await
    }

    /// Ends the connection: with `frame` (waiting, a little, for the client's reply, so the
    /// frame is not lost in a reset), or by sending the reply tungstenite queued to the
    /// client's own Close, or at once.
    pub(crate) async fn close(mut self, mut incoming: Incoming<S>, how: Flow) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            match how {
                Flow::ClientClosed => self.sink.flush().await,
                Flow::Close(Some(frame)) => {
                    self.sink.send(Message::Close(Some(frame))).await?;
                    while let Some(Ok(message)) = incoming.next().await {
                        if message.is_close() {
                            break;
                        }
                    }
                    Ok(())
                }
                Flow::Close(None) | Flow::Continue => Ok(()),
            }
        })
        .await;
    }
}
