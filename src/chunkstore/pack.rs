//! Pack files: the open pack being appended to, and scanning a pack's
//! records during recovery.

use crate::error::{Error, Result};
use crate::format::header::{self, FILE_HEADER_SIZE, PACK_MAGIC};
use crate::format::index::IndexEntry;
use crate::format::pack::{decode_record_header, verify_record, RecordHeader, RECORD_HEADER_SIZE};
use crate::ids::ChunkId;
use crate::storage::{create_durably_uncached, AppendFile, ReadFile, Storage};

/// Directory holding packs and their indexes.
pub(crate) const PACK_DIR: &str = "packs";

/// Name of pack `seq`.
pub(crate) fn pack_name(seq: u32) -> String {
    format!("{PACK_DIR}/{seq:08x}.pack")
}

/// Name of pack `seq`'s index.
pub(crate) fn index_name(seq: u32) -> String {
    format!("{PACK_DIR}/{seq:08x}.idx")
}

/// Parses `xxxxxxxx.pack` / `xxxxxxxx.idx` names.
pub(crate) fn parse_name(name: &str) -> Option<(u32, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 8 {
        return None;
    }
    let seq = u32::from_str_radix(stem, 16).ok()?;
    Some((seq, extension))
}

/// The pack currently receiving appends.
pub(crate) struct OpenPack {
    pub(crate) seq: u32,
    pub(crate) file: Box<dyn AppendFile>,
    /// Entries appended so far, written as the pack's index when it seals.
    pub(crate) entries: Vec<IndexEntry>,
    /// Whether bytes were appended since the last sync.
    pub(crate) dirty: bool,
    /// Whether [`super::ChunkStore`] sealed it (a seal that failed before
    /// its index can be retried).
    pub(crate) sealed: bool,
}

impl OpenPack {
    /// Creates pack `seq` with its header and makes the file's existence
    /// durable. Packs are written around the operating system's cache
    /// ([`Storage::open_append_uncached`]).
    pub(crate) fn create(storage: &dyn Storage, seq: u32) -> Result<OpenPack> {
        let name = pack_name(seq);
        let file =
            create_durably_uncached(storage, &name, &header::encode(PACK_MAGIC, u64::from(seq)))
                .map_err(|e| Error::io(format!("creating {name}"), e))?;
        Ok(OpenPack {
            seq,
            file,
            entries: Vec::new(),
            dirty: false,
            sealed: false,
        })
    }

