//! How the broker uses glibc's allocator. On a replica, large buffers come from the heap (no page
//! fault per 4 KiB on every batch) and what the heap holds free is handed back to the OS when
//! idle; a single node keeps giving every large buffer its own mapping.
//!
//! History: the broker first served every allocation of 128 KiB or more with its own mapping,
//! because glibc's default moves such buffers into per-thread arenas after the first large free
//! and a broker that had moved a few GB then sat at 300+ MiB RSS while idle. A single node
//! reuses its batch buffers per connection, so that cost little there; a replica cannot — a
//! prepare's body lives in the core's log until the next checkpoint — and the fresh mapping per
//! megabyte made page faults the largest single cost of replicated produce (perf: fault handling,
//! page clearing and memory-cgroup charging ~15 % of a backup's CPU). Serving them from the heap
//! and trimming it in the background keeps both: replicated produce +15 % at 10 % less CPU per
//! replica (docs/benchmarks.md), and idle RSS back down a second or two after the load stops.

use std::time::Duration;

/// A single node's threshold: every allocation of 128 KiB or more gets its own mapping, returned
/// to the OS when freed. Its batch buffers are reused per connection, so the extra mappings are
/// rare, and poll answers for many slow readers never pile up as free heap (an abuse test saw
/// 240 MiB resident with heap-served answers against 56 MiB this way).
const SINGLE_NODE_MMAP_THRESHOLD: i32 = 128 * 1024;
/// A replica's: a prepare (at most a few MiB) always comes from the heap. 32 MiB is the largest
/// threshold glibc accepts on 64-bit.
const REPLICA_MMAP_THRESHOLD: i32 = 32 * 1024 * 1024;
/// A replica's: free memory at the top of a heap is never given back by `free` itself, only by
/// the trimmer below. A checkpoint that becomes durable drops the core's prepares since the
/// previous one (64 ops, a batch each) in one go on the replica thread, and with glibc's
/// default (128 KiB) that `free` returned tens of megabytes to the OS on the spot: 2–7 ms on
/// the replica thread at every checkpoint, then page faults for the next batches. Measured on
/// three replicas (docs/benchmarks.md): −12 % CPU per backup, +7 % replicated produce.
const REPLICA_TRIM_THRESHOLD: i32 = 1 << 30;
/// How often the heap is checked for memory to give back.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Less movement than this of the heap's in-use bytes over one check counts as idle: a busy
/// broker moves megabytes a second (a batch is one).
const IDLE_DRIFT: usize = 256 * 1024;
/// Free heap memory below this is never worth a trim.
const KEEP_FREE: usize = 8 * 1024 * 1024;
/// While the broker is busy, free heap memory is kept up to this: trimming it under load only
/// makes the next batches fault it back in (measured: trimming every second under load cost a
/// third of what serving from the heap gained).
const KEEP_FREE_BUSY: usize = 64 * 1024 * 1024;

/// Sets the allocator's tunables for a single node or a replica. Call before the runtime's
/// threads start (glibc applies it to allocations made afterwards, in every arena).
pub fn tune(replica: bool) {
    let threshold = match replica {
        true => REPLICA_MMAP_THRESHOLD,
        false => SINGLE_NODE_MMAP_THRESHOLD,
    };
    // SAFETY: mallopt only adjusts allocator tunables and is thread-safe; an unsupported value
    // is reported by its return code (then glibc's default stays).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
        if replica {
            libc::mallopt(libc::M_TRIM_THRESHOLD, REPLICA_TRIM_THRESHOLD);
            // One arena. A prepare's buffer is allocated by the thread that receives it and
            // freed by the replica thread at a checkpoint; with an arena per thread the freed
            // megabytes went back to the receiver's arena, whose top `malloc_trim` cannot give
            // back (only `free` does, which the threshold above stops), so an idle replica
            // after a load held 95–118 MiB instead of ~78. One arena reuses every freed chunk
            // for whichever thread allocates next and is trimmed whole: replicated produce
            // +5–10 % with one producer, equal or better with four (docs/benchmarks.md).
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Starts the thread that returns free heap memory to the OS (when: [`worth_trimming`]).
pub fn spawn_trimmer() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("heap-trimmer".into())
        .spawn(|| {
            let mut last_in_use = usize::MAX;
            loop {
                std::thread::sleep(TRIM_EVERY);
                let (in_use, free) = heap_bytes();
                let trim = worth_trimming(last_in_use, in_use, free);
                last_in_use = in_use;
                if trim {
                    // SAFETY: malloc_trim is thread-safe and only releases pages glibc holds
                    // free.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            }
        })
        .map(|_| ())
}

/// Whether to give the heap's free memory back: once the broker is idle (what is in use moved
/// by less than [`IDLE_DRIFT`] over a whole check) and [`KEEP_FREE`] or more lies free, or at
/// once when more than [`KEEP_FREE_BUSY`] lies free. Idle is not "unchanged": an idle primary
/// still allocates a little for its heartbeats and commits, and requiring no change at all
/// kept a fresh primary at 29 MiB (argon2's 19 MiB for the root user's hash never went back)
/// while its backups went down to 10.
fn worth_trimming(last_in_use: usize, in_use: usize, free: usize) -> bool {
    let idle = in_use.abs_diff(last_in_use) < IDLE_DRIFT;
    (idle && free >= KEEP_FREE) || free >= KEEP_FREE_BUSY
}

/// (bytes in use, bytes held free) across glibc's heaps, all arenas.
fn heap_bytes() -> (usize, usize) {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks, info.fordblks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn an_idle_heap_is_trimmed_even_while_heartbeats_still_allocate() {
        // A fresh primary: argon2's 19 MiB free, a few KiB moved by heartbeats since last time.
        assert!(worth_trimming(2 * MIB, 2 * MIB + 4096, 19 * MIB));
        assert!(worth_trimming(2 * MIB + 4096, 2 * MIB, 19 * MIB));
        // Busy (megabytes moved): free memory is kept for the next batches...
        assert!(!worth_trimming(70 * MIB, 75 * MIB, 30 * MIB));
        // ...unless far more than they need lies free.
        assert!(worth_trimming(70 * MIB, 75 * MIB, 65 * MIB));
        // Idle with little free: nothing worth a system call.
        assert!(!worth_trimming(10 * MIB, 10 * MIB, MIB));
    }
}
