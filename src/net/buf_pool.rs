//! Read buffers reused on their thread (one shard) instead of allocated and zero-filled per turn.
//!
//! A socket read needs an initialised `&mut [u8]`, so a fresh buffer is zero-filled before the
//! bytes that overwrite it arrive: per turn, 16 KiB for the relay's upstream read buffer
//! (`shard/cut_through.rs`) and twice a client frame's size for its raw read (the frame as it
//! came and its unmasked text, `net/client_read.rs`). A [`PooledBuf`] comes from this thread's
//! pool with the bytes an earlier user left in it, and goes back, still initialised, when dropped
//! (or, once [frozen](PooledBuf::freeze) into [`Bytes`], when the last handle on it drops): in
//! steady state a turn neither allocates nor zero-fills a read buffer.
//!
//! Reuse never shows old bytes: a user reads from a buffer only the bytes it wrote itself (each
//! keeps its own filled length), and a frozen buffer is seen only up to the length given.
//!
//! The pool is bounded: it keeps at most [`KEPT_BYTES`] per thread, and never a buffer larger
//! than [`MAX_KEPT_LEN`] (a rare huge frame's buffer is freed, not kept for the shard's life).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use bytes::Bytes;

/// Most bytes of buffers kept per thread (a shard): about 64 turns' worth of 32 KiB buffers.
pub const KEPT_BYTES: usize = 2 * 1024 * 1024;

/// Largest buffer kept; larger ones are freed when dropped.
pub const MAX_KEPT_LEN: usize = 256 * 1024;

/// Buffers kept on this thread and the bytes they hold.
#[derive(Default)]
struct Pool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// An initialised byte buffer taken from this thread's pool, given back when dropped. Its bytes
/// are whatever an earlier user left: read only what was written.
#[derive(Default)]
pub struct PooledBuf {
    buf: Vec<u8>,
}

impl PooledBuf {
    /// A buffer of at least `len` bytes (more when the pool's buffer is larger): the most
    /// recently returned one, extended with zeros if it is shorter, or a new zeroed one. A
    /// buffer the pool would not keep (over [`MAX_KEPT_LEN`]) is always new.
    pub fn take(len: usize) -> Self {
        if len > MAX_KEPT_LEN {
            return PooledBuf { buf: vec![0; len] };
        }
        let mut buf = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                let buf = p.bufs.pop()?;
                p.bytes -= buf.len();
                Some(buf)
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        PooledBuf { buf }
    }

    /// Makes the buffer at least `len` bytes long: taken from the pool if it holds none yet,
    /// else extended with zeros (its bytes so far kept).
    pub fn ensure(&mut self, len: usize) {
        if self.buf.is_empty() {
            *self = PooledBuf::take(len);
        } else if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
    }

    /// The first `len` bytes (at most the buffer's length) as [`Bytes`]. A view of the buffer,
    /// which goes back to the pool when the last handle drops, when they fill at least half of
    /// it; else a copy, and the buffer goes back at once (a small frame never holds a large
    /// buffer).
    pub fn freeze(self, len: usize) -> Bytes {
        let len = len.min(self.buf.len());
        if len < self.buf.len() / 2 {
            return Bytes::copy_from_slice(&self.buf[..len]);
        }
        Bytes::from_owner(Frozen { buf: self, len })
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let len = self.buf.len();
        if len == 0 || len > MAX_KEPT_LEN {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        // A thread ending drops its pool first: a buffer dropped after that is freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.bytes + len <= KEPT_BYTES {
                p.bytes += len;
                p.bufs.push(buf);
            }
        });
    }
}

/// A pooled buffer behind [`Bytes`]: its first `len` bytes.
struct Frozen {
    buf: PooledBuf,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of buffers this thread's pool keeps (each test runs on its own thread).
    fn kept() -> (usize, usize) {
        POOL.with(|p| {
            let p = p.borrow();
            (p.bufs.len(), p.bytes)
        })
    }

    #[test]
    fn a_dropped_buffer_is_taken_again_initialised_and_not_zeroed() {
        let mut a = PooledBuf::take(100);
        assert_eq!(&a[..], &[0u8; 100][..], "a new buffer is zeroed");
        a.fill(7);
        let at = a.as_ptr();
        drop(a);
        assert_eq!(kept(), (1, 100));
        let b = PooledBuf::take(50);
        assert_eq!(
            (b.as_ptr(), b.len()),
            (at, 100),
            "the same buffer, as long as it was"
        );
        assert_eq!(kept(), (0, 0));
        drop(b);
        let c = PooledBuf::take(150);
        assert_eq!(c.len(), 150);
        assert_eq!(&c[..100], &[7u8; 100][..], "an earlier user's bytes stay");
        assert_eq!(&c[100..], &[0u8; 50][..], "the extension is zeroed");
    }

    #[test]
    fn a_frozen_buffer_shows_only_its_length_and_comes_back_with_the_last_handle() {
        let mut buf = PooledBuf::take(64);
        buf.fill(b'x');
        drop(buf);
        let mut buf = PooledBuf::take(64);
        buf[..40].copy_from_slice(&[b'n'; 40]);
        let at = buf.as_ptr();
        let bytes = buf.freeze(40);
        assert_eq!(
            &bytes[..],
            &[b'n'; 40][..],
            "nothing of the earlier bytes past 40"
        );
        assert_eq!(bytes.as_ptr(), at, "a view, not a copy");
        let other = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(kept(), (0, 0), "a handle is still out");
        drop(other);
        assert_eq!(kept(), (1, 64));
    }

    #[test]
    fn a_small_part_is_copied_and_its_buffer_comes_back_at_once() {
        let mut buf = PooledBuf::take(1_000);
        buf[..3].copy_from_slice(b"abc");
        let at = buf.as_ptr();
        let bytes = buf.freeze(3);
        assert_eq!(&bytes[..], b"abc");
        assert_ne!(bytes.as_ptr(), at);
        assert_eq!(kept(), (1, 1_000));
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_bytes_and_no_huge_buffer() {
        drop(PooledBuf::take(100));
        let huge = PooledBuf::take(MAX_KEPT_LEN + 1);
        assert_eq!(kept(), (1, 100), "a huge buffer does not take a kept one");
        drop(huge);
        assert_eq!(kept(), (1, 100), "and is freed");
        drop(PooledBuf::take(100));
        let bufs: Vec<_> = (0..KEPT_BYTES / MAX_KEPT_LEN + 3)
            .map(|_| PooledBuf::take(MAX_KEPT_LEN))
            .collect();
        drop(bufs);
        assert_eq!(kept(), (KEPT_BYTES / MAX_KEPT_LEN, KEPT_BYTES));
    }

    #[test]
    fn an_empty_buffer_takes_from_the_pool_on_first_use_and_grows_after() {
        drop(PooledBuf::take(16));
        let mut buf = PooledBuf::default();
        assert!(buf.is_empty());
        buf.ensure(8);
        assert_eq!((buf.len(), kept()), (16, (0, 0)), "the pool's buffer");
        buf[..4].copy_from_slice(b"keep");
        buf.ensure(32);
        assert_eq!((&buf[..4], buf.len()), (&b"keep"[..], 32));
    }
}
