//! Writing a completed snapshot (or its changes since a base) as one zip
//! archive into a bucket.

use super::location::Bucket;
use super::manifest::{
    block_entry_name, block_list_line, hex_bytes, ArchiveKind, Manifest, ManifestBase,
    ManifestSnapshot, ManifestTag, RootHasher, BLOCK_LIST_ENTRY, FORMAT_NAME, FORMAT_VERSION,
    MANIFEST_ENTRY,
};
use super::{archive_key, rfc3339, validate_name, validate_prefix};
use crate::blockmap::Page;
use crate::catalog::SnapshotState;
use crate::codec;
use crate::engine::{Engine, SnapshotReader};
use crate::error::{Error, Result, ValidationReason};
use crate::format::catalog::SseKind;
use crate::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId, BLOCK_SIZE};
use crate::volume::Progress;
use parking_lot::{Condvar, Mutex};
use sha2::Digest;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use zip::write::SimpleFileOptions;

/// Map entries listed and exported per round: bounds memory for any volume.
const PAGE: usize = 4096;
/// How far (in blocks) workers may run ahead of the archive writer: enough
/// to keep every core busy while the writer waits on its destination, and
/// a few MiB of frames at most.
const WINDOW: usize = 16;
/// zstd level for blocks the store keeps uncompressed (incompressible
/// ones): the fastest, since there is nothing to gain.
const RAW_BLOCK_LEVEL: i32 = -7;

/// How to export.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// An optional key prefix, usually a folder name.
    pub prefix: Option<String>,
    /// The archive's name before its timestamp; the snapshot id if `None`.
    pub name: Option<String>,
    /// Export only the blocks that differ from this snapshot (of the same
    /// lineage); importing the archive then needs a parent equal to it.
    pub base: Option<SnapshotId>,
    /// Allow exporting an encrypted snapshot: the archive holds plaintext.
    pub decrypt: bool,
    /// Workers; 0 = one per core.
    pub threads: usize,
}

/// What an export wrote (the CLI's `export --json` object).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportReport {
    /// The object key, `PREFIX/snapshot/NAME-YYMMdd-HHmm-ss.zip`.
    pub key: String,
    /// The key as a path or `s3://` URL.
    pub location: String,
    /// Blocks in the archive.
    pub blocks: u64,
    /// Bytes of the archive.
    pub archive_bytes: u64,
    /// The manifest's root hash.
    pub root_hash: String,
    /// Wall time.
    #[serde(rename = "Seconds", serialize_with = "crate::clock::serialize_seconds")]
    pub elapsed: Duration,
}

/// How an export ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportOutcome {
    /// The archive is published under its key.
    Completed(ExportReport),
    /// `cancel` was set; nothing was published.
    Interrupted,
}

