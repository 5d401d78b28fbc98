//! Catalog log records: the snapshot state machine, persisted.
//!
//! The layout, field by field, is specified in DESIGN.md §4.6 "Catalog frame"; the
//! offset constants below follow it, and `tests/design_tables.rs` checks
//! the specification against these constants and the encoders.

use super::wire::{seal_leading_crc, Reader, Writer};
use super::{crc32, DecodeError, EncodeError};
use crate::ids::{ChunkId, SnapshotId};

/// Offset of a frame's crc.
pub const FRAME_CRC_OFFSET: usize = 0;
/// Offset of a frame's body length.
pub const FRAME_LEN_OFFSET: usize = FRAME_CRC_OFFSET + 4;
/// Offset of a frame's body.
pub const FRAME_BODY_OFFSET: usize = FRAME_LEN_OFFSET + 4;
/// Segment header flag: the segment starts with the whole catalog (a
/// checkpoint written atomically) and supersedes every earlier segment.
pub const CATALOG_FLAG_CHECKPOINT: u32 = 1;
/// Segment header flag: the segment was written with a mirror copy
/// (`NNNNNNNN.mirror`), and the journal of every snapshot whose Started
/// record it holds was durable before that record: a pending snapshot
/// started here whose journal is missing is damage, not a snapshot that
/// received no block yet.
pub const CATALOG_FLAG_JOURNALED: u32 = 2;
/// Largest body a frame may claim (50 tags of 127+255 bytes plus strings fit easily).
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// Server-side encryption type, as the EBS `SSEType` enum.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SseKind {
    /// Not encrypted.
    None = 0,
    /// Encrypted with the store's default key.
    SseEbs = 1,
    /// Encrypted with a named key.
    SseKms = 2,
}

/// The parameters a snapshot was started with.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StartedRecord {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Its parent, if incremental.
    pub parent: Option<SnapshotId>,
    /// The oldest ancestor (itself when it has no parent).
    pub lineage: SnapshotId,
    /// Volume size in GiB.
    pub volume_size_gib: u64,
    /// Inactivity timeout in minutes.
    pub timeout_minutes: u32,
    /// Start time, epoch milliseconds.
    pub start_millis: u64,
    /// Encryption type.
    pub sse: SseKind,
    /// Owner account.
    pub owner: String,
    /// Idempotency token.
    pub client_token: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Named encryption key.
    pub kms_key_arn: Option<String>,
    /// Tags, in request order.
    pub tags: Vec<(String, String)>,
    /// The writer that started it, when the store has several (a bucket
    /// store's registered writer id): only that writer's process takes
    /// its puts and completion. Never all zeros.
    pub writer: Option<[u8; 16]>,
}

/// One catalog record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CatalogRecord {
    /// A snapshot entered `pending`.
    Started(StartedRecord),
    /// A pending snapshot became `completed` (the commit point).
    Completed {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Completion time, epoch milliseconds.
        completed_millis: u64,
        /// Root of its block map; `None` for an empty volume image.
        root: Option<ChunkId>,
        /// Distinct indexes written in this snapshot.
        changed_blocks: u32,
    },
    /// A pending snapshot entered `error`.
    Failed {
        /// The snapshot.
        snapshot: SnapshotId,
        /// When, epoch milliseconds.
        at_millis: u64,
        /// Why.
        reason: String,
    },
    /// A completed or failed snapshot was deleted: it leaves the catalog,
    /// and its client token is free again.
    Deleted {
        /// The snapshot.
        snapshot: SnapshotId,
        /// When, epoch milliseconds.
        at_millis: u64,
    },
    /// A snapshot's tags were replaced (EC2's CreateTags and DeleteTags).
    Tagged {
        /// The snapshot.
        snapshot: SnapshotId,
        /// When, epoch milliseconds.
        at_millis: u64,
        /// Its tags from now on, in order.
        tags: Vec<(String, String)>,
    },
}

