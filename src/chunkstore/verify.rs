//! Reading every stored chunk back and checking it: crc, the id in the
//! header against the index, the authentication tag of encrypted records,
//! the decoded length, the content hash (blake3 for blocks, the node hash
//! for map nodes; keyed in encrypted domains) and, for blocks, the SHA-256
//! kept with the record.

use super::pack::{header_ok, index_name, pack_name, scan_range};
use super::{load_index, ChunkStore};
use crate::clock::Pacer;
use crate::codec;
use crate::error::{Damage, Error};
use crate::format::pack::RecordKind;
use crate::ids::{ChunkId, PackLocation};
use std::sync::atomic::{AtomicBool, Ordering};

/// A stored record that failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRecord {
    /// Where it is.
    pub location: PackLocation,
    /// The first 8 bytes of its id, from the index.
    pub id_prefix: u64,
    /// Its full id, when the record header could be read.
    pub chunk: Option<ChunkId>,
    /// What failed.
    pub detail: String,
}

/// What a verification pass read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordCheck {
    /// Records read and checked.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Records that failed.
    pub damaged: Vec<DamagedRecord>,
}

/// Which records a verification reads: those whose id prefix falls in
/// the arc of the id space that begins `start` of the way round and covers
/// `fraction` of it (wrapping past the end). Ids are uniform, so the arc
/// holds about that fraction of the records; a run that starts where the
/// previous one ended checks the next records, and `1 / fraction` such
/// runs cover the whole store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdSample {
    /// Where the arc begins, 0.0 ..= 1.0 of the id space.
    pub start: f64,
    /// How much of the id space it covers, 0.0 ..= 1.0.
    pub fraction: f64,
}

impl IdSample {
    /// Whether the record whose id begins with `prefix` is in the sample.
    pub fn contains(&self, prefix: u64) -> bool {
        if self.fraction >= 1.0 {
            return true;
        }
        let scale = |share: f64| (share.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        prefix.wrapping_sub(scale(self.start)) <= scale(self.fraction)
    }

    /// Where the next run begins: just past this arc.
    pub fn next_start(&self) -> f64 {
        (self.start + self.fraction.clamp(0.0, 1.0)).fract()
    }
}

impl ChunkStore {
    /// Checks every indexed record in `sample`, on `threads` threads,
    /// reading at most as fast as `pacer` allows, until `cancel` is set.
    /// Damaged chunks are marked suspect, so that a put of the same data
    /// heals them.
    pub(crate) fn verify_records(
        &self,
        sample: IdSample,
        threads: usize,
        pacer: &Pacer,
        cancel: &AtomicBool,
    ) -> RecordCheck {
        let entries: Vec<(u64, PackLocation)> = self
            .index
            .read()
            .all_entries()
            .into_iter()
            .filter(|(prefix, _)| sample.contains(*prefix))
            // A condemned pack is another writer's garbage, going.
            .filter(|(_, location)| !self.is_condemned(location.pack))
            .collect();
        let threads = threads.max(1);
        let per_thread = entries.len().div_ceil(threads).max(1);
        let checks: Vec<RecordCheck> = std::thread::scope(|scope| {
            let workers: Vec<_> = entries
                .chunks(per_thread)
                .map(|share| scope.spawn(move || self.verify_share(share, pacer, cancel)))
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap_or_default())
                .collect()
        });
        let mut total = RecordCheck::default();
        for check in checks {
            total.records += check.records;
            total.bytes += check.bytes;
            total.damaged.extend(check.damaged);
        }
        total
            .damaged
            .sort_by_key(|damaged| (damaged.location.pack, damaged.location.offset));
        for damaged in &total.damaged {
            if let Some(chunk) = damaged.chunk {
                self.mark_suspect(chunk);
            }
        }
        total
    }

