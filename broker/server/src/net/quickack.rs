//! Acknowledging a request's header at once when its payload has not arrived yet.
//!
//! Iggy's SDKs leave Nagle's algorithm on by default (`nodelay = false`, kept for backward
//! compatibility) and write a request as two pieces: the 8-byte header, then the payload. When
//! the payload is larger than the client's write buffer (8 KiB in the Rust SDK) the header goes
//! out alone, and Nagle holds the payload back until that header is acknowledged. Linux delays
//! the acknowledgement of a lone segment on a connection it sees as request/response — up to
//! 40 ms — hoping to carry it on the reply, and there is no reply until the payload arrives.
//! Measured with the unchanged Rust SDK: a batch of 8–64 KiB took 44 ms per send on a single
//! node (0.2 ms at 4 KiB, 4 ms at 200 KiB); a replicated broker the same.
//!
//! The broker cannot turn the client's Nagle off, but it can answer the header at once: after
//! reading a header whose payload is not all buffered yet, it sets `TCP_QUICKACK`, which sends
//! the pending acknowledgement now (Linux; a no-op elsewhere). One setsockopt per incomplete
//! request, and no extra packet when the payload was already there.

use std::os::fd::RawFd;

/// Sends the acknowledgement the kernel is holding back on `socket`, if any. Best effort: a
/// failure only leaves the delay in place. `socket` must be an open descriptor the caller
/// holds for the duration of the call.
pub fn acknowledge_now(socket: RawFd) {
    #[cfg(target_os = "linux")]
    {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor borrowed for the call, and a c_int option value
        // of the size passed.
        unsafe {
            libc::setsockopt(
                socket,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}
