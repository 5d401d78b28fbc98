//! Helpers for `benches/nbd.sh`, on the library's NBD client:
//!
//! ```text
//! nbd_bench huge STORE                 a 64 TiB snapshot (two blocks written); prints its id
//! nbd_bench first-byte BIN STORE SNAP  starts `BIN nbd SNAP`, times until its first byte reads
//! nbd_bench random-reads URI COUNT     COUNT random 4 KiB reads: ops/s, p50, p99
//! ```

use blocksnap::api::{Ebs, StartSnapshotRequest};
use blocksnap::nbd::{NbdClient, NbdSource};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["huge", store] => huge(store),
        ["first-byte", bin, store, snapshot] => first_byte(bin, store, snapshot),
        ["random-reads", uri, count] => random_reads(uri, count.parse().expect("a count")),
        _ => {
            eprintln!("usage: see the source's documentation");
            std::process::exit(2);
        }
    }
}

fn huge(store: &str) {
    let engine = blocksnap::Engine::open(store).expect("open the store");
    let ebs = Ebs::new(&engine);
    let id = ebs
        .start_snapshot(StartSnapshotRequest {
            volume_size: 65_536,
            ..Default::default()
        })
        .expect("start")
        .snapshot_id;
    let last_block = (65_536i64 * 2048 - 1) as i32;
    for index in [0, last_block] {
        ebs.put_snapshot_block(blocksnap::testing::put_request(
            &id,
            index,
            blocksnap::testing::block(u64::from(index.unsigned_abs()) + 1),
        ))
        .expect("put");
    }
    ebs.complete_snapshot(blocksnap::testing::complete_request(&id, 2))
        .expect("complete");
    println!("{id}");
}

fn first_byte(bin: &str, store: &str, snapshot: &str) {
    let socket = std::env::temp_dir().join(format!("nbd-bench-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["--store", store, "nbd", snapshot, "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let source = NbdSource::parse(&format!(
        "nbd+unix:///{snapshot}?socket={}",
        socket.display()
    ))
    .expect("uri");
    let mut client = loop {
        match NbdClient::connect(&source, &[]) {
            Ok(client) => break client,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(error) => panic!("{error}"),
        }
    };
    let mut byte = [0u8; 1];
    client.read(0, &mut byte).expect("read");
    let first = started.elapsed();
    let size = client.size();
    let mut last = [0u8; 1];
    client
        .read(size - 1, &mut last)
        .expect("read the last byte");
    let both = started.elapsed();
    client.disconnect();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{} TiB export: first byte {:.1} ms after starting the server, last byte {:.1} ms",
        size >> 40,
        first.as_secs_f64() * 1e3,
        both.as_secs_f64() * 1e3
    );
}

fn random_reads(uri: &str, count: usize) {
    let source = NbdSource::parse(uri).expect("uri");
    let mut client = NbdClient::connect(&source, &[]).expect("connect");
    let pages = client.size() / 4096;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut buffer = [0u8; 4096];
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % pages) * 4096;
        let at = Instant::now();
        client.read(offset, &mut buffer).expect("read");
        latencies.push(at.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{count} random 4 KiB reads: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms",
        count as f64 / total.as_secs_f64(),
        percentile(0.50).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3
    );
    client.disconnect();
}
