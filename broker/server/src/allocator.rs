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
/// Free heap memory below this is never worth a trim. It was 8 MiB: an idle replica after a
/// load then kept 3–7 MiB of free heap resident in about one run of three, 17–19 MiB in all
/// against the 16 MiB an idle replica may take (docs/benchmarks.md, 2026-12-07).
const KEEP_FREE: usize = 1024 * 1024;
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
            let mut trimming = Trimming::default();
            loop {
                std::thread::sleep(TRIM_EVERY);
                let (in_use, free) = heap_bytes();
                if trimming.worth_it(in_use, free, resident_beyond(in_use)) {
                    // SAFETY: malloc_trim is thread-safe and only releases pages glibc holds
                    // free.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                    let (in_use, free) = heap_bytes();
                    trimming.trimmed(free, resident_beyond(in_use));
                }
            }
        })
        .map(|_| ())
}

/// What the trimmer remembers between checks.
struct Trimming {
    last_in_use: usize,
    /// Whether the last check found the broker idle.
    idle: bool,
    /// The free bytes the allocator reported right after this idle stretch's last trim. A
    /// trim gives back the pages of free chunks inside the heap but leaves them free chunks,
    /// so the count drops only by what the heap's top gave back: trimming whenever it stays
    /// high would trim every second of a long idle for nothing. An idle stretch is trimmed
    /// again only once [`KEEP_FREE`] more lies free than right after its last trim (memory
    /// freed later: the previous one measured the count before trimming, and a trim that gave
    /// back a large top left it far below that, so 3 MiB freed afterwards stayed resident).
    trimmed_at: Option<usize>,
    /// The anonymous memory resident beyond what is in use right after the last trim: thread
    /// stacks and the allocator's own, plus whatever free pages a trim cannot give back. Free
    /// chunks a trim gave back stay counted as free, so when later allocations reuse them and
    /// free them again their pages are resident once more with no change in the free count,
    /// and the rule above never saw them: an idle primary after a load kept 3 MiB that way in
    /// about one run of four, 18 MiB in all. Resident memory growing past this by
    /// [`KEEP_FREE`] while idle is given back too.
    overhead_after_trim: Option<usize>,
}

impl Default for Trimming {
    fn default() -> Self {
        Self {
            last_in_use: usize::MAX,
            idle: false,
            trimmed_at: None,
            overhead_after_trim: None,
        }
    }
}

impl Trimming {
    /// Whether to give the heap's free memory back now: when the broker is idle (what is in
    /// use moved by less than [`IDLE_DRIFT`] over a whole check) and [`KEEP_FREE`] or more
    /// lies free that no trim of this idle stretch saw, or at once when more than
    /// [`KEEP_FREE_BUSY`] lies free. Idle is not "unchanged": an idle primary still allocates
    /// a little for its heartbeats and commits, and requiring no change at all kept a fresh
    /// primary at 29 MiB (argon2's 19 MiB for the root user's hash never went back) while its
    /// backups went down to 10.
    /// `overhead` is the anonymous memory resident beyond `in_use` now
    /// ([`resident_beyond`]).
    fn worth_it(&mut self, in_use: usize, free: usize, overhead: usize) -> bool {
        let idle = in_use.abs_diff(self.last_in_use) < IDLE_DRIFT;
        self.last_in_use = in_use;
        if !idle {
            self.trimmed_at = None;
        }
        self.idle = idle;
        let untrimmed = free.saturating_sub(self.trimmed_at.unwrap_or(0));
        let regrown = self
            .overhead_after_trim
            .map_or(0, |after| overhead.saturating_sub(after));
        (idle && (untrimmed >= KEEP_FREE || regrown >= KEEP_FREE)) || free >= KEEP_FREE_BUSY
    }

    /// Notes a trim: the free bytes the allocator reports after it, and the resident memory
    /// beyond what is in use.
    fn trimmed(&mut self, free: usize, overhead: usize) {
        if self.idle {
            self.trimmed_at = Some(free);
        }
        self.overhead_after_trim = Some(overhead);
    }
}

