//! What a byte range of an export reads as and reports: pure functions
//! from the snapshot's written blocks (or changed blocks) to the pieces of
//! a read reply and the extents of a block status reply.

use crate::codec;
use crate::format::nbd::Extent;
use crate::ids::{BlockIndex, ChunkId, BLOCK_SIZE};

/// The 512 KiB block size as a byte count.
const BLOCK: u64 = BLOCK_SIZE as u64;

/// The blocks `[first, last]` a byte range `[offset, offset + length)`
/// touches (`length` > 0).
pub(crate) fn block_span(offset: u64, length: u32) -> (BlockIndex, BlockIndex) {
    let end = offset + u64::from(length);
    (
        BlockIndex((offset / BLOCK) as u32),
        BlockIndex(((end - 1) / BLOCK) as u32),
    )
}

/// One piece of a read reply, in order; pieces cover the range exactly.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Piece {
    /// Byte offset in the export.
    pub offset: u64,
    /// Bytes (nonzero; a hole may span many blocks, data lies in one).
    pub length: u32,
    /// Where its bytes come from.
    pub source: Source,
}

/// Where a piece's bytes come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Source {
    /// Zeroes: blocks never written, or written as zeroes.
    Hole,
    /// Part of one stored block: `length` bytes from byte `skip` of block
    /// `index`, whose chunk is `chunk`.
    Data {
        /// The block.
        index: BlockIndex,
        /// Its chunk.
        chunk: ChunkId,
        /// Bytes of the block before the piece.
        skip: usize,
    },
}

/// The pieces of a read of `[offset, offset + length)` (`length` > 0),
/// given the snapshot's written blocks in the range's block span,
/// ascending. Holes next to each other are one piece; the zero chunk is a
/// hole.
pub(crate) fn plan_read(offset: u64, length: u32, written: &[(BlockIndex, ChunkId)]) -> Vec<Piece> {
    let end = offset + u64::from(length);
    let zero = codec::zero_block_id();
    let mut pieces: Vec<Piece> = Vec::new();
    let push_hole = |pieces: &mut Vec<Piece>, from: u64, to: u64| {
        if to <= from {
            return;
        }
        if let Some(last) = pieces.last_mut() {
            if last.source == Source::Hole && last.offset + u64::from(last.length) == from {
                last.length += (to - from) as u32;
                return;
            }
        }
        pieces.push(Piece {
            offset: from,
            length: (to - from) as u32,
            source: Source::Hole,
        });
    };
    let mut position = offset;
    for &(index, chunk) in written {
        let block_start = u64::from(index.0) * BLOCK;
        let from = block_start.max(position);
        let to = (block_start + BLOCK).min(end);
        if to <= from {
            continue;
        }
        push_hole(&mut pieces, position, from);
        if chunk == zero {
            push_hole(&mut pieces, from, to);
        } else {
            pieces.push(Piece {
                offset: from,
                length: (to - from) as u32,
                source: Source::Data {
                    index,
                    chunk,
                    skip: (from - block_start) as usize,
                },
            });
        }
        position = to;
    }
    push_hole(&mut pieces, position, end);
    pieces
}

/// The extents of `[offset, offset + length)` (`length` > 0): each block
/// has `default_flags` unless `marked` (ascending block indexes with their
/// flags) says otherwise; neighbours with equal flags are one extent.
pub(crate) fn extents(
    offset: u64,
    length: u32,
    default_flags: u32,
    marked: impl IntoIterator<Item = (BlockIndex, u32)>,
) -> Vec<Extent> {
    let end = offset + u64::from(length);
    let mut out: Vec<Extent> = Vec::new();
    let push = |out: &mut Vec<Extent>, from: u64, to: u64, flags: u32| {
        if to <= from {
            return;
        }
        let bytes = (to - from) as u32;
        match out.last_mut() {
            Some(last) if last.flags == flags => last.length += bytes,
            _ => out.push(Extent {
                length: bytes,
                flags,
            }),
        }
    };
    let mut position = offset;
    for (index, flags) in marked {
        let block_start = u64::from(index.0) * BLOCK;
        let from = block_start.max(position);
        let to = (block_start + BLOCK).min(end);
        if to <= from {
            continue;
        }
        push(&mut out, position, from, default_flags);
        push(&mut out, from, to, flags);
        position = to;
    }
    push(&mut out, position, end, default_flags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::nbd::{STATE_HOLE, STATE_ZERO};

    fn chunk(byte: u8) -> ChunkId {
        ChunkId([byte; 32])
    }

    #[test]
    fn a_read_across_holes_data_and_the_zero_chunk_has_one_piece_per_run() {
        let written = [
            (BlockIndex(1), chunk(1)),
            (BlockIndex(2), codec::zero_block_id()),
            (BlockIndex(4), chunk(4)),
        ];
        // From the middle of block 0 to 100 bytes into block 4.
        let offset = BLOCK / 2;
        let length = (4 * BLOCK + 100 - offset) as u32;
        let pieces = plan_read(offset, length, &written);
        assert_eq!(
            pieces,
            vec![
                Piece {
                    offset,
                    length: (BLOCK / 2) as u32,
                    source: Source::Hole
                },
                Piece {
                    offset: BLOCK,
                    length: BLOCK as u32,
                    source: Source::Data {
                        index: BlockIndex(1),
                        chunk: chunk(1),
                        skip: 0
                    }
                },
                Piece {
                    offset: 2 * BLOCK,
                    length: 2 * BLOCK as u32,
                    source: Source::Hole
                },
                Piece {
                    offset: 4 * BLOCK,
                    length: 100,
                    source: Source::Data {
                        index: BlockIndex(4),
                        chunk: chunk(4),
                        skip: 0
                    }
                },
            ]
        );
        assert_eq!(
            pieces
                .iter()
                .map(|piece| u64::from(piece.length))
                .sum::<u64>(),
            u64::from(length)
        );
    }

    #[test]
    fn a_small_read_inside_one_block_skips_to_its_offset() {
        let pieces = plan_read(3 * BLOCK + 4095, 3, &[(BlockIndex(3), chunk(3))]);
        assert_eq!(
            pieces,
            vec![Piece {
                offset: 3 * BLOCK + 4095,
                length: 3,
                source: Source::Data {
                    index: BlockIndex(3),
                    chunk: chunk(3),
                    skip: 4095
                }
            }]
        );
        assert_eq!(
            block_span(3 * BLOCK + 4095, 3),
            (BlockIndex(3), BlockIndex(3))
        );
        assert_eq!(block_span(BLOCK - 1, 2), (BlockIndex(0), BlockIndex(1)));
    }

    #[test]
    fn extents_merge_equal_neighbours_and_clip_to_the_range() {
        let hole = STATE_HOLE | STATE_ZERO;
        let extents = extents(
            100,
            (3 * BLOCK) as u32,
            hole,
            [(BlockIndex(1), 0), (BlockIndex(2), 0), (BlockIndex(9), 0)],
        );
        assert_eq!(
            extents,
            vec![
                Extent {
                    length: (BLOCK - 100) as u32,
                    flags: hole
                },
                Extent {
                    length: 2 * BLOCK as u32,
                    flags: 0
                },
                Extent {
                    length: 100,
                    flags: hole
                },
            ]
        );
    }
}
