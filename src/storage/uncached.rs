//! Appends that bypass the operating system's page cache (Linux
//! `O_DIRECT`), for the large sequential writes of pack files.
//!
//! Why: a backup writes hundreds of MiB of packs that nothing rereads soon.
//! Through the page cache every byte is first copied into a freshly
//! allocated cache page, and on a virtual machine whose free memory was
//! handed back to the host, touching those fresh pages made the copy cost
//! as much CPU as compressing the data (DESIGN.md §13). Direct writes go
//! from one reused, aligned buffer to the device, and the backup leaves
//! the cache to the machine's other work.
//!
//! How: appended bytes collect in an aligned buffer; whenever it holds
//! [`FLUSH_AT`] bytes, its whole aligned blocks go to the file's writer
//! thread, which writes them in order with direct I/O while appends
//! continue into another buffer; the partial last block stays buffered.
//! A sync waits for the thread, writes what is still buffered (under
//! 1 MiB) through the cache at its exact length, then calls `fdatasync`;
//! the direct write that later covers the partial last block replaces it,
//! the kernel keeping the cache coherent. Readers of the same name see the
//! buffered bytes through a registry of open buffers (the storage
//! contract: appended bytes are visible at once), and bytes before the
//! buffer are final in the file.
//! Where `O_DIRECT` is refused (tmpfs, `EINVAL` on an alignment), the same
//! buffer is written through the cache instead.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// Alignment of direct-I/O buffers, offsets and lengths: the largest
/// logical block size of common devices and file systems.
const DIRECT_ALIGN: usize = 4096;

/// Buffered bytes that trigger a direct write of the buffer's whole blocks.
const FLUSH_AT: usize = 1 << 20;

/// The buffer's initial capacity: a flush's worth plus one largest pack
/// record (a raw 512 KiB block and its header), so a typical append never
/// waits for a flush to make room.
const INITIAL_CAPACITY: usize = FLUSH_AT + (1 << 20);

/// A zeroed heap buffer whose usable part starts on a [`DIRECT_ALIGN`]
/// boundary, as direct I/O requires of its memory.
pub(crate) struct AlignedBuffer {
    /// The usable bytes plus up to `DIRECT_ALIGN` before them.
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuffer {
    /// A buffer of `len` usable bytes.
    pub(crate) fn new(len: usize) -> AlignedBuffer {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let address = storage.as_ptr().addr();
        let start = (DIRECT_ALIGN - address % DIRECT_ALIGN) % DIRECT_ALIGN;
        AlignedBuffer { storage, start }
    }

    /// The usable bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len()]
    }

    /// The usable bytes, writable.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        let end = self.start + self.len();
        &mut self.storage[self.start..end]
    }

    fn len(&self) -> usize {
        self.storage.len() - DIRECT_ALIGN
    }
}

/// A direct-I/O handle on `file`, reopened through `/proc/self/fd` (the same
/// inode, whatever happened to its path since), for writing when `write`
/// is set and for reading otherwise. `None` where the file system refuses
/// `O_DIRECT` or `/proc` is not mounted: callers then go through the cache.
#[cfg(target_os = "linux")]
pub(crate) fn open_direct(file: &File, write: bool) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    let access = if write {
        OFlags::WRONLY
    } else {
        OFlags::RDONLY
    };
    rustix::fs::open(
        format!("/proc/self/fd/{}", file.as_raw_fd()),
        access | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .map(File::from)
}

/// Direct I/O is only used on Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn open_direct(_file: &File, _write: bool) -> Option<File> {
    None
}

/// Whole blocks handed to the writer thread and not yet written: at most
/// this many chunks, so memory stays bounded when the device is slower
/// than the appends.
const MAX_QUEUED: usize = 2;

/// A run of whole blocks waiting for its direct write.
struct Chunk {
    offset: u64,
    len: usize,
    buffer: Arc<AlignedBuffer>,
}

