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
        })
    }
}

/// One valid record found by a scan.
pub(crate) struct ScannedRecord {
    pub(crate) offset: u32,
    pub(crate) header: RecordHeader,
}

/// The result of scanning a pack from its start.
pub(crate) struct Scan {
    pub(crate) records: Vec<ScannedRecord>,
    /// Bytes covered by the header and valid records.
    pub(crate) valid_len: u64,
    /// Whether bytes past `valid_len` exist (a torn or corrupt tail).
    pub(crate) has_garbage_tail: bool,
}

/// Reads every record of pack `seq`, checking each crc, and stops at the
/// first record that does not verify.
pub(crate) fn scan(file: &dyn ReadFile, seq: u32) -> Result<Scan> {
    let name = pack_name(seq);
    let file_len = file
        .len()
        .map_err(|e| Error::io(format!("reading {name}"), e))?;
    let mut head = [0u8; FILE_HEADER_SIZE];
    let header_ok = file_len >= FILE_HEADER_SIZE as u64
        && file.read_exact_at(0, &mut head).is_ok()
        && header::decode(&head, PACK_MAGIC) == Ok(u64::from(seq));
    if !header_ok {
        return Ok(Scan {
            records: Vec::new(),
            valid_len: 0,
            has_garbage_tail: file_len > 0,
        });
    }
    let mut records = Vec::new();
    let mut offset = FILE_HEADER_SIZE as u64;
    let mut payload = Vec::new();
    while offset + RECORD_HEADER_SIZE as u64 <= file_len {
        let mut header_bytes = [0u8; RECORD_HEADER_SIZE];
        if file.read_exact_at(offset, &mut header_bytes).is_err() {
            break;
        }
        let Ok(header) = decode_record_header(&header_bytes) else {
            break;
        };
        let end = offset + header.record_len() as u64;
        if end > file_len || u32::try_from(end).is_err() {
            break;
        }
        payload.resize(header.payload_len as usize, 0);
        if file
            .read_exact_at(offset + RECORD_HEADER_SIZE as u64, &mut payload)
            .is_err()
            || verify_record(&header_bytes, &header, &payload).is_err()
        {
            break;
        }
        records.push(ScannedRecord {
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
            header,
        });
        offset = end;
    }
    Ok(Scan {
        records,
        valid_len: offset,
        has_garbage_tail: offset < file_len,
    })
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
                    record_len: u32::try_from(record.header.record_len()).unwrap_or(u32::MAX),
                },
            )
        })
        .collect();
    entries.sort_by_key(|(_, entry)| *entry);
    entries
}
