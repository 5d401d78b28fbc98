//! Completed snapshots as read-only NBD exports (DESIGN.md §19).
//!
//! Each export is one snapshot, named by its id. The server speaks the
//! fixed newstyle handshake with `NBD_OPT_INFO`/`NBD_OPT_GO` (block size
//! constraints included), `NBD_OPT_LIST`, structured replies (reads send
//! unwritten and zero blocks as hole chunks), and block status for two
//! kinds of metadata context: `base:allocation`, and
//! `blocksnap:changed:<BASE>`, the blocks that differ from an older
//! snapshot of the same lineage (the engine's diff, in time proportional to
//! the changes). Writes are refused with `EPERM`.
//!
//! A connection that chose an export holds a [`SnapshotReader`] on it: the
//! snapshot stays readable, deleted or not, until the connection closes.
//! Every block is checked against its content hash when read from the
//! store, as restore checks it; a damaged block is an `EIO` error chunk,
//! never wrong bytes. Checked blocks are kept in a small cache shared by
//! every connection (block ids are content addresses, so a cached block is
//! right for every snapshot that lists its id).
//!
//! Limits are enforced before memory is spent: option data is bounded
//! before it is read, a handshake must finish within a deadline, requests
//! in flight are bounded per connection and their reply bytes across the
//! server, connections are capped.

mod client;
mod extents;
mod session;

pub use client::{NbdAddress, NbdClient, NbdSource};

use crate::engine::SnapshotReader;
use crate::ids::{ChunkId, SnapshotId};
use crate::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Which snapshots a server exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exports {
    /// Every completed snapshot of the engine's owner, as it is when a
    /// client lists or chooses (snapshots completed later are exported too).
    AllCompleted,
    /// Only these snapshots.
    Only(Vec<SnapshotId>),
}

/// A server's settings.
#[derive(Clone, Debug)]
pub struct NbdConfig {
    /// The snapshots exported.
    pub exports: Exports,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Time a client has from connecting to choosing an export.
    pub handshake_timeout: Duration,
    /// Requests one connection may have in flight; reading the next
    /// request waits while this many are.
    pub max_requests_per_connection: usize,
    /// Reply bytes held in memory across all connections at once.
    pub max_reply_bytes_in_flight: usize,
    /// Bytes of checked blocks kept for repeated and overlapping reads.
    pub cache_bytes: usize,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            exports: Exports::AllCompleted,
            max_connections: 64,
            handshake_timeout: Duration::from_secs(30),
            max_requests_per_connection: 64,
            max_reply_bytes_in_flight: 256 << 20,
            cache_bytes: 64 << 20,
        }
    }
}

/// What the server has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed at once because the server was full.
    pub refused: u64,
    /// Requests answered in the transmission phase.
    pub requests: u64,
    /// Blocks read from the store (cache misses).
    pub blocks_read: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Reads that met a damaged block (answered `EIO`).
    pub damaged_reads: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
    blocks_read: AtomicU64,
    errors: AtomicU64,
    damaged_reads: AtomicU64,
}

/// An NBD server over one engine; clones share everything.
#[derive(Clone)]
pub struct NbdServer {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    config: NbdConfig,
    cache: BlockCache,
    /// Reply bytes in flight, in units of [`BUDGET_UNIT`].
    reply_budget: Arc<Semaphore>,
    /// The budget's size in units.
    reply_budget_units: usize,
    connections: Arc<Semaphore>,
    counters: Counters,
}

/// The unit of the reply byte budget.
const BUDGET_UNIT: usize = 4096;

/// Where a server listens.
pub enum NbdListener {
    /// A Unix socket (the default of `blocksnap nbd`).
    Unix(tokio::net::UnixListener),
    /// A TCP socket.
    Tcp(tokio::net::TcpListener),
}

