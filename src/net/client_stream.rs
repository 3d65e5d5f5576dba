//! One stream type for accepted client connections, plain or TLS, so ingress, the HTTP front
//! door and WebSocket sessions run one code path whatever the listener speaks.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::WaitReadable;
use crate::runtime::TcpStream;

/// An accepted client connection.
pub enum ClientStream {
    /// Plain TCP (`http://`, `ws://`).
    Plain(TcpStream),
    /// TLS over TCP (`https://`, `wss://`), handshake done.
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The client's address (for refusal logs).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        let tcp = match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        };
        tcp.peer_addr().map_err(io::Error::from)
    }

    /// `true` over TLS: such a connection cannot move to another shard (its TLS state lives
    /// in this shard's memory, not in the socket).
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Ends the sending side: over TLS a `close_notify` first, then the TCP half-close.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.shutdown(Shutdown::Write).await.map_err(io::Error::from),
            ClientStream::Tls(s) => {
                s.get_mut().1.send_close_notify();
                s.flush().await?;
                let tcp = s.get_ref().0;
                tcp.shutdown(Shutdown::Write).await.map_err(io::Error::from)
            }
        }
    }
}

/// Plain TCP waits for bytes on its socket; TLS cannot wait without reading (bytes on the
/// socket need not make a record, and the TLS reader may hold plaintext already).
impl WaitReadable for ClientStream {
    fn can_wait_readable(&self) -> bool {
        matches!(self, ClientStream::Plain(_))
    }

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Plain(s) => s.poll_readable(cx),
            ClientStream::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_close(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
