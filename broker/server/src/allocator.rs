//! How the broker uses glibc's allocator: large buffers come from the heap (no page fault per
//! 4 KiB on every batch) and what the heap holds free is handed back to the OS once a second.
//!
//! History: the broker first served every allocation of 128 KiB or more with its own mapping,
//! because glibc's default moves such buffers into per-thread arenas after the first large free
//! and a broker that had moved a few GB then sat at 300+ MiB RSS while idle. A single node
//! reuses its batch buffers per connection, so that cost little there; a replica cannot — a
//! prepare's body lives in the core's log until the next checkpoint — and the fresh mapping per
//! megabyte made page faults the largest single cost of replicated produce (perf: fault handling,
//! page clearing and memory-cgroup charging ~15 % of a backup's CPU). Serving them from the heap
//! and trimming it in the background keeps both: replicated produce +17 % at 12 % less CPU
//! (docs/benchmarks.md), and idle RSS back down within a second of the load stopping.

use std::time::Duration;

/// Allocations below this come from the heap; a batch (at most a few MiB) always does.
/// 32 MiB is the largest threshold glibc accepts on 64-bit.
const MMAP_THRESHOLD: i32 = 32 * 1024 * 1024;
/// How often the heap is checked for memory to give back.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Free heap memory below this is kept: trimming it would only fault it back in.
const KEEP_FREE: usize = 8 * 1024 * 1024;

/// Sets the allocator's tunables. Call first thing in `main`, before any other thread exists.
pub fn tune() {
    // SAFETY: mallopt only adjusts allocator tunables; it is called before other threads exist,
    // and an unsupported value is reported by its return code (then glibc's default stays).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Starts the thread that returns free heap memory to the OS when more than [`KEEP_FREE`] of it
/// has piled up, across every arena.
pub fn spawn_trimmer() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("heap-trimmer".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_EVERY);
            if free_heap_bytes() >= KEEP_FREE {
                // SAFETY: malloc_trim is thread-safe and only releases pages glibc holds free.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        })
        .map(|_| ())
}

/// Bytes glibc holds free in its heaps (all arenas), i.e. what a trim could give back.
fn free_heap_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    unsafe { libc::mallinfo2().fordblks }
}
