//! Reading the catalog back: segments in order from the newest checkpoint,
//! each segment's two copies merged frame by frame, torn tails told apart
//! from damage.
//!
//! Both copies of a segment receive the same frames at the same offsets,
//! so at every offset the frame of whichever copy verifies is taken. A
//! copy that fails where the other verifies is damage to that copy (the
//! record survives) unless the failure is in the copy's tail, after its
//! last valid frame, where a crash between the two appends or a torn write
//! leaves exactly that. Where neither copy verifies, a valid frame further
//! on in either copy means damage to both (records lost); none means a
//! torn tail, the end of the segment.

use super::{SnapshotRecord, SnapshotState};
use crate::error::{Damage, Error, Result};
use crate::format::catalog::{CatalogRecord, CATALOG_FLAG_CHECKPOINT, CATALOG_FLAG_JOURNALED};
use crate::format::header::{self, CATALOG_MAGIC, FILE_HEADER_SIZE};
use crate::ids::SnapshotId;
use crate::storage::Storage;
use std::collections::{HashMap, HashSet};

/// Directory of the catalog's segments.
pub(super) const CATALOG_DIR: &str = "catalog";

/// Name of segment `seq`'s primary copy: its existence is the segment's.
pub(super) fn segment_name(seq: u32) -> String {
    format!("{CATALOG_DIR}/{seq:08x}.log")
}

/// Name of segment `seq`'s mirror copy (written first, byte for byte the
/// same as the primary).
pub(super) fn mirror_name(seq: u32) -> String {
    format!("{CATALOG_DIR}/{seq:08x}.mirror")
}

/// What replay does with damage to both copies at one place.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Strictness {
    /// Opening fails with `Corrupted`: later records may depend on the
    /// lost ones, so nothing is guessed.
    Refuse,
    /// Skip to the next valid frame, skip transitions that no longer
    /// apply, and report each loss (`repair`, `verify`).
    Salvage,
}

/// The catalog in memory.
#[derive(Default)]
pub(super) struct CatalogState {
    pub(super) snapshots: HashMap<SnapshotId, SnapshotRecord>,
    pub(super) tokens: HashMap<(String, String), SnapshotId>,
    /// Snapshots whose Started record came from a segment written before
    /// journals were made at start (no `JOURNALED` flag): pending without
    /// a journal, they simply never received a block.
    pub(super) unjournaled: HashSet<SnapshotId>,
    /// Records applied since the log was replayed from its start.
    pub(super) frames: u64,
}

impl CatalogState {
    pub(super) fn apply(
        &mut self,
        record: CatalogRecord,
        journaled: bool,
        location: &str,
    ) -> Result<()> {
        self.frames += 1;
        match record {
            CatalogRecord::Started(started) => {
                if let Some(token) = &started.client_token {
                    self.tokens
                        .insert((started.owner.clone(), token.clone()), started.snapshot);
                }
                if journaled {
                    self.unjournaled.remove(&started.snapshot);
                } else {
                    self.unjournaled.insert(started.snapshot);
                }
                self.snapshots.insert(
                    started.snapshot,
                    SnapshotRecord {
                        started,
                        state: SnapshotState::Pending,
                    },
                );
            }
            CatalogRecord::Completed {
                snapshot,
                completed_millis,
                root,
                changed_blocks,
            } => {
                let record = self.pending_mut(snapshot, location)?;
                record.state = SnapshotState::Completed {
                    completed_millis,
                    root,
                    changed_blocks,
                };
            }
            CatalogRecord::Failed {
                snapshot,
                at_millis,
                reason,
            } => {
                let record = self.pending_mut(snapshot, location)?;
                record.state = SnapshotState::Error { at_millis, reason };
            }
            CatalogRecord::Tagged { snapshot, tags, .. } => match self.snapshots.get_mut(&snapshot)
            {
                Some(record) => record.started.tags = tags,
                None => {
                    return Err(Error::corrupted(
                        location,
                        format!("new tags of {snapshot}, which is absent"),
                    ))
                }
            },
            CatalogRecord::Deleted { snapshot, .. } => {
                match self.snapshots.get(&snapshot) {
                    Some(record) if record.state != SnapshotState::Pending => {}
                    _ => {
                        return Err(Error::corrupted(
                            location,
                            format!("deletion of {snapshot}, which is absent or pending"),
                        ))
                    }
                }
                if let Some(record) = self.snapshots.remove(&snapshot) {
                    self.unjournaled.remove(&snapshot);
                    if let Some(token) = record.started.client_token {
                        self.tokens.remove(&(record.started.owner, token));
                    }
                }
            }
        }
        Ok(())
    }

