//! Where archives live: a bucket (a local directory, or an S3-compatible
//! bucket) holding objects under keys, written create-only and read with
//! random access.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "s3")]
use super::s3::{S3Bucket, S3ObjectReader};

/// A destination or source of archives.
#[derive(Clone, Debug)]
pub enum Bucket {
    /// A local directory; keys are relative paths inside it.
    Directory(PathBuf),
    /// An S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(S3Bucket),
}

/// An object being written. Nothing is visible under its key until
/// [`ObjectUpload::commit`] succeeds; dropping it uncommitted aborts it.
pub trait ObjectUpload: Write + Send {
    /// Publishes the object, create-only: a [`Error::Conflict`] if the key
    /// was taken meanwhile (nothing is overwritten).
    fn commit(self: Box<Self>) -> Result<()>;
}

impl Bucket {
    /// How to name `key` in this bucket to a person: a path or an `s3://` URL.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Bucket::Directory(root) => root.join(key).display().to_string(),
            #[cfg(feature = "s3")]
            Bucket::S3(bucket) => format!("s3://{}/{key}", bucket.name()),
        }
    }

    /// Checks the bucket exists and `key` is free, so an export fails fast
    /// instead of after writing the whole archive (the commit checks again).
    pub fn check_free(&self, key: &str) -> Result<()> {
        match self {
            Bucket::Directory(root) => {
                directory_root(root)?;
                if root.join(key).symlink_metadata().is_ok() {
                    return Err(exists(&self.describe(key)));
                }
                Ok(())
            }
            #[cfg(feature = "s3")]
            Bucket::S3(bucket) => bucket.check_free(key),
        }
    }

    /// Starts writing `key`.
    pub fn upload(&self, key: &str) -> Result<Box<dyn ObjectUpload>> {
        match self {
            Bucket::Directory(root) => Ok(Box::new(DirectoryUpload::create(root, key)?)),
            #[cfg(feature = "s3")]
            Bucket::S3(bucket) => Ok(Box::new(bucket.upload(key))),
        }
    }

    /// Opens `key` for reading.
    pub fn open(&self, key: &str) -> Result<ArchiveReader> {
        match self {
            Bucket::Directory(root) => {
                let path = root.join(key);
                let file = File::open(&path).map_err(|error| {
                    if error.kind() == std::io::ErrorKind::NotFound {
                        Error::NotFound {
                            message: format!("archive {} does not exist", path.display()),
                        }
                    } else {
                        Error::io(format!("opening {}", path.display()), error)
                    }
                })?;
                let len = file
                    .metadata()
                    .map_err(|error| Error::io(format!("reading {}", path.display()), error))?
                    .len();
                Ok(ArchiveReader::File {
                    file: Arc::new(file),
                    len,
                    position: 0,
                })
            }
            #[cfg(feature = "s3")]
            Bucket::S3(bucket) => Ok(ArchiveReader::S3(bucket.open(key)?)),
        }
    }
}

fn exists(what: &str) -> Error {
    Error::Conflict {
        message: format!("{what} already exists; archives are never overwritten"),
    }
}

/// The directory behind a directory bucket, which must exist.
fn directory_root(root: &Path) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(Error::NotFound {
            message: format!("bucket {} is not a directory", root.display()),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
            message: format!("bucket directory {} does not exist", root.display()),
        }),
        Err(error) => Err(Error::io(format!("reading {}", root.display()), error)),
    }
}

/// A file written under a temporary name beside its key, published by a
/// hard link (which fails rather than replace an existing file) after an
/// fsync, then the directory's fsync.
struct DirectoryUpload {
    writer: Option<BufWriter<File>>,
    temporary: PathBuf,
    target: PathBuf,
}

