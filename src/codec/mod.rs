//! Pure transforms on block bytes: content hashes, the EBS checksum, zero
//! detection and compression. No I/O; the only shared state is per-thread
//! compression contexts and a few spare block buffers decoding reuses.

#![deny(clippy::indexing_slicing)]

use crate::format::pack::Codec;
use crate::format::DecodeError;
use crate::ids::{ChunkId, Sha256Digest, BLOCK_SIZE};
use bytes::Bytes;
use sha2::Digest;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Content address of a block: its blake3 hash.
pub fn chunk_id(data: &[u8]) -> ChunkId {
    ChunkId(*blake3::hash(data).as_bytes())
}

/// The EBS checksum of a block: SHA-256 of its bytes.
pub fn sha256(data: &[u8]) -> Sha256Digest {
    Sha256Digest(sha2::Sha256::digest(data).into())
}

/// Lowercase hex of bytes (digests, ids and random labels as text).
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether every byte is zero (word-at-a-time; vectorized by the compiler).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    let words_zero = words.all(|word| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(word);
        u128::from_le_bytes(bytes) == 0
    });
    words_zero
        && data
            .chunks_exact(16)
            .remainder()
            .iter()
            .all(|&byte| byte == 0)
}

struct ZeroBlock {
    id: ChunkId,
    sha256: Sha256Digest,
}

fn zero_block() -> &'static ZeroBlock {
    static ZERO: OnceLock<ZeroBlock> = OnceLock::new();
    ZERO.get_or_init(|| {
        let zeros = vec![0u8; BLOCK_SIZE];
        ZeroBlock {
            id: chunk_id(&zeros),
            sha256: sha256(&zeros),
        }
    })
}

/// Chunk id of the all-zero block. Zero blocks are recorded in block maps
/// under this id but never stored in packs.
pub fn zero_block_id() -> ChunkId {
    zero_block().id
}

/// SHA-256 of the all-zero block.
pub fn zero_block_sha256() -> Sha256Digest {
    zero_block().sha256
}

/// How block payloads are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// zstd level 3 (the double-fast strategy; rustic's default level)
    /// with its window and match tables sized for
    /// one 512 KiB block: window log 19, hash log 15, chain log 12, so
    /// 144 KiB of tables per context against the 768 KiB level 3 sizes
    /// for large inputs. The default. On the benchmark's VM-like mix it
    /// stores 0.3% less than level 3 and 1.9% less than level 1, at about
    /// level 1's speed; on sparse structured blocks (mostly zeros between
    /// counters) level 1 stores about a fifth less than either (DESIGN.md
    /// §13).
    BlockTuned,
    /// zstd's own parameters for a level (negative: faster; up to 22:
    /// smaller).
    Level(i32),
}

