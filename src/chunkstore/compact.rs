//! Pack compaction: live records of sealed packs are copied into a new
//! pack, the index is switched to it, and the old packs are removed.
//!
//! Crash safety rests on a marker written before anything else
//! (`packs/QQQQQQQQ.compact`, naming the output pack Q and its sources):
//!
//! 1. marker written atomically;
//! 2. Q created, live records appended, Q fsynced;
//! 3. Q's index written atomically: **the commit point**;
//! 4. the in-memory index switched to Q (the caller excludes readers and
//!    writers for this step);
//! 5. the sources' packs and indexes removed, directory synced;
//! 6. the marker removed.
//!
//! On open, a marker whose output has a valid index means "finish": the
//! sources are removed. A marker without one means "undo": Q is removed and
//! the sources stay. Either way the marker goes last.

use super::pack::{index_name, pack_name, OpenPack, PACK_DIR};
use super::{io_error, load_index, ChunkStore};
use crate::error::{Error, Result};
use crate::format::compaction::{decode_marker, encode_marker, MARKER_SUFFIX};
use crate::format::index::{encode_index, IndexEntry};
use crate::format::pack::encode_copy_header;
use crate::ids::{ChunkId, PackLocation};
use crate::storage::{remove_durably, Storage};
use std::sync::atomic::Ordering;

/// Name of the marker of the compaction writing pack `output`.
pub(crate) fn marker_name(output: u32) -> String {
    format!("{PACK_DIR}/{output:08x}{MARKER_SUFFIX}")
}

/// How much of a pack is still needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackUsage {
    /// The pack.
    pub pack: u32,
    /// Bytes of all its records.
    pub record_bytes: u64,
    /// Bytes of its records that are live (referenced, and the copy the
    /// index points to).
    pub live_bytes: u64,
    /// Whether a record header could not be read (the pack is left alone
    /// until verify has reported it).
    pub damaged: bool,
}

/// What one compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    /// Bytes of live records copied.
    pub bytes_copied: u64,
    /// Bytes of source records no longer stored.
    pub bytes_freed: u64,
}

/// A compaction under way: its output pack and what it has copied.
pub(crate) struct Compaction {
    output: OpenPack,
    sources: Vec<u32>,
    source_bytes: u64,
    copied: Vec<IndexEntry>,
    copied_bytes: u64,
    /// Records found dead while copying, re-checked at the switch in case
    /// a writer revived them meanwhile.
    skipped: Vec<(ChunkId, PackLocation)>,
}

