//! Journal records of a pending snapshot: one per acknowledged put.
//!
//! The layout, field by field, is specified in DESIGN.md §4.7 "Journal record"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::{seal_leading_crc, Reader, Writer};
use super::{crc32, DecodeError};
use crate::ids::{BlockIndex, ChunkId, Sha256Digest};

/// Header flag: puts were acknowledged before they were durable.
pub const JOURNAL_FLAG_AT_COMPLETE: u32 = 1;
/// Header flag: records carry their put time ([`JOURNAL_RECORD_SIZE`]
/// bytes). Journals without it were written before put times were kept and
/// hold [`UNTIMED_RECORD_SIZE`]-byte records.
pub const JOURNAL_FLAG_TIMED: u32 = 2;
/// Journal header flag: the snapshot is encrypted and each record's
/// `sha256` field holds the checksum XORed with the domain's mask.
pub const JOURNAL_FLAG_MASKED_CHECKSUMS: u32 = 4;

/// Journal header flag: every record is written twice in a row (an
/// entry), so a damaged copy loses nothing; a journal is read entry by
/// entry, taking the first copy that verifies.
pub const JOURNAL_FLAG_PAIRED: u32 = 8;
/// Offset of the crc.
pub const JOURNAL_CRC_OFFSET: usize = 0;
/// Offset of the block index.
pub const JOURNAL_INDEX_OFFSET: usize = JOURNAL_CRC_OFFSET + 4;
/// Offset of the chunk id.
pub const JOURNAL_CHUNK_ID_OFFSET: usize = JOURNAL_INDEX_OFFSET + 4;
/// Offset of the SHA-256.
pub const JOURNAL_SHA256_OFFSET: usize = JOURNAL_CHUNK_ID_OFFSET + 32;
/// Offset of the put time.
pub const JOURNAL_PUT_MILLIS_OFFSET: usize = JOURNAL_SHA256_OFFSET + 32;
/// Size of one record.
pub const JOURNAL_RECORD_SIZE: usize = JOURNAL_PUT_MILLIS_OFFSET + 8;
const _: () = assert!(JOURNAL_RECORD_SIZE == 80);
/// Size of a record in a journal without [`JOURNAL_FLAG_TIMED`]: the same
/// fields without the put time.
pub const UNTIMED_RECORD_SIZE: usize = JOURNAL_PUT_MILLIS_OFFSET;

/// One acknowledged put.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct JournalRecord {
    /// Block index written.
    pub index: BlockIndex,
    /// Content address of the data.
    pub chunk_id: ChunkId,
    /// EBS checksum of the data.
    pub sha256: Sha256Digest,
    /// When the put was acknowledged, epoch milliseconds (`None` in an
    /// untimed journal).
    pub put_millis: Option<u64>,
}

impl JournalRecord {
    /// Encodes the record in the timed layout (a missing put time is
    /// written as 0).
    pub fn encode(&self) -> [u8; JOURNAL_RECORD_SIZE] {
        let mut bytes = Vec::with_capacity(JOURNAL_RECORD_SIZE);
        bytes.put_u32(0);
        bytes.put_u32(self.index.0);
        bytes.extend_from_slice(&self.chunk_id.0);
        bytes.extend_from_slice(&self.sha256.0);
        bytes.put_u64(self.put_millis.unwrap_or(0));
        seal_leading_crc(&mut bytes, JOURNAL_INDEX_OFFSET);
        let mut out = [0u8; JOURNAL_RECORD_SIZE];
        out.copy_from_slice(&bytes);
        out
    }

    /// Decodes one record of a journal whose header flags are `flags`
    /// (`bytes` is [`JournalRecord::size`] long).
    pub fn decode(bytes: &[u8], flags: u32) -> Result<JournalRecord, DecodeError> {
        let timed = flags & JOURNAL_FLAG_TIMED != 0;
        let mut reader = Reader::new(bytes);
        let stored_crc = reader.u32("journal crc")?;
        let index = BlockIndex(reader.u32("journal index")?);
        let chunk_id = ChunkId(reader.array::<32>("journal chunk id")?);
        let sha256 = Sha256Digest(reader.array::<32>("journal sha256")?);
        let put_millis = if timed {
            Some(reader.u64("journal put time")?)
        } else {
            None
        };
        reader.finish("journal record length")?;
        let covered = bytes.get(JOURNAL_INDEX_OFFSET..).unwrap_or_default();
        if crc32(&[covered]) != stored_crc {
            return Err(DecodeError::corrupt(JOURNAL_CRC_OFFSET, "journal crc"));
        }
        Ok(JournalRecord {
            index,
            chunk_id,
            sha256,
            put_millis,
        })
    }

