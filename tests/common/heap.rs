//! A global allocator that counts live heap bytes and their peak, for memory tests: a test
//! binary opts in with `#[global_allocator] static A: Tracking = Tracking;`. Heap bytes, not
//! RSS, so readings do not depend on the allocator's caching or the kernel's page accounting.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// Live heap bytes of the whole process.
pub static LIVE: AtomicI64 = AtomicI64::new(0);
/// The most [`LIVE`] has been since the last [`reset_peak`].
pub static PEAK: AtomicI64 = AtomicI64::new(0);

/// An allocation size to count (0 = none): [`SIZED`] counts the allocations of exactly this
/// many bytes (a buffer whose size the test knows, made or not made on some path).
pub static WATCH_SIZE: AtomicUsize = AtomicUsize::new(0);
/// Allocations of [`WATCH_SIZE`] bytes so far (reallocations to it included).
pub static SIZED: AtomicU64 = AtomicU64::new(0);

/// Counts an allocation of `size` bytes if it is the watched size.
fn watch(size: usize) {
    if size == WATCH_SIZE.load(Ordering::Relaxed) {
        SIZED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts a new peak reading from the current live bytes.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
}

fn grew(by: i64) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Forwards to the system allocator and keeps [`LIVE`] and [`PEAK`] up to date.
pub struct Tracking;

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as i64);
        watch(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as i64);
        watch(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as i64 - layout.size() as i64);
        watch(new_size);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
