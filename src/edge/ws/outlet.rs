//! One socket's writing side, shared by the connection's task and the hub's direct writes.
//!
//! Every byte for the client goes through one lock and one backlog, in order: the hub's direct
//! writes ([`Outlet::offer`]), tungstenite's frames (the socket the task's WebSocket runs on is a
//! [`SharedIo`] of the same outlet), and the events the task writes from its queue. Invariants,
//! all kept under the lock:
//! - **Whole frames.** A write is taken whole or not at all: what the socket does not take now
//!   goes to the backlog, which is written before anything else. So a direct write never lands
//!   inside another frame.
//! - **Order.** The hub writes directly only when the task is not `busy`, the backlog is empty
//!   and (therefore) the queue is empty. Whenever the hub queues, it marks the task busy, and the
//!   task clears `busy` only once its queue, its replay de-duplication and the backlog are all
//!   empty. While the task handles a client's message it holds `busy`, so a `subscribed` reply
//!   or a replay is never overtaken by a live event.
//! - **Backpressure, bounded.** A write waits (`Pending`) while the backlog is not written out,
//!   so the backlog holds at most one write's rest: the end of a direct frame, of tungstenite's
//!   buffer (16 KiB and a frame) or of the task's gathered events (64 KiB and a frame), never
//!   more than [`BACKLOG_LIMIT`]. A client that does not read is found by its queue overflowing
//!   or a write outlasting the write timeout, and is closed with 1013.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use nix::libc::MSG_NOSIGNAL;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::fanout::frames::Outbound;
use crate::fanout::outlet::{queue, Offered, Outlet};

/// What a WebSocket runs on: a TCP stream, or whatever hyper's upgrade hands over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The most bytes one write may leave in the backlog (a hard bound: writes are far smaller).
pub const BACKLOG_LIMIT: usize = 256 * 1024;

/// The error of a write whose rest would not fit the backlog (no write this server makes).
#[derive(Debug, thiserror::Error)]
#[error("one write left more than {BACKLOG_LIMIT} bytes for the client")]
pub struct Backlogged;

impl Backlogged {
    /// True when `error` is this one.
    pub fn is(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|e| e.is::<Backlogged>())
    }
}

/// What the task must do before the hub may write directly again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Done: the connection is idle.
    Idle,
    /// Frames are queued, or a replay's duplicates are still expected: keep serving the queue.
    Busy,
    /// Bytes wait in the backlog: flush, then try again.
    Flush,
}

/// One socket, its backlog, and its connection's queue.
pub(crate) struct SocketOutlet<S> {
    state: Mutex<State<S>>,
    queue: mpsc::Sender<Arc<Outbound>>,
}

/// In the order an offer reads it (`repr(C)` keeps that order): what every offer checks sits
/// within a few dozen bytes of the lock, where the hub's touch ahead (`offer_all`) has already
/// brought the memory in, not a cache line further on, fetched by a second miss per recipient.
#[repr(C)]
struct State<S> {
    /// Per negocio resumed with `since`: events at or below it are skipped, whichever way they
    /// would have gone (the replay read the log, which can be ahead of the listener). Boxed, and
    /// only while a floor is set: most connections never have one.
    #[allow(
        clippy::box_collection,
        reason = "one pointer beside the lock, not a map's 48 bytes pushing the rest away"
    )]
    floors: Option<Box<HashMap<String, i64>>>,
    /// The task owns the writes: the hub must queue.
    busy: bool,
    /// Accepted for the client, not yet taken by the socket: the rest of a frame, then whole
    /// frames.
    backlog: BytesMut,
    io: S,
    /// The client was given up as too slow, and counted (see [`Outlet::claim_drop`]).
    dropped: bool,
}

impl<S> std::fmt::Debug for SocketOutlet<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketOutlet").finish_non_exhaustive()
    }
}

impl<S: Io> SocketOutlet<S> {
    /// The outlet of `io`, whose task reads `queue`; busy until the task first releases it.
    pub(crate) fn new(io: S, queue: mpsc::Sender<Arc<Outbound>>) -> Arc<SocketOutlet<S>> {
        Arc::new(SocketOutlet {
            state: Mutex::new(State {
                io,
                backlog: BytesMut::new(),
                busy: true,
                floors: None,
                dropped: false,
            }),
            queue,
        })
    }

    // Nothing panics while holding the lock except in the socket's own code; the state (a
    // buffer and a flag) is consistent after every step, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State<S>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The task takes over the writes (it is about to handle a client's message).
    pub(crate) fn hold(&self) {
        self.lock().busy = true;
    }

