//! A ZIP archive written in memory: what Iggy's snapshot command answers with.
//!
//! Only what the snapshot needs of the format (PKWARE's APPNOTE): whole entries known up front,
//! stored or deflated, UTF-8 names, no ZIP64 — so an archive and each entry stay below 4 GiB,
//! which [`ZipWriter::add`] checks rather than write sizes that would wrap.

use super::time::civil_date;
use std::time::{SystemTime, UNIX_EPOCH};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
/// 2.0: the version that introduced deflate, all a reader needs here.
const VERSION_NEEDED: u16 = 20;
/// Made on Unix (high byte 3), by the 2.0 specification: the external attributes are a mode.
const VERSION_MADE_BY: u16 = (3 << 8) | 20;
/// General-purpose flag bit 11: names are UTF-8.
const UTF8_NAMES: u16 = 1 << 11;
/// A regular file readable by its owner and group (`-rw-r-----`).
const FILE_MODE: u32 = 0o100_640;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stored,
    Deflated,
}

impl Method {
    fn code(self) -> u16 {
        match self {
            Method::Stored => 0,
            Method::Deflated => 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the archive would pass 4 GiB or 65,535 entries at '{0}' (no ZIP64 here)")]
pub struct TooLarge(pub String);

struct Entry {
    name: String,
    method: Method,
    crc: u32,
    compressed: u32,
    size: u32,
    offset: u32,
}

pub struct ZipWriter {
    out: Vec<u8>,
    entries: Vec<Entry>,
    /// MS-DOS time and date of every entry: when the archive was made.
    time: u16,
    date: u16,
}

impl ZipWriter {
    pub fn new(now: SystemTime) -> Self {
        let (time, date) = dos_time(now);
        Self {
            out: Vec::new(),
            entries: Vec::new(),
            time,
            date,
        }
    }

    /// Appends a file named `name` holding `data`.
    pub fn add(&mut self, name: &str, data: &[u8], method: Method) -> Result<(), TooLarge> {
        let too_large = || TooLarge(name.to_owned());
        let crc = crc32fast::hash(data);
        let body = match method {
            Method::Stored => std::borrow::Cow::Borrowed(data),
            // Level 6: zlib's default, a fair trade for text.
            Method::Deflated => {
                std::borrow::Cow::Owned(miniz_oxide::deflate::compress_to_vec(data, 6))
            }
        };
        let entry = Entry {
            name: name.to_owned(),
            method,
            crc,
            compressed: u32::try_from(body.len()).map_err(|_| too_large())?,
            size: u32::try_from(data.len()).map_err(|_| too_large())?,
            offset: u32::try_from(self.out.len()).map_err(|_| too_large())?,
        };
        if self.entries.len() == usize::from(u16::MAX) || u16::try_from(name.len()).is_err() {
            return Err(too_large());
        }
        let out = &mut self.out;
        put32(out, LOCAL_HEADER);
        put16(out, VERSION_NEEDED);
        put16(out, UTF8_NAMES);
        put16(out, method.code());
        put16(out, self.time);
        put16(out, self.date);
        put32(out, entry.crc);
        put32(out, entry.compressed);
        put32(out, entry.size);
        put16(out, name.len() as u16);
        put16(out, 0); // no extra field
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&body);
        if u32::try_from(self.out.len()).is_err() {
            return Err(too_large());
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The central directory and its end record, after the entries: the whole archive.
    pub fn finish(mut self) -> Result<Vec<u8>, TooLarge> {
        let start = self.out.len();
        for entry in &self.entries {
            let out = &mut self.out;
            put32(out, CENTRAL_HEADER);
            put16(out, VERSION_MADE_BY);
            put16(out, VERSION_NEEDED);
            put16(out, UTF8_NAMES);
            put16(out, entry.method.code());
            put16(out, self.time);
            put16(out, self.date);
            put32(out, entry.crc);
            put32(out, entry.compressed);
            put32(out, entry.size);
            put16(out, entry.name.len() as u16);
            put16(out, 0); // extra field
            put16(out, 0); // comment
            put16(out, 0); // disk number
            put16(out, 0); // internal attributes
            put32(out, FILE_MODE << 16);
            put32(out, entry.offset);
            out.extend_from_slice(entry.name.as_bytes());
        }
        let too_large = || TooLarge("the central directory".into());
        let directory = u32::try_from(self.out.len() - start).map_err(|_| too_large())?;
        let start = u32::try_from(start).map_err(|_| too_large())?;
        let count = self.entries.len() as u16;
        let out = &mut self.out;
        put32(out, END_OF_CENTRAL_DIRECTORY);
        put16(out, 0); // this disk
        put16(out, 0); // the disk the directory starts on
        put16(out, count);
        put16(out, count);
        put32(out, directory);
        put32(out, start);
        put16(out, 0); // comment
        Ok(self.out)
    }
}

fn put16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// MS-DOS time and date (two-second resolution, years 1980–2107) of `at`, in UTC.
fn dos_time(at: SystemTime) -> (u16, u16) {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_date((seconds / 86_400) as i64);
    if !(1980..=2107).contains(&year) {
        // 1980-01-01 00:00, the earliest the format can say.
        return (0, (1 << 5) | 1);
    }
    let of_day = seconds % 86_400;
    let time = ((of_day / 3600) << 11) | (((of_day / 60) % 60) << 5) | ((of_day % 60) / 2);
    let date = ((year as u64 - 1980) << 9) | (u64::from(month) << 5) | u64::from(day);
    (time as u16, date as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Read back by another implementation (the `zip` crate), which checks every CRC as it
    /// reads an entry to its end.
    #[test]
    fn another_reader_opens_stored_and_deflated_entries() {
        use std::io::Read;
        let text = "a line of a log that repeats\n".repeat(200);
        let mut writer = ZipWriter::new(SystemTime::now());
        writer
            .add("stored.txt", text.as_bytes(), Method::Stored)
            .unwrap();
        writer
            .add("deflated.txt", text.as_bytes(), Method::Deflated)
            .unwrap();
        writer.add("empty.txt", b"", Method::Deflated).unwrap();
        writer.add("ünïcode.txt", b"x", Method::Stored).unwrap();
        let archive = writer.finish().unwrap();
        let mut zip = ::zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
        let names: Vec<&str> = zip.file_names().collect();
        assert_eq!(names.len(), 4);
        let expected = [
            (
                "stored.txt",
                text.as_str(),
                ::zip::CompressionMethod::Stored,
            ),
            (
                "deflated.txt",
                text.as_str(),
                ::zip::CompressionMethod::Deflated,
            ),
            ("empty.txt", "", ::zip::CompressionMethod::Deflated),
            ("ünïcode.txt", "x", ::zip::CompressionMethod::Stored),
        ];
        for (index, (name, content, method)) in expected.into_iter().enumerate() {
            let mut entry = zip.by_index(index).unwrap();
            assert_eq!((entry.name(), entry.compression()), (name, method));
            assert_eq!(entry.unix_mode(), Some(FILE_MODE));
            let mut read = String::new();
            entry.read_to_string(&mut read).unwrap();
            assert_eq!(read, content, "{name}");
        }
        let deflated = zip.by_name("deflated.txt").unwrap().compressed_size();
        assert!(deflated < text.len() as u64 / 10, "{deflated} bytes");
    }

    #[test]
    fn dos_time_packs_fields_and_clamps_before_1980() {
        // 2026-12-06 17:45:31 UTC.
        let at = UNIX_EPOCH + Duration::from_secs(20_793 * 86_400 + 17 * 3600 + 45 * 60 + 31);
        let (time, date) = dos_time(at);
        assert_eq!(
            (time >> 11, (time >> 5) & 63, (time & 31) * 2),
            (17, 45, 30)
        );
        assert_eq!((date >> 9, (date >> 5) & 15, date & 31), (46, 12, 6));
        assert_eq!(dos_time(UNIX_EPOCH), (0, (1 << 5) | 1));
    }
}
