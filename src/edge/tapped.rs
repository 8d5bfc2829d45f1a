//! A socket whose reads are seen: the byte count of every read that brought data goes to a
//! [`ReadTap`], which may refuse it (the read then fails with its error). Writes pass through.
//! The HTTP side uses it to learn when a pending connection first speaks
//! ([`crate::edge::http::pending`]), the WebSocket to make clients pay for what they send
//! ([`crate::edge::ws::metered`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What sees a socket's reads.
pub(crate) trait ReadTap {
    /// `bytes` (more than zero) were just read; an error fails the read.
    fn on_read(&mut self, bytes: usize) -> io::Result<()>;
}

/// `inner`, its reads seen by `tap`.
pub struct Tapped<S, T> {
    inner: S,
    tap: T,
}

impl<S, T> Tapped<S, T> {
    pub(crate) fn new(inner: S, tap: T) -> Tapped<S, T> {
        Tapped { inner, tap }
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin, T: ReadTap + Unpin> AsyncRead for Tapped<S, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            if let Err(error) = this.tap.on_read(read) {
                return Poll::Ready(Err(error));
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin, T: Unpin> AsyncWrite for Tapped<S, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