    fn pending_mut(&mut self, snapshot: SnapshotId, location: &str) -> Result<&mut SnapshotRecord> {
        match self.snapshots.get_mut(&snapshot) {
            Some(record) if record.state == SnapshotState::Pending => Ok(record),
            _ => Err(Error::corrupted(
                location,
                format!("transition of {snapshot}, which is not pending"),
            )),
        }
    }
}

/// One segment's copies as read from storage.
pub(super) struct SegmentFiles {
    pub(super) seq: u32,
    pub(super) primary: Vec<u8>,
    pub(super) mirror: Option<Vec<u8>>,
}

impl SegmentFiles {
    /// The header flags of whichever copy's header verifies.
    fn flags(&self) -> Option<u32> {
        [Some(self.primary.as_slice()), self.mirror.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|bytes| header_flags(bytes, self.seq))
    }

    fn is_checkpoint(&self) -> bool {
        self.flags()
            .is_some_and(|flags| flags & CATALOG_FLAG_CHECKPOINT != 0)
    }
}

fn header_flags(bytes: &[u8], seq: u32) -> Option<u32> {
    let head = bytes.get(..FILE_HEADER_SIZE)?;
    match header::decode_with_flags(head, CATALOG_MAGIC) {
        Ok((subject, flags)) if subject == u64::from(seq) => Some(flags),
        _ => None,
    }
}

/// How the last segment can take appends.
pub(super) struct Appendable {
    pub(super) seq: u32,
    /// Bytes the shorter copy lacks (a crash between the two appends):
    /// `Some((true, bytes))` for the mirror, `Some((false, bytes))` for
    /// the primary; appended before anything new.
    pub(super) catch_up: Option<(bool, Vec<u8>)>,
}

/// The log as replayed from storage.
pub(super) struct Replayed {
    pub(super) state: CatalogState,
    /// Segment sequences (primaries), ascending.
    pub(super) segments: Vec<u32>,
    /// Mirrors without a primary: a segment or checkpoint whose creation
    /// a crash interrupted before its commit point.
    pub(super) stray_mirrors: Vec<u32>,
    /// Segments before the newest checkpoint: superseded, to be removed.
    pub(super) superseded: Vec<u32>,
    /// The last segment, if new records may be appended to it.
    pub(super) appendable: Option<Appendable>,
    /// Damage found in either copy.
    pub(super) damage: Vec<Damage>,
}

