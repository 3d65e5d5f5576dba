//! Transports below WebSocket: plain TCP or TLS streams toward upstream and from clients, the
//! TLS client configuration built once per account, egress proxy tunnels, the client listener's
//! TLS configuration, and the read-side wrappers under a WebSocket (frame-end reads, bytes put
//! back in front), a client's plain text frames read without the codec (waiting for them without a buffer where
//! the stream can), and the read buffers both raw reads reuse per shard.

/// Implements `AsyncWrite` for a read-side wrapper `$ty<S>` by handing every call to its `inner`
/// stream: the wrappers under a WebSocket only change how reads are cut or replayed.
macro_rules! forward_async_write {
    ($ty:ident) => {
        impl<S: futures_lite::AsyncWrite + Unpin> futures_lite::AsyncWrite for $ty<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_close(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_close(cx)
            }
        }
    };
}
pub(crate) use forward_async_write;

pub mod buf_pool;
pub mod client_read;
pub mod client_stream;
pub mod frame_edge;
pub mod prefixed;
pub mod proxy;
pub mod read_buf;
mod replay;
pub mod stream;
pub mod text_check;
pub mod tls;
pub mod tls_server;
pub mod wait_readable;
pub mod ws_frame;

pub use client_stream::ClientStream;
pub use frame_edge::FrameEdge;
pub use prefixed::PrefixedStream;
pub use stream::UpstreamStream;
pub use wait_readable::WaitReadable;
