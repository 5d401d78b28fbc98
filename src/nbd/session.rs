//! One NBD connection: the handshake, then the transmission phase.
//!
//! Requests are read one after another and each is answered by its own
//! task, so slow reads (cold blocks) do not hold up fast ones; a reply's
//! chunks are each written whole under the connection's write lock, and
//! chunks of different replies may interleave, as the protocol allows.

use super::extents::{block_span, extents, plan_read, Source};
use super::{Export, Shared, BUDGET_UNIT};
use crate::codec;
use crate::engine::SnapshotReader;
use crate::error::Error;
use crate::format::nbd::{self as wire, BlockSizes, ChunkHeader, Extent, OptionHeader, Request};
use crate::ids::{BlockIndex, BLOCK_SIZE};
use bytes::Bytes;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Mutex, Semaphore};

/// A connection's byte stream.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

type Writer = Arc<Mutex<tokio::io::WriteHalf<Box<dyn Stream>>>>;
type Reader = BufReader<tokio::io::ReadHalf<Box<dyn Stream>>>;

/// The most option data one option may carry: names and queries are at
/// most 4 KiB each, and no option this server answers needs more.
const MAX_OPTION_DATA: u32 = 64 << 10;
/// Options one connection may send before choosing an export.
const MAX_OPTIONS: usize = 1024;
/// Metadata contexts one connection may select.
const MAX_CONTEXTS: usize = 16;
/// Changed-block contexts listed by a query that names no base.
const MAX_LISTED_CONTEXTS: usize = 1000;
/// The largest read or write payload: the protocol's interoperable
/// maximum.
pub(crate) const MAX_PAYLOAD: u32 = 32 << 20;
/// The block sizes every export advertises: any alignment works (blocks
/// are whole in memory when read), 512 KiB requests are the efficient
/// ones, 32 MiB is the largest payload.
const BLOCK_SIZES: BlockSizes = BlockSizes {
    minimum: 1,
    preferred: BLOCK_SIZE as u32,
    maximum: MAX_PAYLOAD,
};
/// Written blocks listed per call when planning a read or block status.
const LIST_PAGE: usize = 4096;

/// Why a connection ended other than by the client's `NBD_CMD_DISC` or
/// `NBD_OPT_ABORT`.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The socket failed or the client went away.
    Io(std::io::Error),
    /// The client broke the protocol (the server hard-disconnects).
    Protocol(String),
    /// The handshake took longer than allowed.
    HandshakeTimeout,
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::Io(error) => write!(f, "connection failed: {error}"),
            SessionEnd::Protocol(message) => write!(f, "protocol violation: {message}"),
            SessionEnd::HandshakeTimeout => write!(f, "handshake timed out"),
        }
    }
}

impl From<std::io::Error> for SessionEnd {
    fn from(error: std::io::Error) -> Self {
        SessionEnd::Io(error)
    }
}

/// A selected metadata context.
struct Context {
    id: u32,
    kind: ContextKind,
}

enum ContextKind {
    /// `base:allocation`.
    Allocation,
    /// `blocksnap:changed:<BASE>`: the base, pinned.
    Changed(Arc<SnapshotReader>),
}

/// What the handshake settled.
struct Negotiated {
    structured: bool,
    no_zeroes: bool,
    /// The export `NBD_OPT_SET_META_CONTEXT` last named, and its contexts.
    contexts: Option<(String, Vec<Context>)>,
}

/// Serves one connection to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: Box<dyn Stream>,
    stopped: watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(16 << 10, read_half);
    let writer: Writer = Arc::new(Mutex::new(write_half));
    let timeout = shared.config.handshake_timeout;
    let chosen = match tokio::time::timeout(timeout, handshake(&shared, &mut reader, &writer)).await
    {
        Err(_) => return Err(SessionEnd::HandshakeTimeout),
        Ok(result) => result?,
    };
    let Some((export, negotiated)) = chosen else {
        return Ok(());
    };
    transmission(shared, reader, writer, export, negotiated, stopped).await
}

