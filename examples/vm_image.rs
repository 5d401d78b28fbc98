//! Makes the benchmark image of the command-line issue: a disk image
//! shaped like a VM's (about 30% zero blocks, 30% text-like, 20%
//! moderately compressible, 20% random), rewrites a share of its blocks
//! for an incremental run, and computes the storage baseline.
//!
//! ```text
//! vm_image create IMAGE MIB              write a new image
//! vm_image rewrite IMAGE PERCENT LIST [GENERATION]
//!                                        rewrite PERCENT% of the blocks in
//!                                        place (which ones, and their new
//!                                        content, follow GENERATION, default
//!                                        1: a day of a simulated month is
//!                                        its own generation); write their
//!                                        indexes to LIST
//! vm_image baseline IMAGE COMPRESSION    bytes of compressing every distinct
//!                                        non-zero block on its own as the
//!                                        store does: COMPRESSION is `block`
//!                                        (the store's default) or a zstd level
//! ```
//! Everything is deterministic (fixed seeds), so runs compare.

use blocksnap::codec::{self, compress, Compression};
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileExt;

const BLOCK: usize = 524_288;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Block `index` of generation `generation`: its kind follows a fixed
/// pattern of 10 (3 zero, 3 text, 2 compressible, 2 random), shuffled by
/// the index so kinds interleave like a real disk's.
fn block(index: u64, generation: u64, out: &mut [u8]) {
    let mut rng = Rng((index + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ generation.wrapping_mul(0xd1b5_4a32_d192_ed03)
        | 1);
    let kind = (index.wrapping_mul(7) + index / 10) % 10;
    match kind {
        0..=2 if generation == 0 => out.fill(0),
        0..=5 => {
            const WORDS: [&[u8]; 12] = [
                b"the ",
                b"kernel: ",
                b"error ",
                b"volume ",
                b"snapshot ",
                b"GET /index.html ",
                b"200 ",
                b"user=",
                b"2026-11-23 ",
                b"INFO ",
                b"{\"id\": ",
                b"\n",
            ];
            let mut position = 0;
            while position < BLOCK {
                let word = WORDS[(rng.next() % 12) as usize];
                let take = word.len().min(BLOCK - position);
                out[position..position + take].copy_from_slice(&word[..take]);
                position += take;
            }
        }
        6 | 7 => {
            // Half random, half small integers: compresses to about 60%.
            for chunk in out.chunks_mut(16) {
                let value = rng.next();
                chunk[..8].copy_from_slice(&value.to_le_bytes());
                chunk[8..].copy_from_slice(&(value % 200).to_le_bytes());
            }
        }
        _ => {
            for chunk in out.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("vm_image: {message}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |position: usize| {
        args.get(position)
            .cloned()
            .unwrap_or_else(|| fail("missing argument"))
    };
    let number = |position: usize| {
        arg(position)
            .parse::<u64>()
            .unwrap_or_else(|_| fail("not a number"))
    };
    match arg(0).as_str() {
        "create" => {
            let blocks = number(2) * (1 << 20) / BLOCK as u64;
            let file = std::fs::File::create(arg(1)).unwrap_or_else(|e| fail(&e.to_string()));
            let mut buffer = vec![0u8; BLOCK];
            for index in 0..blocks {
                block(index, 0, &mut buffer);
                file.write_all_at(&buffer, index * BLOCK as u64)
                    .unwrap_or_else(|e| fail(&e.to_string()));
            }
            file.sync_all().unwrap_or_else(|e| fail(&e.to_string()));
        }
        "rewrite" => {
            let file = std::fs::OpenOptions::new().write(true).open(arg(1)).unwrap_or_else(|e| fail(&e.to_string()));
            let blocks = file.metadata().unwrap_or_else(|e| fail(&e.to_string())).len() / BLOCK as u64;
            let percent = number(2);
            let generation = if args.len() > 4 { number(4) } else { 1 };
            let mut rng = Rng(0x5eed ^ generation.wrapping_sub(1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut chosen = HashSet::new();
            while (chosen.len() as u64) < blocks * percent / 100 {
                chosen.insert(rng.next() % blocks);
            }
            let mut chosen: Vec<u64> = chosen.into_iter().collect();
            chosen.sort_unstable();
            let mut buffer = vec![0u8; BLOCK];
            let mut list = String::new();
            for index in &chosen {
                block(*index, generation, &mut buffer);
                file.write_all_at(&buffer, index * BLOCK as u64)
                    .unwrap_or_else(|e| fail(&e.to_string()));
                list.push_str(&format!("{index}\n"));
            }
            file.sync_all().unwrap_or_else(|e| fail(&e.to_string()));
            std::fs::File::create(arg(3))
                .and_then(|mut out| out.write_all(list.as_bytes()))
                .unwrap_or_else(|e| fail(&e.to_string()));
        }
        "baseline" => {
            let data = std::fs::read(arg(1)).unwrap_or_else(|e| fail(&e.to_string()));
            let compression = match arg(2).as_str() {
                "block" => Compression::BlockTuned,
                level => Compression::Level(level.parse().unwrap_or_else(|_| fail("COMPRESSION is `block` or a zstd level"))),
            };
            let mut seen = HashSet::new();
            let mut total = 0usize;
            for chunk in data.chunks(BLOCK) {
                if codec::is_zero(chunk) || !seen.insert(codec::chunk_id(chunk)) {
                    continue;
                }
                // The store keeps a block raw when compression saves little.
                total += compress(chunk, compression).map_or(chunk.len(), |frame| frame.len());
            }
            println!("{total}");
        }
        _ => fail("usage: vm_image (create IMAGE MIB | rewrite IMAGE PERCENT LIST [GENERATION] | baseline IMAGE COMPRESSION)"),
    }
}
