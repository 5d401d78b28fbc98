//! An in-memory medium that remembers what a power loss would leave behind.
//!
//! Every file (inode) keeps its current bytes and the bytes as of its last
//! `sync`; the namespace keeps its current names and the names as of the
//! last `sync_dir` of each directory. [`MemoryStorage::crash_image`] builds
//! the storage a reboot would find. [`MemoryStorage::crash_at_sync`] arms a
//! crash: the k-th sync (counting file syncs, directory syncs and atomic
//! writes from 1) does not happen, the image is captured as it stood, and
//! every later operation fails, as if the machine had stopped there.

use super::{parent_dir, AppendFile, ReadFile, Storage};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

/// How a crash image treats bytes appended after a file's last sync.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TornWrites {
    /// Unsynced bytes are lost entirely.
    DropUnsynced,
    /// The first half of the unsynced bytes survive (a torn tail).
    KeepHalf,
    /// Each file independently keeps none, half or all of its unsynced
    /// bytes, chosen by hashing its creation ordinal with the seed:
    /// write-back reaches files in any order.
    Scattered(u64),
}

impl TornWrites {
    /// How many of `unsynced` bytes of the file created `ordinal`-th survive.
    fn surviving(self, ordinal: u64, unsynced: usize) -> usize {
        match self {
            TornWrites::DropUnsynced => 0,
            TornWrites::KeepHalf => unsynced / 2,
            TornWrites::Scattered(seed) => {
                let hash = (ordinal ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
                match hash % 3 {
                    0 => 0,
                    1 => unsynced / 2,
                    _ => unsynced,
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    /// Creation order within the medium: a deterministic identity.
    ordinal: u64,
    current: RwLock<Vec<u8>>,
    synced: Mutex<Vec<u8>>,
}

impl Inode {
    fn with_content(ordinal: u64, bytes: Vec<u8>) -> Inode {
        Inode {
            ordinal,
            current: RwLock::new(bytes.clone()),
            synced: Mutex::new(bytes),
        }
    }
}

#[derive(Debug, Default)]
struct Namespace {
    live: BTreeMap<String, Arc<Inode>>,
    durable: BTreeMap<String, Arc<Inode>>,
    created: u64,
}

#[derive(Debug, Default)]
struct Faults {
    syncs: u64,
    crash_at: Option<u64>,
    torn: Option<TornWrites>,
    crashed: Option<MemoryStorage>,
    injected: Vec<Fault>,
}

/// Which operation an injected fault hits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultPoint {
    /// Opening a file for appending (`open_append`, `open_append_uncached`).
    Open,
    /// Appending to an open file.
    Append,
    /// Syncing an open file.
    Sync,
    /// Replacing a file atomically.
    WriteAtomic,
    /// Removing a file.
    Remove,
    /// Opening a file for reading (`open_read`): `NotFound` here is a file
    /// another process removed between listing and opening it.
    Read,
}

/// An I/O error a [`MemoryStorage`] returns on demand: from the operations
/// at `point` on files whose name starts with `prefix`, the next `times`
/// fail with `kind` (as a full disk, a descriptor limit or a failing
/// device would make them), and nothing is changed by them.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The operation.
    pub point: FaultPoint,
    /// Names it applies to (a prefix: `packs/`, `pending/`, `catalog/`).
    pub prefix: String,
    /// The error returned.
    pub kind: io::ErrorKind,
    /// How many operations fail (then the fault is spent).
    pub times: usize,
}

/// In-memory storage; cheap to clone (clones share the same files).
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    namespace: Arc<Mutex<Namespace>>,
    faults: Arc<Mutex<Faults>>,
    /// This view refuses every mutation (see [`MemoryStorage::read_only_view`]).
    read_only: bool,
    /// This view reads beside a writer (see [`MemoryStorage::beside_writer_view`]).
    beside_writer: bool,
}

fn crashed_error() -> io::Error {
    io::Error::other("injected crash: the medium is gone")
}

impl MemoryStorage {
    /// An empty medium.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// Number of syncs performed so far.
    pub fn sync_count(&self) -> u64 {
        self.faults.lock().syncs
    }

    /// Arms a crash at sync number `k` (1-based); see the module docs.
    pub fn crash_at_sync(&self, k: u64, torn: TornWrites) {
        let mut faults = self.faults.lock();
        faults.crash_at = Some(k);
        faults.torn = Some(torn);
    }

    /// The image captured when the armed crash fired, if it has.
    pub fn crashed_image(&self) -> Option<MemoryStorage> {
        self.faults.lock().crashed.clone()
    }

    /// What a reboot would find now: durable names with their synced bytes.
    pub fn crash_image(&self, torn: TornWrites) -> MemoryStorage {
        let namespace = self.namespace.lock();
        let mut image = Namespace::default();
        for (name, inode) in &namespace.durable {
            let synced = inode.synced.lock().clone();
            let mut bytes = synced.clone();
            let current = inode.current.read();
            if current.len() > synced.len() && current.starts_with(&synced) {
                let unsynced = current.get(synced.len()..).unwrap_or_default();
                let keep = torn.surviving(inode.ordinal, unsynced.len());
                bytes.extend_from_slice(unsynced.get(..keep).unwrap_or_default());
            }
            let inode = Arc::new(Inode::with_content(inode.ordinal, bytes));
            image.live.insert(name.clone(), inode.clone());
            image.durable.insert(name.clone(), inode);
        }
        image.created = namespace.created;
        MemoryStorage {
            namespace: Arc::new(Mutex::new(image)),
            faults: Arc::default(),
            read_only: false,
            beside_writer: false,
        }
    }

    /// The same files through a view that refuses every mutation with
    /// `ReadOnlyFilesystem`, as [`super::LocalStorage::open_read_only`]
    /// does: an engine opened on it must write nothing.
    pub fn read_only_view(&self) -> MemoryStorage {
        MemoryStorage {
            read_only: true,
            ..self.clone()
        }
    }

    /// A [`MemoryStorage::read_only_view`] that reads beside a writer
    /// ([`Storage::beside_writer`]), as `LocalStorage::open_read_only`
    /// does of a directory a server holds.
    pub fn beside_writer_view(&self) -> MemoryStorage {
        MemoryStorage {
            beside_writer: true,
            ..self.read_only_view()
        }
    }

    /// Makes operations fail on demand (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.faults.lock().injected.push(fault);
    }

    /// Fails the operation if the medium is read-only or an injected fault
    /// applies to it (spending one of its times).
    fn check_fault(&self, point: FaultPoint, name: &str) -> io::Result<()> {
        if self.read_only && !matches!(point, FaultPoint::Sync | FaultPoint::Read) {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                format!("{name}: the storage is read-only"),
            ));
        }
        let mut faults = self.faults.lock();
        let hit = faults.injected.iter_mut().find(|fault| {
            fault.point == point && fault.times > 0 && name.starts_with(&fault.prefix)
        });
        match hit {
            Some(fault) => {
                fault.times -= 1;
                Err(io::Error::new(
                    fault.kind,
                    format!("{name}: injected fault"),
                ))
            }
            None => Ok(()),
        }
    }

    /// Overwrites bytes of a file in place, current and durable alike: a
    /// stand-in for media corruption in tests.
    pub fn corrupt(&self, name: &str, offset: usize, xor: u8) -> io::Result<()> {
        let inode = self.inode(name)?;
        for bytes in [&mut *inode.current.write(), &mut *inode.synced.lock()] {
            if let Some(byte) = bytes.get_mut(offset) {
                *byte ^= xor;
            }
        }
        Ok(())
    }

    /// Cuts a file to `len` bytes, current and durable alike.
    pub fn cut(&self, name: &str, len: usize) -> io::Result<()> {
        let inode = self.inode(name)?;
        inode.current.write().truncate(len);
        inode.synced.lock().truncate(len);
        Ok(())
    }

    /// Fails if the medium has crashed; otherwise counts a sync and fires an
    /// armed crash when its number comes up (returning the error).
    fn sync_point(&self) -> io::Result<()> {
        let mut faults = self.faults.lock();
        if faults.crashed.is_some() {
            return Err(crashed_error());
        }
        faults.syncs += 1;
        if faults.crash_at == Some(faults.syncs) {
            let torn = faults.torn.unwrap_or(TornWrites::DropUnsynced);
            faults.crashed = Some(self.crash_image(torn));
            return Err(crashed_error());
        }
        Ok(())
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.faults.lock().crashed.is_some() {
            Err(crashed_error())
        } else {
            Ok(())
        }
    }

    fn inode(&self, name: &str) -> io::Result<Arc<Inode>> {
        self.namespace
            .lock()
            .live
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {name}")))
    }
}