async fn write_all(writer: &Writer, bytes: &[u8]) -> std::io::Result<()> {
    let mut writer = writer.lock().await;
    writer.write_all(bytes).await?;
    writer.flush().await
}

async fn reply(writer: &Writer, option: u32, kind: u32, data: &[u8]) -> Result<(), SessionEnd> {
    let bytes = wire::option_reply(option, kind, data)
        .map_err(|error| SessionEnd::Protocol(error.to_string()))?;
    Ok(write_all(writer, &bytes).await?)
}

async fn reply_error(
    writer: &Writer,
    option: u32,
    kind: u32,
    message: &str,
) -> Result<(), SessionEnd> {
    reply(writer, option, kind, wire::message_text(message).as_bytes()).await
}

/// The handshake: the greeting, then options until the client chooses an
/// export (`Some`) or aborts (`None`).
async fn handshake(
    shared: &Arc<Shared>,
    reader: &mut Reader,
    writer: &Writer,
) -> Result<Option<(Export, Negotiated)>, SessionEnd> {
    let offered = wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES;
    write_all(writer, &wire::greeting(offered)).await?;
    let mut flags = [0u8; 4];
    reader.read_exact(&mut flags).await?;
    let client_flags = wire::decode_client_flags(flags, offered)
        .map_err(|_| SessionEnd::Protocol(format!("unknown client flags {flags:02x?}")))?;
    let mut negotiated = Negotiated {
        structured: false,
        no_zeroes: client_flags & wire::FLAG_C_NO_ZEROES != 0,
        contexts: None,
    };
    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; wire::OPTION_HEADER_LEN];
        reader.read_exact(&mut header).await?;
        let header = OptionHeader::decode(&header)
            .map_err(|_| SessionEnd::Protocol("bad option magic".into()))?;
        let option = header.option;
        if header.length > MAX_OPTION_DATA {
            // The data cannot be skipped without reading it all: refuse,
            // then hang up.
            let message = format!(
                "option data of {} bytes is over this server's limit of {MAX_OPTION_DATA}",
                header.length
            );
            reply_error(writer, option, wire::REP_ERR_TOO_BIG, &message).await?;
            return Err(SessionEnd::Protocol(message));
        }
        let mut data = vec![0u8; header.length as usize];
        reader.read_exact(&mut data).await?;
        match option {
            wire::OPT_EXPORT_NAME => {
                let name = wire::decode_export_name(&data)
                    .map_err(|_| SessionEnd::Protocol("malformed export name".into()))?;
                // This option has no error reply: an unknown export ends
                // the session.
                let export = open_export(shared, &name)
                    .await
                    .map_err(SessionEnd::Protocol)?;
                let flags = transmission_flags(&negotiated);
                write_all(
                    writer,
                    &wire::export_name_reply(export.size, flags, negotiated.no_zeroes),
                )
                .await?;
                keep_contexts_of(&mut negotiated, &name);
                return Ok(Some((export, negotiated)));
            }
            wire::OPT_ABORT => {
                // The client may already have gone: a failed reply is fine.
                let _ = reply(writer, option, wire::REP_ACK, &[]).await;
                return Ok(None);
            }
            wire::OPT_LIST => {
                if !data.is_empty() {
                    reply_error(
                        writer,
                        option,
                        wire::REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data",
                    )
                    .await?;
                    continue;
                }
                let listing = {
                    let shared = Arc::clone(shared);
                    blocking(move || {
                        shared
                            .export_ids()
                            .into_iter()
                            .map(|id| (id.to_string(), shared.describe(id)))
                            .collect::<Vec<_>>()
                    })
                    .await?
                };
                for (name, description) in listing {
                    let entry = wire::server_entry(&name, &description)
                        .map_err(|error| SessionEnd::Protocol(error.to_string()))?;
                    reply(writer, option, wire::REP_SERVER, &entry).await?;
                }
                reply(writer, option, wire::REP_ACK, &[]).await?;
            }
            wire::OPT_INFO | wire::OPT_GO => {
                let Ok(request) = wire::ExportRequest::decode(&data) else {
                    reply_error(
                        writer,
                        option,
                        wire::REP_ERR_INVALID,
                        "malformed NBD_OPT_INFO/GO data",
                    )
                    .await?;
                    continue;
                };
                let export = match open_export(shared, &request.name).await {
                    Ok(export) => export,
                    Err(message) => {
                        reply_error(writer, option, wire::REP_ERR_UNKNOWN, &message).await?;
                        continue;
                    }
                };
                let flags = transmission_flags(&negotiated);
                reply(
                    writer,
                    option,
                    wire::REP_INFO,
                    &wire::info_export(export.size, flags),
                )
                .await?;
                let canonical = export.reader.snapshot_id().to_string();
                if request.info_requests.contains(&wire::INFO_NAME) {
                    let info = wire::info_text(wire::INFO_NAME, &canonical)
                        .map_err(|error| SessionEnd::Protocol(error.to_string()))?;
                    reply(writer, option, wire::REP_INFO, &info).await?;
                }
                if request.info_requests.contains(&wire::INFO_DESCRIPTION) {
                    let id = export.reader.snapshot_id();
                    let text = {
                        let shared = Arc::clone(shared);
                        blocking(move || shared.describe(id)).await?
                    };
                    let info = wire::info_text(wire::INFO_DESCRIPTION, &text)
                        .map_err(|error| SessionEnd::Protocol(error.to_string()))?;
                    reply(writer, option, wire::REP_INFO, &info).await?;
                }
                // Sent whether asked for or not: a client that did not ask
                // may ignore it, and the server accepts any alignment.
                reply(
                    writer,
                    option,
                    wire::REP_INFO,
                    &wire::info_block_size(BLOCK_SIZES),
                )
                .await?;
                reply(writer, option, wire::REP_ACK, &[]).await?;
                if option == wire::OPT_GO {
                    keep_contexts_of(&mut negotiated, &request.name);
                    return Ok(Some((export, negotiated)));
                }
            }
            wire::OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_error(
                        writer,
                        option,
                        wire::REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                } else if negotiated.structured {
                    reply_error(
                        writer,
                        option,
                        wire::REP_ERR_INVALID,
                        "structured replies are already negotiated",
                    )
                    .await?;
                } else {
                    negotiated.structured = true;
                    reply(writer, option, wire::REP_ACK, &[]).await?;
                }
            }
            wire::OPT_LIST_META_CONTEXT | wire::OPT_SET_META_CONTEXT => {
                let setting = option == wire::OPT_SET_META_CONTEXT;
                if setting {
                    // Replaced even when this request fails.
                    negotiated.contexts = None;
                }
                if !negotiated.structured {
                    reply_error(
                        writer,
                        option,
                        wire::REP_ERR_INVALID,
                        "negotiate structured replies first",
                    )
                    .await?;
                    continue;
                }
                let Ok(request) = wire::MetaContextRequest::decode(&data) else {
                    reply_error(
                        writer,
                        option,
                        wire::REP_ERR_INVALID,
                        "malformed metadata context request",
                    )
                    .await?;
                    continue;
                };
                let outcome = {
                    let shared = Arc::clone(shared);
                    let request = request.clone();
                    blocking(move || resolve_contexts(&shared, &request, setting)).await?
                };
                match outcome {
                    Err((kind, message)) => {
                        reply_error(writer, option, kind, &message).await?;
                    }
                    Ok(found) => {
                        let mut selected = Vec::new();
                        for (index, (name, kind)) in found.into_iter().enumerate() {
                            // Ids only identify contexts within this
                            // connection; listings carry zero.
                            let id = if setting { index as u32 + 1 } else { 0 };
                            let entry = wire::meta_context_entry(id, &name)
                                .map_err(|error| SessionEnd::Protocol(error.to_string()))?;
                            reply(writer, option, wire::REP_META_CONTEXT, &entry).await?;
                            if let Some(kind) = kind {
                                selected.push(Context { id, kind });
                            }
                        }
                        reply(writer, option, wire::REP_ACK, &[]).await?;
                        if setting {
                            negotiated.contexts = Some((request.export, selected));
                        }
                    }
                }
            }
            wire::OPT_STARTTLS => {
                reply_error(
                    writer,
                    option,
                    wire::REP_ERR_POLICY,
                    "TLS is not offered: use the Unix socket, or a loopback address",
                )
                .await?;
            }
            _ => {
                reply_error(writer, option, wire::REP_ERR_UNSUP, "option not supported").await?;
            }
        }
    }
    Err(SessionEnd::Protocol(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    )))
}

