//! `store-floor`: the least work a store of megabyte batches does on this machine, alone and
//! replicated three ways, as a yardstick for the broker's own single node and cluster.
//!
//! A process here only receives each batch into memory, appends it to a file and acknowledges
//! it; a primary also forwards it to its backups first and acknowledges the client once a
//! majority (itself included) has appended it. There is no protocol to parse, no WAL, no
//! checksum, no index and no thread hand-off beyond one per acknowledgement path: every copy
//! a replicated store cannot avoid with ordinary reads and writes, and nothing else. Whatever
//! ratio of replicated to single throughput this reaches on a machine, a real broker running
//! the same copies on the same cores cannot beat by design of the replication protocol alone.
//!
//! Frames on the wire: `[sequence u64 LE][length u32 LE][body]`; acknowledgements are the
//! sequence (u64 LE) up to which everything is stored, in order.
//!
//! ```text
//! store-floor sink    LISTEN FILE                  # a single node, or a backup
//! store-floor primary LISTEN FILE BACKUP...        # forwards to each BACKUP, majority acks
//! store-floor load    ADDRESS BATCHES [WINDOW]     # WINDOW batches of 1 MB in flight (1)
//! ```
//! `load` prints one line: `MB/s=… p50_ms=… p99_ms=…`.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BATCH_BYTES: usize = 1_000_000;
/// A frame larger than this is a mistake, not a batch.
const MAX_FRAME: usize = 64 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["sink", listen, file] => sink(listen, file),
        ["primary", listen, file, backups @ ..] if !backups.is_empty() => {
            primary(listen, file, backups)
        }
        ["load", address, batches] => load(address, parse(batches)?, 1),
        ["load", address, batches, window] => load(address, parse(batches)?, parse(window)?),
        _ => bail!(
            "usage: store-floor sink LISTEN FILE | primary LISTEN FILE BACKUP... | \
             load ADDRESS BATCHES [WINDOW]"
        ),
    }
}

fn parse(number: &str) -> Result<u64> {
    match number.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{number:?} is not a positive number"),
    }
}

/// Reads the next frame into `body`; `None` at a clean end of the stream.
fn read_frame(stream: &mut TcpStream, body: &mut Vec<u8>) -> Result<Option<u64>> {
    let mut header = [0u8; 12];
    match stream.read_exact(&mut header) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        other => other.context("reading a frame header")?,
    }
    let (sequence, length) = header.split_at(8);
    let sequence = u64::from_le_bytes(sequence.try_into()?);
    let length = u32::from_le_bytes(length.try_into()?) as usize;
    if length > MAX_FRAME {
        bail!("frame {sequence} claims {length} bytes");
    }
    body.resize(length, 0);
    stream.read_exact(body).context("reading a frame body")?;
    Ok(Some(sequence))
}

fn write_frame(stream: &mut TcpStream, sequence: u64, body: &[u8]) -> Result<()> {
    let mut header = [0u8; 12];
    header[..8].copy_from_slice(&sequence.to_le_bytes());
    header[8..].copy_from_slice(&u32::try_from(body.len())?.to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(body)?;
    Ok(())
}

fn read_ack(stream: &mut TcpStream) -> Result<Option<u64>> {
    let mut ack = [0u8; 8];
    match stream.read_exact(&mut ack) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        other => {
            other.context("reading an acknowledgement")?;
            Ok(Some(u64::from_le_bytes(ack)))
        }
    }
}

fn accept_one(listen: &str) -> Result<TcpStream> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects, retrying for a few seconds: the processes of a run start together, and a
/// listener probed by connecting to it would take that connection as its only one.
fn connect(address: &str) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e).with_context(|| format!("connecting to {address}")),
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One connection's frames appended to `file`, each acknowledged once written.
fn sink(listen: &str, file: &str) -> Result<()> {
    let mut out = File::create(file).with_context(|| format!("creating {file}"))?;
    let mut stream = accept_one(listen)?;
    let mut body = Vec::new();
    while let Some(sequence) = read_frame(&mut stream, &mut body)? {
        out.write_all(&body)?;
        stream.write_all(&sequence.to_le_bytes())?;
    }
    Ok(())
}

