//! Cursor helpers for little-endian encoding and panic-free decoding.

use super::{DecodeError, EncodeError};

/// Reads fixed-width little-endian fields from a byte slice, reporting the
/// offset of the first field that does not fit.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.position
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    pub(crate) fn take(
        &mut self,
        length: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let end = self
            .position
            .checked_add(length)
            .ok_or(DecodeError::corrupt(self.position, what))?;
        let slice = self
            .bytes
            .get(self.position..end)
            .ok_or(DecodeError::corrupt(self.position, what))?;
        self.position = end;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array::<1>(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array::<2>(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array::<4>(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }

    /// A UTF-8 string prefixed by its u16 byte length.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let start = self.position;
        let length = usize::from(self.u16(what)?);
        let bytes = self.take(length, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::corrupt(start, what))
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::corrupt(self.position, what))
        }
    }
}

/// Appends little-endian fields to a buffer.
pub(crate) trait Writer {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_u64(&mut self, value: u64);
    /// Writes a string with a u16 length prefix; a longer one (over 64 KiB
    /// - 1 bytes) is an error, never cut.
    fn put_string(&mut self, value: &str, what: &'static str) -> Result<(), EncodeError>;
    /// Writes a count or length as a u16, refusing one that does not fit.
    fn put_len_u16(&mut self, len: usize, what: &'static str) -> Result<(), EncodeError> {
        let value = u16::try_from(len).map_err(|_| EncodeError {
            what,
            len,
            limit: usize::from(u16::MAX),
        })?;
        self.put_u16(value);
        Ok(())
    }
    /// Writes a count or length as a u32, refusing one that does not fit.
    fn put_len_u32(&mut self, len: usize, what: &'static str) -> Result<(), EncodeError> {
        let value = u32::try_from(len).map_err(|_| EncodeError {
            what,
            len,
            limit: u32::MAX as usize,
        })?;
        self.put_u32(value);
        Ok(())
    }
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, value: u8) {
        self.push(value);
    }
    fn put_u16(&mut self, value: u16) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_u32(&mut self, value: u32) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_u64(&mut self, value: u64) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_string(&mut self, value: &str, what: &'static str) -> Result<(), EncodeError> {
        self.put_len_u16(value.len(), what)?;
        self.extend_from_slice(value.as_bytes());
        Ok(())
    }
}

/// Fills the 4-byte crc placeholder at the start of `frame` with the crc32
/// of `frame[covered_from..]`.
pub(crate) fn seal_leading_crc(frame: &mut [u8], covered_from: usize) {
    let crc = super::crc32(&[frame.get(covered_from..).unwrap_or_default()]);
    if let Some(slot) = frame.get_mut(..4) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
}

/// The body of a structure that ends with the crc32 of everything before
/// it, once that crc matches.
pub(crate) fn body_before_crc<'a>(
    bytes: &'a [u8],
    truncated: &'static str,
    crc_what: &'static str,
) -> Result<&'a [u8], DecodeError> {
    let body_end = bytes
        .len()
        .checked_sub(4)
        .ok_or(DecodeError::corrupt(0, truncated))?;
    let body = bytes
        .get(..body_end)
        .ok_or(DecodeError::corrupt(0, truncated))?;
    let mut trailer = Reader::new(bytes.get(body_end..).unwrap_or_default());
    if trailer.u32(crc_what)? != super::crc32(&[body]) {
        return Err(DecodeError::corrupt(body_end, crc_what));
    }
    Ok(body)
}
