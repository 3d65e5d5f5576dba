//! One stream type for plain and TLS upstream connections, so the relay has a single code path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use crate::runtime::TcpStream;

use super::PrefixedStream;

/// The TCP connection under an upstream stream: to the upstream itself, or to the account's
/// egress proxy, tunneled, with any tunnel bytes the proxy handshake read replayed first.
pub type UpstreamTcp = PrefixedStream<TcpStream>;

/// An upstream byte stream: plain TCP (`ws://`, `http://`) or TLS (`wss://`, `https://`).
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(UpstreamTcp),
    /// TLS over TCP.
    Tls(Box<futures_rustls::client::TlsStream<UpstreamTcp>>),
    /// No connection: stands in under the WebSocket of a resting upstream connection, whose
    /// real stream waits beside it. Reads end, writes fail.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "no stream under a resting WebSocket",
    )
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            UpstreamStream::Closed => Poll::Ready(Ok(0)),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            UpstreamStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            UpstreamStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            UpstreamStream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_close(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            UpstreamStream::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_stand_in_stream_ends_reads_and_refuses_writes() {
        futures_lite::future::block_on(async {
            let mut closed = UpstreamStream::Closed;
            let mut buf = [0u8; 8];
            assert_eq!(closed.read(&mut buf).await.unwrap(), 0);
            assert!(closed.write(b"frame").await.is_err());
            assert!(closed.flush().await.is_ok());
        });
    }
}