/// Keeps the selected contexts only when they were selected for the export
/// chosen (the protocol ties them to its name).
fn keep_contexts_of(negotiated: &mut Negotiated, chosen: &str) {
    if negotiated
        .contexts
        .as_ref()
        .is_some_and(|(export, _)| export != chosen)
    {
        negotiated.contexts = None;
    }
}

fn transmission_flags(negotiated: &Negotiated) -> u16 {
    let mut flags = wire::FLAG_HAS_FLAGS
        | wire::FLAG_READ_ONLY
        | wire::FLAG_CAN_MULTI_CONN
        | wire::FLAG_SEND_CACHE;
    if negotiated.structured {
        flags |= wire::FLAG_SEND_DF;
    }
    flags
}

async fn open_export(shared: &Arc<Shared>, name: &str) -> Result<Export, String> {
    let shared = Arc::clone(shared);
    let name = name.to_string();
    tokio::task::spawn_blocking(move || shared.open_export(&name))
        .await
        .map_err(|error| format!("opening the export failed: {error}"))?
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SessionEnd> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|error| SessionEnd::Io(std::io::Error::other(error.to_string())))
}

/// A context found by a query: its name, and what it reports when it is
/// selected (`None` for a listing).
type FoundContext = (String, Option<ContextKind>);