/// Exports completed snapshot `snapshot` as an archive into `bucket`
/// (see the module documentation). The archive is published only whole and
/// only under a key nobody holds; on failure or cancellation nothing is
/// left in the bucket.
pub fn export(
    engine: &Engine,
    snapshot: SnapshotId,
    bucket: &Bucket,
    options: &ExportOptions,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<ExportOutcome> {
    let started_at = Instant::now();
    let prefix = options.prefix.as_deref().map(validate_prefix).transpose()?;
    let name = match &options.name {
        Some(name) => validate_name(name)?.to_string(),
        None => snapshot.to_string(),
    };
    // Pinned until the export ends, as is the base.
    let reader = engine.reader(snapshot)?;
    let record = reader.record().clone();
    if record.started.sse != SseKind::None && !options.decrypt {
        return Err(Error::invalid(
            ValidationReason::InvalidParameterValue,
            format!("{snapshot} is encrypted and its archive would hold its plaintext; export it with decrypt (--decrypt) to accept that"),
        ));
    }
    let base = match options.base {
        None => None,
        Some(base_snapshot) => {
            let base = engine.reader(base_snapshot)?;
            if !base.is_related(&reader) {
                return Err(Error::invalid(
                    ValidationReason::UnrelatedSnapshots,
                    format!("{base_snapshot} and {snapshot} are not of the same lineage"),
                ));
            }
            let workers = crate::volume::worker_count(options.threads, 1);
            let Some((root_hash, block_count)) = content_hash(&base, workers, cancel)? else {
                return Ok(ExportOutcome::Interrupted);
            };
            Some((
                base,
                ManifestBase {
                    snapshot_id: base_snapshot.to_string(),
                    root_hash,
                    block_count,
                },
            ))
        }
    };
    let now = engine.now_millis();
    let key = archive_key(prefix, &name, now)?;
    let created = rfc3339(now)?;
    bucket.check_free(&key)?;
    let volume_blocks = reader.volume_blocks();
    let upload = bucket.upload(&key)?;
    let modified = zip_time(now)?;
    let mut writer = ArchiveWriter {
        zip: zip::ZipWriter::new_stream(CountingWriter {
            inner: upload,
            written: 0,
        }),
        entry: SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(modified)
            .unix_permissions(0o644),
        list: BufWriter::new(
            tempfile::tempfile().map_err(|error| Error::io("creating a spill file", error))?,
        ),
        hasher: RootHasher::default(),
    };
    let blocks = Blocks {
        reader: &reader,
        base: base.as_ref().map(|(base, _)| base),
    };
    let finished = blocks.write_all(
        &mut writer,
        volume_blocks,
        options.threads,
        progress,
        cancel,
    )?;
    if !finished {
        return Ok(ExportOutcome::Interrupted);
    }
    let started = &record.started;
    let completion_millis = match record.state {
        SnapshotState::Completed {
            completed_millis, ..
        } => completed_millis,
        _ => started.start_millis,
    };
    let snapshot_meta = ManifestSnapshot {
        snapshot_id: snapshot.to_string(),
        parent_snapshot_id: started.parent.map(|parent| parent.to_string()),
        volume_size: reader.volume_size_gib(),
        block_size: BLOCK_SIZE as u32,
        description: started.description.clone(),
        tags: started
            .tags
            .iter()
            .map(|(key, value)| ManifestTag {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        start_time: rfc3339(started.start_millis)?,
        completion_time: rfc3339(completion_millis)?,
        encrypted: started.sse != SseKind::None,
    };
    let kind = if base.is_some() {
        ArchiveKind::Delta
    } else {
        ArchiveKind::Full
    };
    let published = writer.finish(
        |block_count, list_sha, root_hash, linear| Manifest {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            created,
            kind,
            snapshot: snapshot_meta,
            base: base.map(|(_, base)| base),
            block_count,
            block_list_sha256: list_sha,
            root_hash,
            linear_checksum: linear,
            block_encoding: "zstd".to_string(),
        },
        cancel,
    )?;
    let Some((archive_bytes, blocks_written, root_hash)) = published else {
        return Ok(ExportOutcome::Interrupted);
    };
    Ok(ExportOutcome::Completed(ExportReport {
        location: bucket.describe(&key),
        key,
        blocks: blocks_written,
        archive_bytes,
        root_hash,
        elapsed: started_at.elapsed(),
    }))
}

/// The root hash and block count of everything `snapshot` holds (a
/// delta's base), from the SHA-256s kept with each block, or computed on
/// `workers` threads for blocks stored without one (§4.3 of DESIGN.md: a
/// CLI backup's, which are read whole). `None` if `cancel` was set.
pub(crate) fn content_hash(
    snapshot: &SnapshotReader,
    workers: usize,
    cancel: &AtomicBool,
) -> Result<Option<(String, u64)>> {
    let mut hasher = RootHasher::default();
    let mut start = BlockIndex(0);
    loop {
        if cancel.load(Ordering::Acquire) {
            return Ok(None);
        }
        let page = snapshot.blocks(start, PAGE)?;
        let hashed = ordered_map(
            &page.entries,
            workers,
            |(_, chunk)| snapshot.block_sha256(*chunk),
            |(index, _), sha256| {
                hasher.add(index.0, &sha256);
                Ok(())
            },
            cancel,
        )?;
        if !hashed {
            return Ok(None);
        }
        match page.next {
            Some(next) => start = next,
            None => break,
        }
    }
    let count = hasher.count();
    Ok(Some((hasher.finish().0, count)))
}

/// A writer that counts what passes through.
struct CountingWriter {
    inner: Box<dyn super::location::ObjectUpload>,
    written: u64,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The archive being written: the zip stream, the block list spilled to a
/// temporary file until the blocks are done, and the running hashes.
struct ArchiveWriter {
    zip: zip::ZipWriter<zip::write::StreamWriter<CountingWriter>>,
    entry: SimpleFileOptions,
    list: BufWriter<std::fs::File>,
    hasher: RootHasher,
}

fn zip_error(error: zip::result::ZipError) -> Error {
    Error::io("writing the archive", std::io::Error::other(error))
}

impl ArchiveWriter {
    fn add_block(&mut self, index: u32, sha256: &Sha256Digest, frame: &[u8]) -> Result<()> {
        if !self.hasher.add(index, sha256) {
            return Err(Error::corrupted(
                "block map",
                format!("block {index} listed out of order"),
            ));
        }
        self.zip
            .start_file(block_entry_name(index), self.entry)
            .map_err(zip_error)?;
        self.zip
            .write_all(frame)
            .map_err(|error| Error::io("writing the archive", error))?;
        self.list
            .write_all(block_list_line(index, sha256).as_bytes())
            .map_err(|error| Error::io("writing the spill file", error))
    }

    /// Writes the block list and the manifest `build` makes from (block
    /// count, block list SHA-256, root hash, LINEAR aggregate), then
    /// publishes the archive unless `cancel` is set by then (dropping the
    /// unpublished archive removes it). Returns (archive bytes, blocks,
    /// root hash), or `None` when cancelled.
    fn finish(
        mut self,
        build: impl FnOnce(u64, String, String, String) -> Manifest,
        cancel: &AtomicBool,
    ) -> Result<Option<(u64, u64, String)>> {
        let spill = |error| Error::io("reading the spill file", error);
        let mut list = self
            .list
            .into_inner()
            .map_err(|error| spill(error.into_error()))?;
        list.rewind().map_err(spill)?;
        self.zip
            .start_file(BLOCK_LIST_ENTRY, self.entry)
            .map_err(zip_error)?;
        let mut list_hasher = sha2::Sha256::new();
        let mut reader = BufReader::with_capacity(1 << 16, list);
        loop {
            let chunk = reader.fill_buf().map_err(spill)?;
            if chunk.is_empty() {
                break;
            }
            list_hasher.update(chunk);
            self.zip
                .write_all(chunk)
                .map_err(|error| Error::io("writing the archive", error))?;
            let consumed = chunk.len();
            reader.consume(consumed);
        }
        let block_count = self.hasher.count();
        let (root_hash, linear) = self.hasher.finish();
        let list_sha: [u8; 32] = list_hasher.finalize().into();
        let manifest = build(block_count, hex_bytes(&list_sha), root_hash.clone(), linear);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|error| Error::io("encoding the manifest", std::io::Error::other(error)))?;
        self.zip
            .start_file(MANIFEST_ENTRY, self.entry)
            .map_err(zip_error)?;
        self.zip
            .write_all(&json)
            .map_err(|error| Error::io("writing the archive", error))?;
        let counting = self.zip.finish().map_err(zip_error)?.into_inner();
        let written = counting.written;
        if cancel.load(Ordering::Acquire) {
            return Ok(None);
        }
        counting.inner.commit()?;
        Ok(Some((written, block_count, root_hash)))
    }
}

/// The blocks an export writes: every written block of `reader`'s
/// snapshot, or those that differ from `base`.
struct Blocks<'a> {
    reader: &'a SnapshotReader,
    base: Option<&'a SnapshotReader>,
}

impl Blocks<'_> {
    /// One page of (index, chunk) to export; a block a delta's base has and
    /// the snapshot lacks is exported as zeros (it reads as zeros).
    fn page(&self, start: BlockIndex) -> Result<Page<(BlockIndex, ChunkId)>> {
        match self.base {
            None => self.reader.blocks(start, PAGE),
            Some(base) => {
                let page = self.reader.changes_since(Some(base), start, PAGE)?;
                let zero = codec::zero_block_id();
                let entries = page
                    .entries
                    .into_iter()
                    .map(|entry| (entry.index, entry.second.unwrap_or(zero)))
                    .collect();
                Ok(Page {
                    entries,
                    next: page.next,
                })
            }
        }
    }

    /// Writes every block into `writer`, page by page. `false` if cancelled.
    fn write_all(
        &self,
        writer: &mut ArchiveWriter,
        volume_blocks: u64,
        threads: usize,
        progress: Progress<'_>,
        cancel: &AtomicBool,
    ) -> Result<bool> {
        let workers = crate::volume::worker_count(threads, 1);
        let volume_bytes = volume_blocks * BLOCK_SIZE as u64;
        let mut start = BlockIndex(0);
        let mut done_until = 0u64;
        loop {
            if cancel.load(Ordering::Acquire) {
                return Ok(false);
            }
            let Page { entries, next } = self.page(start)?;
            let completed = ordered_map(
                &entries,
                workers,
                |&(_, chunk)| self.frame_of(chunk),
                |&(index, _), (sha256, frame)| writer.add_block(index.0, &sha256, &frame),
                cancel,
            )?;
            if !completed {
                return Ok(false);
            }
            let reached = next.map_or(volume_bytes, |next| u64::from(next.0) * BLOCK_SIZE as u64);
            progress(reached.saturating_sub(done_until));
            done_until = reached;
            match next {
                Some(next) => start = next,
                None => return Ok(true),
            }
        }
    }

    /// A block's SHA-256 and zstd frame: the stored frame when there is one
    /// (after checking the data against its SHA-256), else a new one.
    fn frame_of(&self, chunk: ChunkId) -> Result<(Sha256Digest, Vec<u8>)> {
        if chunk == codec::zero_block_id() {
            return Ok((
                codec::zero_block_sha256(),
                codec::zero_block_frame().to_vec(),
            ));
        }
        let (data, sha256, frame) = self.reader.block_with_frame(chunk)?;
        let frame = match frame {
            Some(frame) => frame,
            None => codec::zstd_frame(&data, RAW_BLOCK_LEVEL)
                .map_err(|error| Error::io("compressing a block", error))?,
        };
        Ok((sha256, frame))
    }
}

/// Maps `items` on `workers` threads and hands the results to `sink` in
/// order, on the calling thread. Workers stay within [`WINDOW`] items of
/// the sink, so memory is bounded. `false` if `cancel` was set.
fn ordered_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    map: impl Fn(&T) -> Result<R> + Sync,
    mut sink: impl FnMut(&T, R) -> Result<()>,
    cancel: &AtomicBool,
) -> Result<bool> {
    struct Shared<R> {
        ready: std::collections::BTreeMap<usize, Result<R>>,
        consumed: usize,
        stop: bool,
    }
    let shared = Mutex::new(Shared {
        ready: std::collections::BTreeMap::new(),
        consumed: 0,
        stop: false,
    });
    let changed = Condvar::new();
    let cursor = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers.min(items.len()).max(1) {
            scope.spawn(|| loop {
                let position = cursor.fetch_add(1, Ordering::AcqRel);
                let Some(item) = items.get(position) else {
                    break;
                };
                {
                    let mut state = shared.lock();
                    while !state.stop && position >= state.consumed + WINDOW {
                        changed.wait(&mut state);
                    }
                    if state.stop {
                        break;
                    }
                }
                let result = if cancel.load(Ordering::Acquire) {
                    Err(Error::invalid(
                        ValidationReason::InvalidParameterValue,
                        "cancelled",
                    ))
                } else {
                    map(item)
                };
                let mut state = shared.lock();
                state.ready.insert(position, result);
                changed.notify_all();
            });
        }
        let outcome = (|| {
            for (position, item) in items.iter().enumerate() {
                let result = {
                    let mut state = shared.lock();
                    loop {
                        if let Some(result) = state.ready.remove(&position) {
                            break result;
                        }
                        changed.wait(&mut state);
                    }
                };
                if cancel.load(Ordering::Acquire) {
                    return Ok(false);
                }
                sink(item, result?)?;
                let mut state = shared.lock();
                state.consumed = position + 1;
                changed.notify_all();
            }
            Ok(true)
        })();
        let mut state = shared.lock();
        state.stop = true;
        changed.notify_all();
        drop(state);
        outcome
    })
}

/// A zip timestamp (local fields; zip has no zone, and UTC is written).
fn zip_time(millis: u64) -> Result<zip::DateTime> {
    let time = super::utc(millis)?;
    zip::DateTime::from_date_and_time(
        u16::try_from(time.year()).unwrap_or(1980),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
    )
    .or_else(|_| zip::DateTime::from_date_and_time(1980, 1, 1, 0, 0, 0))
    .map_err(|error| Error::io("dating the archive", std::io::Error::other(error)))
}