/// Replays the segments from the newest checkpoint on, in order.
pub(super) fn replay(storage: &dyn Storage, strictness: Strictness) -> Result<Replayed> {
    let (segments, mirrors) = list_segments(storage)?;
    let stray_mirrors: Vec<u32> = mirrors
        .iter()
        .copied()
        .filter(|seq| segments.binary_search(seq).is_err())
        .collect();
    let mut files = Vec::with_capacity(segments.len());
    for &seq in &segments {
        let read = |name: String| {
            storage
                .read_all(&name)
                .map_err(|e| Error::io(format!("reading {name}"), e))
        };
        let primary = read(segment_name(seq))?;
        let mirror = if mirrors.binary_search(&seq).is_ok() {
            Some(read(mirror_name(seq))?)
        } else {
            None
        };
        files.push(SegmentFiles {
            seq,
            primary,
            mirror,
        });
    }
    let first = files
        .iter()
        .rposition(SegmentFiles::is_checkpoint)
        .unwrap_or(0);
    let superseded = segments.get(..first).unwrap_or_default().to_vec();
    let mut state = CatalogState::default();
    let mut damage = Vec::new();
    let mut appendable = None;
    for segment in files.iter().skip(first) {
        let clean = replay_segment(segment, &mut state, strictness, &mut damage)?;
        appendable = clean.then(|| appendable_segment(segment)).flatten();
    }
    Ok(Replayed {
        state,
        segments,
        stray_mirrors,
        superseded,
        appendable,
        damage,
    })
}

/// Whether (and how) new frames can follow the last segment: both copies
/// there, written by this format (journaled starts, mirrored), and equal
/// or one a prefix of the other.
fn appendable_segment(segment: &SegmentFiles) -> Option<Appendable> {
    let flags = segment.flags()?;
    if flags & CATALOG_FLAG_JOURNALED == 0 {
        return None;
    }
    let primary = &segment.primary;
    let mirror = segment.mirror.as_ref()?;
    let catch_up = if primary == mirror {
        None
    } else if let Some(missing) = mirror.strip_prefix(primary.as_slice()) {
        Some((false, missing.to_vec()))
    } else if let Some(missing) = primary.strip_prefix(mirror.as_slice()) {
        Some((true, missing.to_vec()))
    } else {
        return None;
    };
    Some(Appendable {
        seq: segment.seq,
        catch_up,
    })
}

