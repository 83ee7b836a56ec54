//! A bounds-checked little-endian cursor over a request payload. Every read either succeeds or
//! returns [`WireError::Truncated`] naming the byte offset; nothing here can panic on input.

use crate::error::WireError;

pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < len {
            return Err(WireError::Truncated {
                offset: self.pos,
                need: len - self.remaining(),
            });
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let slice = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        slice
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A UTF-8 string of `len` bytes.
    pub fn str(&mut self, len: usize) -> Result<&'a str, WireError> {
        let offset = self.pos;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8 { offset })
    }

    /// A name: `len u8` then that many UTF-8 bytes. Length validation is the caller's, because
    /// the error code for an empty name differs by object (stream, topic, user).
    pub fn name_u8(&mut self) -> Result<&'a str, WireError> {
        let len = self.u8()? as usize;
        self.str(len)
    }

    /// An optional string prefixed by a u32 length (0 = absent), as in LoginUser's version field.
    pub fn str_u32(&mut self) -> Result<&'a str, WireError> {
        let len = self.u32()? as usize;
        self.str(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert_eq!(reader.u8().unwrap(), 1);
        assert_eq!(
            reader.u32(),
            Err(WireError::Truncated { offset: 1, need: 2 })
        );
    }

    #[test]
    fn non_utf8_names_are_rejected_with_offset() {
        let mut reader = Reader::new(&[2, 0xff, 0xfe]);
        assert_eq!(reader.name_u8(), Err(WireError::InvalidUtf8 { offset: 1 }));
    }
}