/// The contexts `request`'s queries find on its export, or the option
/// error to reply.
fn resolve_contexts(
    shared: &Shared,
    request: &wire::MetaContextRequest,
    setting: bool,
) -> Result<Vec<FoundContext>, (u32, String)> {
    let export = shared
        .open_export(&request.export)
        .map_err(|message| (wire::REP_ERR_UNKNOWN, message))?;
    let mut found: Vec<FoundContext> = Vec::new();
    let every = [
        String::from("base:"),
        String::from(wire::CONTEXT_CHANGED_PREFIX),
    ];
    let queries: &[String] = if request.queries.is_empty() && !setting {
        &every
    } else {
        &request.queries
    };
    for query in queries {
        if query == "base:" && !setting {
            found.push((wire::CONTEXT_ALLOCATION.into(), None));
        } else if query == wire::CONTEXT_ALLOCATION {
            found.push((
                wire::CONTEXT_ALLOCATION.into(),
                setting.then_some(ContextKind::Allocation),
            ));
        } else if query == "blocksnap:" || query == wire::CONTEXT_CHANGED_PREFIX {
            // A listing's wildcard; selecting it selects nothing.
            if !setting {
                for id in related_snapshots(shared, &export.reader) {
                    found.push((format!("{}{id}", wire::CONTEXT_CHANGED_PREFIX), None));
                }
            }
        } else if let Some(base) = query.strip_prefix(wire::CONTEXT_CHANGED_PREFIX) {
            let base_reader = changed_base(shared, &export.reader, base)
                .map_err(|message| (wire::REP_ERR_INVALID, message))?;
            found.push((
                query.clone(),
                setting.then(|| ContextKind::Changed(Arc::new(base_reader))),
            ));
        }
        // Other namespaces are not this server's: ignored, as the
        // protocol requires.
        if setting && found.len() > MAX_CONTEXTS {
            return Err((
                wire::REP_ERR_TOO_BIG,
                format!("at most {MAX_CONTEXTS} metadata contexts"),
            ));
        }
    }
    found.dedup_by(|a, b| a.0 == b.0);
    Ok(found)
}

