//! Giving freed heap back to the system. glibc keeps what a daemon frees
//! after a peak (a burst of connections, say) in its arenas, so RSS stays
//! at the peak's level; a daemon calls [`give_back`] when it has just
//! dropped a large part of its data.

/// Returns the allocator's free pages to the system: with glibc,
/// `malloc_trim(0)`, which trims the top of every arena and releases the
/// free pages inside them (a few milliseconds on a heap of tens of MiB, so
/// for after a peak, not for every request). Elsewhere a no-op.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointer and works on the allocator's
    // own state under the allocator's locks; it may be called from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let resident: Option<u64> = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok());
        resident.expect("resident pages in statm") * 4096
    }

    /// 64 MiB in small blocks, freed but for the last one (which pins the
    /// heap's top, so glibc's own trimming of the top cannot return it):
    /// the memory stays resident until `give_back`.
    #[test]
    fn freed_heap_goes_back_to_the_system() {
        const BLOCK: usize = 4096;
        const BLOCKS: usize = 16 * 1024;
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; BLOCK]).collect();
        let pin = blocks.pop();
        drop(blocks);
        let before = rss_bytes();
        give_back();
        let after = rss_bytes();
        drop(pin);
        assert!(
            before.saturating_sub(after) > (BLOCK * BLOCKS / 2) as u64,
            "RSS {before} → {after} bytes"
        );
    }
}
