//! A store in a local directory.
//!
//! This is the only module allowed `unsafe`: memory-mapping sealed packs.

#![allow(unsafe_code)]

use super::uncached::{TailRegistry, UncachedAppend};
use super::{parent_dir, AppendFile, ReadFile, Storage};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory on the local file system, locked for exclusive use by one
/// process (or shared by readers, [`LocalStorage::open_read_only`]) for as
/// long as this value lives.
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
    _lock: Option<File>,
    /// Every mutating method fails: nothing is ever written.
    read_only: bool,
    /// Read without the lock while another process holds it to write
    /// (see [`LocalStorage::open_read_only`]).
    beside_writer: bool,
    /// Bytes buffered by open uncached append files, for readers.
    tails: Arc<TailRegistry>,
}

/// The name of the lock file in a store directory.
const LOCK_NAME: &str = "LOCK";

/// Longest command line the lock file records.
const MAX_HOLDER_LEN: usize = 1024;

/// This process as the lock file names it: its pid and command line.
fn holder_line() -> String {
    let command = fs::read("/proc/self/cmdline")
        .map(|bytes| command_text(&bytes))
        .unwrap_or_default();
    format!("{} {command}\n", std::process::id())
}

/// A `/proc/PID/cmdline` as one line (NULs as spaces), cut to
/// [`MAX_HOLDER_LEN`] bytes.
fn command_text(cmdline: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(cmdline)
        .trim_end_matches('\0')
        .replace(['\0', '\n'], " ");
    let mut end = text.len().min(MAX_HOLDER_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The writer the lock file names, if that process still runs the same
/// command (a pid reused by another program, or a lock held by readers
/// after that writer left, names nobody).
fn live_holder(root: &Path) -> Option<(u32, String)> {
    let recorded = fs::read_to_string(root.join(LOCK_NAME)).ok()?;
    let (pid, command) = recorded.trim_end().split_once(' ')?;
    let pid: u32 = pid.parse().ok()?;
    let running = command_text(&fs::read(format!("/proc/{pid}/cmdline")).ok()?);
    (running == command).then(|| (pid, command.to_string()))
}

fn in_use(root: &Path) -> io::Error {
    let message = match live_holder(root) {
        Some((pid, command)) if command.split(' ').any(|word| word == "serve") => format!(
            "store {} is served by process {pid} ({command}): reading commands (ls, show, restore, verify ...) run beside it, but this one writes; delete, tag and copy snapshots through its EC2 API (DeleteSnapshot ...), let it collect garbage (serve --gc-interval), or stop it to run this command",
            root.display()
        ),
        Some((pid, command)) => format!(
            "store {} is in use by process {pid} ({command}); wait for it to finish",
            root.display()
        ),
        None => format!(
            "store {} is in use by another process (a reader, or a writer that left no name)",
            root.display()
        ),
    };
    io::Error::new(io::ErrorKind::WouldBlock, message)
}

impl LocalStorage {
    /// Opens (creating if needed) the directory `root` and takes its
    /// exclusive lock; fails with `WouldBlock` if another process holds it.
    pub fn open(root: impl AsRef<Path>) -> io::Result<LocalStorage> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK_NAME))?;
        lock.try_lock().map_err(|error| match error {
            fs::TryLockError::WouldBlock => in_use(&root),
            fs::TryLockError::Error(error) => error,
        })?;
        // Names this writer to the processes it turns away (best effort:
        // the name only informs, and the lock is what excludes).
        let _ = lock
            .set_len(0)
            .and_then(|()| (&lock).write_all(holder_line().as_bytes()));
        Ok(LocalStorage {
            root,
            _lock: Some(lock),
            read_only: false,
            beside_writer: false,
            tails: Arc::default(),
        })
    }

    /// Opens the existing directory `root` for reading only: nothing is
    /// created, and every mutating method fails with `ReadOnlyFilesystem`
    /// (so a read-only command provably writes nothing, and works on a
    /// full disk). Takes the lock shared, so readers run side by side and
    /// keep a writer from starting; a store without a lock file (a copy) is
    /// read unlocked. Where a writer holds the lock (`serve`), the store
    /// is read beside it, unlocked ([`Storage::beside_writer`]): nothing
    /// is memory-mapped then, because a file another process may change
    /// must never be read through a mapping. Fails with `NotFound` if
    /// `root` is not a directory.
    pub fn open_read_only(root: impl AsRef<Path>) -> io::Result<LocalStorage> {
        let root = root.as_ref().to_path_buf();
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", root.display()),
            ));
        }
        let (lock, beside_writer) = match File::open(root.join(LOCK_NAME)) {
            Ok(lock) => match lock.try_lock_shared() {
                Ok(()) => (Some(lock), false),
                Err(fs::TryLockError::WouldBlock) => (None, true),
                Err(fs::TryLockError::Error(error)) => return Err(error),
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => (None, false),
            Err(error) => return Err(error),
        };
        Ok(LocalStorage {
            root,
            _lock: lock,
            read_only: true,
            beside_writer,
            tails: Arc::default(),
        })
    }

    /// Refuses a mutation of a read-only store.
    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                format!("store {} is open read-only", self.root.display()),
            ));
        }
        Ok(())
    }

    /// The directory this storage lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Opens `name` read-write, creating it and its directory if absent.
    fn open_for_append(&self, name: &str) -> io::Result<(PathBuf, File)> {
        let path = self.path(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        Ok((path, file))
    }
}