/// Completed snapshots of `reader`'s lineage other than itself, newest
/// first (the bases a changed-block context can name).
fn related_snapshots(shared: &Shared, reader: &SnapshotReader) -> Vec<String> {
    let lineage = reader.record().started.lineage;
    let mut related: Vec<_> = shared
        .export_ids()
        .into_iter()
        .filter(|id| *id != reader.snapshot_id())
        .filter_map(|id| shared.engine.snapshot(id).ok())
        .filter(|record| record.started.lineage == lineage)
        .collect();
    related.sort_by_key(|record| std::cmp::Reverse(record.started.start_millis));
    related
        .into_iter()
        .take(MAX_LISTED_CONTEXTS)
        .map(|record| record.started.snapshot.to_string())
        .collect()
}

/// Opens `base`, which a changed-block context names, checking it can be
/// compared with the export.
fn changed_base(
    shared: &Shared,
    export: &SnapshotReader,
    base: &str,
) -> Result<SnapshotReader, String> {
    let id = crate::ids::SnapshotId::parse(base)
        .ok_or_else(|| format!("'{base}' is not a snapshot id"))?;
    let base_reader = shared
        .engine
        .reader(id)
        .map_err(|error| format!("{id}: {error}"))?;
    if !export.is_related(&base_reader) {
        return Err(format!(
            "{id} is not of the same lineage as {}: their blocks cannot be compared",
            export.snapshot_id()
        ));
    }
    Ok(base_reader)
}

/// The state every request task of a connection shares.
struct Connection {
    shared: Arc<Shared>,
    export: Export,
    contexts: Vec<Context>,
    structured: bool,
    writer: Writer,
}

/// The transmission phase: requests until `NBD_CMD_DISC`, the client's
/// hang-up, or the server's shutdown.
async fn transmission(
    shared: Arc<Shared>,
    mut reader: Reader,
    writer: Writer,
    export: Export,
    negotiated: Negotiated,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    let limit = shared.config.max_requests_per_connection.max(1);
    let in_flight = Arc::new(Semaphore::new(limit));
    let connection = Arc::new(Connection {
        shared,
        export,
        contexts: negotiated
            .contexts
            .map(|(_, contexts)| contexts)
            .unwrap_or_default(),
        structured: negotiated.structured,
        writer,
    });
    let outcome = loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break Ok(());
        };
        let mut header = [0u8; wire::REQUEST_LEN];
        let read = tokio::select! {
            read = reader.read_exact(&mut header) => read,
            _ = stopped.wait_for(|stop| *stop) => break Ok(()),
        };
        if let Err(error) = read {
            // A hang-up between requests is how many clients leave.
            break if error.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(SessionEnd::Io(error))
            };
        }
        let Ok(request) = Request::decode(&header) else {
            break Err(SessionEnd::Protocol("bad request magic".into()));
        };
        connection
            .shared
            .counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        match request.command {
            wire::CMD_DISC => break Ok(()),
            wire::CMD_WRITE => {
                if request.length > MAX_PAYLOAD {
                    break Err(SessionEnd::Protocol(format!(
                        "a write of {} bytes is over the {MAX_PAYLOAD}-byte maximum payload",
                        request.length
                    )));
                }
                // The payload is read and dropped to stay in step.
                let mut rest = u64::from(request.length);
                let mut sink = [0u8; 16 << 10];
                while rest > 0 {
                    let take = rest.min(sink.len() as u64) as usize;
                    if let Err(error) = reader.read_exact(&mut sink[..take]).await {
                        return Err(SessionEnd::Io(error));
                    }
                    rest -= take as u64;
                }
                let connection = Arc::clone(&connection);
                tokio::spawn(async move {
                    let _ = connection
                        .fail(request, wire::EPERM, "the export is read-only")
                        .await;
                    drop(permit);
                });
            }
            _ => {
                let connection = Arc::clone(&connection);
                tokio::spawn(async move {
                    // A failed write means the client is gone; the reading
                    // loop sees it next.
                    let _ = connection.answer(request).await;
                    drop(permit);
                });
            }
        }
    };
    // Requests in flight finish before the connection closes.
    let _ = in_flight.acquire_many(limit as u32).await;
    let mut writer = connection.writer.lock().await;
    let _ = writer.shutdown().await;
    outcome
}