impl ChunkStore {
    /// The records of sealed pack `seq` with their full ids; `None` when a
    /// record header does not decode.
    fn pack_records(&self, seq: u32) -> Result<Option<Vec<(ChunkId, PackLocation, u32)>>> {
        let name = pack_name(seq);
        let pack_len = match self.readers.read().get(&seq) {
            Some(reader) => reader.len().map_err(io_error(format!("reading {name}")))?,
            None => return Ok(None),
        };
        let Some(entries) = load_index(self.storage.as_ref(), seq, pack_len) else {
            return Ok(None);
        };
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            let location = PackLocation {
                pack: seq,
                offset: entry.offset,
            };
            match self.header_at(location) {
                Some(header) if header.chunk_id.prefix() == entry.id_prefix => {
                    records.push((header.chunk_id, location, entry.record_len));
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(records))
    }

    /// Whether the sealed record at `location` is the live copy of `id`:
    /// the one among sealed copies that reads would choose (a copy in the
    /// open pack does not make a sealed one garbage: see
    /// [`ChunkStore::locate_sealed`]).
    fn is_live_copy(
        &self,
        id: &ChunkId,
        location: PackLocation,
        is_live: &dyn Fn(&ChunkId) -> bool,
    ) -> bool {
        is_live(id) && self.locate_sealed(id) == Some(location)
    }

    /// Usage of every sealed pack. Costs one index read and one record
    /// header read per record; no payload is read.
    pub fn pack_usage(&self, is_live: &dyn Fn(&ChunkId) -> bool) -> Result<Vec<PackUsage>> {
        let open_or_retiring = self.unsealed_packs();
        let mut packs: Vec<u32> = self
            .readers
            .read()
            .keys()
            .copied()
            .filter(|seq| !open_or_retiring.contains(seq) && !self.is_condemned(*seq))
            .collect();
        packs.sort_unstable();
        let mut usage = Vec::with_capacity(packs.len());
        for pack in packs {
            let Some(records) = self.pack_records(pack)? else {
                usage.push(PackUsage {
                    pack,
                    record_bytes: 0,
                    live_bytes: 0,
                    damaged: true,
                });
                continue;
            };
            let mut pack_usage = PackUsage {
                pack,
                record_bytes: 0,
                live_bytes: 0,
                damaged: false,
            };
            for (id, location, record_len) in records {
                pack_usage.record_bytes += u64::from(record_len);
                if self.is_live_copy(&id, location, is_live) {
                    pack_usage.live_bytes += u64::from(record_len);
                }
            }
            usage.push(pack_usage);
        }
        Ok(usage)
    }

    /// Usage of the open pack (which compaction cannot touch until
    /// sealed); `None` when no pack is open.
    pub fn open_pack_usage(&self, is_live: &dyn Fn(&ChunkId) -> bool) -> Option<PackUsage> {
        let seq = self.writer.lock().as_ref()?.seq;
        let open: Vec<(ChunkId, PackLocation)> = self.index.read().open_entries(seq);
        let mut usage = PackUsage {
            pack: seq,
            record_bytes: 0,
            live_bytes: 0,
            damaged: false,
        };
        for (id, location) in open {
            let Some(header) = self.header_at(location) else {
                usage.damaged = true;
                continue;
            };
            usage.record_bytes += header.record_len() as u64;
            if is_live(&id) {
                usage.live_bytes += header.record_len() as u64;
            }
        }
        Some(usage)
    }

    /// Seals the open pack now (if it holds any record), so that its
    /// garbage becomes reclaimable.
    pub fn seal_open_pack(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        if writer.as_ref().is_none_or(|pack| pack.entries.is_empty()) {
            return Ok(());
        }
        let retired = self.rotate(&mut writer);
        drop(writer);
        match retired {
            Some(retired) => self.seal(&retired),
            None => Ok(()),
        }
    }

    /// Seals the open pack and every pack still being sealed, so that
    /// every chunk put so far is in a sealed pack: on storage whose unsealed
    /// files stay local ([`Storage::is_tiered`]), a commit that
    /// references them does this first. A seal under way in another thread
    /// is waited for; one that failed is retried here.
    pub fn seal_all(&self) -> Result<()> {
        self.seal_open_pack()?;
        let retiring: Vec<_> = self.retiring.lock().clone();
        for pack in retiring {
            self.seal(&pack)?;
        }
        Ok(())
    }

    /// Steps 1 and 2 begin: the marker, then the empty output pack.
    pub(crate) fn begin_compaction(&self, sources: &[u32]) -> Result<Compaction> {
        let output = self.next_pack_sequence()?;
        let marker = marker_name(output);
        self.storage
            .write_atomic(&marker, &encode_marker(output, sources)?)
            .map_err(io_error(format!("writing {marker}")))?;
        let output = match OpenPack::create(self.storage.as_ref(), output) {
            Ok(pack) => pack,
            Err(error) => {
                // Nothing was switched: undo now rather than at the next open.
                let _ = remove_all(
                    self.storage.as_ref(),
                    &[pack_name(output), index_name(output), marker],
                );
                return Err(error);
            }
        };
        Ok(Compaction {
            output,
            sources: sources.to_vec(),
            source_bytes: 0,
            copied: Vec::new(),
            copied_bytes: 0,
            skipped: Vec::new(),
        })
    }

    /// Copies one verified record to the output pack.
    fn copy_record(&self, compaction: &mut Compaction, location: PackLocation) -> Result<u64> {
        let output_name = pack_name(compaction.output.seq);
        let file = &mut compaction.output.file;
        let (entry, length) = self.with_record(location, |header, payload| {
            let bytes = encode_copy_header(header, payload);
            let offset = file
                .append(&[&bytes, payload])
                .map_err(io_error(format!("appending to {output_name}")))?;
            let offset = u32::try_from(offset)
                .map_err(|_| Error::corrupted(&output_name, "pack grew past 4 GiB"))?;
            let record_len = header.record_len() as u32;
            let entry = IndexEntry {
                id_prefix: header.chunk_id.prefix(),
                offset,
                record_len,
            };
            Ok((entry, u64::from(record_len)))
        })?;
        compaction.copied.push(entry);
        compaction.copied_bytes += length;
        Ok(length)
    }

    /// Step 2: copies every live record of the sources, calling `pace` with
    /// each record's size (for rate limiting); `pace` returning `false`
    /// stops the copy, and this returns `false` (the caller abandons the
    /// compaction). Writers keep running; a record that dies meanwhile is
    /// copied anyway (it is garbage for a later run), one revived meanwhile
    /// is caught by [`finish_compaction`].
    ///
    /// [`finish_compaction`]: ChunkStore::finish_compaction
    pub(crate) fn copy_live(
        &self,
        compaction: &mut Compaction,
        is_live: &dyn Fn(&ChunkId) -> bool,
        pace: &mut dyn FnMut(u64) -> bool,
    ) -> Result<bool> {
        for source in compaction.sources.clone() {
            let records = self.pack_records(source)?.ok_or_else(|| {
                Error::corrupted(pack_name(source), "a record header does not decode")
            })?;
            for (id, location, record_len) in records {
                compaction.source_bytes += u64::from(record_len);
                if self.is_live_copy(&id, location, is_live) {
                    let copied = self.copy_record(compaction, location)?;
                    if !pace(copied) {
                        return Ok(false);
                    }
                } else {
                    compaction.skipped.push((id, location));
                }
            }
        }
        Ok(true)
    }

    /// Steps 2 (end) to 6. The caller holds writers and readers off (the
    /// engine's reference guard, exclusively) until this returns, so no
    /// chunk of the sources can be revived or read after its re-check.
    pub(crate) fn finish_compaction(
        &self,
        mut compaction: Compaction,
        is_live: &dyn Fn(&ChunkId) -> bool,
    ) -> Result<CompactionOutcome> {
        let output = compaction.output.seq;
        let output_name = pack_name(output);
        let mut entries = Vec::new();
        let committed = (|| {
            for (id, location) in std::mem::take(&mut compaction.skipped) {
                if self.is_live_copy(&id, location, is_live) {
                    self.copy_record(&mut compaction, location)?;
                }
            }
            compaction
                .output
                .file
                .sync()
                .map_err(io_error(format!("syncing {output_name}")))?;
            self.storage
                .seal(&output_name)
                .map_err(io_error(format!("sealing {output_name}")))?;
            entries = std::mem::take(&mut compaction.copied);
            entries.sort_unstable();
            self.storage
                .write_atomic(
                    &index_name(output),
                    &encode_index(u64::from(output), &entries)?,
                )
                .map_err(io_error(format!("writing {}", index_name(output))))
        })();
        if let Err(error) = committed {
            // Before the commit point: the sources are untouched.
            self.abandon_compaction(compaction)?;
            return Err(error);
        }
        // Committed. Switch readers to the output pack, then drop the sources.
        let reader = if self.config.use_mmap {
            self.storage
                .map(&output_name)
                .map_err(io_error(format!("mapping {output_name}")))?
        } else {
            None
        };
        let reader = match reader {
            Some(reader) => reader,
            None => self
                .storage
                .open_read(&output_name)
                .map_err(io_error(format!("opening {output_name}")))?,
        };
        {
            let mut index = self.index.write();
            index.remove_packs(&compaction.sources);
            index.add_sealed(output, &entries);
            let mut readers = self.readers.write();
            for source in &compaction.sources {
                readers.remove(source);
            }
            readers.insert(output, reader);
        }
        self.stored_bytes
            .fetch_add(compaction.copied_bytes, Ordering::Relaxed);
        self.stored_bytes
            .fetch_sub(compaction.source_bytes, Ordering::Relaxed);
        let mut doomed: Vec<String> = compaction
            .sources
            .iter()
            .flat_map(|source| [pack_name(*source), index_name(*source)])
            .collect();
        if entries.is_empty() {
            self.readers.write().remove(&output);
            doomed.push(output_name);
            doomed.push(index_name(output));
        }
        // A removal that lost a shared medium's head race is dropped (the
        // sources stay, and come back at the next refresh); the marker
        // goes either way.
        let removed = remove_all(self.storage.as_ref(), &doomed);
        remove_all(self.storage.as_ref(), &[marker_name(output)])?;
        removed?;
        Ok(CompactionOutcome {
            bytes_copied: compaction.copied_bytes,
            bytes_freed: compaction
                .source_bytes
                .saturating_sub(compaction.copied_bytes),
        })
    }

    /// Removes a sealed pack none of whose records is live, without a
    /// compaction (so it needs no free space): the caller holds writers
    /// and readers off, and every record is re-checked here. Returns the
    /// record bytes freed, or `None` (nothing done) when a record was
    /// revived meanwhile or a header does not decode.
    pub(crate) fn drop_dead_pack(
        &self,
        pack: u32,
        is_live: &dyn Fn(&ChunkId) -> bool,
    ) -> Result<Option<u64>> {
        let Some(records) = self.pack_records(pack)? else {
            return Ok(None);
        };
        if records
            .iter()
            .any(|(id, location, _)| self.is_live_copy(id, *location, is_live))
        {
            return Ok(None);
        }
        let freed: u64 = records
            .iter()
            .map(|(_, _, record_len)| u64::from(*record_len))
            .sum();
        {
            let mut index = self.index.write();
            index.remove_packs(&[pack]);
            self.readers.write().remove(&pack);
        }
        self.stored_bytes.fetch_sub(freed, Ordering::Relaxed);
        // A crash between the two removals leaves an index without a pack
        // (ignored) or a pack of dead records without one (scanned, then
        // collected again): both harmless.
        remove_all(self.storage.as_ref(), &[pack_name(pack), index_name(pack)])?;
        Ok(Some(freed))
    }

    /// Undoes a compaction that failed before its commit point (for
    /// example, a live source record that does not verify): the output
    /// pack goes, the sources stay.
    pub(crate) fn abandon_compaction(&self, compaction: Compaction) -> Result<()> {
        let output = compaction.output.seq;
        drop(compaction);
        remove_all(
            self.storage.as_ref(),
            &[pack_name(output), index_name(output)],
        )?;
        remove_all(self.storage.as_ref(), &[marker_name(output)])
    }
}

/// Removes pack-directory files durably (directory synced before returning).
fn remove_all(storage: &dyn Storage, names: &[String]) -> Result<()> {
    remove_durably(storage, PACK_DIR, names)
        .map_err(io_error(format!("removing {}", names.join(", "))))
}

/// Finishes or undoes every compaction a crash interrupted (see the module
/// documentation). Runs at open, before packs are loaded. Returns the
/// packs to ignore: on a read-only storage nothing is removed, and the
/// packs that finishing or undoing would remove are returned instead.
pub(crate) fn recover_compactions(
    storage: &dyn Storage,
    read_only: bool,
) -> Result<std::collections::HashSet<u32>> {
    let mut ignored = std::collections::HashSet::new();
    let names = storage
        .list(PACK_DIR)
        .map_err(io_error("listing packs".to_string()))?;
    for name in names.iter().filter(|name| name.ends_with(MARKER_SUFFIX)) {
        let path = format!("{PACK_DIR}/{name}");
        let bytes = storage
            .read_all(&path)
            .map_err(io_error(format!("reading {path}")))?;
        // Written atomically: a marker that does not decode was damaged at
        // rest, and which packs it names is unknown.
        let (output, sources) = decode_marker(&bytes).map_err(|error| error.into_error(&path))?;
        let committed = storage
            .read_all(&index_name(output))
            .ok()
            .and_then(|bytes| crate::format::index::decode_index(&bytes).ok())
            .is_some_and(|(seq, _)| seq == u64::from(output));
        // On a shared medium, other writers may have referenced chunks of
        // the sources since the crashed run judged them garbage, and only
        // a run that checks liveness again may condemn them: the sources
        // stay, and the output's copies are garbage for the next run.
        let doomed_packs = match (committed, storage.writer_id().is_some()) {
            (true, false) => sources,
            (true, true) => Vec::new(),
            (false, _) => vec![output],
        };
        if read_only {
            ignored.extend(doomed_packs);
            continue;
        }
        let doomed: Vec<String> = doomed_packs
            .iter()
            .flat_map(|pack| [pack_name(*pack), index_name(*pack)])
            .collect();
        remove_all(storage, &doomed)?;
        remove_all(storage, &[path])?;
    }
    Ok(ignored)
}
