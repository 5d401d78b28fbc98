//! Test support (feature `testing`): deterministic block contents, request
//! builders, and a deliberately naive reference model of the EBS semantics
//! driven by the same [`Op`] enum as the engine.

mod conformance;
pub mod fuzz;
mod model;
mod object_conformance;

pub use conformance::check_storage_contract;
pub use object_conformance::{check_conditional_races, check_object_store_contract, test_client};

pub use model::{Model, ModelError, ModelStatus, Op};

use crate::api::Ebs;
use crate::api::{CompleteSnapshotRequest, PutSnapshotBlockRequest};
use crate::ids::BLOCK_SIZE;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::Digest;

/// A deterministic 512 KiB block for `seed`. Seed 0 is the zero block; other
/// seeds cycle through VM-like kinds: text, structured binary, random.
pub fn block(seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK_SIZE];
    if seed == 0 {
        return data;
    }
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    match seed % 3 {
        0 => {
            const WORDS: [&str; 8] = [
                "kernel ",
                "block ",
                "snapshot ",
                "volume ",
                "the ",
                "data ",
                "log: ",
                "\n",
            ];
            let mut position = 0;
            while position < BLOCK_SIZE {
                let word = WORDS[(next() % 8) as usize].as_bytes();
                let take = word.len().min(BLOCK_SIZE - position);
                data[position..position + take].copy_from_slice(&word[..take]);
                position += take;
            }
        }
        1 => {
            for (position, chunk) in data.chunks_mut(64).enumerate() {
                let value = next();
                chunk[..8].copy_from_slice(&(position as u64).to_le_bytes());
                chunk[8..16].copy_from_slice(&(value & 0xffff).to_le_bytes());
            }
        }
        _ => {
            for chunk in data.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
        }
    }
    data
}

/// Base64 SHA-256 of `data`, as EBS checksums a block.
pub fn checksum(data: &[u8]) -> String {
    STANDARD.encode(sha2::Sha256::digest(data))
}

/// Base64 LINEAR aggregate of blocks given in ascending index order.
pub fn linear_checksum<'a>(blocks: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = sha2::Sha256::new();
    for data in blocks {
        hasher.update(sha2::Sha256::digest(data));
    }
    STANDARD.encode(hasher.finalize())
}

/// A Base64 token as clients put it in a query string: `+`, `/` and `=`
/// percent-encoded (boto3 and the AWS SDKs do the same).
pub fn query_encode_token(token: &str) -> String {
    let mut encoded = String::with_capacity(token.len() + 8);
    for c in token.chars() {
        match c {
            '+' => encoded.push_str("%2B"),
            '/' => encoded.push_str("%2F"),
            '=' => encoded.push_str("%3D"),
            other => encoded.push(other),
        }
    }
    encoded
}

/// A well-formed PutSnapshotBlock request.
pub fn put_request(snapshot_id: &str, block_index: i32, data: Vec<u8>) -> PutSnapshotBlockRequest {
    PutSnapshotBlockRequest {
        snapshot_id: snapshot_id.to_string(),
        block_index,
        checksum: checksum(&data),
        block_data: data.into(),
        data_length: BLOCK_SIZE as i32,
        progress: None,
        checksum_algorithm: "SHA256".to_string(),
    }
}

/// A CompleteSnapshot request with only the count.
pub fn complete_request(snapshot_id: &str, changed_blocks_count: i32) -> CompleteSnapshotRequest {
    CompleteSnapshotRequest {
        snapshot_id: snapshot_id.to_string(),
        changed_blocks_count,
        ..Default::default()
    }
}

/// Snapshots of one lineage and their content: (id, index -> seed),
/// inherited blocks included.
pub type Lineage = Vec<(String, std::collections::BTreeMap<u32, u64>)>;

/// Writes a lineage: for each entry of `chain` a completed snapshot (each
/// the child of the previous one), started from `template` (volume size,
/// description, tags), holding `block(seed)` at each `(index, seed)`.
pub fn write_lineage(
    engine: &crate::Engine,
    template: &crate::api::StartSnapshotRequest,
    chain: &[&[(u32, u64)]],
) -> Lineage {
    let mut lineage: Lineage = Vec::new();
    for writes in chain {
        let parent = lineage.last();
        let request = crate::api::StartSnapshotRequest {
            parent_snapshot_id: parent.map(|(id, _)| id.clone()),
            ..template.clone()
        };
        let id = Ebs::new(engine)
            .start_snapshot(request)
            .expect("start")
            .snapshot_id;
        let mut content = parent
            .map(|(_, content)| content.clone())
            .unwrap_or_default();
        for (index, seed) in writes.iter() {
            Ebs::new(engine)
                .put_snapshot_block(put_request(&id, *index as i32, block(*seed)))
                .expect("put");
            content.insert(*index, *seed);
        }
        Ebs::new(engine)
            .complete_snapshot(complete_request(&id, writes.len() as i32))
            .expect("complete");
        lineage.push((id, content));
    }
    lineage
}

