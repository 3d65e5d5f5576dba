//! A counting global allocator for the benches: wraps [`std::alloc::System`] and counts every
//! allocation (and reallocation) and the bytes requested, so a bench can report allocations per
//! operation next to criterion's time per operation.
//!
//! Include it from a bench with `#[path = "alloc_counter.rs"] mod alloc_counter;` and install it
//! there with `#[global_allocator] static A: alloc_counter::Counting = alloc_counter::Counting;`.
//! The counters are process-wide, so measure on one thread while nothing else allocates.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The counting allocator. `realloc` counts as one allocation of the new size.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations and bytes counted so far.
pub fn snapshot() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// Runs `f` `iters` times (after one untimed warm-up call) and returns the allocations and bytes
/// per call. The result of `f` is passed through `black_box` and dropped inside the window.
pub fn measure<R>(iters: u64, mut f: impl FnMut() -> R) -> (f64, f64) {
    std::hint::black_box(f());
    let (a0, b0) = snapshot();
    for _ in 0..iters {
        std::hint::black_box(f());
    }
    let (a1, b1) = snapshot();
    let n = iters.max(1) as f64;
    ((a1 - a0) as f64 / n, (b1 - b0) as f64 / n)
}

/// Iterations of the allocation measurement after each timed bench.
const REPORT_ITERS: u64 = 10_000;

/// Measures `f`'s allocations and prints them as `ALLOC <name>: <allocs>/op <bytes> B/op`, the
/// line `benches/README.md` collects.
///
/// With `ALLOC_ONLY` set, only the benches whose name contains it are measured: under
/// `valgrind --tool=callgrind` with a criterion filter that matches nothing, a function's
/// instructions then come from that one bench's calls (see `benches/README.md`).
pub fn report_allocs<R>(name: &str, f: impl FnMut() -> R) {
    if std::env::var("ALLOC_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    let (allocs, bytes) = measure(REPORT_ITERS, f);
    println!("ALLOC {name}: {allocs}/op {bytes} B/op");
}