impl NbdListener {
    /// Binds a Unix socket at `path`. A stale socket file (nothing listens
    /// on it) is replaced; a live one, or any other file, is an error.
    pub fn bind_unix(path: &Path) -> std::io::Result<NbdListener> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{} is in use by another server", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        Ok(NbdListener::Unix(tokio::net::UnixListener::bind(path)?))
    }

    /// Binds a TCP address.
    pub async fn bind_tcp(address: &str) -> std::io::Result<NbdListener> {
        Ok(NbdListener::Tcp(
            tokio::net::TcpListener::bind(address).await?,
        ))
    }

    /// What clients connect to: `unix:PATH` or `HOST:PORT`.
    pub fn address(&self) -> std::io::Result<String> {
        match self {
            NbdListener::Unix(listener) => {
                let address = listener.local_addr()?;
                let path: PathBuf = address
                    .as_pathname()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                Ok(format!("unix:{}", path.display()))
            }
            NbdListener::Tcp(listener) => Ok(listener.local_addr()?.to_string()),
        }
    }

    /// The URI of export `name` on this listener, as libnbd and QEMU take
    /// it.
    pub fn uri(&self, name: &str) -> std::io::Result<String> {
        match self {
            NbdListener::Unix(listener) => {
                let address = listener.local_addr()?;
                let path = address
                    .as_pathname()
                    .map(|path| path.display().to_string())
                    .unwrap_or_default();
                Ok(format!("nbd+unix:///{name}?socket={path}"))
            }
            NbdListener::Tcp(listener) => Ok(format!("nbd://{}/{name}", listener.local_addr()?)),
        }
    }
}

/// What a server did before it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NbdServed {
    /// Its counters when it stopped.
    pub stats: NbdStats,
    /// Connections still open when the shutdown grace ran out (closed).
    pub cut_at_shutdown: usize,
}

/// Time connections get to finish the requests in flight at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl NbdServer {
    /// A server exporting `config.exports` from `engine`.
    pub fn new(engine: Engine, config: NbdConfig) -> NbdServer {
        let budget_units = (config.max_reply_bytes_in_flight / BUDGET_UNIT).max(1);
        NbdServer {
            shared: Arc::new(Shared {
                engine,
                cache: BlockCache::new(config.cache_bytes),
                reply_budget: Arc::new(Semaphore::new(budget_units)),
                reply_budget_units: budget_units,
                connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
                config,
                counters: Counters::default(),
            }),
        }
    }

    /// The names of the snapshots a client may choose now (for
    /// listings; `NBD_OPT_LIST` gives the same).
    pub fn export_names(&self) -> Vec<String> {
        self.shared
            .export_ids()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The counters so far.
    pub fn stats(&self) -> NbdStats {
        let counters = &self.shared.counters;
        NbdStats {
            connections: counters.connections.load(Ordering::Relaxed),
            refused: counters.refused.load(Ordering::Relaxed),
            requests: counters.requests.load(Ordering::Relaxed),
            blocks_read: counters.blocks_read.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
            damaged_reads: counters.damaged_reads.load(Ordering::Relaxed),
        }
    }

    /// Accepts and serves connections until `shutdown` resolves; then
    /// stops accepting, lets each connection finish the requests it has in
    /// flight (for up to ten seconds) and closes it. A Unix socket's file
    /// is removed.
    pub async fn serve(
        &self,
        listener: NbdListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<NbdServed> {
        let (stop, stopped) = watch::channel(false);
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted: Box<dyn session::Stream> = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(&listener) => match accepted {
                    Ok(stream) => stream,
                    Err(error) if is_transient_accept_error(&error) => {
                        tracing::warn!(%error, "accepting an NBD connection failed");
                        // Out of descriptors or memory: let connections
                        // close before trying again, instead of spinning.
                        if error.raw_os_error().is_some() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue;
                    }
                    Err(error) => return Err(error),
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            self.shared
                .counters
                .connections
                .fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = Arc::clone(&self.shared.connections).try_acquire_owned() else {
                self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    limit = self.shared.config.max_connections,
                    "NBD connection refused: too many connections"
                );
                continue;
            };
            let server = self.clone();
            let stopped = stopped.clone();
            sessions.spawn(async move {
                server.run_session(accepted, stopped).await;
                drop(permit);
            });
        }
        let _ = stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        let cut_at_shutdown = if drained.is_err() {
            let open = sessions.len();
            sessions.shutdown().await;
            open
        } else {
            0
        };
        if let NbdListener::Unix(listener) = &listener {
            if let Some(path) = listener
                .local_addr()
                .ok()
                .and_then(|address| address.as_pathname().map(Path::to_path_buf))
            {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(NbdServed {
            stats: self.stats(),
            cut_at_shutdown,
        })
    }

    /// Serves one connection to its end (for embedders that accept
    /// connections themselves, and tests). The connection cap does not
    /// apply.
    pub async fn serve_connection<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (_stop, stopped) = watch::channel(false);
        self.run_session(Box::new(stream), stopped).await;
    }

    async fn run_session(&self, stream: Box<dyn session::Stream>, stopped: watch::Receiver<bool>) {
        if let Err(end) = session::run(Arc::clone(&self.shared), stream, stopped).await {
            tracing::debug!(reason = %end, "NBD connection closed");
        }
    }
}

async fn accept(listener: &NbdListener) -> std::io::Result<Box<dyn session::Stream>> {
    Ok(match listener {
        NbdListener::Unix(listener) => Box::new(listener.accept().await?.0),
        NbdListener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            // Replies are written whole; Nagle would only delay their tails.
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    })
}

/// Accept errors that concern one connection or a passing shortage, not
/// the listener.
fn is_transient_accept_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
    ) || matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// A snapshot a connection reads: its reader (the pin) and size in bytes.