struct MemoryAppend {
    storage: MemoryStorage,
    name: String,
    inode: Arc<Inode>,
}

impl AppendFile for MemoryAppend {
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<u64> {
        self.storage.check_alive()?;
        self.storage.check_fault(FaultPoint::Append, &self.name)?;
        let mut current = self.inode.current.write();
        let offset = current.len() as u64;
        for part in parts {
            current.extend_from_slice(part);
        }
        Ok(offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.storage.check_fault(FaultPoint::Sync, &self.name)?;
        self.storage.sync_point()?;
        let current = self.inode.current.read();
        *self.inode.synced.lock() = current.clone();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.inode.current.read().len() as u64
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.storage.check_alive()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.inode.current.write().truncate(len);
        Ok(())
    }
}

struct MemoryRead {
    storage: MemoryStorage,
    inode: Arc<Inode>,
}

impl ReadFile for MemoryRead {
    fn len(&self) -> io::Result<u64> {
        self.storage.check_alive()?;
        Ok(self.inode.current.read().len() as u64)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.storage.check_alive()?;
        let current = self.inode.current.read();
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let source = start
            .checked_add(buf.len())
            .and_then(|end| current.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(source);
        Ok(())
    }
}

impl Storage for MemoryStorage {
    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        self.check_alive()?;
        self.check_fault(FaultPoint::Open, name)?;
        let mut namespace = self.namespace.lock();
        let ordinal = namespace.created;
        let inode = match namespace.live.get(name) {
            Some(inode) => inode.clone(),
            None => {
                namespace.created += 1;
                let inode = Arc::new(Inode::with_content(ordinal, Vec::new()));
                namespace.live.insert(name.to_string(), inode.clone());
                inode
            }
        };
        drop(namespace);
        Ok(Box::new(MemoryAppend {
            storage: self.clone(),
            name: name.to_string(),
            inode,
        }))
    }