    /// Hands the writes back to the hub when `idle()` (checked under the lock, so no frame can
    /// be queued in between) and nothing is left in the backlog.
    pub(crate) fn release(&self, idle: impl FnOnce() -> bool) -> Release {
        let mut state = self.lock();
        if !state.backlog.is_empty() {
            Release::Flush
        } else if idle() {
            state.busy = false;
            Release::Idle
        } else {
            Release::Busy
        }
    }

    /// From now on, `negocio`'s events at or below `since` are skipped.
    pub(crate) fn set_floor(&self, negocio: &str, since: i64) {
        self.lock()
            .floors
            .get_or_insert_default()
            .insert(negocio.to_string(), since);
    }

    /// `negocio`'s events are all offered again.
    pub(crate) fn lift_floor(&self, negocio: &str) {
        let mut state = self.lock();
        if let Some(floors) = &mut state.floors {
            floors.remove(negocio);
            if floors.is_empty() {
                state.floors = None;
            }
        }
    }

    /// Room left in the queue.
    pub(crate) fn queue_room(&self) -> usize {
        self.queue.capacity()
    }

    /// Frames in the queue, not yet taken by the task.
    pub(crate) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

impl<S: Io> Outlet for SocketOutlet<S> {
    fn offer(&self, frame: &Arc<Outbound>, direct: bool) -> Offered {
        let mut state = self.lock();
        if frame.is_event
            && state
                .floors
                .as_ref()
                .and_then(|floors| floors.get(&frame.negocio_id))
                .is_some_and(|floor| frame.seq <= *floor)
        {
            return Offered::Skipped;
        }
        if direct && !state.busy && state.backlog.is_empty() {
            if let Some(n) = state.write_now(&frame.wire) {
                if n < frame.wire.len() {
                    // The task finishes the frame; the empty marker wakes it to.
                    state.backlog.extend_from_slice(&frame.wire[n..]);
                    state.busy = true;
                    let _ = queue(&self.queue, &Arc::new(flush_marker()));
                }
                return Offered::Written;
            }
        }
        state.busy = true;
        queue(&self.queue, frame)
    }

    fn claim_drop(&self) -> bool {
        !std::mem::replace(&mut self.lock().dropped, true)
    }
}

/// A queued frame with nothing to write: it wakes the task to flush the backlog.
fn flush_marker() -> Outbound {
    Outbound {
        seq: 0,
        negocio_id: String::new(),
        wire: Bytes::new(),
        is_event: false,
    }
}

impl<S: Io> State<S> {
    /// Writes what the socket takes without waiting; `None` when it takes nothing now (full,
    /// or failed: the task meets the error on its own write).
    fn write_now(&mut self, bytes: &[u8]) -> Option<usize> {
        // A plain TCP socket (every connection but those whose first frames came with the
        // upgrade) is written with one send(2): no readiness lookup in tokio, whose state for
        // the socket is another cache line per recipient. tokio's view stays right: it learns
        // the socket is full from its own next write, which the task makes before it waits.
        if let Some(tcp) = (&self.io as &dyn Any).downcast_ref::<TcpStream>() {
            // MSG_NOSIGNAL: a peer that is gone is an error here, never a SIGPIPE (socket2's
            // plain `send` passes no flags; std and tokio pass this one).
            return match SockRef::from(tcp).send_with_flags(bytes, MSG_NOSIGNAL) {
                Ok(n) if n > 0 => Some(n),
                _ => None,
            };
        }
        // A waker that does nothing: no one waits on this write. The socket keeps it as its
        // write waker only until the task's next write, which happens before the task waits on
        // the socket (the task waits only while busy, and then the hub does not write).
        let mut cx = Context::from_waker(Waker::noop());
        // Outside tokio's cooperative budget: the publishing task writes to many sockets in one
        // poll, and past its budget (128 operations) every write would say "not now".
        let io = &mut self.io;
        let write = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            Pin::new(&mut *io).poll_write(cx, bytes)
        }));
        match std::pin::pin!(write).poll(&mut cx) {
            Poll::Ready(Ok(n)) if n > 0 => Some(n),
            _ => None,
        }
    }

    /// Writes the backlog out; ready when it is empty.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.backlog.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.backlog) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.backlog.advance(n),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes all of `bytes` once the backlog is written out (until then, nothing: that is the
    /// writers' backpressure): written now as far as the socket allows, the rest to the backlog.
    fn accept(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map_ok(|()| 0),
        }
        let written = match Pin::new(&mut self.io).poll_write(cx, bytes) {
            Poll::Ready(Ok(0)) if !bytes.is_empty() => {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => 0,
        };
        let rest = &bytes[written..];
        if rest.len() > BACKLOG_LIMIT {
            return Poll::Ready(Err(io::Error::other(Backlogged)));
        }
        self.backlog.extend_from_slice(rest);
        Poll::Ready(Ok(bytes.len()))
    }
}