/// Replays one segment into `state`, merging its copies; returns whether
/// it ended cleanly (`false`: a torn tail, and new records go to a new
/// segment).
fn replay_segment(
    segment: &SegmentFiles,
    state: &mut CatalogState,
    strictness: Strictness,
    damage: &mut Vec<Damage>,
) -> Result<bool> {
    let seq = segment.seq;
    let copies = [
        (segment_name(seq), Some(segment.primary.as_slice())),
        (mirror_name(seq), segment.mirror.as_deref()),
    ];
    let headers = copies
        .each_ref()
        .map(|(_, bytes)| bytes.and_then(|bytes| header_flags(bytes, seq)));
    let flags = match headers {
        [Some(flags), _] | [None, Some(flags)] => flags,
        [None, None] => {
            let longest = copies
                .iter()
                .map(|(_, bytes)| bytes.map_or(0, <[u8]>::len))
                .max()
                .unwrap_or(0);
            // Headers are synced before any frame is appended: a segment
            // that holds nothing else was torn while being created.
            if longest <= FILE_HEADER_SIZE {
                return Ok(false);
            }
            if strictness == Strictness::Refuse {
                return Err(Error::corrupted(
                    segment_name(seq),
                    "the segment header does not verify in either copy",
                ));
            }
            damage.push(Damage {
                file: segment_name(seq),
                detail: "the segment header does not verify in either copy".into(),
                data_lost: false,
            });
            // Unknown: assume the stricter meaning (a missing journal is
            // damage), so nothing that may be referenced is collected.
            CATALOG_FLAG_JOURNALED
        }
    };
    let journaled = flags & CATALOG_FLAG_JOURNALED != 0;
    let end = copies
        .iter()
        .map(|(_, bytes)| bytes.map_or(0, <[u8]>::len))
        .max()
        .unwrap_or(0);
    // Per copy: offsets of frames the other copy held and this one did not.
    let mut missing: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    let mut last_frame = None;
    let mut clean = true;
    let mut offset = FILE_HEADER_SIZE;
    while offset < end {
        let decoded = copies.each_ref().map(|(_, bytes)| {
            bytes
                .and_then(|bytes| bytes.get(offset..))
                .and_then(|rest| CatalogRecord::decode_frame(rest).ok())
        });
        let location = format!("{} at byte {offset}", segment_name(seq));
        let chosen = decoded.iter().flatten().next().cloned();
        let (record, length) = match chosen {
            Some(frame) => {
                for (copy, found) in missing.iter_mut().zip(&decoded) {
                    if found.is_none() {
                        copy.push(offset);
                    }
                }
                last_frame = Some(offset);
                frame
            }
            None => {
                let next = copies
                    .iter()
                    .filter_map(|(_, bytes)| next_valid_frame((*bytes)?, offset + 1))
                    .min();
                let Some(next) = next else {
                    clean = false;
                    break;
                };
                let what =
                    format!("bytes {offset}..{next} hold no valid frame in either copy, and valid frames follow");
                if strictness == Strictness::Refuse {
                    return Err(Error::corrupted(segment_name(seq), what));
                }
                damage.push(Damage {
                    file: segment_name(seq),
                    detail: format!("{what}: the records there are lost"),
                    data_lost: true,
                });
                offset = next;
                continue;
            }
        };
        if let Err(error) = state.apply(record, journaled, &location) {
            if strictness == Strictness::Refuse {
                return Err(error);
            }
            damage.push(Damage {
                file: segment_name(seq),
                detail: format!("{error}: a record it depends on was lost; skipped"),
                data_lost: true,
            });
        }
        offset += length;
    }
    // Both copies get every frame before the next is written, so a crash
    // leaves them differing in the last frame at most; and both headers
    // were durable before the first frame. Anything else is damage to a
    // copy (its twin held the records: nothing is lost).
    for ((name, bytes), (header, copy_missing)) in copies.iter().zip(headers.iter().zip(&missing)) {
        let Some(bytes) = bytes else {
            if journaled {
                damage.push(Damage {
                    file: name.clone(),
                    detail: "this copy of the segment is missing; the other copy is used".into(),
                    data_lost: false,
                });
            }
            continue;
        };
        let header_lost =
            header.is_none() && (last_frame.is_some() || bytes.len() > FILE_HEADER_SIZE);
        let frames_lost: Vec<&usize> = copy_missing
            .iter()
            .filter(|offset| Some(**offset) != last_frame)
            .collect();
        if header_lost || !frames_lost.is_empty() {
            let mut what = Vec::new();
            if header_lost {
                what.push("its header does not verify".to_string());
            }
            if !frames_lost.is_empty() {
                let offsets: Vec<String> = frames_lost
                    .iter()
                    .map(|offset| offset.to_string())
                    .collect();
                what.push(format!(
                    "the frames at bytes {} do not verify or are cut off",
                    offsets.join(", ")
                ));
            }
            damage.push(Damage {
                file: name.clone(),
                detail: format!("{}; the other copy holds them", what.join(", and ")),
                data_lost: false,
            });
        }
    }
    Ok(clean)
}

/// The first offset at or after `from` where a valid frame starts. Random
/// length fields almost always exceed the largest frame, so the search
/// rarely computes a crc.
fn next_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len())
        .find(|&start| CatalogRecord::decode_frame(bytes.get(start..).unwrap_or_default()).is_ok())
}

/// The segments present: (primaries, mirrors), each ascending.
pub(super) fn list_segments(storage: &dyn Storage) -> Result<(Vec<u32>, Vec<u32>)> {
    let names = storage
        .list(CATALOG_DIR)
        .map_err(|e| Error::io("listing the catalog", e))?;
    let parse = |suffix: &str| {
        let mut found: Vec<u32> = names
            .iter()
            .filter_map(|name| {
                let stem = name.strip_suffix(suffix)?;
                (stem.len() == 8)
                    .then(|| u32::from_str_radix(stem, 16).ok())
                    .flatten()
            })
            .collect();
        found.sort_unstable();
        found
    };
    Ok((parse(".log"), parse(".mirror")))
}
