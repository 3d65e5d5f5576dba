//! Process-wide memory settings the gateway makes once at start.

use std::io;

/// Stops the kernel from backing this process's memory with transparent huge pages
/// (`PR_SET_THP_DISABLE`; covers mappings made before the call too, and overrides the
/// allocator's `MADV_HUGEPAGE` on its arenas).
///
/// Why: with huge pages, the first touch of a 2 MiB region (a growing table, or memory the
/// allocator touches again after giving it back to the kernel) zeroes all of it inside a page
/// fault on a shard thread, stalling every session of that shard, and a heap touched sparsely
/// holds twice the memory (`perf/README.md`, "Session 14: transparent huge pages").
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integer arguments and touches no memory
    // of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reports_huge_pages_disabled_afterwards() {
        disable_transparent_huge_pages().expect("prctl");
        // SAFETY: as above; PR_GET_THP_DISABLE returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