    /// The record size in a journal whose header flags are `flags`.
    pub fn size(flags: u32) -> usize {
        if flags & JOURNAL_FLAG_TIMED != 0 {
            JOURNAL_RECORD_SIZE
        } else {
            UNTIMED_RECORD_SIZE
        }
    }

    /// The bytes of one entry of a journal whose header flags are `flags`:
    /// the record, twice when [`JOURNAL_FLAG_PAIRED`].
    pub fn encode_entry(&self, flags: u32) -> Vec<u8> {
        let record = self.encode();
        let copies = if flags & JOURNAL_FLAG_PAIRED != 0 {
            2
        } else {
            1
        };
        record.repeat(copies)
    }

    /// The size of one entry in a journal whose header flags are `flags`.
    pub fn entry_size(flags: u32) -> usize {
        let copies = if flags & JOURNAL_FLAG_PAIRED != 0 {
            2
        } else {
            1
        };
        Self::size(flags) * copies
    }

    /// Decodes one entry ([`JournalRecord::entry_size`] bytes): the first
    /// copy that verifies, and which copies failed (bit `i` for copy `i`).
    pub fn decode_entry(bytes: &[u8], flags: u32) -> Result<(JournalRecord, u32), DecodeError> {
        if bytes.len() != Self::entry_size(flags) {
            return Err(DecodeError::corrupt(0, "journal entry length"));
        }
        let mut chosen = Err(DecodeError::corrupt(0, "journal entry length"));
        let mut failed = 0;
        for (copy, raw) in bytes.chunks_exact(Self::size(flags)).enumerate() {
            match Self::decode(raw, flags) {
                Ok(record) if chosen.is_err() => chosen = Ok(record),
                Ok(_) => {}
                Err(error) => {
                    failed |= 1 << copy;
                    if chosen.is_err() {
                        chosen = Err(error);
                    }
                }
            }
        }
        chosen.map(|record| (record, failed))
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_flips() {
        let record = JournalRecord {
            index: BlockIndex(77),
            chunk_id: ChunkId([1; 32]),
            sha256: Sha256Digest([2; 32]),
            put_millis: Some(1_790_000_000_000),
        };
        let bytes = record.encode();
        assert_eq!(JournalRecord::size(JOURNAL_FLAG_TIMED), bytes.len());
        assert_eq!(
            JournalRecord::decode(&bytes, JOURNAL_FLAG_TIMED),
            Ok(record)
        );
        for position in 0..bytes.len() {
            let mut flipped = bytes;
            flipped[position] ^= 0x80;
            assert!(JournalRecord::decode(&flipped, JOURNAL_FLAG_TIMED).is_err());
        }
    }

    #[test]
    fn a_paired_entry_survives_either_copy_damaged() {
        let record = JournalRecord {
            index: BlockIndex(5),
            chunk_id: ChunkId([3; 32]),
            sha256: Sha256Digest([4; 32]),
            put_millis: Some(7),
        };
        let flags = JOURNAL_FLAG_TIMED | JOURNAL_FLAG_PAIRED;
        let entry = record.encode_entry(flags);
        assert_eq!(entry.len(), JournalRecord::entry_size(flags));
        assert_eq!(JournalRecord::decode_entry(&entry, flags), Ok((record, 0)));
        for position in 0..entry.len() {
            let mut flipped = entry.clone();
            flipped[position] ^= 0x04;
            let copy = position / JOURNAL_RECORD_SIZE;
            assert_eq!(
                JournalRecord::decode_entry(&flipped, flags),
                Ok((record, 1 << copy)),
                "flip at {position}"
            );
        }
        let mut both = entry.clone();
        both[10] ^= 1;
        both[JOURNAL_RECORD_SIZE + 10] ^= 1;
        assert!(JournalRecord::decode_entry(&both, flags).is_err());
    }

    #[test]
    fn untimed_records_of_older_journals_decode() {
        let mut bytes = vec![0u8; UNTIMED_RECORD_SIZE];
        bytes[JOURNAL_INDEX_OFFSET..JOURNAL_CHUNK_ID_OFFSET].copy_from_slice(&9u32.to_le_bytes());
        let crc = crc32(&[&bytes[JOURNAL_INDEX_OFFSET..]]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        let record = JournalRecord::decode(&bytes, 0).expect("untimed record");
        assert_eq!(record.index, BlockIndex(9));
        assert_eq!(record.put_millis, None);
        assert!(JournalRecord::decode(&bytes, JOURNAL_FLAG_TIMED).is_err());
    }
}
