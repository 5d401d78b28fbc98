//! The head object of a bucket store: the one object replaced by
//! compare-and-swap, naming the current state of every file the bucket
//! store keeps as extents, the writer that holds the store, and what the
//! latest commits added.
//!
//! The layout, field by field, is specified in DESIGN.md §4.13 "Bucket head";
//! `tests/design_tables.rs` checks the specification against these
//! constants and the encoder.

use super::header::{self, FILE_HEADER_SIZE};
use super::wire::{body_before_crc, Reader, Writer};
use super::{crc32, DecodeError, EncodeError};

/// Magic of a bucket store's head object. Never change.
pub const HEAD_MAGIC: [u8; 8] = *b"BSNPHEAD";
/// Offset of the writer epoch.
pub const HEAD_EPOCH_OFFSET: usize = FILE_HEADER_SIZE;
/// Offset of the writer id.
pub const HEAD_WRITER_OFFSET: usize = HEAD_EPOCH_OFFSET + 8;
/// Offset of the file count.
pub const HEAD_FILE_COUNT_OFFSET: usize = HEAD_WRITER_OFFSET + 16;
/// Offset of the first file entry.
pub const HEAD_FILES_OFFSET: usize = HEAD_FILE_COUNT_OFFSET + 4;
const _: () = assert!(HEAD_FILES_OFFSET == 60);
/// The most recent commits a head remembers.
pub const MAX_RECENT_COMMITS: usize = 64;
/// The most writers a head registers at once.
pub const MAX_WRITERS: usize = 256;

/// One piece of a file: an immutable object holding `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// The object's name in the bucket.
    pub object: String,
    /// Its length (never zero).
    pub len: u64,
    /// crc32 of its bytes.
    pub crc32: u32,
}

/// A file kept as extents: its content is their concatenation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadFile {
    /// The file's name in the store.
    pub name: String,
    /// Its pieces, in order.
    pub extents: Vec<Extent>,
}

impl HeadFile {
    /// The file's length.
    pub fn len(&self) -> u64 {
        self.extents.iter().map(|extent| extent.len).sum()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }
}

/// One recent commit: which objects it published outside the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadCommit {
    /// The head generation the commit made.
    pub generation: u64,
    /// The epoch of the writer that made it.
    pub writer_epoch: u64,
    /// Objects published with it (sealed packs and their indexes).
    pub added: Vec<String>,
}

/// An object removed from the store but not yet deleted from the bucket:
/// readers of an older head may still read it until the grace period since
/// `condemned_millis` has passed; then a writer deletes it with `If-Match`
/// on `etag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condemned {
    /// The object's name in the bucket.
    pub object: String,
    /// Its ETag when it was condemned (the delete's precondition).
    pub etag: String,
    /// When it was condemned, by the condemning writer's clock (epoch
    /// milliseconds).
    pub condemned_millis: u64,
}

/// A writer registered in the head: it may commit while its entry is
/// there, and is fenced once the entry is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisteredWriter {
    /// The writer's random id.
    pub id: [u8; 16],
    /// The epoch it was given when it registered (never zero, at most the
    /// head's `writer_epoch`).
    pub epoch: u64,
}

/// A decoded head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Advances by one with every replacement of the head.
    pub generation: u64,
    /// The last epoch given to a registering writer (each open for
    /// writing takes the next).
    pub writer_epoch: u64,
    /// Random id of the writer that committed this head.
    pub writer_id: [u8; 16],
    /// Files kept as extents, sorted by name (distinct).
    pub files: Vec<HeadFile>,
    /// The latest commits, oldest first (at most [`MAX_RECENT_COMMITS`]).
    pub commits: Vec<HeadCommit>,
    /// Objects removed and waiting out their grace period, sorted by name
    /// (distinct).
    pub condemned: Vec<Condemned>,
    /// The writers that may commit, sorted by id (distinct, at most
    /// [`MAX_WRITERS`]).
    pub writers: Vec<RegisteredWriter>,
    /// The first pack sequence no writer has reserved: a writer reserves
    /// a range from here by committing a head that advances it.
    pub next_pack: u32,
}