/// Anonymous memory resident in this process beyond `in_use` bytes of heap, from
/// `/proc/self/statm` (resident pages less file-backed ones); 0 when it cannot be read.
fn resident_beyond(in_use: usize) -> usize {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let mut pages = statm.split_whitespace().skip(1).map(str::parse::<usize>);
    let (Some(Ok(resident)), Some(Ok(shared))) = (pages.next(), pages.next()) else {
        return 0;
    };
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    resident
        .saturating_sub(shared)
        .saturating_mul(page)
        .saturating_sub(in_use)
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

    /// A trimmer that has seen `in_use` at its last check.
    fn after(in_use: usize) -> Trimming {
        Trimming {
            last_in_use: in_use,
            idle: false,
            trimmed_at: None,
            overhead_after_trim: None,
        }
    }

    #[test]
    fn an_idle_heap_is_trimmed_even_while_heartbeats_still_allocate() {
        // A fresh primary: argon2's 19 MiB free, a few KiB moved by heartbeats since last time.
        assert!(after(2 * MIB).worth_it(2 * MIB + 4096, 19 * MIB, 0));
        assert!(after(2 * MIB + 4096).worth_it(2 * MIB, 19 * MIB, 0));
        // Busy (megabytes moved): free memory is kept for the next batches...
        assert!(!after(70 * MIB).worth_it(75 * MIB, 30 * MIB, 0));
        // ...unless far more than they need lies free.
        assert!(after(70 * MIB).worth_it(75 * MIB, 65 * MIB, 0));
        // Idle with a few MiB free after a load: given back (it kept replicas above 16 MiB).
        assert!(after(10 * MIB).worth_it(10 * MIB, 3 * MIB, 0));
        // Idle with little free: nothing worth a system call.
        assert!(!after(10 * MIB).worth_it(10 * MIB, MIB / 2, 0));
    }

    #[test]
    fn an_idle_stretch_is_trimmed_again_only_for_memory_freed_since() {
        let mut trimming = Trimming::default();
        assert!(
            !trimming.worth_it(10 * MIB, 40 * MIB, 0),
            "the first check knows no drift"
        );
        // Idle: trimmed. The top gave 34 MiB back; 6 MiB of chunks inside stay free.
        assert!(trimming.worth_it(10 * MIB, 40 * MIB, 0));
        trimming.trimmed(6 * MIB, 0);
        assert!(
            !trimming.worth_it(10 * MIB, 6 * MIB, 0),
            "nothing new to give back"
        );
        assert!(!trimming.worth_it(10 * MIB + 4096, 6 * MIB + MIB / 2, 0));
        // 3 MiB freed later in the same idle stretch: trimmed again, once.
        assert!(trimming.worth_it(10 * MIB, 9 * MIB, 0));
        trimming.trimmed(9 * MIB, 0);
        assert!(!trimming.worth_it(10 * MIB, 9 * MIB, 0));
        // A load, then idle again: trimmed again.
        assert!(!trimming.worth_it(40 * MIB, 9 * MIB, 0));
        assert!(trimming.worth_it(40 * MIB, 9 * MIB, 0));
    }

    #[test]
    fn free_pages_faulted_back_in_and_freed_again_are_given_back_while_idle() {
        let mut trimming = after(10 * MIB);
        // Idle after a load: 16 MiB free, trimmed; 1 MiB stays resident beyond what is in use.
        assert!(trimming.worth_it(10 * MIB, 16 * MIB, 5 * MIB));
        trimming.trimmed(16 * MIB, MIB);
        assert!(!trimming.worth_it(10 * MIB, 16 * MIB, MIB));
        // Later work reuses 3 MiB of those chunks and frees them: the free count is where it
        // was, but their pages are resident again.
        assert!(
            !trimming.worth_it(10 * MIB, 16 * MIB, MIB + MIB / 2),
            "under the step"
        );
        assert!(trimming.worth_it(10 * MIB, 16 * MIB, 4 * MIB));
        trimming.trimmed(16 * MIB, MIB);
        assert!(
            !trimming.worth_it(10 * MIB, 16 * MIB, MIB),
            "given back: once"
        );
        // A thread's stack growing by 2 MiB is not the heap's: one trim, then the new level
        // is the mark.
        assert!(trimming.worth_it(10 * MIB, 16 * MIB, 3 * MIB));
        trimming.trimmed(16 * MIB, 3 * MIB);
        assert!(!trimming.worth_it(10 * MIB, 16 * MIB, 3 * MIB));
        // Busy: resident growth alone never trims under load.
        assert!(!trimming.worth_it(40 * MIB, 16 * MIB, 20 * MIB));
    }
}
