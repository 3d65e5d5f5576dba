//! A stream that first gives back bytes already read from it: an HTTP CONNECT proxy may send
//! the first tunneled bytes in the same segment as its `200` head, and those belong to the
//! TLS or HTTP reader above, not to the proxy handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;

/// `inner`, read after the bytes in `prefix`; writes go straight through.
pub struct Prefixed<S> {
    inner: S,
    /// Bytes read past the proxy's answer, served before `inner` is read again; empty (and
    /// unallocated) for a direct connection and once served.
    prefix: Vec<u8>,
    /// How much of `prefix` was served.
    served: usize,
}

impl<S> Prefixed<S> {
    /// `inner` with nothing to replay.
    pub fn new(inner: S) -> Self {
        Prefixed::with_prefix(inner, Vec::new())
    }

    /// `inner`, whose next reads return `prefix` first.
    pub fn with_prefix(inner: S, prefix: Vec<u8>) -> Self {
        Prefixed {
            inner,
            prefix,
            served: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.served < this.prefix.len() {
            let rest = &this.prefix[this.served..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            this.served += n;
            if this.served == this.prefix.len() {
                this.prefix = Vec::new();
                this.served = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

super::forward_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;

    #[test]
    fn the_prefix_comes_before_the_stream_in_reads_of_any_size() {
        futures_lite::future::block_on(async {
            let inner = futures_lite::io::Cursor::new(b"world".to_vec());
            let mut s = Prefixed::with_prefix(inner, b"hello ".to_vec());
            let mut first = [0u8; 4];
            s.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"hell");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"o world");
            assert_eq!(s.prefix.capacity(), 0, "a served prefix is freed");
        });
    }
}