impl Connection {
    /// Answers one request other than a write or a disconnect.
    async fn answer(&self, request: Request) -> std::io::Result<()> {
        match request.command {
            wire::CMD_READ => self.read(request).await,
            wire::CMD_BLOCK_STATUS => self.block_status(request).await,
            wire::CMD_TRIM | wire::CMD_WRITE_ZEROES => {
                self.fail(request, wire::EPERM, "the export is read-only")
                    .await
            }
            wire::CMD_FLUSH => {
                // Nothing is ever written: everything is already durable.
                if request.flags != 0 {
                    return self
                        .fail(request, wire::EINVAL, "unknown command flags")
                        .await;
                }
                self.succeed(request).await
            }
            wire::CMD_CACHE => {
                if request.flags != 0 {
                    return self
                        .fail(request, wire::EINVAL, "unknown command flags")
                        .await;
                }
                if let Err(message) = self.check_range(request) {
                    return self.fail(request, wire::EINVAL, &message).await;
                }
                self.succeed(request).await
            }
            command => {
                self.fail(request, wire::EINVAL, &format!("unknown command {command}"))
                    .await
            }
        }
    }

    /// An error message for a range that is not inside the export.
    fn check_range(&self, request: Request) -> Result<(), String> {
        let end = request.offset.checked_add(u64::from(request.length));
        match end {
            Some(end) if end <= self.export.size => Ok(()),
            _ => Err(format!(
                "{} bytes at {} are beyond the export's {} bytes",
                request.length, request.offset, self.export.size
            )),
        }
    }

    /// Writes one structured chunk.
    async fn chunk(
        &self,
        request: Request,
        flags: u16,
        kind: u16,
        parts: &[&[u8]],
    ) -> std::io::Result<()> {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let header = ChunkHeader {
            flags,
            kind,
            cookie: request.cookie,
            length: length as u32,
        }
        .encode();
        let mut writer = self.writer.lock().await;
        writer.write_all(&header).await?;
        for part in parts {
            writer.write_all(part).await?;
        }
        writer.flush().await
    }

    async fn succeed(&self, request: Request) -> std::io::Result<()> {
        if self.structured {
            self.chunk(request, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_NONE, &[])
                .await
        } else {
            write_all(&self.writer, &wire::simple_reply(0, request.cookie)).await
        }
    }

    /// Answers `request` with `error` (and, in structured replies, the
    /// message).
    async fn fail(&self, request: Request, error: u32, message: &str) -> std::io::Result<()> {
        self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        if self.structured {
            let payload = wire::error_payload(error, message);
            self.chunk(
                request,
                wire::REPLY_FLAG_DONE,
                wire::REPLY_TYPE_ERROR,
                &[&payload],
            )
            .await
        } else {
            write_all(&self.writer, &wire::simple_reply(error, request.cookie)).await
        }
    }