/// Every written block of a completed snapshot, paging through
/// ListSnapshotBlocks with the largest page size.
pub fn list_all_blocks(
    engine: &crate::Engine,
    snapshot_id: &str,
) -> crate::Result<Vec<crate::api::Block>> {
    let mut request = crate::api::ListSnapshotBlocksRequest {
        snapshot_id: snapshot_id.to_string(),
        max_results: Some(10_000),
        ..Default::default()
    };
    let mut blocks = Vec::new();
    loop {
        let page = Ebs::new(engine).list_snapshot_blocks(request.clone())?;
        blocks.extend(page.blocks);
        match page.next_token {
            Some(token) => request.next_token = Some(token),
            None => return Ok(blocks),
        }
    }
}

/// Reads a block that a listing of `snapshot_id` returned.
pub fn get_listed(
    engine: &crate::Engine,
    snapshot_id: &str,
    listed: &crate::api::Block,
) -> crate::Result<bytes::Bytes> {
    let request = crate::api::GetSnapshotBlockRequest {
        snapshot_id: snapshot_id.to_string(),
        block_index: listed.block_index,
        block_token: listed.block_token.clone(),
    };
    Ok(Ebs::new(engine).get_snapshot_block(request)?.block_data)
}

/// Copies a store directory recursively, leaving out its `LOCK` file.
pub fn copy_store_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_store_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Every record in a store's packs, in file order: (pack path, offset,
/// header). Panics on a record header that does not decode.
pub fn pack_records(
    storage: &dyn crate::storage::Storage,
) -> Vec<(String, usize, crate::format::pack::RecordHeader)> {
    use crate::format::pack::{decode_record_header, RECORD_HEADER_SIZE};
    let mut out = Vec::new();
    for name in storage.list("packs").expect("list packs") {
        if !name.ends_with(".pack") {
            continue;
        }
        let path = format!("packs/{name}");
        let bytes = storage.read_all(&path).expect("read pack");
        let mut offset = crate::format::header::FILE_HEADER_SIZE;
        while let Some(head) = bytes.get(offset..offset + RECORD_HEADER_SIZE) {
            let header = decode_record_header(head).expect("record header");
            out.push((path.clone(), offset, header));
            offset += header.record_len();
        }
    }
    out
}

/// For each written block of a completed snapshot, the chunks reading it
/// needs: the map nodes from the root down, then the block's own chunk
/// (none for a zero block). Damage to any of them may break the read;
/// damage to anything else must not.
pub fn block_dependencies(
    engine: &crate::Engine,
    snapshot_id: &str,
) -> crate::Result<std::collections::BTreeMap<u32, Vec<crate::ids::ChunkId>>> {
    let snapshot = crate::api::validate::snapshot_id("SnapshotId", snapshot_id)?;
    engine.reader(snapshot)?.block_dependencies()
}

/// Asserts that `result` failed with the EBS error `code` and `reason`.
#[track_caller]
pub fn expect_ebs<T: std::fmt::Debug>(result: crate::Result<T>, code: &str, reason: Option<&str>) {
    match result {
        Ok(value) => panic!("expected {code} ({reason:?}), got Ok({value:?})"),
        Err(error) => {
            let ebs = crate::api::ebs_error(&error);
            assert_eq!((ebs.code, ebs.reason), (code, reason), "error was: {error}");
        }
    }
}

/// An engine on fresh in-memory storage with a manual clock at a fixed
/// instant (2026-11-23T00:00:00Z).
pub fn memory_engine(
    config: crate::EngineConfig,
) -> (
    crate::Engine,
    crate::storage::MemoryStorage,
    crate::clock::ManualClock,
) {
    let storage = crate::storage::MemoryStorage::new();
    let clock = crate::clock::ManualClock::new(1_795_392_000_000);
    let config = crate::EngineConfig {
        clock: std::sync::Arc::new(clock.clone()),
        ..config
    };
    let engine = crate::Engine::open_with(std::sync::Arc::new(storage.clone()), config)
        .expect("open in-memory engine");
    (engine, storage, clock)
}