impl Head {
    /// Encodes the head.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&header::encode(HEAD_MAGIC, self.generation));
        bytes.put_u64(self.writer_epoch);
        bytes.extend_from_slice(&self.writer_id);
        bytes.put_len_u32(self.files.len(), "a head's file count")?;
        for file in &self.files {
            bytes.put_string(&file.name, "a head's file name")?;
            bytes.put_len_u32(file.extents.len(), "a file's extent count")?;
            for extent in &file.extents {
                bytes.put_string(&extent.object, "an extent's object name")?;
                bytes.put_u64(extent.len);
                bytes.put_u32(extent.crc32);
            }
        }
        bytes.put_len_u16(self.commits.len(), "a head's commit count")?;
        for commit in &self.commits {
            bytes.put_u64(commit.generation);
            bytes.put_u64(commit.writer_epoch);
            bytes.put_len_u32(commit.added.len(), "a commit's object count")?;
            for object in &commit.added {
                bytes.put_string(object, "a commit's object name")?;
            }
        }
        bytes.put_len_u32(self.condemned.len(), "a head's condemned count")?;
        for condemned in &self.condemned {
            bytes.put_string(&condemned.object, "a condemned object's name")?;
            bytes.put_string(&condemned.etag, "a condemned object's etag")?;
            bytes.put_u64(condemned.condemned_millis);
        }
        bytes.put_len_u16(self.writers.len(), "a head's writer count")?;
        for writer in &self.writers {
            bytes.extend_from_slice(&writer.id);
            bytes.put_u64(writer.epoch);
        }
        bytes.put_u32(self.next_pack);
        let crc = crc32(&[&bytes]);
        bytes.put_u32(crc);
        Ok(bytes)
    }

    /// Decodes a head, checking its crc and that it re-encodes exactly
    /// (files sorted and distinct, extents non-empty, commits in order).
    pub fn decode(bytes: &[u8]) -> Result<Head, DecodeError> {
        let generation = header::decode(bytes, HEAD_MAGIC)?;
        let body = body_before_crc(bytes, "head truncated", "head crc")?;
        let mut reader = Reader::new(body);
        reader.take(FILE_HEADER_SIZE, "head header")?;
        let writer_epoch = reader.u64("head writer epoch")?;
        let writer_id = reader.array::<16>("head writer id")?;
        let file_count = reader.u32("head file count")?;
        let mut files: Vec<HeadFile> = Vec::new();
        for _ in 0..file_count {
            let at = reader.position();
            let name = reader.string("head file name")?;
            if files.last().is_some_and(|last| last.name >= name) {
                return Err(DecodeError::corrupt(at, "head file order"));
            }
            let extent_count = reader.u32("head extent count")?;
            // Each extent takes at least 14 bytes: a count past what is
            // left is damage, found before anything is allocated for it.
            if extent_count as usize > reader.remaining() / 14 {
                return Err(DecodeError::corrupt(at, "head extent count"));
            }
            let mut extents = Vec::with_capacity(extent_count as usize);
            for _ in 0..extent_count {
                let at = reader.position();
                let object = reader.string("extent object name")?;
                let len = reader.u64("extent length")?;
                let crc32 = reader.u32("extent crc")?;
                if len == 0 || object.is_empty() {
                    return Err(DecodeError::corrupt(at, "empty extent"));
                }
                extents.push(Extent { object, len, crc32 });
            }
            files.push(HeadFile { name, extents });
        }
        let commit_count = usize::from(reader.u16("head commit count")?);
        if commit_count > MAX_RECENT_COMMITS {
            return Err(DecodeError::corrupt(reader.position(), "head commit count"));
        }
        let mut commits: Vec<HeadCommit> = Vec::with_capacity(commit_count);
        for _ in 0..commit_count {
            let at = reader.position();
            let commit_generation = reader.u64("commit generation")?;
            let commit_epoch = reader.u64("commit writer epoch")?;
            let in_order = commits
                .last()
                .is_none_or(|last| last.generation < commit_generation);
            if !in_order || commit_generation > generation || commit_epoch > writer_epoch {
                return Err(DecodeError::corrupt(at, "head commit order"));
            }
            let count = reader.u32("commit object count")?;
            if count as usize > reader.remaining() / 2 {
                return Err(DecodeError::corrupt(at, "commit object count"));
            }
            let added = (0..count)
                .map(|_| reader.string("commit object name"))
                .collect::<Result<Vec<_>, _>>()?;
            commits.push(HeadCommit {
                generation: commit_generation,
                writer_epoch: commit_epoch,
                added,
            });
        }
        let condemned_count = reader.u32("head condemned count")?;
        // Each entry takes at least 13 bytes (two names and the time).
        if condemned_count as usize > reader.remaining() / 13 {
            return Err(DecodeError::corrupt(
                reader.position(),
                "head condemned count",
            ));
        }
        let mut condemned: Vec<Condemned> = Vec::with_capacity(condemned_count as usize);
        for _ in 0..condemned_count {
            let at = reader.position();
            let object = reader.string("condemned object name")?;
            let etag = reader.string("condemned object etag")?;
            let condemned_millis = reader.u64("condemned time")?;
            if object.is_empty() || condemned.last().is_some_and(|last| last.object >= object) {
                return Err(DecodeError::corrupt(at, "head condemned order"));
            }
            condemned.push(Condemned {
                object,
                etag,
                condemned_millis,
            });
        }
        let writer_count = usize::from(reader.u16("head writer count")?);
        if writer_count > MAX_WRITERS {
            return Err(DecodeError::corrupt(reader.position(), "head writer count"));
        }
        let mut writers: Vec<RegisteredWriter> = Vec::with_capacity(writer_count);
        for _ in 0..writer_count {
            let at = reader.position();
            let id = reader.array::<16>("registered writer id")?;
            let epoch = reader.u64("registered writer epoch")?;
            if epoch == 0
                || epoch > writer_epoch
                || writers.last().is_some_and(|last| last.id >= id)
            {
                return Err(DecodeError::corrupt(at, "head writer order"));
            }
            writers.push(RegisteredWriter { id, epoch });
        }
        let next_pack = reader.u32("head next pack")?;
        reader.finish("head length")?;
        Ok(Head {
            generation,
            writer_epoch,
            writer_id,
            files,
            commits,
            condemned,
            writers,
            next_pack,
        })
    }

    /// Whether the writer `id` holding `epoch` is registered.
    pub fn is_registered(&self, id: &[u8; 16], epoch: u64) -> bool {
        self.writers
            .iter()
            .any(|writer| writer.id == *id && writer.epoch == epoch)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample() -> Head {
        Head {
            generation: 9,
            writer_epoch: 3,
            writer_id: [5; 16],
            files: vec![
                HeadFile {
                    name: "catalog/00000001.log".into(),
                    extents: vec![
                        Extent {
                            object: "log/0000000000000003-0000000000000001".into(),
                            len: 40,
                            crc32: 7,
                        },
                        Extent {
                            object: "log/0000000000000003-0000000000000002".into(),
                            len: 90,
                            crc32: 8,
                        },
                    ],
                },
                HeadFile {
                    name: "keyring".into(),
                    extents: vec![],
                },
            ],
            commits: vec![HeadCommit {
                generation: 9,
                writer_epoch: 3,
                added: vec!["packs/00000002.pack".into(), "packs/00000002.idx".into()],
            }],
            condemned: vec![
                Condemned {
                    object: "packs/00000000.idx".into(),
                    etag: "\"e1\"".into(),
                    condemned_millis: 1_700_000_000_000,
                },
                Condemned {
                    object: "packs/00000000.pack".into(),
                    etag: "\"e2\"".into(),
                    condemned_millis: 1_700_000_000_001,
                },
            ],
            writers: vec![
                RegisteredWriter {
                    id: [1; 16],
                    epoch: 2,
                },
                RegisteredWriter {
                    id: [5; 16],
                    epoch: 3,
                },
            ],
            next_pack: 40,
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_detected() {
        let bytes = sample().encode().expect("encodes");
        assert_eq!(Head::decode(&bytes), Ok(sample()));
        assert_eq!(sample().files[0].len(), 130);
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x20;
            assert!(Head::decode(&flipped).is_err(), "flip at {position}");
        }
        for cut in 0..bytes.len() {
            assert!(Head::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unsorted_files_and_commits_out_of_order_are_damage() {
        let mut head = sample();
        head.files.swap(0, 1);
        assert!(Head::decode(&head.encode().expect("encodes")).is_err());
        let mut head = sample();
        head.commits[0].generation = 10;
        assert!(Head::decode(&head.encode().expect("encodes")).is_err());
        let mut head = sample();
        head.condemned.swap(0, 1);
        assert!(Head::decode(&head.encode().expect("encodes")).is_err());
        let mut head = sample();
        head.condemned[1].object = head.condemned[0].object.clone();
        assert!(Head::decode(&head.encode().expect("encodes")).is_err());
        let mut head = sample();
        head.writers.swap(0, 1);
        assert!(Head::decode(&head.encode().expect("encodes")).is_err());
        let mut head = sample();
        head.writers[0].epoch = 4;
        assert!(Head::decode(&head.encode().expect("encodes")).is_err());
        let mut head = sample();
        head.writers[0].epoch = 0;
        assert!(Head::decode(&head.encode().expect("encodes")).is_err());
        assert!(sample().is_registered(&[5; 16], 3));
        assert!(!sample().is_registered(&[5; 16], 2));
        assert!(!sample().is_registered(&[6; 16], 3));
    }
}
