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
//! Freezing allocates nothing either: a buffer is a reference-counted [`BytesMut`] (its count
//! allocated once, with the buffer), the pool keeps a handle on every buffer it hands out, and a
//! frozen one is taken again once the pool's handle is the last ([`Bytes::is_unique`]). A
//! `Bytes::from_owner` per freeze boxed a small owner: two allocations per client frame
//! (`perf/README.md`, session 9).
//!
//! Reuse never shows old bytes: a user reads from a buffer only the bytes it wrote itself (each
//! keeps its own filled length), and a frozen buffer is seen only up to the length given.
//!
//! The pool is bounded: it keeps at most [`KEPT_BYTES`] per thread, counting buffers still out
//! behind `Bytes` (the oldest handle is let go first: that buffer is then freed with its last
//! `Bytes`), and never a buffer larger than [`MAX_KEPT_LEN`] (a rare huge frame's buffer is freed,
//! not kept for the shard's life).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{fence, Ordering};

use bytes::{Bytes, BytesMut};

/// Most bytes of buffers kept per thread (a shard): about 64 turns' worth of 32 KiB buffers.
pub const KEPT_BYTES: usize = 2 * 1024 * 1024;

/// Largest buffer kept; larger ones are freed when dropped.
pub const MAX_KEPT_LEN: usize = 256 * 1024;

/// Most kept buffers a take looks at, newest first, for one no one else holds: a shard with many
/// frames out does not look through all of them per frame (an older idle buffer is let go in
/// its turn, [`KEPT_BYTES`]).
const SCAN: usize = 64;

/// Buffers this thread's pool holds a handle on (whole, oldest first; idle ones and ones still
/// out behind `Bytes`), and the bytes they hold.
#[derive(Default)]
struct Pool {
    bufs: VecDeque<Bytes>,
    bytes: usize,
}

impl Pool {
    /// The most recently kept buffer no one else holds, among the last [`SCAN`], as its own
    /// again: preferably one that `want` bytes fit and fill at least half of (no growing, and
    /// frozen with `want` bytes it is a view, not a copy), else the newest. Without the
    /// preference a turn's 16 KiB upstream read buffer, given back last, went to the next
    /// client frame of 8 KB, which was then copied, and the frame's buffer was grown for the
    /// next turn's upstream reads.
    fn take_idle(&mut self, want: usize) -> Option<BytesMut> {
        let from = self.bufs.len().saturating_sub(SCAN);
        let mut recent = self.bufs.range(from..);
        let fits = |b: &Bytes| b.len() >= want && b.len() / 2 <= want && b.is_unique();
        let found = match recent.clone().rposition(fits) {
            Some(at) => Some(at),
            None => recent.rposition(Bytes::is_unique),
        };
        let at = from + found?;
        let buf = self.bufs.remove(at)?;
        self.bytes -= buf.len();
        // `is_unique` reads the count relaxed: the fence orders this thread's writes to the
        // buffer after every other handle's release of it (drops on another thread included).
        fence(Ordering::Acquire);
        buf.try_into_mut().ok()
    }