struct LocalAppend {
    file: File,
    len: u64,
}

impl AppendFile for LocalAppend {
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<u64> {
        let offset = self.len;
        let mut position = offset;
        for part in parts {
            self.file.write_all_at(part, position)?;
            position += part.len() as u64;
        }
        self.len = position;
        Ok(offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn reserve(&mut self, end: u64) -> io::Result<()> {
        if end <= self.len {
            return Ok(());
        }
        rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            self.len,
            end - self.len,
        )
        .map_err(io::Error::from)
    }
}

struct LocalRead {
    file: File,
    path: PathBuf,
    tails: Arc<TailRegistry>,
}

impl ReadFile for LocalRead {
    fn len(&self) -> io::Result<u64> {
        match self.tails.len(&self.path) {
            Some(len) => Ok(len),
            None => Ok(self.file.metadata()?.len()),
        }
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.file.read_exact_at(buf, offset) {
            // Past the end of the file: the bytes may still be buffered by
            // an uncached append file open on the same name.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => self
                .tails
                .read_exact_at(&self.path, &self.file, offset, buf)
                .unwrap_or(Err(error)),
            other => other,
        }
    }
}

struct MappedRead {
    map: memmap2::Mmap,
}

impl ReadFile for MappedRead {
    fn len(&self) -> io::Result<u64> {
        Ok(self.map.len() as u64)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let source = start
            .checked_add(buf.len())
            .and_then(|end| self.map.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn as_slice(&self) -> Option<&[u8]> {
        Some(&self.map)
    }
}

impl Storage for LocalStorage {
    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        self.writable()?;
        let (_, file) = self.open_for_append(name)?;
        let len = file.metadata()?.len();
        Ok(Box::new(LocalAppend { file, len }))
    }

    fn open_append_uncached(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        self.writable()?;
        let (path, file) = self.open_for_append(name)?;
        Ok(Box::new(UncachedAppend::open(
            path,
            file,
            self.tails.clone(),
        )?))
    }

    fn open_read(&self, name: &str) -> io::Result<Arc<dyn ReadFile>> {
        let path = self.path(name);
        Ok(Arc::new(LocalRead {
            file: File::open(&path)?,
            path,
            tails: self.tails.clone(),
        }))
    }

    fn map(&self, name: &str) -> io::Result<Option<Arc<dyn ReadFile>>> {
        if self.beside_writer {
            return Ok(None);
        }
        let path = self.path(name);
        let file = File::open(&path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Some(Arc::new(LocalRead {
                file,
                path,
                tails: self.tails.clone(),
            })));
        }
        // SAFETY: the engine maps only sealed packs, which no code in this
        // crate writes, truncates or removes while a mapping is alive (removal
        // unlinks the name; the mapping keeps the inode). The directory is
        // locked against other blocksnap processes that write (a view
        // beside a writer maps nothing, above). Modification by a foreign
        // process breaks the contract documented in DESIGN.md ("Assumptions
        // about the medium"); even then every frame read through the map is
        // crc-checked, so altered bytes are reported as corruption.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Some(Arc::new(MappedRead { map })))
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.writable()?;
        let path = self.path(name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        let temporary = path.with_extension("tmp");
        {
            let mut file = File::create(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&temporary, &path)?;
        File::open(&dir)?.sync_all()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.writable()?;
        match fs::remove_file(self.path(name)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match fs::read_dir(self.path(dir)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(names),
            other => other?,
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        self.path(name).try_exists()
    }

    #[cfg(target_os = "linux")]
    fn available_bytes(&self) -> io::Result<Option<u64>> {
        let stats = rustix::fs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok(Some(stats.f_bavail.saturating_mul(stats.f_frsize)))
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn beside_writer(&self) -> bool {
        self.beside_writer
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        self.writable()?;
        let path = if dir.is_empty() {
            self.root.clone()
        } else {
            self.path(dir)
        };
        File::open(path)?.sync_all()?;
        if !dir.is_empty() {
            // A newly created subdirectory's own entry lives in its parent.
            File::open(self.path(parent_dir(dir)))?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_is_one_line_cut_at_a_character() {
        assert_eq!(
            command_text(b"blocksnap\0serve\0--listen\x00127.0.0.1:0\0"),
            "blocksnap serve --listen 127.0.0.1:0"
        );
        let long = "é".repeat(MAX_HOLDER_LEN);
        let cut = command_text(long.as_bytes());
        assert!(cut.len() <= MAX_HOLDER_LEN && cut.chars().all(|c| c == 'é'));
        assert_eq!(command_text(b"a\nb"), "a b");
    }
}