fn opt(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

fn some_if_nonempty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// A tag list: its count (u16), then each key and value.
fn put_tags(body: &mut Vec<u8>, tags: &[(String, String)]) -> Result<(), EncodeError> {
    body.put_len_u16(tags.len(), "a snapshot's tag count")?;
    for (key, value) in tags {
        body.put_string(key, "a tag key")?;
        body.put_string(value, "a tag value")?;
    }
    Ok(())
}

fn read_tags(reader: &mut Reader<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    let tag_count = reader.u16("tag count")?;
    let mut tags = Vec::with_capacity(usize::from(tag_count).min(64));
    for _ in 0..tag_count {
        tags.push((reader.string("tag key")?, reader.string("tag value")?));
    }
    Ok(tags)
}

impl CatalogRecord {
    /// Encodes the record as a complete frame; a string or tag list longer
    /// than its length field can say is an error.
    pub fn encode_frame(&self) -> Result<Vec<u8>, EncodeError> {
        let mut body = Vec::with_capacity(128);
        match self {
            CatalogRecord::Started(started) => {
                body.put_u8(1);
                body.put_u64(started.snapshot.0);
                body.put_u64(started.parent.map_or(0, |p| p.0));
                body.put_u64(started.lineage.0);
                body.put_u64(started.volume_size_gib);
                body.put_u32(started.timeout_minutes);
                body.put_u64(started.start_millis);
                body.put_u8(started.sse as u8);
                body.put_string(&started.owner, "an owner id")?;
                body.put_string(opt(&started.client_token), "a client token")?;
                body.put_string(opt(&started.description), "a description")?;
                body.put_string(opt(&started.kms_key_arn), "a key name")?;
                put_tags(&mut body, &started.tags)?;
                if let Some(writer) = started.writer {
                    body.extend_from_slice(&writer);
                }
            }
            CatalogRecord::Completed {
                snapshot,
                completed_millis,
                root,
                changed_blocks,
            } => {
                body.put_u8(2);
                body.put_u64(snapshot.0);
                body.put_u64(*completed_millis);
                body.put_u8(u8::from(root.is_some()));
                body.extend_from_slice(&root.map_or([0u8; 32], |r| r.0));
                body.put_u32(*changed_blocks);
            }
            CatalogRecord::Failed {
                snapshot,
                at_millis,
                reason,
            } => {
                body.put_u8(3);
                body.put_u64(snapshot.0);
                body.put_u64(*at_millis);
                body.put_string(reason, "a failure reason")?;
            }
            CatalogRecord::Deleted {
                snapshot,
                at_millis,
            } => {
                body.put_u8(4);
                body.put_u64(snapshot.0);
                body.put_u64(*at_millis);
            }
            CatalogRecord::Tagged {
                snapshot,
                at_millis,
                tags,
            } => {
                body.put_u8(5);
                body.put_u64(snapshot.0);
                body.put_u64(*at_millis);
                put_tags(&mut body, tags)?;
            }
        }
        let mut frame = Vec::with_capacity(FRAME_BODY_OFFSET + body.len());
        frame.put_u32(0);
        // The decoder refuses longer bodies: never write one.
        if body.len() > MAX_BODY_LEN {
            return Err(EncodeError {
                what: "a catalog record",
                len: body.len(),
                limit: MAX_BODY_LEN,
            });
        }
        frame.put_len_u32(body.len(), "a catalog record")?;
        frame.extend_from_slice(&body);
        seal_leading_crc(&mut frame, FRAME_LEN_OFFSET);
        Ok(frame)
    }

    /// Decodes the frame at the start of `bytes`, returning the record and
    /// the frame's total length.
    pub fn decode_frame(bytes: &[u8]) -> Result<(CatalogRecord, usize), DecodeError> {
        let mut reader = Reader::new(bytes);
        let stored_crc = reader.u32("catalog frame crc")?;
        let length = reader.u32("catalog frame length")? as usize;
        if length > MAX_BODY_LEN {
            return Err(DecodeError::corrupt(
                FRAME_LEN_OFFSET,
                "catalog frame length",
            ));
        }
        let body = reader.take(length, "catalog frame body")?;
        let covered = bytes
            .get(FRAME_LEN_OFFSET..FRAME_BODY_OFFSET + length)
            .ok_or(DecodeError::corrupt(FRAME_LEN_OFFSET, "catalog frame"))?;
        if crc32(&[covered]) != stored_crc {
            return Err(DecodeError::corrupt(FRAME_CRC_OFFSET, "catalog frame crc"));
        }
        let record = Self::decode_body(body).map_err(|error| match error {
            DecodeError::Corrupt { offset, what } => {
                DecodeError::corrupt(offset + FRAME_BODY_OFFSET, what)
            }
            other => other,
        })?;
        Ok((record, FRAME_BODY_OFFSET + length))
    }

    fn decode_body(body: &[u8]) -> Result<CatalogRecord, DecodeError> {
        let mut reader = Reader::new(body);
        let record = match reader.u8("catalog record kind")? {
            1 => {
                let snapshot = SnapshotId(reader.u64("snapshot id")?);
                let parent = match reader.u64("parent id")? {
                    0 => None,
                    id => Some(SnapshotId(id)),
                };
                let lineage = SnapshotId(reader.u64("lineage")?);
                let volume_size_gib = reader.u64("volume size")?;
                let timeout_minutes = reader.u32("timeout")?;
                let start_millis = reader.u64("start time")?;
                let sse = match reader.u8("sse type")? {
                    0 => SseKind::None,
                    1 => SseKind::SseEbs,
                    2 => SseKind::SseKms,
                    _ => return Err(DecodeError::corrupt(reader.position() - 1, "sse type")),
                };
                let owner = reader.string("owner")?;
                let client_token = some_if_nonempty(reader.string("client token")?);
                let description = some_if_nonempty(reader.string("description")?);
                let kms_key_arn = some_if_nonempty(reader.string("kms key arn")?);
                let tags = read_tags(&mut reader)?;
                let writer = match reader.remaining() {
                    0 => None,
                    _ => {
                        let at = reader.position();
                        let id = reader.array::<16>("writer id")?;
                        if id == [0; 16] {
                            return Err(DecodeError::corrupt(at, "writer id"));
                        }
                        Some(id)
                    }
                };
                CatalogRecord::Started(StartedRecord {
                    snapshot,
                    parent,
                    lineage,
                    volume_size_gib,
                    timeout_minutes,
                    start_millis,
                    sse,
                    owner,
                    client_token,
                    description,
                    kms_key_arn,
                    tags,
                    writer,
                })
            }
            2 => {
                let snapshot = SnapshotId(reader.u64("snapshot id")?);
                let completed_millis = reader.u64("completion time")?;
                let has_root = reader.u8("root flag")?;
                let root_bytes = reader.array::<32>("root")?;
                let root = match has_root {
                    0 if root_bytes == [0; 32] => None,
                    0 => return Err(DecodeError::corrupt(18, "absent root not zero")),
                    1 => Some(ChunkId(root_bytes)),
                    _ => return Err(DecodeError::corrupt(17, "root flag")),
                };
                let changed_blocks = reader.u32("changed blocks")?;
                CatalogRecord::Completed {
                    snapshot,
                    completed_millis,
                    root,
                    changed_blocks,
                }
            }
            3 => CatalogRecord::Failed {
                snapshot: SnapshotId(reader.u64("snapshot id")?),
                at_millis: reader.u64("failure time")?,
                reason: reader.string("failure reason")?,
            },
            4 => CatalogRecord::Deleted {
                snapshot: SnapshotId(reader.u64("snapshot id")?),
                at_millis: reader.u64("deletion time")?,
            },
            5 => CatalogRecord::Tagged {
                snapshot: SnapshotId(reader.u64("snapshot id")?),
                at_millis: reader.u64("tagging time")?,
                tags: read_tags(&mut reader)?,
            },
            _ => return Err(DecodeError::corrupt(0, "catalog record kind")),
        };
        reader.finish("catalog record length")?;
        Ok(record)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn started() -> CatalogRecord {
        CatalogRecord::Started(StartedRecord {
            snapshot: SnapshotId(0xabc),
            parent: Some(SnapshotId(7)),
            lineage: SnapshotId(7),
            volume_size_gib: 10,
            timeout_minutes: 60,
            start_millis: 1_700_000_000_000,
            sse: SseKind::None,
            owner: "000000000000".into(),
            client_token: Some("token".into()),
            description: None,
            kms_key_arn: None,
            tags: vec![("k".into(), "".into())],
            writer: None,
        })
    }

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let CatalogRecord::Started(mut by_writer) = started() else {
            unreachable!("started() is a Started record")
        };
        by_writer.writer = Some([9; 16]);
        let records = [
            started(),
            CatalogRecord::Started(by_writer.clone()),
            CatalogRecord::Completed {
                snapshot: SnapshotId(1),
                completed_millis: 5,
                root: Some(ChunkId([3; 32])),
                changed_blocks: 9,
            },
            CatalogRecord::Failed {
                snapshot: SnapshotId(1),
                at_millis: 5,
                reason: "timed out".into(),
            },
            CatalogRecord::Deleted {
                snapshot: SnapshotId(1),
                at_millis: 6,
            },
            CatalogRecord::Tagged {
                snapshot: SnapshotId(1),
                at_millis: 7,
                tags: vec![("Name".into(), "web".into()), ("empty".into(), "".into())],
            },
            CatalogRecord::Tagged {
                snapshot: SnapshotId(2),
                at_millis: 8,
                tags: Vec::new(),
            },
        ];
        for record in records {
            let frame = record.encode_frame().expect("encodes");
            assert_eq!(
                CatalogRecord::decode_frame(&frame),
                Ok((record.clone(), frame.len()))
            );
            for position in 0..frame.len() {
                let mut flipped = frame.clone();
                flipped[position] ^= 0x20;
                assert!(
                    CatalogRecord::decode_frame(&flipped).is_err(),
                    "flip at {position}"
                );
            }
            for cut in 0..frame.len() {
                assert!(CatalogRecord::decode_frame(&frame[..cut]).is_err());
            }
        }
    }

    /// A Started record's writer id is absent or sixteen bytes that are
    /// not all zero (zero would decode as an id and re-encode as none).
    #[test]
    fn a_writer_id_is_never_zero() {
        let CatalogRecord::Started(mut record) = started() else {
            unreachable!("started() is a Started record")
        };
        record.writer = Some([0; 16]);
        let frame = CatalogRecord::Started(record)
            .encode_frame()
            .expect("encodes");
        assert!(CatalogRecord::decode_frame(&frame).is_err());
    }

    /// Found by fuzzing: a Completed record without a root must hold zero
    /// root bytes (a crc-valid frame with others decoded, and re-encoded
    /// differently).
    #[test]
    fn an_absent_root_is_zero() {
        let record = CatalogRecord::Completed {
            snapshot: SnapshotId(1),
            completed_millis: 5,
            root: None,
            changed_blocks: 0,
        };
        let mut frame = record.encode_frame().expect("encodes");
        frame[FRAME_BODY_OFFSET + 18] = 3;
        seal_leading_crc(&mut frame, FRAME_LEN_OFFSET);
        assert!(CatalogRecord::decode_frame(&frame).is_err());
    }
}