/// The bytes of an uncached append file that may not be in the file yet.
struct Tail {
    /// Runs handed to the writer thread, in file order, contiguous, the last
    /// ending at `start`. Every byte before the first one (or before
    /// `start` when there is none) is in the file with its final content.
    queued: VecDeque<Chunk>,
    /// File offset of `buffer`'s first byte, a multiple of [`DIRECT_ALIGN`].
    start: u64,
    /// Bytes buffered from `start`: the file's logical length is
    /// `start + used`.
    used: usize,
    buffer: AlignedBuffer,
    /// Whether the buffer holds bytes not yet written to the file (sync
    /// writes the partial last block but keeps it buffered).
    unwritten: bool,
    /// Buffers the writer thread is done with, for reuse.
    spare: Vec<AlignedBuffer>,
    /// The writer thread's failure: every later append and sync fails.
    failure: Option<(io::ErrorKind, String)>,
    /// Set when the append file is dropped: the writer thread drains the
    /// queue and ends.
    closing: bool,
}

impl Tail {
    fn end(&self) -> u64 {
        self.start + self.used as u64
    }

    fn check(&self) -> io::Result<()> {
        match &self.failure {
            None => Ok(()),
            Some((kind, message)) => Err(io::Error::new(
                *kind,
                format!("an earlier write-behind failed: {message}"),
            )),
        }
    }

    /// Copies `[offset, offset + buf.len())` from the queued runs and the
    /// buffer; returns how many leading bytes of `buf` lie before them
    /// (in the file). The range must end at or before `end()`.
    fn copy_buffered(&self, offset: u64, buf: &mut [u8]) -> usize {
        let end = offset + buf.len() as u64;
        let runs = self
            .queued
            .iter()
            .map(|chunk| (chunk.offset, chunk.buffer.as_slice().get(..chunk.len)))
            .chain(std::iter::once((
                self.start,
                self.buffer.as_slice().get(..self.used),
            )));
        let mut in_file = buf.len();
        for (run_start, bytes) in runs {
            let bytes = bytes.unwrap_or_default();
            let run_end = run_start + bytes.len() as u64;
            let (from, to) = (offset.max(run_start), end.min(run_end));
            if from >= to {
                continue;
            }
            let (at, length) = ((from - offset) as usize, (to - from) as usize);
            let source = (from - run_start) as usize;
            buf[at..at + length].copy_from_slice(&bytes[source..source + length]);
            in_file = in_file.min(at);
        }
        in_file
    }
}

/// A tail and the condition its writer thread and appenders wait on.
struct Shared {
    tail: Mutex<Tail>,
    changed: Condvar,
}

/// Open uncached append files by path, so every reader of a name sees the
/// bytes not yet in the file (weak: a dropped append file leaves its entry
/// dead).
#[derive(Debug, Default)]
pub(crate) struct TailRegistry {
    tails: Mutex<HashMap<PathBuf, Weak<Shared>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Shared")
    }
}

impl TailRegistry {
    fn get(&self, path: &Path) -> Option<Arc<Shared>> {
        self.tails.lock().get(path).and_then(Weak::upgrade)
    }

    /// The logical length of `path` while an uncached append file is open
    /// on it.
    pub(crate) fn len(&self, path: &Path) -> Option<u64> {
        self.get(path).map(|shared| shared.tail.lock().end())
    }