    /// Keeps a handle on `buf` (whole), letting the oldest go while over [`KEPT_BYTES`].
    fn keep(&mut self, buf: Bytes) {
        let len = buf.len();
        if len == 0 || len > MAX_KEPT_LEN {
            return;
        }
        self.bytes += len;
        self.bufs.push_back(buf);
        while self.bytes > KEPT_BYTES {
            match self.bufs.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// An initialised byte buffer taken from this thread's pool, given back when dropped. Its bytes
/// are whatever an earlier user left: read only what was written.
#[derive(Default)]
pub struct PooledBuf {
    buf: BytesMut,
}

impl PooledBuf {
    /// A buffer of at least `len` bytes (more when the pool's buffer is larger): a returned one
    /// ([`Pool::take_idle`]), extended with zeros if it is shorter, or a new zeroed one. A
    /// buffer the pool would not keep (over [`MAX_KEPT_LEN`]) is always new.
    pub fn take(len: usize) -> Self {
        if len > MAX_KEPT_LEN {
            return PooledBuf {
                buf: BytesMut::zeroed(len),
            };
        }
        let taken = POOL
            .try_with(|p| p.borrow_mut().take_idle(len))
            .ok()
            .flatten();
        let mut buf = match taken {
            Some(buf) => buf,
            None => {
                let mut buf = BytesMut::zeroed(len);
                // Splitting makes the buffer reference-counted now (the count's one
                // allocation): frozen later, it becomes `Bytes` without another.
                drop(buf.split_to(0));
                buf
            }
        };
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
    /// which the pool takes again once the last handle drops, when they fill at least half of
    /// it; else a copy, and the buffer goes back at once (a small frame never holds a large
    /// buffer).
    pub fn freeze(mut self, len: usize) -> Bytes {
        let len = len.min(self.buf.len());
        if len < self.buf.len() / 2 {
            return Bytes::copy_from_slice(&self.buf[..len]);
        }
        let whole = std::mem::take(&mut self.buf).freeze();
        let view = whole.slice(..len);
        give_back(whole);
        view
    }
}

/// Hands a whole buffer's handle to this thread's pool (a thread ending drops its pool first: a
/// buffer given back after that is freed).
fn give_back(whole: Bytes) {
    let _ = POOL.try_with(|p| p.borrow_mut().keep(whole));
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
        give_back(std::mem::take(&mut self.buf).freeze());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers this thread's pool keeps and their bytes (each test runs on its own thread).
    fn kept() -> (usize, usize) {
        POOL.with(|p| {
            let p = p.borrow();
            (p.bufs.len(), p.bytes)
        })
    }

    /// Kept buffers no one else holds: the ones a take may hand out.
    fn idle() -> usize {
        POOL.with(|p| p.borrow().bufs.iter().filter(|b| b.is_unique()).count())
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
        assert_eq!((kept(), idle()), ((1, 64), 0), "a handle is still out");
        let meanwhile = PooledBuf::take(64);
        assert_ne!(
            meanwhile.as_ptr(),
            at,
            "a buffer still out is not handed out"
        );
        drop(other);
        assert_eq!((kept(), idle()), ((1, 64), 1));
        let again = PooledBuf::take(64);
        assert_eq!(again.as_ptr(), at, "back once its last handle dropped");
        let frozen = again.freeze(64);
        assert_eq!(frozen.as_ptr(), at, "and frozen again");
        drop(meanwhile);
    }

    #[test]
    fn the_oldest_handle_is_let_go_when_the_pool_is_full() {
        let out = PooledBuf::take(MAX_KEPT_LEN).freeze(MAX_KEPT_LEN);
        let at = out.as_ptr();
        let newer: Vec<_> = (0..KEPT_BYTES / MAX_KEPT_LEN)
            .map(|_| PooledBuf::take(MAX_KEPT_LEN))
            .collect();
        assert!(newer.iter().all(|b| b.as_ptr() != at), "it is still out");
        drop(newer);
        let full = KEPT_BYTES / MAX_KEPT_LEN;
        assert_eq!(
            (kept(), idle()),
            ((full, KEPT_BYTES), full),
            "it was let go"
        );
        drop(out);
        assert_eq!(kept(), (full, KEPT_BYTES), "and is freed, not kept");
    }

    #[test]
    fn a_take_looks_at_the_newest_buffers_only() {
        let first = PooledBuf::take(16).freeze(16);
        let at = first.as_ptr();
        let out: Vec<_> = (0..SCAN).map(|_| PooledBuf::take(16).freeze(16)).collect();
        drop(first);
        assert_eq!(idle(), 1);
        let taken = PooledBuf::take(16);
        assert_ne!(taken.as_ptr(), at, "the idle one is past the last {SCAN}");
        drop(out);
    }

    #[test]
    fn a_take_prefers_a_buffer_its_length_fits_to_the_newest() {
        // A turn: the client frame's buffer (8 KB), then the upstream read buffer (16 KiB),
        // given back in that order.
        let frame = PooledBuf::take(8_000);
        let (frame_at, upstream) = (frame.as_ptr(), PooledBuf::take(16_384));
        let upstream_at = upstream.as_ptr();
        drop(frame);
        drop(upstream);
        let next_frame = PooledBuf::take(8_000);
        assert_eq!(next_frame.as_ptr(), frame_at, "not the newer 16 KiB buffer");
        assert_eq!(next_frame.len(), 8_000, "so nothing grew");
        let bytes = next_frame.freeze(7_990);
        assert_eq!(
            bytes.as_ptr(),
            frame_at,
            "and the frame is a view, not a copy"
        );
        let next_upstream = PooledBuf::take(16_384);
        assert_eq!(next_upstream.as_ptr(), upstream_at);
        drop(next_upstream);
        let small = PooledBuf::take(100);
        assert_eq!(
            small.as_ptr(),
            upstream_at,
            "with no fit, the newest idle one"
        );
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