/// Whether a completed snapshot holds exactly `block(seed)` at each index
/// of `content` and no other block. Read errors (not found, corruption)
/// are returned as such.
pub fn holds_exactly(
    engine: &crate::Engine,
    snapshot_id: &str,
    content: &std::collections::BTreeMap<u32, u64>,
) -> crate::Result<bool> {
    let listed = list_all_blocks(engine, snapshot_id)?;
    if !listed
        .iter()
        .map(|entry| entry.block_index as u32)
        .eq(content.keys().copied())
    {
        return Ok(false);
    }
    for entry in &listed {
        let data = get_listed(engine, snapshot_id, entry)?;
        if data != block(content[&(entry.block_index as u32)]) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A server on 127.0.0.1 (port chosen by the system) over a fresh store
/// in a temporary directory, run by its own two-worker tokio runtime.
#[cfg(feature = "server")]
pub struct LoopbackServer {
    /// The runtime the server and its engine's reaper run on.
    pub runtime: tokio::runtime::Runtime,
    /// Where it listens.
    pub address: std::net::SocketAddr,
    /// Where the operator's metrics (`router_with_metrics`) are served.
    pub metrics_address: std::net::SocketAddr,
    _store: tempfile::TempDir,
}

#[cfg(feature = "server")]
impl LoopbackServer {
    /// Starts a server with `config` over an engine with `engine_config`
    /// on a directory store in a temporary directory.
    pub fn start(config: crate::server::ServerConfig, engine_config: crate::EngineConfig) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let storage = crate::Engine::local_storage(store.path()).expect("storage");
        LoopbackServer::start_on(config, engine_config, storage, store)
    }

    /// Starts a server with `config` over an engine with `engine_config`
    /// on `storage` (a bucket store, say); `keep` lives as long as the
    /// server.
    pub fn start_on(
        config: crate::server::ServerConfig,
        engine_config: crate::EngineConfig,
        storage: std::sync::Arc<dyn crate::storage::Storage>,
        keep: tempfile::TempDir,
    ) -> Self {
        let store = keep;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let engine = runtime
            .block_on(async { crate::Engine::open_with(storage, engine_config).expect("open") });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let metrics_listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let metrics_address = metrics_listener.local_addr().expect("address");
        let limits = config.limits.clone();
        let (api, metrics) = crate::server::router_with_metrics(engine, config);
        for (listener, router) in [(listener, api), (metrics_listener, metrics)] {
            let limits = limits.clone();
            runtime.spawn(async move {
                crate::server::serve(listener, router, None, &limits, std::future::pending()).await
            });
        }
        LoopbackServer {
            runtime,
            address,
            metrics_address,
            _store: store,
        }
    }
}

/// Signs a request as the AWS SDKs do (SigV4, service `ebs`, region
/// `us-east-1`, now) with `access_key` and `secret`, covering `headers`
/// and a `host` header of `host`; `body: None` signs it as
/// `UNSIGNED-PAYLOAD`. Returns the header lines to send after the request
/// line (each starting with CRLF), `host` and the signature included.
#[cfg(feature = "server")]
pub fn sign_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    access_key: &str,
    secret: &str,
) -> String {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("host", host));
    if body.is_none() {
        all.push(("x-amz-content-sha256", "UNSIGNED-PAYLOAD"));
    }
    let identity =
        aws_credential_types::Credentials::new(access_key, secret, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ebs")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing parameters")
        .into();
    let signable = match body {
        Some(bytes) => SignableBody::Bytes(bytes),
        None => SignableBody::UnsignedPayload,
    };
    let request =
        SignableRequest::new(method, path, all.iter().copied(), signable).expect("signable");
    let (instructions, _) = sign(request, &params).expect("sign").into_parts();
    let mut lines = String::new();
    for (name, value) in all {
        lines.push_str(&format!("\r\n{name}: {value}"));
    }
    for (name, value) in instructions.headers() {
        lines.push_str(&format!("\r\n{name}: {value}"));
    }
    lines
}

/// The id in `text` (as the EBS responses carry it); panics if malformed.
#[track_caller]
pub fn snapshot_id(text: &str) -> crate::ids::SnapshotId {
    crate::ids::SnapshotId::parse(text).expect("a well-formed snapshot id")
}
