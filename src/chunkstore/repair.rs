//! Rebuilding pack indexes from the packs themselves, for `repair`: every
//! pack is scanned past any damage, and its index is made to list exactly
//! the records that verify.

use super::compact::recover_compactions;
use super::load_index;
use super::pack::{entries_of, index_name, pack_name, parse_name, scan, PACK_DIR};
use crate::error::{Error, Result};
use crate::format::index::{encode_index, IndexEntry};
use crate::storage::{remove_durably, Storage};
use std::collections::BTreeSet;
use std::ops::Range;

/// What repair found in, and did to, one pack.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PackRepair {
    /// The pack.
    pub pack: u32,
    /// Records that verify: what its index lists now.
    pub records: usize,
    /// Records the old index lacked (or all of them, when it had none
    /// that verified): reachable again.
    pub recovered: usize,
    /// Entries of the old index whose record does not verify: removed, so
    /// their chunks read as missing (and a later put of the same data
    /// stores them again).
    pub dropped: usize,
    /// Byte ranges that hold no valid record while valid records follow:
    /// whatever records were there are lost.
    #[serde(serialize_with = "serialize_ranges")]
    pub unreadable: Vec<Range<u64>>,
    /// Whether the index was (or, in a dry run, would be) rewritten.
    pub index_rewritten: bool,
    /// Whether the pack's file header is damaged: its records are then
    /// copied into a new pack (as compaction copies them).
    pub header_damaged: bool,
    /// Whether the pack held no valid record at all and was (or would be)
    /// removed with its index.
    pub removed: bool,
}

/// Scans every pack and rewrites each index that does not list exactly
/// the pack's valid records (none is written when `dry_run`). Interrupted
/// compactions are finished or undone first (in memory only when
/// `dry_run`). Returns the packs where anything was found.
pub fn repair_packs(storage: &dyn Storage, dry_run: bool) -> Result<Vec<PackRepair>> {
    let ignored = recover_compactions(storage, dry_run)?;
    let names = storage
        .list(PACK_DIR)
        .map_err(|e| Error::io("listing packs", e))?;
    let packs: BTreeSet<u32> = names
        .iter()
        .filter_map(|name| match parse_name(name) {
            Some((seq, "pack")) if !ignored.contains(&seq) => Some(seq),
            _ => None,
        })
        .collect();
    let mut repairs = Vec::new();
    for seq in packs {
        let name = pack_name(seq);
        let reader = storage
            .open_read(&name)
            .map_err(|e| Error::io(format!("opening {name}"), e))?;
        let pack_len = reader
            .len()
            .map_err(|e| Error::io(format!("reading {name}"), e))?;
        let scanned = scan(reader.as_ref(), seq)?;
        let mut entries: Vec<IndexEntry> = entries_of(&scanned.records)
            .into_iter()
            .map(|(_, entry)| entry)
            .collect();
        entries.sort_unstable();
        let old = load_index(storage, seq, pack_len).map(|mut old| {
            old.sort_unstable();
            old
        });
        let unchanged = old.as_ref() == Some(&entries);
        let index_exists = storage
            .exists(&index_name(seq))
            .map_err(|e| Error::io(format!("checking {}", index_name(seq)), e))?;
        // A pack without an index and without damage is the pack a crash
        // left open (or a seal interrupted): opening handles it.
        let unindexed = old.is_none() && !index_exists;
        if scanned.damaged.is_empty() && !scanned.header_damaged && (unchanged || unindexed) {
            continue;
        }
        // Without an index, every valid record was found by the scans at
        // open already: nothing becomes reachable that was not.
        let (recovered, dropped) = match &old {
            Some(old) => (
                entries.iter().filter(|entry| !old.contains(entry)).count(),
                old.iter().filter(|entry| !entries.contains(entry)).count(),
            ),
            None => (0, 0),
        };
        let removed = entries.is_empty();
        if !dry_run {
            if removed {
                remove_durably(storage, PACK_DIR, &[name.clone(), index_name(seq)])
                    .map_err(|e| Error::io(format!("removing {name}"), e))?;
            } else if !unchanged {
                storage
                    .write_atomic(&index_name(seq), &encode_index(u64::from(seq), &entries)?)
                    .map_err(|e| Error::io(format!("writing {}", index_name(seq)), e))?;
            }
        }
        repairs.push(PackRepair {
            pack: seq,
            records: entries.len(),
            recovered,
            dropped,
            unreadable: scanned.damaged,
            index_rewritten: !unchanged && !removed,
            header_damaged: scanned.header_damaged,
            removed,
        });
    }
    Ok(repairs)
}

/// Byte ranges as `[start, end]` pairs.
fn serialize_ranges<S: serde::Serializer>(
    ranges: &[Range<u64>],
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_seq(ranges.iter().map(|range| [range.start, range.end]))
}