    /// Runs a blocking read of the snapshot on the blocking pool.
    async fn with_reader<T: Send + 'static>(
        &self,
        call: impl FnOnce(&SnapshotReader) -> crate::Result<T> + Send + 'static,
    ) -> crate::Result<T> {
        let reader = Arc::clone(&self.export.reader);
        tokio::task::spawn_blocking(move || call(&reader))
            .await
            .map_err(|error| {
                Error::io("reading a block", std::io::Error::other(error.to_string()))
            })?
    }

    /// The snapshot's written blocks in `[first, last]`.
    async fn written(
        &self,
        first: BlockIndex,
        last: BlockIndex,
    ) -> crate::Result<Vec<(BlockIndex, crate::ids::ChunkId)>> {
        self.with_reader(move |reader| {
            let mut written = Vec::new();
            let mut start = first;
            loop {
                let page = reader.blocks(start, LIST_PAGE)?;
                let mut beyond = false;
                for entry in page.entries {
                    if entry.0 > last {
                        beyond = true;
                        break;
                    }
                    written.push(entry);
                }
                match page.next {
                    Some(next) if !beyond && next <= last => start = next,
                    _ => return Ok(written),
                }
            }
        })
        .await
    }

    /// The checked data of one block: from the cache, or read and checked.
    async fn block(&self, index: BlockIndex, chunk: crate::ids::ChunkId) -> crate::Result<Bytes> {
        if let Some(data) = self.shared.cache.get(&chunk) {
            return Ok(data);
        }
        let data = self
            .with_reader(move |reader| reader.block_data(index, chunk))
            .await?;
        self.shared
            .counters
            .blocks_read
            .fetch_add(1, Ordering::Relaxed);
        self.shared.cache.insert(chunk, data.clone());
        Ok(data)
    }

    async fn read(&self, request: Request) -> std::io::Result<()> {
        let allowed = if self.structured {
            wire::CMD_FLAG_DF
        } else {
            0
        };
        if request.flags & !allowed != 0 {
            return self
                .fail(request, wire::EINVAL, "unknown command flags")
                .await;
        }
        if request.length > MAX_PAYLOAD {
            let message = format!("reads are at most {MAX_PAYLOAD} bytes");
            return self.fail(request, wire::EOVERFLOW, &message).await;
        }
        if let Err(message) = self.check_range(request) {
            return self.fail(request, wire::EINVAL, &message).await;
        }
        if request.length == 0 {
            return self.succeed(request).await;
        }
        let whole = !self.structured || request.flags & wire::CMD_FLAG_DF != 0;
        // A whole reply is held in memory; a chunked one, a block at a
        // time.
        let held = if whole {
            request.length as usize
        } else {
            (request.length as usize).min(2 * BLOCK_SIZE)
        };
        // Never more than the whole budget, or the read would wait forever.
        let units = held
            .div_ceil(BUDGET_UNIT)
            .min(self.shared.reply_budget_units) as u32;
        let Ok(_budget) = self.shared.reply_budget.acquire_many(units).await else {
            return self.fail(request, wire::ESHUTDOWN, "shutting down").await;
        };
        let (first, last) = block_span(request.offset, request.length);
        let written = match self.written(first, last).await {
            Ok(written) => written,
            Err(error) => return self.damaged(request, request.offset, &error).await,
        };
        let pieces = plan_read(request.offset, request.length, &written);
        if whole {
            let mut data = vec![0u8; request.length as usize];
            for piece in &pieces {
                if let Source::Data { index, chunk, skip } = piece.source {
                    let block = match self.block(index, chunk).await {
                        Ok(block) => block,
                        Err(error) => return self.damaged(request, piece.offset, &error).await,
                    };
                    let at = (piece.offset - request.offset) as usize;
                    let length = piece.length as usize;
                    data[at..at + length].copy_from_slice(&block[skip..skip + length]);
                }
            }
            if self.structured {
                let offset = wire::data_offset(request.offset);
                return self
                    .chunk(
                        request,
                        wire::REPLY_FLAG_DONE,
                        wire::REPLY_TYPE_OFFSET_DATA,
                        &[&offset, &data],
                    )
                    .await;
            }
            let mut writer = self.writer.lock().await;
            writer
                .write_all(&wire::simple_reply(0, request.cookie))
                .await?;
            writer.write_all(&data).await?;
            return writer.flush().await;
        }
        for piece in &pieces {
            match piece.source {
                Source::Hole => {
                    let payload = wire::hole_payload(piece.offset, piece.length);
                    self.chunk(request, 0, wire::REPLY_TYPE_OFFSET_HOLE, &[&payload])
                        .await?;
                }
                Source::Data { index, chunk, skip } => {
                    let block = match self.block(index, chunk).await {
                        Ok(block) => block,
                        Err(error) => return self.damaged(request, piece.offset, &error).await,
                    };
                    let offset = wire::data_offset(piece.offset);
                    let data = &block[skip..skip + piece.length as usize];
                    self.chunk(request, 0, wire::REPLY_TYPE_OFFSET_DATA, &[&offset, data])
                        .await?;
                }
            }
        }
        self.chunk(request, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_NONE, &[])
            .await
    }

    /// Answers a read that met damage (or any failure of the store) at
    /// `offset` with `EIO`: chunks already sent stay valid, nothing after
    /// `offset` is sent.
    async fn damaged(&self, request: Request, offset: u64, error: &Error) -> std::io::Result<()> {
        if matches!(error, Error::Corrupted { .. }) {
            self.shared
                .counters
                .damaged_reads
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(snapshot = %self.export.reader.snapshot_id(), offset, %error, "NBD read failed");
        self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        let message = error.to_string();
        if self.structured {
            let payload = wire::error_offset_payload(wire::EIO, &message, offset);
            self.chunk(
                request,
                wire::REPLY_FLAG_DONE,
                wire::REPLY_TYPE_ERROR_OFFSET,
                &[&payload],
            )
            .await
        } else {
            write_all(&self.writer, &wire::simple_reply(wire::EIO, request.cookie)).await
        }
    }

    async fn block_status(&self, request: Request) -> std::io::Result<()> {
        if request.flags & !wire::CMD_FLAG_REQ_ONE != 0 {
            return self
                .fail(request, wire::EINVAL, "unknown command flags")
                .await;
        }
        if self.contexts.is_empty() || !self.structured {
            return self
                .fail(request, wire::EINVAL, "no metadata context was selected")
                .await;
        }
        if let Err(message) = self.check_range(request) {
            return self.fail(request, wire::EINVAL, &message).await;
        }
        if request.length == 0 {
            return self
                .fail(request, wire::EINVAL, "a zero-length status request")
                .await;
        }
        let (first, last) = block_span(request.offset, request.length);
        let mut replies = Vec::with_capacity(self.contexts.len());
        for context in &self.contexts {
            let marked = match &context.kind {
                ContextKind::Allocation => self.written(first, last).await.map(|written| {
                    let zero = codec::zero_block_id();
                    let marked: Vec<_> = written
                        .into_iter()
                        .map(|(index, chunk)| {
                            let flags = if chunk == zero {
                                wire::STATE_HOLE | wire::STATE_ZERO
                            } else {
                                0
                            };
                            (index, flags)
                        })
                        .collect();
                    (wire::STATE_HOLE | wire::STATE_ZERO, marked)
                }),
                ContextKind::Changed(base) => {
                    let base = Arc::clone(base);
                    self.with_reader(move |reader| changed_in(reader, &base, first, last))
                        .await
                        .map(|changed| {
                            let marked = changed
                                .into_iter()
                                .map(|index| (index, wire::STATE_CHANGED))
                                .collect();
                            (0, marked)
                        })
                }
            };
            let (default_flags, marked) = match marked {
                Ok(marked) => marked,
                Err(error) => return self.damaged(request, request.offset, &error).await,
            };
            let mut found: Vec<Extent> =
                extents(request.offset, request.length, default_flags, marked);
            if request.flags & wire::CMD_FLAG_REQ_ONE != 0 {
                found.truncate(1);
            }
            replies.push(wire::block_status_payload(context.id, &found));
        }
        let count = replies.len();
        for (position, payload) in replies.iter().enumerate() {
            let flags = if position + 1 == count {
                wire::REPLY_FLAG_DONE
            } else {
                0
            };
            self.chunk(request, flags, wire::REPLY_TYPE_BLOCK_STATUS, &[payload])
                .await?;
        }
        Ok(())
    }
}

/// The blocks in `[first, last]` that differ between `base` and `reader`.
fn changed_in(
    reader: &SnapshotReader,
    base: &SnapshotReader,
    first: BlockIndex,
    last: BlockIndex,
) -> crate::Result<Vec<BlockIndex>> {
    let mut changed = Vec::new();
    let mut start = first;
    loop {
        let page = reader.changes_since(Some(base), start, LIST_PAGE)?;
        let mut beyond = false;
        for entry in page.entries {
            if entry.index > last {
                beyond = true;
                break;
            }
            changed.push(entry.index);
        }
        match page.next {
            Some(next) if !beyond && next <= last => start = next,
            _ => return Ok(changed),
        }
    }
}