    fn open_read(&self, name: &str) -> io::Result<Arc<dyn ReadFile>> {
        self.check_alive()?;
        self.check_fault(FaultPoint::Read, name)?;
        Ok(Arc::new(MemoryRead {
            storage: self.clone(),
            inode: self.inode(name)?,
        }))
    }

    fn map(&self, _name: &str) -> io::Result<Option<Arc<dyn ReadFile>>> {
        Ok(None)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.check_fault(FaultPoint::WriteAtomic, name)?;
        self.sync_point()?;
        let mut namespace = self.namespace.lock();
        let inode = Arc::new(Inode::with_content(namespace.created, bytes.to_vec()));
        namespace.created += 1;
        namespace.live.insert(name.to_string(), inode.clone());
        namespace.durable.insert(name.to_string(), inode);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.check_alive()?;
        self.check_fault(FaultPoint::Remove, name)?;
        self.namespace.lock().live.remove(name);
        Ok(())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.check_alive()?;
        let namespace = self.namespace.lock();
        Ok(namespace
            .live
            .keys()
            .filter(|name| parent_dir(name) == dir)
            .map(|name| name.rsplit('/').next().unwrap_or(name).to_string())
            .collect())
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        self.check_alive()?;
        Ok(self.namespace.lock().live.contains_key(name))
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn beside_writer(&self) -> bool {
        self.beside_writer
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                "the storage is read-only",
            ));
        }
        self.sync_point()?;
        let mut namespace = self.namespace.lock();
        let Namespace { live, durable, .. } = &mut *namespace;
        durable.retain(|name, _| parent_dir(name) != dir);
        for (name, inode) in live.iter() {
            if parent_dir(name) == dir {
                durable.insert(name.clone(), inode.clone());
            }
        }
        Ok(())
    }
}