impl DirectoryUpload {
    fn create(root: &Path, key: &str) -> Result<DirectoryUpload> {
        directory_root(root)?;
        let target = root.join(key);
        let parent = target
            .parent()
            .ok_or_else(|| {
                Error::invalid(crate::ValidationReason::InvalidParameterValue, "empty key")
            })?
            .to_path_buf();
        std::fs::create_dir_all(&parent)
            .map_err(|error| Error::io(format!("creating {}", parent.display()), error))?;
        let file_name = target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|error| Error::io("drawing a temporary name", std::io::Error::other(error)))?;
        let temporary = parent.join(format!(
            ".{file_name}.{}.partial",
            super::manifest::hex_bytes(&suffix)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(|error| Error::io(format!("creating {}", temporary.display()), error))?;
        Ok(DirectoryUpload {
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            temporary,
            target,
        })
    }
}

impl Write for DirectoryUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.writer {
            Some(writer) => writer.write(buf),
            None => Err(std::io::Error::other("the upload is finished")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }
}

impl ObjectUpload for DirectoryUpload {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let temporary = self.temporary.clone();
        let context = |error| Error::io(format!("writing {}", temporary.display()), error);
        let writer = self
            .writer
            .take()
            .ok_or_else(|| context(std::io::Error::other("finished")))?;
        let file = writer
            .into_inner()
            .map_err(|error| context(error.into_error()))?;
        file.sync_all().map_err(context)?;
        drop(file);
        let linked = std::fs::hard_link(&self.temporary, &self.target);
        let _ = std::fs::remove_file(&self.temporary);
        match linked {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists(&self.target.display().to_string()));
            }
            Err(error) => {
                return Err(Error::io(
                    format!("publishing {}", self.target.display()),
                    error,
                ))
            }
        }
        if let Some(parent) = self.target.parent() {
            File::open(parent)
                .and_then(|directory| directory.sync_all())
                .map_err(|error| Error::io(format!("syncing {}", parent.display()), error))?;
        }
        Ok(())
    }
}

impl Drop for DirectoryUpload {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Random access to an archive for the zip reader. Clones read
/// independently (each has its own position), so the block list and the
/// block entries can be read side by side.
#[derive(Clone)]
pub enum ArchiveReader {
    /// A local file, read with positional reads.
    File {
        /// The open file.
        file: Arc<File>,
        /// Its length.
        len: u64,
        /// This reader's position.
        position: u64,
    },
    /// An S3 object, read with ranged GETs.
    #[cfg(feature = "s3")]
    S3(S3ObjectReader),
}

impl ArchiveReader {
    /// The archive's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ArchiveReader::File { len, .. } => *len,
            #[cfg(feature = "s3")]
            ArchiveReader::S3(reader) => reader.len(),
        }
    }

    /// Whether the archive is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Read for ArchiveReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ArchiveReader::File {
                file,
                len,
                position,
            } => {
                let available = len.saturating_sub(*position).min(buf.len() as u64) as usize;
                let read = file.read_at(buf.get_mut(..available).unwrap_or_default(), *position)?;
                *position += read as u64;
                Ok(read)
            }
            #[cfg(feature = "s3")]
            ArchiveReader::S3(reader) => reader.read(buf),
        }
    }
}

impl Seek for ArchiveReader {
    fn seek(&mut self, target: SeekFrom) -> std::io::Result<u64> {
        match self {
            ArchiveReader::File { len, position, .. } => {
                *position = resolve_seek(*position, *len, target)?;
                Ok(*position)
            }
            #[cfg(feature = "s3")]
            ArchiveReader::S3(reader) => reader.seek(target),
        }
    }
}

/// The position a seek from `position` in an object of `len` bytes reaches.
pub(crate) fn resolve_seek(position: u64, len: u64, target: SeekFrom) -> std::io::Result<u64> {
    let resolved = match target {
        SeekFrom::Start(offset) => Some(offset),
        SeekFrom::End(delta) => len.checked_add_signed(delta),
        SeekFrom::Current(delta) => position.checked_add_signed(delta),
    };
    resolved.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
    })
}