/// Who has stored which frame: the primary itself (0) or backup `n` (n ≥ 1).
struct Stored {
    member: usize,
    sequence: u64,
}

fn primary(listen: &str, file: &str, backups: &[&str]) -> Result<()> {
    let mut out = File::create(file).with_context(|| format!("creating {file}"))?;
    let mut backups = backups
        .iter()
        .map(|address| connect(address))
        .collect::<Result<Vec<_>>>()?;
    let mut client = accept_one(listen)?;
    let (stored, progress) = mpsc::channel::<Stored>();
    for (index, backup) in backups.iter().enumerate() {
        let mut acks = backup.try_clone()?;
        let stored = stored.clone();
        std::thread::spawn(move || {
            while let Ok(Some(sequence)) = read_ack(&mut acks) {
                let member = index + 1;
                if stored.send(Stored { member, sequence }).is_err() {
                    break;
                }
            }
        });
    }
    let members = backups.len() + 1;
    let mut replies = client.try_clone()?;
    let committer = std::thread::spawn(move || -> Result<()> {
        let mut held = vec![0u64; members];
        let mut acknowledged = 0;
        while let Ok(Stored { member, sequence }) = progress.recv() {
            held[member] = sequence;
            let committed = majority_holds(&held);
            if committed > acknowledged {
                acknowledged = committed;
                replies.write_all(&acknowledged.to_le_bytes())?;
            }
        }
        Ok(())
    });
    let mut body = Vec::new();
    while let Some(sequence) = read_frame(&mut client, &mut body)? {
        for backup in &mut backups {
            write_frame(backup, sequence, &body)?;
        }
        out.write_all(&body)?;
        stored.send(Stored {
            member: 0,
            sequence,
        })?;
    }
    // Ending the backups' streams ends their sinks, then the acknowledgement readers, then
    // the committer.
    drop(stored);
    for backup in &backups {
        backup.shutdown(std::net::Shutdown::Write)?;
    }
    committer
        .join()
        .map_err(|_| anyhow::anyhow!("the committer panicked"))?
}

/// The highest frame a majority of the members holds, given the highest each holds (every
/// member stores its frames in order).
fn majority_holds(held: &[u64]) -> u64 {
    let mut ranked = held.to_vec();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.get(held.len() / 2).copied().unwrap_or(0)
}

/// `batches` frames of 1 MB with at most `window` unacknowledged, timed from each send to the
/// acknowledgement that covers it.
fn load(address: &str, batches: u64, window: u64) -> Result<()> {
    let mut stream = connect(address)?;
    let mut acks = stream.try_clone()?;
    let body = vec![0x5a; BATCH_BYTES];
    let mut sent_at = VecDeque::new();
    let mut latencies_ms = Vec::with_capacity(batches as usize);
    let (mut next, mut done) = (1u64, 0u64);
    let start = Instant::now();
    while done < batches {
        while next <= batches && next - 1 - done < window {
            sent_at.push_back(Instant::now());
            write_frame(&mut stream, next, &body)?;
            next += 1;
        }
        let Some(upto) = read_ack(&mut acks)? else {
            bail!("the store closed the connection after {done} of {batches} batches");
        };
        while done < upto {
            let Some(sent) = sent_at.pop_front() else {
                bail!("acknowledged {upto}, beyond the {} sent", next - 1);
            };
            latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
            done += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    let at = |q: f64| latencies_ms[((latencies_ms.len() - 1) as f64 * q) as usize];
    println!(
        "MB/s={:.0} p50_ms={:.3} p99_ms={:.3}",
        (batches as usize * BATCH_BYTES) as f64 / 1e6 / seconds,
        at(0.5),
        at(0.99)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::majority_holds;

    #[test]
    fn a_frame_is_acknowledged_once_a_majority_holds_it() {
        assert_eq!(
            majority_holds(&[5, 0, 0]),
            0,
            "the primary alone is no majority"
        );
        assert_eq!(majority_holds(&[5, 3, 0]), 3);
        assert_eq!(majority_holds(&[2, 3, 4]), 3);
        assert_eq!(majority_holds(&[7]), 7, "one member is its own majority");
        assert_eq!(majority_holds(&[4, 4, 1, 0, 0]), 1, "three of five");
    }
}