    /// Fills `buf` from `offset` of `path` (already opened as `file`) when
    /// an uncached append file is open on it: buffered bytes from its
    /// buffers, the others from the file. `None` when no such append file
    /// is open.
    pub(crate) fn read_exact_at(
        &self,
        path: &Path,
        file: &File,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<io::Result<()>> {
        let shared = self.get(path)?;
        let tail = shared.tail.lock();
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > tail.end())
        {
            return Some(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        let in_file = tail.copy_buffered(offset, buf);
        drop(tail);
        // Bytes before the buffered runs are final in the file, whatever
        // the writer does meanwhile.
        Some(file.read_exact_at(&mut buf[..in_file], offset))
    }
}

/// An append file whose whole blocks a writer thread writes with direct
/// I/O (see the module documentation).
pub(crate) struct UncachedAppend {
    path: PathBuf,
    /// The ordinary handle: syncs, truncation, the partial last block at a
    /// sync.
    file: File,
    shared: Arc<Shared>,
    registry: Arc<TailRegistry>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl UncachedAppend {
    /// Takes over `file` (opened read-write at `path`) for appending,
    /// buffering its partial last block, starts its writer thread, and
    /// registers it so readers of `path` see what it buffers.
    pub(crate) fn open(
        path: PathBuf,
        file: File,
        registry: Arc<TailRegistry>,
    ) -> io::Result<UncachedAppend> {
        let length = file.metadata()?.len();
        let start = length - length % DIRECT_ALIGN as u64;
        let used = (length - start) as usize;
        let mut buffer = AlignedBuffer::new(INITIAL_CAPACITY);
        file.read_exact_at(&mut buffer.as_mut_slice()[..used], start)?;
        let shared = Arc::new(Shared {
            tail: Mutex::new(Tail {
                queued: VecDeque::new(),
                start,
                used,
                buffer,
                unwritten: false,
                spare: Vec::new(),
                failure: None,
                closing: false,
            }),
            changed: Condvar::new(),
        });
        let direct = open_direct(&file, true);
        let cached = file.try_clone()?;
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("blocksnap-pack-writer".into())
                .spawn(move || write_queued(&shared, direct, &cached))?
        };
        registry
            .tails
            .lock()
            .insert(path.clone(), Arc::downgrade(&shared));
        Ok(UncachedAppend {
            path,
            file,
            shared,
            registry,
            writer: Some(writer),
        })
    }

    /// Hands the buffer's whole blocks to the writer thread (waiting while
    /// [`MAX_QUEUED`] runs are queued) and keeps the partial last one.
    fn hand_off(&self, tail: &mut MutexGuard<'_, Tail>) -> io::Result<()> {
        let whole = tail.used - tail.used % DIRECT_ALIGN;
        if whole == 0 {
            return Ok(());
        }
        while tail.queued.len() >= MAX_QUEUED && tail.failure.is_none() {
            self.shared.changed.wait(tail);
        }
        tail.check()?;
        let capacity = tail.buffer.len();
        let mut next = match tail.spare.pop() {
            Some(spare) if spare.len() >= capacity => spare,
            _ => AlignedBuffer::new(capacity),
        };
        let remainder = tail.used - whole;
        next.as_mut_slice()[..remainder].copy_from_slice(&tail.buffer.as_slice()[whole..tail.used]);
        let full = std::mem::replace(&mut tail.buffer, next);
        let offset = tail.start;
        tail.queued.push_back(Chunk {
            offset,
            len: whole,
            buffer: Arc::new(full),
        });
        tail.start += whole as u64;
        tail.used = remainder;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Puts every appended byte in the file: waits for the queued runs,
    /// then writes the buffer through the cache in one write at its exact
    /// length (less than a flush's worth: a sync after every few records,
    /// as `PutDurability::Immediate` does, costs what it did through the
    /// cache, one device write per sync). Its whole blocks leave the
    /// buffer; the partial last one stays, and the direct write that later
    /// covers it replaces it.
    fn write_all(&self, tail: &mut MutexGuard<'_, Tail>) -> io::Result<()> {
        while !tail.queued.is_empty() && tail.failure.is_none() {
            self.shared.changed.wait(tail);
        }
        tail.check()?;
        if tail.unwritten {
            self.file
                .write_all_at(&tail.buffer.as_slice()[..tail.used], tail.start)?;
            tail.unwritten = false;
            let whole = tail.used - tail.used % DIRECT_ALIGN;
            let used = tail.used;
            tail.buffer.as_mut_slice().copy_within(whole..used, 0);
            tail.start += whole as u64;
            tail.used -= whole;
        }
        Ok(())
    }
}

/// The writer thread: writes queued runs in order, each with one direct
/// write (through the cache once `O_DIRECT` is refused), until the append
/// file closes and the queue is empty, or a write fails.
fn write_queued(shared: &Shared, mut direct: Option<File>, cached: &File) {
    let mut tail = shared.tail.lock();
    loop {
        let Some(chunk) = tail.queued.front() else {
            if tail.closing {
                return;
            }
            shared.changed.wait(&mut tail);
            continue;
        };
        let (offset, len, buffer) = (chunk.offset, chunk.len, chunk.buffer.clone());
        drop(tail);
        let bytes = &buffer.as_slice()[..len];
        let written = match &direct {
            Some(handle) => match handle.write_all_at(bytes, offset) {
                // Refused alignment: this file goes through the cache from now.
                Err(error) if error.kind() == io::ErrorKind::InvalidInput => {
                    direct = None;
                    cached.write_all_at(bytes, offset)
                }
                other => other,
            },
            None => cached.write_all_at(bytes, offset),
        };
        tail = shared.tail.lock();
        match written {
            Ok(()) => {
                tail.queued.pop_front();
                if let Ok(buffer) = Arc::try_unwrap(buffer) {
                    tail.spare.push(buffer);
                }
            }
            Err(error) => {
                tail.failure = Some((error.kind(), error.to_string()));
                shared.changed.notify_all();
                return;
            }
        }
        shared.changed.notify_all();
    }
}

impl super::AppendFile for UncachedAppend {
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<u64> {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        let mut tail = self.shared.tail.lock();
        tail.check()?;
        if tail.used + total > tail.buffer.len() {
            self.hand_off(&mut tail)?;
            let needed = tail.used + total;
            if needed > tail.buffer.len() {
                let mut larger = AlignedBuffer::new(needed.next_multiple_of(DIRECT_ALIGN));
                let used = tail.used;
                larger.as_mut_slice()[..used].copy_from_slice(&tail.buffer.as_slice()[..used]);
                tail.buffer = larger;
            }
        }
        let offset = tail.end();
        tail.unwritten |= total > 0;
        for part in parts {
            let used = tail.used;
            tail.buffer.as_mut_slice()[used..used + part.len()].copy_from_slice(part);
            tail.used += part.len();
        }
        if tail.used >= FLUSH_AT {
            self.hand_off(&mut tail)?;
        }
        Ok(offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut tail = self.shared.tail.lock();
        self.write_all(&mut tail)?;
        drop(tail);
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.shared.tail.lock().end()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut tail = self.shared.tail.lock();
        // Every byte in the file first: then the file and the buffer agree
        // on whatever stays.
        self.write_all(&mut tail)?;
        if len > tail.end() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "truncate cannot lengthen a file",
            ));
        }
        if len < self.file.metadata()?.len() {
            self.file.set_len(len)?;
        }
        if len >= tail.start {
            tail.used = (len - tail.start) as usize;
        } else {
            tail.start = len - len % DIRECT_ALIGN as u64;
            tail.used = (len - tail.start) as usize;
            let (start, used) = (tail.start, tail.used);
            self.file
                .read_exact_at(&mut tail.buffer.as_mut_slice()[..used], start)?;
        }
        Ok(())
    }
}

impl Drop for UncachedAppend {
    fn drop(&mut self) {
        // Appended bytes stay in the file after a clean close, as they would
        // through the cache; durability was only ever promised by sync, and
        // a failure here has no caller left to report to.
        let mut tail = self.shared.tail.lock();
        let _ = self.write_all(&mut tail);
        tail.closing = true;
        self.shared.changed.notify_all();
        drop(tail);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        let mut tails = self.registry.tails.lock();
        if tails
            .get(&self.path)
            .is_some_and(|entry| entry.ptr_eq(&Arc::downgrade(&self.shared)))
        {
            tails.remove(&self.path);
        }
    }
}
