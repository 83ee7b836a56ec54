//! The last console lines, kept in memory for diagnostics (the broker's snapshot command).
//!
//! Containers log to stdout and the node's runtime owns what is kept of it, so a broker has no
//! log files to hand out when a client asks what happened. Instead every console line is also
//! appended to a ring of bounded size: the oldest lines go first, and how many went is counted,
//! so a reader knows the ring is a tail and not the whole log.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use tracing_subscriber::fmt::MakeWriter;

/// A bounded tail of the console log.
#[derive(Debug)]
pub struct RecentLines {
    limit: usize,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Box<str>>,
    bytes: usize,
    dropped: u64,
}

/// What [`RecentLines::tail`] returns: the kept lines, oldest first, and how many older ones
/// were dropped to stay within the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub text: String,
    pub dropped: u64,
}

impl RecentLines {
    /// Keeps at most `limit` bytes of lines (a single longer line is cut to fit).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            ring: Mutex::new(Ring::default()),
        })
    }

    /// Appends one formatted event (one or more lines), without terminal colour codes.
    pub fn push(&self, event: &[u8]) {
        let mut text = strip_ansi(&String::from_utf8_lossy(event));
        // Room for the newline that ends every kept line.
        let room = self.limit.saturating_sub(1);
        if text.len() > room {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        // A poisoned lock only means a panic elsewhere mid-push; the ring is still whole lines.
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.bytes += text.len();
        ring.lines.push_back(text.into_boxed_str());
        while ring.bytes > self.limit {
            let Some(oldest) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= oldest.len();
            ring.dropped += 1;
        }
    }

    pub fn tail(&self) -> Tail {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = String::with_capacity(ring.bytes);
        for line in &ring.lines {
            text.push_str(line);
        }
        Tail {
            text,
            dropped: ring.dropped,
        }
    }
}

/// Removes CSI escape sequences (`ESC [ … final`), which colour the console on a terminal.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte (0x40..=0x7e).
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A console writer that also keeps what it writes in a [`RecentLines`].
pub(crate) struct Tee<M> {
    pub console: M,
    pub recent: Arc<RecentLines>,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Tee<M> {
    type Writer = TeeWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        TeeWriter {
            console: self.console.make_writer(),
            recent: self.recent.clone(),
            event: Vec::new(),
        }
    }
}

/// One event's writer: passes bytes to the console at once and hands the whole event to the
/// ring when dropped (the formatter may write an event in several pieces).
pub(crate) struct TeeWriter<W: Write> {
    console: W,
    recent: Arc<RecentLines>,
    event: Vec<u8>,
}

impl<W: Write> Write for TeeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.console.write(buf) {
            Ok(written) => {
                self.event.extend_from_slice(&buf[..written]);
                Ok(written)
            }
            // The console is gone (a closed pipe): the ring still keeps the line.
            Err(error) => {
                self.event.extend_from_slice(buf);
                Err(error)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.console.flush()
    }
}

impl<W: Write> Drop for TeeWriter<W> {
    fn drop(&mut self) {
        if !self.event.is_empty() {
            self.recent.push(&self.event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_lines_go_first_and_are_counted() {
        let recent = RecentLines::new(12);
        recent.push(b"one\n");
        recent.push(b"two\n");
        recent.push(b"three\n");
        assert_eq!(
            recent.tail(),
            Tail {
                text: "two\nthree\n".into(),
                dropped: 1
            }
        );
    }

    #[test]
    fn colour_codes_are_not_kept() {
        let recent = RecentLines::new(100);
        recent.push(b"\x1b[2m2026-12-06\x1b[0m \x1b[32m INFO\x1b[0m started");
        assert_eq!(recent.tail().text, "2026-12-06  INFO started\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_not_lost() {
        let recent = RecentLines::new(5);
        recent.push("ééé".as_bytes());
        assert_eq!(recent.tail().text, "éé\n");
    }

    #[test]
    fn a_line_the_console_refuses_is_kept_all_the_same() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let recent = RecentLines::new(100);
        let tee = Tee {
            console: || Closed,
            recent: recent.clone(),
        };
        assert!(tee.make_writer().write_all(b"still kept\n").is_err());
        assert_eq!(recent.tail().text, "still kept\n");
    }

    #[test]
    fn the_tee_hands_each_event_whole_to_the_ring() {
        let recent = RecentLines::new(100);
        let tee = Tee {
            console: std::io::sink,
            recent: recent.clone(),
        };
        {
            let mut writer = tee.make_writer();
            writer.write_all(b"first half, ").unwrap();
            writer.write_all(b"second half\n").unwrap();
        }
        assert_eq!(recent.tail().text, "first half, second half\n");
    }
}
