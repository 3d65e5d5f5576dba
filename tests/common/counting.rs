//! A global allocator that calls a test's counting function on every allocation (reallocations
//! included) and forwards to `System`, for allocation-count tests: a test binary opts in with
//! `#[global_allocator] static A: Counting = Counting { count: my_count };`, where `my_count`
//! decides which thread's allocations it counts.

use std::alloc::{GlobalAlloc, Layout, System};

/// Forwards to `System`, calling `count` first on each allocation and reallocation.
pub struct Counting {
    /// Called on every allocation; must not allocate unless it guards against re-entry.
    pub count: fn(),
}

// SAFETY: every call is forwarded unchanged to `System`; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        (self.count)();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        (self.count)();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        (self.count)();
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