struct Export {
    reader: Arc<SnapshotReader>,
    size: u64,
}

impl Shared {
    /// The snapshot ids a client may choose, for `NBD_OPT_LIST`.
    fn export_ids(&self) -> Vec<SnapshotId> {
        match &self.config.exports {
            Exports::Only(ids) => ids.clone(),
            Exports::AllCompleted => self
                .engine
                .snapshots()
                .into_iter()
                .filter(|record| record.status_name() == "completed")
                .map(|record| record.started.snapshot)
                .collect(),
        }
    }

    /// Opens export `name` (empty: the only export, if there is one).
    fn open_export(&self, name: &str) -> Result<Export, String> {
        let id = if name.is_empty() {
            match self.export_ids().as_slice() {
                [only] => *only,
                _ => {
                    return Err(
                        "name an export: each snapshot is exported under its id (nbdinfo --list shows them)"
                            .into(),
                    )
                }
            }
        } else {
            SnapshotId::parse(name)
                .ok_or_else(|| format!("'{name}' is not a snapshot id (snap- and 16 hex digits)"))?
        };
        if let Exports::Only(ids) = &self.config.exports {
            if !ids.contains(&id) {
                return Err(format!("{id} is not exported by this server"));
            }
        }
        let reader = self
            .engine
            .reader(id)
            .map_err(|error| format!("{id}: {error}"))?;
        let size = reader.image_length();
        Ok(Export {
            reader: Arc::new(reader),
            size,
        })
    }

    /// A human-readable description of a snapshot, for listings.
    fn describe(&self, id: SnapshotId) -> String {
        match self.engine.snapshot(id) {
            Ok(record) => {
                let mut text = format!(
                    "{} GiB snapshot, {}",
                    record.started.volume_size_gib,
                    record.status_name()
                );
                if let Some(description) = &record.started.description {
                    text.push_str(": ");
                    text.push_str(description);
                }
                text
            }
            Err(error) => error.to_string(),
        }
    }
}

/// Checked blocks by chunk id, least recently used out first.
struct BlockCache {
    capacity_blocks: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    blocks: HashMap<ChunkId, (Bytes, u64)>,
    clock: u64,
}

impl BlockCache {
    fn new(capacity_bytes: usize) -> BlockCache {
        BlockCache {
            capacity_blocks: capacity_bytes / crate::ids::BLOCK_SIZE,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn get(&self, chunk: &ChunkId) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        inner.blocks.get_mut(chunk).map(|(data, used)| {
            *used = now;
            data.clone()
        })
    }

    fn insert(&self, chunk: ChunkId, data: Bytes) {
        if self.capacity_blocks == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        if inner.blocks.len() >= self.capacity_blocks && !inner.blocks.contains_key(&chunk) {
            // A few hundred entries at most: a scan is cheaper than keeping
            // an order.
            if let Some(oldest) = inner
                .blocks
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
            {
                inner.blocks.remove(&oldest);
            }
        }
        inner.blocks.insert(chunk, (data, now));
    }
}
