//! A stream with bytes already read put back in front of it.
//!
//! An egress proxy's answer may arrive with the first tunneled bytes, which belong to the TLS or
//! HTTP reader above. On the client side, the ingress reads an HTTP head (and maybe the first frame bytes after it) before it knows
//! who serves the connection; a handed-over connection arrives with the bytes the giving shard
//! read. [`PrefixedStream`] serves those first, so the WebSocket layer above reads the stream
//! as if nothing had been taken from it, and can record what it reads so the connection can be
//! handed on again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;

use super::replay::Replay;
use super::WaitReadable;

/// A stream that yields `prefix` before reading `inner`; writes go straight to `inner`.
///
/// A recording stream also keeps a copy of every byte read, so a connection can be handed on
/// after a protocol layer above it has read (and buffered) some of it: the receiver replays
/// everything from the start, with nothing lost in the reader's buffer.
pub struct PrefixedStream<S> {
    prefix: Replay,
    inner: S,
    record: Option<Vec<u8>>,
}

impl<S> PrefixedStream<S> {
    /// Wraps `inner` behind `prefix`. An empty prefix gives its buffer back at once (it is
    /// usually the ingress head buffer, which would otherwise live as long as the session).
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        PrefixedStream {
            prefix: Replay::new(prefix),
            inner,
            record: None,
        }
    }

    /// Same, recording what is read until [`PrefixedStream::stop_recording`].
    pub fn recording(prefix: Vec<u8>, inner: S) -> Self {
        PrefixedStream {
            record: Some(Vec::new()),
            ..Self::new(prefix, inner)
        }
    }

    /// Puts `bytes`, read from the wrapped stream after every prefix byte was served, back in
    /// front of it: a resting session reads the first bytes of its next frame without a
    /// WebSocket, then builds one that reads them again.
    pub fn unread(&mut self, bytes: &[u8]) {
        self.prefix.unread(bytes);
        if let Some(record) = self.record.as_mut() {
            record.truncate(record.len().saturating_sub(bytes.len()));
        }
    }

    /// The wrapped stream.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Forgets the recording and records no more (the connection stays where it is).
    pub fn stop_recording(&mut self) {
        self.record = None;
    }

    /// The bytes a new reader must see first, and the wrapped stream (to hand the connection
    /// on): everything read so far when recording, then the prefix bytes not read yet.
    pub fn into_parts(self) -> (Vec<u8>, S) {
        let unread = self.prefix.into_pending();
        match self.record {
            Some(mut read) => {
                read.extend_from_slice(&unread);
                (read, self.inner)
            }
            None => (unread, self.inner),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedStream<S> {
    /// Straight to `inner` once the prefix is served and nothing records (every read of a
    /// session's life but its first): inlined into the reader, no frame of its own.
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.prefix.has_pending() || this.record.is_some() {
            return this.poll_read_prefixed(cx, buf);
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + Unpin> PrefixedStream<S> {
    /// A read while prefix bytes wait or the stream records.
    #[inline(never)]
    fn poll_read_prefixed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let read = if self.prefix.has_pending() {
            Poll::Ready(Ok(self.prefix.serve(buf, <[u8]>::len)))
        } else {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        };
        if let (Some(record), Poll::Ready(Ok(n))) = (self.record.as_mut(), &read) {
            record.extend_from_slice(&buf[..*n]);
        }
        read
    }
}

/// Prefix bytes not served yet are there to read at once.
impl<S: WaitReadable> WaitReadable for PrefixedStream<S> {
    fn can_wait_readable(&self) -> bool {
        self.inner.can_wait_readable()
    }

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_pending() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_readable(cx)
    }
}

crate::net::forward_async_write!(PrefixedStream);

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;

    #[test]
    fn unread_bytes_are_read_again_before_the_rest_of_the_prefix_and_the_stream() {
        futures_lite::future::block_on(async {
            let inner: &[u8] = b" world";
            let mut s = PrefixedStream::recording(b"hello".to_vec(), inner);
            let mut first = [0u8; 2];
            s.read_exact(&mut first).await.unwrap();
            s.unread(&first);
            let mut all = String::new();
            s.read_to_string(&mut all).await.unwrap();
            assert_eq!(all, "hello world");
            assert_eq!(
                s.into_parts().0,
                b"hello world",
                "read once in the recording"
            );
        });
    }

    #[test]
    fn prefix_is_read_before_the_inner_stream_even_in_small_reads() {
        futures_lite::future::block_on(async {
            let inner: &[u8] = b" world";
            let mut s = PrefixedStream::new(b"hello".to_vec(), inner);
            let mut small = [0u8; 3];
            assert_eq!(s.read(&mut small).await.unwrap(), 3);
            assert_eq!(&small, b"hel");
            assert_eq!(s.prefix.pending(), b"lo");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"lo world");
            assert!(s.prefix.pending().is_empty());
            let mut s = PrefixedStream::new(b"abc".to_vec(), &b"d"[..]);
            let mut one = [0u8; 1];
            assert_eq!(s.read(&mut one).await.unwrap(), 1);
            let (prefix, inner) = s.into_parts();
            assert_eq!((prefix.as_slice(), inner), (&b"bc"[..], &b"d"[..]));
        });
    }

    #[test]
    fn a_recording_stream_hands_on_everything_read_then_the_unread_prefix() {
        futures_lite::future::block_on(async {
            let mut s = PrefixedStream::recording(b"abc".to_vec(), &b"defg"[..]);
            let mut two = [0u8; 2];
            s.read_exact(&mut two).await.unwrap();
            let (replay, inner) = s.into_parts();
            assert_eq!((replay.as_slice(), inner), (&b"abc"[..], &b"defg"[..]));
            let mut s = PrefixedStream::recording(b"ab".to_vec(), &b"defg"[..]);
            let mut four = [0u8; 4];
            s.read_exact(&mut four).await.unwrap();
            let (replay, inner) = s.into_parts();
            assert_eq!((replay.as_slice(), inner), (&b"abde"[..], &b"fg"[..]));
            let mut s = PrefixedStream::recording(b"ab".to_vec(), &b"cd"[..]);
            s.stop_recording();
            s.read_exact(&mut two).await.unwrap();
            assert_eq!(s.into_parts().0, b"");
        });
    }
}