impl Compression {
    /// A compression context for these parameters.
    fn compressor(self) -> std::io::Result<zstd::bulk::Compressor<'static>> {
        use zstd::zstd_safe::{CParameter, Strategy};
        match self {
            Compression::Level(level) => zstd::bulk::Compressor::new(level),
            Compression::BlockTuned => {
                let mut compressor = zstd::bulk::Compressor::new(3)?;
                for parameter in [
                    CParameter::Strategy(Strategy::ZSTD_dfast),
                    CParameter::WindowLog(BLOCK_SIZE.trailing_zeros()),
                    CParameter::HashLog(15),
                    CParameter::ChainLog(12),
                ] {
                    compressor.set_parameter(parameter)?;
                }
                Ok(compressor)
            }
        }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(Compression, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` with `compression` into `output` (cleared first; its
/// capacity is reused, so a caller that keeps the buffer avoids a fresh
/// allocation and its page faults per block). Returns `false`, leaving
/// `output` unspecified, when compression would not save at least 1/32 of
/// the bytes: the caller then stores the data raw.
pub fn compress_into(data: &[u8], compression: Compression, output: &mut Vec<u8>) -> bool {
    let limit = data.len() - data.len() / 32;
    output.clear();
    output.reserve(limit);
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell
            .as_ref()
            .is_none_or(|(current, _)| *current != compression)
        {
            match compression.compressor() {
                Ok(compressor) => *cell = Some((compression, compressor)),
                Err(_) => return false,
            }
        }
        let Some((_, compressor)) = cell.as_mut() else {
            return false;
        };
        // A destination no larger than the limit makes zstd give up early on
        // incompressible input instead of producing a useless frame.
        matches!(compressor.compress_to_buffer(data, output), Ok(written) if written < limit)
    })
}

/// [`compress_into`] with a new buffer: `Some(compressed)` or `None` to store raw.
pub fn compress(data: &[u8], compression: Compression) -> Option<Vec<u8>> {
    let mut output = Vec::new();
    compress_into(data, compression, &mut output).then_some(output)
}

/// A standard zstd frame of `data` at `level`, whatever its size (an
/// incompressible input becomes a frame of raw blocks).
pub fn zstd_frame(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, level)
}

/// The zstd frame exports write for the all-zero block (level 1), made
/// once. Imports recognise these exact bytes as zeros without decoding.
pub fn zero_block_frame() -> &'static [u8] {
    static FRAME: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FRAME.get_or_init(|| {
        zstd::bulk::compress(&[0u8; BLOCK_SIZE], 1)
            .unwrap_or_else(|_| unreachable!("zstd compresses into a growable buffer"))
    })
}

/// Spare buffers for decoded blocks: a fresh 512 KiB allocation is mapped,
/// faulted in and zeroed by the kernel page by page and unmapped again when
/// freed: about a sixth of the server's CPU serving blocks in a profile of
/// `benches/server.rs` (DESIGN §13.1). Bounded: at most this many idle
/// buffers (8 MiB) stay allocated.
const SPARE_BLOCK_BUFFERS: usize = 16;

static SPARE_BLOCKS: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::const_mutex(Vec::new());

/// A decoded block whose buffer goes back to [`SPARE_BLOCKS`] when the
/// last [`Bytes`] made from it drops.
struct SpareBlock(Vec<u8>);

impl AsRef<[u8]> for SpareBlock {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SpareBlock {
    fn drop(&mut self) {
        if !(BLOCK_SIZE..=2 * BLOCK_SIZE).contains(&self.0.capacity()) {
            return;
        }
        let mut spares = SPARE_BLOCKS.lock();
        if spares.len() < SPARE_BLOCK_BUFFERS {
            let mut buffer = std::mem::take(&mut self.0);
            // Emptied: a reused buffer exposes only what its next decode writes.
            buffer.clear();
            spares.push(buffer);
        }
    }
}

/// An empty buffer with room for one block: a spare one when there is one.
fn spare_block_buffer() -> Vec<u8> {
    SPARE_BLOCKS
        .lock()
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(BLOCK_SIZE))
}

/// `buffer` (from [`spare_block_buffer`]) as [`Bytes`]; it becomes a spare
/// again when the last reference drops.
fn reusable_block(buffer: Vec<u8>) -> Bytes {
    Bytes::from_owner(SpareBlock(buffer))
}

/// Decodes a stored payload into exactly `raw_len` bytes. A block-sized
/// result lives in a reused buffer.
pub fn decode_payload(codec: Codec, payload: &[u8], raw_len: usize) -> Result<Bytes, DecodeError> {
    let spare = raw_len == BLOCK_SIZE;
    let mut output = if spare {
        spare_block_buffer()
    } else {
        Vec::with_capacity(raw_len)
    };
    match codec {
        Codec::Raw if payload.len() == raw_len => output.extend_from_slice(payload),
        Codec::Raw => return Err(DecodeError::corrupt(0, "raw payload length")),
        Codec::Zstd => DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = zstd::bulk::Decompressor::new().ok();
            }
            let decompressor = cell
                .as_mut()
                .ok_or(DecodeError::corrupt(0, "zstd context"))?;
            // Into the spare capacity, never growing it: a frame that
            // decodes to any length but `raw_len` fails.
            match decompressor.decompress_to_buffer(payload, &mut output) {
                Ok(written) if written == raw_len => Ok(()),
                _ => Err(DecodeError::corrupt(0, "zstd payload")),
            }
        })?,
    }
    Ok(if spare {
        reusable_block(output)
    } else {
        Bytes::from(output)
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Decoded blocks share a few reused buffers: each decode shows only
    /// what it wrote, and a frame decoding past one block fails whatever
    /// buffer it lands in.
    #[test]
    fn reused_block_buffers_hold_only_the_new_decode() {
        let first = vec![0xAAu8; BLOCK_SIZE];
        let second: Vec<u8> = (0..BLOCK_SIZE).map(|byte| (byte % 251) as u8).collect();
        let oversized = vec![0x11u8; BLOCK_SIZE + 1];
        for _ in 0..(2 * SPARE_BLOCK_BUFFERS) {
            let frame = zstd_frame(&first, 3).expect("frame");
            let decoded = decode_payload(Codec::Zstd, &frame, BLOCK_SIZE).expect("decodes");
            assert_eq!(decoded, first);
            drop(decoded);
            let too_long = zstd_frame(&oversized, 3).expect("frame");
            assert!(decode_payload(Codec::Zstd, &too_long, BLOCK_SIZE).is_err());
            assert!(decode_payload(Codec::Raw, &second[1..], BLOCK_SIZE).is_err());
            let raw = decode_payload(Codec::Raw, &second, BLOCK_SIZE).expect("raw");
            assert_eq!(raw, second);
            let frame = zstd_frame(&second, 3).expect("frame");
            let kept = decode_payload(Codec::Zstd, &frame, BLOCK_SIZE).expect("decodes");
            drop(raw);
            assert_eq!(kept, second);
        }
    }

    #[test]
    fn zero_detection() {
        let mut block = vec![0u8; BLOCK_SIZE];
        assert!(is_zero(&block));
        block[BLOCK_SIZE - 1] = 1;
        assert!(!is_zero(&block));
        assert!(is_zero(&[0u8; 7]));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn known_zero_checksum() {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(zero_block_sha256().0);
        assert_eq!(encoded, "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE=");
    }

    #[test]
    fn compression_round_trip_and_raw_fallback() {
        let text = b"blocksnap ".repeat(50_000);
        for compression in [Compression::BlockTuned, Compression::Level(3)] {
            let compressed = compress(&text, compression).expect("text compresses");
            assert!(compressed.len() < text.len() / 10);
            assert_eq!(
                decode_payload(Codec::Zstd, &compressed, text.len()).expect("decodes"),
                text
            );
            assert!(decode_payload(Codec::Zstd, &compressed, text.len() + 1).is_err());
        }
        let mut noise = vec![0u8; 65536];
        let mut state = 0x9e3779b97f4a7c15u64;
        for byte in &mut noise {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        assert!(compress(&noise, Compression::BlockTuned).is_none());
        assert!(compress(&noise, Compression::Level(3)).is_none());
        assert!(decode_payload(Codec::Zstd, &noise, noise.len()).is_err());
    }

    #[test]
    fn block_tuned_frames_fit_a_block_window_and_match_level_three() {
        use zstd::zstd_safe::DParameter;
        let mut decoder = zstd::bulk::Decompressor::new().expect("decoder");
        decoder
            .set_parameter(DParameter::WindowLogMax(BLOCK_SIZE.trailing_zeros()))
            .expect("window limit");
        let (mut tuned_total, mut level_three_total) = (0, 0);
        for seed in 1..=6 {
            let data = crate::testing::block(seed);
            let size = |compression| compress(&data, compression).map_or(data.len(), |f| f.len());
            tuned_total += size(Compression::BlockTuned);
            level_three_total += size(Compression::Level(3));
            if let Some(frame) = compress(&data, Compression::BlockTuned) {
                let decoded = decoder
                    .decompress(&frame, BLOCK_SIZE)
                    .expect("a 512 KiB window suffices");
                assert_eq!(decoded, data);
            }
        }
        // Smaller tables may lose a rare far match; allow 0.1%.
        assert!(
            tuned_total * 1000 <= level_three_total * 1001,
            "block-tuned {tuned_total} bytes, level 3 {level_three_total}"
        );
    }
}