    fn verify_share(
        &self,
        share: &[(u64, PackLocation)],
        pacer: &Pacer,
        cancel: &AtomicBool,
    ) -> RecordCheck {
        let mut check = RecordCheck::default();
        for &(id_prefix, location) in share {
            if cancel.load(Ordering::Acquire) {
                break;
            }
            check.records += 1;
            let damaged = |chunk, detail: String| DamagedRecord {
                location,
                id_prefix,
                chunk,
                detail,
            };
            let header = match self.header_at(location) {
                Some(header) if header.chunk_id.prefix() == id_prefix => header,
                Some(_) => {
                    check.damaged.push(damaged(
                        None,
                        "the record header names another chunk than the index".into(),
                    ));
                    continue;
                }
                None => {
                    check
                        .damaged
                        .push(damaged(None, "the record header does not decode".into()));
                    continue;
                }
            };
            check.bytes += header.record_len() as u64;
            pacer.pace(header.record_len() as u64);
            let chunk = header.chunk_id;
            match self.read_verified(
                location,
                header.kind,
                &chunk,
                super::ContentCheck::Full,
                false,
            ) {
                Ok((stored, _)) => {
                    // A block stored without its SHA-256 (§4.3) was
                    // checked against its id by the read above.
                    if header.kind == RecordKind::Block
                        && stored.sha256.is_kept()
                        && codec::sha256(&stored.data) != stored.sha256
                    {
                        check.damaged.push(damaged(
                            Some(chunk),
                            "the data does not match its stored SHA-256".into(),
                        ));
                    }
                }
                Err(Error::Corrupted { detail, .. }) => {
                    check.damaged.push(damaged(Some(chunk), detail));
                }
                Err(other) => check.damaged.push(damaged(Some(chunk), other.to_string())),
            }
        }
        check
    }
}

impl ChunkStore {
    /// Checks each sealed pack's file header, and that its index covers
    /// the pack: bytes between indexed records, or after the last one,
    /// that hold valid records are records the index lost (a pack sealed
    /// at a damaged record by an older build, say), unreachable until
    /// `repair` indexes them.
    pub fn verify_coverage(&self, cancel: &AtomicBool) -> Vec<Damage> {
        let mut packs: Vec<(u32, std::sync::Arc<dyn crate::storage::ReadFile>)> = self
            .readers
            .read()
            .iter()
            // A condemned pack is another writer's garbage, going.
            .filter(|(seq, _)| !self.is_condemned(**seq))
            .map(|(seq, reader)| (*seq, reader.clone()))
            .collect();
        packs.sort_unstable_by_key(|(seq, _)| *seq);
        let mut damage = Vec::new();
        for (seq, reader) in packs {
            if cancel.load(Ordering::Acquire) {
                break;
            }
            let Ok(pack_len) = reader.len() else { continue };
            let Some(mut entries) = load_index(self.storage.as_ref(), seq, pack_len) else {
                continue;
            };
            if !header_ok(reader.as_ref(), seq) {
                damage.push(Damage {
                    file: pack_name(seq),
                    detail: "the pack's file header does not verify; its records do (`blocksnap repair` rewrites the pack)".into(),
                    data_lost: false,
                });
            }
            entries.sort_unstable_by_key(|entry| entry.offset);
            let mut gaps = Vec::new();
            let mut covered = crate::format::header::FILE_HEADER_SIZE as u64;
            for entry in &entries {
                let start = u64::from(entry.offset);
                if start > covered {
                    gaps.push(covered..start);
                }
                covered = covered.max(start + u64::from(entry.record_len));
            }
            if covered < pack_len {
                gaps.push(covered..pack_len);
            }
            for gap in gaps {
                // Bytes without a valid record are a torn tail, or a
                // record repair already dropped (its chunk, if needed, is
                // reported missing).
                let found = scan_range(reader.as_ref(), seq, gap.clone()).unwrap_or(0);
                if found == 0 {
                    continue;
                }
                damage.push(Damage {
                    file: pack_name(seq),
                    detail: format!(
                        "bytes {}..{} are not covered by {} and hold {found} valid records that reads cannot reach; `blocksnap repair` indexes them",
                        gap.start,
                        gap.end,
                        index_name(seq),
                    ),
                    data_lost: true,
                });
            }
        }
        damage
    }
}