/// The socket as the task's WebSocket sees it: reads pass through, writes join the outlet's
/// order. A clone is another handle on the same socket.
pub(crate) struct SharedIo<S>(pub(crate) Arc<SocketOutlet<S>>);

impl<S> Clone for SharedIo<S> {
    fn clone(&self) -> Self {
        SharedIo(self.0.clone())
    }
}

impl<S: Io> AsyncRead for SharedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_read(cx, buf)
    }
}

impl<S: Io> AsyncWrite for SharedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().accept(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.0.lock();
        match state.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut state.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.0.lock();
        match state.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut state.io).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn outbound(seq: i64, negocio_id: &str, wire: Vec<u8>, is_event: bool) -> Arc<Outbound> {
        Arc::new(Outbound {
            seq,
            negocio_id: negocio_id.into(),
            wire: Bytes::from(wire),
            is_event,
        })
    }

    /// An event of negocio "n": `len` bytes of `byte`, seq `byte`.
    fn frame(byte: u8, len: usize) -> Arc<Outbound> {
        outbound(i64::from(byte), "n", vec![byte; len], true)
    }

    /// A floor skips its negocio's events at or below it, directly or queued; other
    /// negocios' events and frames that are not events pass; lifted, everything passes.
    /// The hub and the connection may both find the client too slow at once: one claims it.
    #[tokio::test]
    async fn a_drop_is_claimed_once() {
        let (server, _client) = tokio::io::duplex(64);
        let (queue, _frames) = mpsc::channel(8);
        let outlet = SocketOutlet::new(server, queue);
        assert!(outlet.claim_drop());
        assert!(!outlet.claim_drop());
    }

    #[tokio::test]
    async fn a_floor_skips_events_at_or_below_since() {
        let (server, _client) = tokio::io::duplex(1024);
        let (queue, mut frames) = mpsc::channel(8);
        let outlet = SocketOutlet::new(server, queue);
        outlet.set_floor("n", 5);
        assert_eq!(outlet.offer(&frame(5, 10), true), Offered::Skipped);
        assert_eq!(outlet.offer(&frame(6, 10), true), Offered::Queued);
        assert_eq!(frames.recv().await.map(|f| f.seq), Some(6));
        assert_eq!(outlet.release(|| true), Release::Idle);
        assert_eq!(outlet.offer(&frame(4, 10), true), Offered::Skipped);
        let other = outbound(3, "m", vec![3; 10], true);
        assert_eq!(outlet.offer(&other, true), Offered::Written);
        let stats = outbound(2, "n", vec![2; 10], false);
        assert_eq!(outlet.offer(&stats, true), Offered::Written);
        outlet.lift_floor("n");
        assert_eq!(outlet.offer(&frame(1, 10), true), Offered::Written);
    }

    /// A socket that takes 64 bytes at most: a 100-byte frame is written in part, the rest and
    /// the next frames follow in order, whole, once the task flushes.
    #[tokio::test]
    async fn a_frame_written_in_part_is_finished_before_the_next() {
        let (server, mut client) = tokio::io::duplex(64);
        let (queue, mut frames) = mpsc::channel(8);
        let outlet = SocketOutlet::new(server, queue);
        assert_eq!(
            outlet.offer(&frame(1, 10), true),
            Offered::Queued,
            "busy at first"
        );
        assert_eq!(frames.recv().await.unwrap().seq, 1);
        let mut io = SharedIo(outlet.clone());
        io.write_all(&[1; 10]).await.unwrap();
        assert_eq!(outlet.release(|| frames.is_empty()), Release::Idle);

        assert_eq!(outlet.offer(&frame(2, 100), true), Offered::Written);
        // The rest of frame 2 waits: frame 3 is queued behind it, and the task is woken.
        assert_eq!(outlet.offer(&frame(3, 20), true), Offered::Queued);
        assert_eq!(outlet.release(|| frames.is_empty()), Release::Flush);
        let marker = frames.recv().await.unwrap();
        assert!(marker.wire.is_empty());
        let third = frames.recv().await.unwrap();
        let writer = tokio::spawn(async move {
            io.write_all(&third.wire).await.unwrap();
            io.flush().await.unwrap();
            io
        });
        let mut got = vec![0u8; 130];
        client.read_exact(&mut got).await.unwrap();
        writer.await.unwrap();
        let mut want = vec![1u8; 10];
        want.extend([2u8; 100]);
        want.extend([3u8; 20]);
        assert_eq!(got, want);
        assert_eq!(outlet.release(|| frames.is_empty()), Release::Idle);
        assert_eq!(outlet.offer(&frame(4, 5), true), Offered::Written);
    }

    /// A connected pair of TCP sockets: (the server's, the client's).
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(connect, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    /// A real TCP socket, written with send(2): while the client reads nothing, frames go out
    /// directly until the socket is full, the last one in part (its rest waits in the backlog,
    /// and the flush marker wakes the task); the next frame is queued. Once the task has
    /// written the queue, the client has every byte once, in order, and nothing more.
    #[tokio::test]
    async fn a_full_tcp_socket_queues_and_the_client_gets_every_byte_once_in_order() {
        const SIZE: usize = 10_007; // divides no buffer size: the last frame goes in part
        let (server, mut client) = tcp_pair().await;
        let (queue, mut frames) = mpsc::channel(8);
        let outlet = SocketOutlet::new(server, queue);
        assert_eq!(outlet.release(|| true), Release::Idle);
        let mut sent = Vec::new();
        for n in 0u32.. {
            assert!(sent.len() < 256 << 20, "the socket never filled");
            // Numbered bytes: a frame repeated, cut or swapped shows.
            let wire: Vec<u8> = (0..SIZE).map(|i| (n as usize * 31 + i) as u8).collect();
            let f = outbound(i64::from(n), "n", wire, true);
            sent.extend_from_slice(&f.wire);
            match outlet.offer(&f, true) {
                Offered::Written => {}
                Offered::Queued => break,
                other => panic!("offer {n}: {other:?}"),
            }
        }
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.map(|_| got)
        });
        let task = async {
            let mut io = SharedIo(outlet.clone());
            let marker = frames.recv().await.unwrap();
            assert!(marker.wire.is_empty(), "the last direct frame went whole");
            while let Ok(f) = frames.try_recv() {
                io.write_all(&f.wire).await.unwrap();
            }
            io.flush().await.unwrap();
            assert_eq!(outlet.release(|| frames.is_empty()), Release::Idle);
        };
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the task's writes did not finish");
        drop(outlet); // the socket closes: the client reads to its end
        let got = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the client did not get every byte")
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), sent.len(), "bytes lost or repeated");
        assert!(got == sent, "bytes out of order");
    }

    /// A direct write to a peer that reset the connection fails quietly (the frame is queued,
    /// and the task meets the error) and raises no SIGPIPE: this process ignores SIGPIPE only
    /// because Rust's runtime set it so, which a host may undo. SIGPIPE is blocked on this
    /// (the only) thread, so one raised would wait there for the signalfd to read.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_to_a_reset_peer_raises_no_sigpipe() {
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let (server, client) = tcp_pair().await;
        // Closed with a zero linger, the client resets the connection.
        SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let mut pipe = SigSet::empty();
        pipe.add(Signal::SIGPIPE);
        pipe.thread_block().unwrap();
        let raised = SignalFd::with_flags(&pipe, SfdFlags::SFD_NONBLOCK).unwrap();
        let (queue, _frames) = mpsc::channel(8);
        let outlet = SocketOutlet::new(server, queue);
        for _ in 0..3 {
            assert_eq!(outlet.release(|| true), Release::Idle);
            assert_eq!(outlet.offer(&frame(1, 100), true), Offered::Queued);
        }
        let signal = raised.read_signal().unwrap();
        pipe.thread_unblock().unwrap();
        assert!(signal.is_none(), "a direct write raised SIGPIPE");
    }

    /// A client that reads nothing: once its socket is full, the next write waits (no bytes
    /// pile up); a single write too large for the backlog fails as [`Backlogged`].
    #[tokio::test]
    async fn writes_wait_for_the_backlog_and_it_is_bounded() {
        let (server, _client) = tokio::io::duplex(64);
        let (queue, _frames) = mpsc::channel(8);
        let mut io = SharedIo(SocketOutlet::new(server, queue));
        io.write_all(&[0u8; 1000]).await.unwrap();
        let waits = tokio::time::timeout(Duration::from_millis(50), io.write_all(&[0u8; 10]));
        assert!(waits.await.is_err(), "a write did not wait for the backlog");

        let (server, _client) = tokio::io::duplex(64);
        let (queue, _frames) = mpsc::channel(8);
        let mut io = SharedIo(SocketOutlet::new(server, queue));
        let error = io
            .write_all(&vec![0u8; BACKLOG_LIMIT + 65])
            .await
            .unwrap_err();
        assert!(Backlogged::is(&error), "{error}");
    }
}
