//! Bytes a stream wrapper serves before reading its inner stream again.
//!
//! Both read-side wrappers hold bytes back: [`super::PrefixedStream`] the bytes read before the
//! connection reached it (an HTTP head buffer, a handed-over prefix, a proxy's over-read),
//! [`super::FrameEdge`] the bytes a read brought in past a frame end. [`Replay`] is the one
//! place those bytes are kept, served in order, put back and freed.

/// Held bytes, served front to back before the inner stream is read.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    bytes: Vec<u8>,
    /// How much of `bytes` was served.
    at: usize,
    /// Once all are served, clear the buffer and keep its capacity for the next bytes (an
    /// upstream sends many events per read) instead of freeing it (a client sends now and then).
    keep: bool,
}

impl Replay {
    /// Serves `bytes` first; an empty `bytes` gives its buffer back at once.
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Replay {
            bytes: if bytes.is_empty() { Vec::new() } else { bytes },
            at: 0,
            keep: false,
        }
    }

    /// Nothing held yet; the buffer is kept for reuse once served (until [`Replay::release`]).
    pub(crate) fn kept() -> Self {
        Replay {
            keep: true,
            ..Replay::default()
        }
    }

    /// The bytes not served yet.
    pub(crate) fn pending(&self) -> &[u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    /// `true` while some bytes wait to be served.
    pub(crate) fn has_pending(&self) -> bool {
        self.at < self.bytes.len()
    }

    /// Serves into `buf` the first `cut(pending)` pending bytes, `cut` seeing at most
    /// `buf.len()` of them and answering how many to serve; returns that count.
    pub(crate) fn serve(&mut self, buf: &mut [u8], cut: impl FnOnce(&[u8]) -> usize) -> usize {
        let rest = &self.bytes[self.at..];
        let offered = &rest[..buf.len().min(rest.len())];
        let served = cut(offered).min(offered.len());
        buf[..served].copy_from_slice(&offered[..served]);
        self.at += served;
        if self.at == self.bytes.len() {
            if self.keep {
                self.bytes.clear();
            } else {
                self.bytes = Vec::new();
            }
            self.at = 0;
        }
        served
    }

    /// Holds `bytes` after the pending ones.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Puts `bytes` (already served) back in front of the pending ones.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        let rest = self.pending();
        let mut joined = Vec::with_capacity(bytes.len() + rest.len());
        joined.extend_from_slice(bytes);
        joined.extend_from_slice(rest);
        self.bytes = joined;
        self.at = 0;
    }

    /// Frees the buffer unless it still holds pending bytes.
    pub(crate) fn release(&mut self) {
        if !self.has_pending() {
            self.bytes = Vec::new();
            self.at = 0;
        }
    }

    /// The buffer's capacity (what holding costs while nothing is pending).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// The pending bytes, owned.
    pub(crate) fn into_pending(mut self) -> Vec<u8> {
        if self.at == 0 {
            self.bytes
        } else {
            self.bytes.split_off(self.at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_in_order_then_freed_or_kept() {
        let mut r = Replay::new(b"hello".to_vec());
        let mut buf = [0u8; 3];
        assert_eq!(r.serve(&mut buf, |b| b.len()), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(r.pending(), b"lo");
        assert_eq!(r.serve(&mut buf, |_| 1), 1);
        assert_eq!(r.serve(&mut buf, |b| b.len()), 1);
        assert!(!r.has_pending());
        assert_eq!(r.capacity(), 0, "freed once served");
        let mut k = Replay::kept();
        k.push(b"ab");
        assert_eq!(k.serve(&mut buf, |b| b.len()), 2);
        assert!(k.capacity() > 0, "kept for the next bytes");
        k.release();
        assert_eq!(k.capacity(), 0);
    }

    #[test]
    fn unread_goes_before_the_pending_bytes() {
        let mut r = Replay::new(b"abcd".to_vec());
        let mut two = [0u8; 2];
        r.serve(&mut two, |b| b.len());
        r.unread(b"b");
        assert_eq!(r.pending(), b"bcd");
        r.release();
        assert_eq!(r.into_pending(), b"bcd", "release keeps pending bytes");
        assert!(
            Replay::new(Vec::with_capacity(64))
                .into_pending()
                .capacity()
                == 0
        );
    }
}