    /// Makes what was appended durable, if anything was since the last
    /// sync. A failure leaves the pack's durable content unknown.
    pub(crate) fn sync(&mut self) -> Result<()> {
        if self.dirty {
            self.file.sync().map_err(|e| {
                Error::io_durability_unknown(format!("syncing {}", pack_name(self.seq)), e)
            })?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// One valid record found by a scan.
pub(crate) struct ScannedRecord {
    pub(crate) offset: u32,
    pub(crate) header: RecordHeader,
}

/// The result of scanning a pack from its start.
pub(crate) struct Scan {
    /// Every record whose crc verifies, in file order.
    pub(crate) records: Vec<ScannedRecord>,
    /// Byte ranges after the file header that hold no valid record but
    /// are followed by one: damage (a flipped byte, a lost sector), never
    /// a torn write, which only ever cuts a file's end.
    pub(crate) damaged: Vec<std::ops::Range<u64>>,
    /// End of the last valid record (or of the header).
    pub(crate) valid_len: u64,
    /// Whether bytes past `valid_len` exist that hold no valid record: a
    /// torn tail (or damage confined to the end, which cannot be told
    /// from one).
    pub(crate) has_garbage_tail: bool,
    /// Whether the file header is damaged while records follow it (no
    /// record is lost by that: it only names the pack).
    pub(crate) header_damaged: bool,
}

/// Bytes a resynchronizing scan reads at a time.
const RESYNC_WINDOW: usize = 1 << 20;

/// Reads every record of pack `seq`, checking each crc. A record that does
/// not verify does not end the scan: the next record is looked for where
/// the bad one's framed length says it starts, else byte by byte (a
/// header that decodes and a crc over header and payload that matches),
/// so damage costs only the bytes it touches. Bytes with no valid record
/// after them are a torn tail.
pub(crate) fn scan(file: &dyn ReadFile, seq: u32) -> Result<Scan> {
    let name = pack_name(seq);
    let file_len = file
        .len()
        .map_err(|e| Error::io(format!("reading {name}"), e))?;
    let header_ok = header_ok(file, seq);
    let mut scan = Scan {
        records: Vec::new(),
        damaged: Vec::new(),
        valid_len: FILE_HEADER_SIZE as u64,
        has_garbage_tail: false,
        header_damaged: false,
    };
    let mut payload = Vec::new();
    let mut offset = FILE_HEADER_SIZE as u64;
    while offset < file_len {
        // Index entries hold u32 offsets, and the store never writes a pack
        // that long (pack_target_size is at most 1 GiB): bytes beyond are
        // not records of this store, and are reported, never indexed at a
        // wrong offset.
        let Ok(record_offset) = u32::try_from(offset) else {
            scan.damaged.push(offset..file_len);
            break;
        };
        if let Some(header) = record_at(file, offset, file_len, &mut payload) {
            let end = offset + header.record_len() as u64;
            scan.records.push(ScannedRecord {
                offset: record_offset,
                header,
            });
            scan.valid_len = end;
            offset = end;
            continue;
        }
        // The bad record's own length, if its header still decodes, says
        // where the next one starts; otherwise search for it.
        let framed = framed_end(file, offset, file_len)
            .filter(|next| record_at(file, *next, file_len, &mut payload).is_some());
        let next = match framed {
            Some(next) => Some(next),
            None => next_record(file, offset + 1, file_len, &mut payload),
        };
        match next {
            Some(next) => {
                scan.damaged.push(offset..next);
                offset = next;
            }
            None => {
                scan.has_garbage_tail = true;
                break;
            }
        }
    }
    if !header_ok {
        if scan.records.is_empty() {
            // Nothing but a torn or damaged header: a pack created and
            // never written, as far as anyone can tell.
            scan.valid_len = 0;
            scan.has_garbage_tail = file_len > 0;
        } else {
            scan.header_damaged = true;
        }
    }
    Ok(scan)
}

/// Whether pack `seq`'s file header verifies.
pub(crate) fn header_ok(file: &dyn ReadFile, seq: u32) -> bool {
    let mut head = [0u8; FILE_HEADER_SIZE];
    file.read_exact_at(0, &mut head).is_ok()
        && header::decode(&head, PACK_MAGIC) == Ok(u64::from(seq))
}

/// How many valid records lie within `range` of pack `seq` (found as a
/// scan finds them: by their own lengths, else by resynchronizing).
pub(crate) fn scan_range(
    file: &dyn ReadFile,
    seq: u32,
    range: std::ops::Range<u64>,
) -> Result<usize> {
    let name = pack_name(seq);
    let file_len = file
        .len()
        .map_err(|e| Error::io(format!("reading {name}"), e))?
        .min(range.end);
    let mut payload = Vec::new();
    let mut offset = range.start;
    let mut found = 0;
    while offset < file_len {
        match record_at(file, offset, file_len, &mut payload) {
            Some(header) => {
                found += 1;
                offset += header.record_len() as u64;
            }
            None => match next_record(file, offset + 1, file_len, &mut payload) {
                Some(next) => offset = next,
                None => break,
            },
        }
    }
    Ok(found)
}

/// The header of the valid record at `offset`, if one starts there: the
/// header decodes, the record fits in the file, and its crc verifies.
fn record_at(
    file: &dyn ReadFile,
    offset: u64,
    file_len: u64,
    payload: &mut Vec<u8>,
) -> Option<RecordHeader> {
    let (header_bytes, header) = header_at(file, offset, file_len)?;
    let end = offset + header.record_len() as u64;
    if end > file_len || u32::try_from(end).is_err() {
        return None;
    }
    payload.resize(header.payload_len as usize, 0);
    file.read_exact_at(offset + RECORD_HEADER_SIZE as u64, payload)
        .ok()?;
    verify_record(&header_bytes, &header, payload).ok()?;
    Some(header)
}

/// Where the record at `offset` ends by its own length field, if its
/// header decodes (its crc may still fail).
fn framed_end(file: &dyn ReadFile, offset: u64, file_len: u64) -> Option<u64> {
    let (_, header) = header_at(file, offset, file_len)?;
    Some(offset + header.record_len() as u64).filter(|end| *end < file_len)
}

/// The record header at `offset` (its bytes and decoded fields), if the
/// file holds one there that decodes.
fn header_at(
    file: &dyn ReadFile,
    offset: u64,
    file_len: u64,
) -> Option<([u8; RECORD_HEADER_SIZE], RecordHeader)> {
    if offset + RECORD_HEADER_SIZE as u64 > file_len {
        return None;
    }
    let mut header_bytes = [0u8; RECORD_HEADER_SIZE];
    file.read_exact_at(offset, &mut header_bytes).ok()?;
    let header = decode_record_header(&header_bytes).ok()?;
    Some((header_bytes, header))
}

/// The first offset at or after `from` where a valid record starts. Reads
/// the file in windows and tries each position whose header decodes; only
/// those (rare in anything but record headers) cost a crc.
fn next_record(
    file: &dyn ReadFile,
    from: u64,
    file_len: u64,
    payload: &mut Vec<u8>,
) -> Option<u64> {
    let mut window = vec![0u8; RESYNC_WINDOW + RECORD_HEADER_SIZE];
    let mut start = from;
    while start + RECORD_HEADER_SIZE as u64 <= file_len {
        let length = (file_len - start).min(window.len() as u64) as usize;
        let bytes = window.get_mut(..length)?;
        file.read_exact_at(start, bytes).ok()?;
        let positions = length.saturating_sub(RECORD_HEADER_SIZE) + 1;
        for position in 0..positions.min(RESYNC_WINDOW) {
            let candidate = bytes.get(position..position + RECORD_HEADER_SIZE)?;
            if decode_record_header(candidate).is_err() {
                continue;
            }
            let offset = start + position as u64;
            if record_at(file, offset, file_len, payload).is_some() {
                return Some(offset);
            }
        }
        start += RESYNC_WINDOW as u64;
    }
    None
}

/// Index entries of scanned records, sorted as the index format requires.
pub(crate) fn entries_of(records: &[ScannedRecord]) -> Vec<(ChunkId, IndexEntry)> {
    let mut entries: Vec<(ChunkId, IndexEntry)> = records
        .iter()
        .map(|record| {
            (
                record.header.chunk_id,
                IndexEntry {
                    id_prefix: record.header.chunk_id.prefix(),
                    offset: record.offset,
                    // At most RECORD_HEADER_SIZE + MAX_PAYLOAD_LEN: the
                    // header decoded, and the decoder bounds the payload.
                    record_len: record.header.record_len() as u32,
                },
            )
        })
        .collect();
    entries.sort_by_key(|(_, entry)| *entry);
    entries
}
