//! The NBD protocol's constants and message layouts, as the NBD project's
//! `doc/proto.md` has them: the fixed newstyle handshake, the options and
//! their replies, transmission requests, simple and structured replies.
//! DESIGN.md §19 lists what blocksnap's server answers and how.
//!
//! Unlike every format blocksnap defines, NBD's integers are big-endian
//! (network byte order): this module is the one place that says so.
//! Decoders never panic and never allocate more than the bytes they are
//! given; the server bounds those bytes before reading them.

// The protocol is big-endian; the crate-wide lint guards blocksnap's own
// little-endian formats.
#![allow(clippy::big_endian_bytes)]

use super::wire::Reader;
use super::{DecodeError, EncodeError};

/// `NBDMAGIC`: the first 8 bytes the server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, sent by the server after [`INIT_MAGIC`]
/// and by the client before every option.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after
/// `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag that must always be set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is understood.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is understood.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` is understood.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is understood.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: reads honour `NBD_CMD_FLAG_DF`.
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: several connections to one export see the same data.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: `NBD_CMD_CACHE` is understood.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;

/// Option: choose an export and enter transmission (no error reply).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end the negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: start TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: use structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: success, or the end of a list.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// Option reply: one item of information about an export.
pub const REP_INFO: u32 = 3;
/// Option reply: one metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Option error: unknown option.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Option error: forbidden by policy.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// Option error: syntactically or semantically invalid.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// Option error: no such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// Option error: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
/// Option error: the request or its reply is too large.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Information item: export size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information item: the export's canonical name.
pub const INFO_NAME: u16 = 1;
/// Information item: a human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Information item: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write.
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim.
pub const CMD_TRIM: u16 = 4;
/// Command: cache (a read-ahead hint).
pub const CMD_CACHE: u16 = 5;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: do not punch holes (write zeroes).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: answer a read with one content chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent per context (block status).
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail fast unless zeroing is fast.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply type: no payload (ends a reply).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply type: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply type: zeroes at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Structured reply type: extents of one metadata context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply type: an error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
/// Structured reply type: an error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// Error: operation not permitted (writes to a read-only export).
pub const EPERM: u32 = 1;
/// Error: input/output error (damaged data).
pub const EIO: u32 = 5;
/// Error: out of memory.
pub const ENOMEM: u32 = 12;
/// Error: invalid argument.
pub const EINVAL: u32 = 22;
/// Error: no space left.
pub const ENOSPC: u32 = 28;
/// Error: value too large.
pub const EOVERFLOW: u32 = 75;
/// Error: operation not supported.
pub const ENOTSUP: u32 = 95;
/// Error: the server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// `base:allocation` flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// `blocksnap:changed:BASE` flag (and `qemu:dirty-bitmap:NAME`'s): the
/// extent differs from the base (is dirty).
pub const STATE_CHANGED: u32 = 1 << 0;

/// The metadata context of allocation.
pub const CONTEXT_ALLOCATION: &str = "base:allocation";
/// The prefix of blocksnap's changed-block contexts.
pub const CONTEXT_CHANGED_PREFIX: &str = "blocksnap:changed:";
/// The prefix of QEMU's dirty bitmap contexts.
pub const CONTEXT_DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// The longest string the protocol allows (export names, queries,
/// messages).
pub const MAX_STRING: usize = 4096;
/// Bytes of the server's greeting.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Zero bytes after the `NBD_OPT_EXPORT_NAME` reply unless the client
/// negotiated `NBD_FLAG_C_NO_ZEROES`.
pub const EXPORT_NAME_PADDING: usize = 124;

/// Big-endian fields over the crate's slice reader (which reports the
/// offset of the first field that does not fit).
struct Cursor<'a>(Reader<'a>);

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor(Reader::new(bytes))
    }

    fn take(&mut self, length: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        self.0.take(length, what)
    }

    fn position(&self) -> usize {
        self.0.position()
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.0.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.0.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.0.array(what)?))
    }

    /// A string of `length` bytes, checked as the protocol's strings.
    fn string(&mut self, length: usize, what: &'static str) -> Result<String, DecodeError> {
        let start = self.position();
        let bytes = self.take(length, what)?;
        protocol_string(bytes).ok_or(DecodeError::corrupt(start, what))
    }

    /// A string prefixed by its 32-bit length.
    fn string_u32(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let start = self.position();
        let length = self.u32(what)?;
        let length = usize::try_from(length).map_err(|_| DecodeError::corrupt(start, what))?;
        self.string(length, what)
    }

    fn remaining(&self) -> usize {
        self.0.remaining()
    }

    fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        self.0.finish(what)
    }
}

/// `bytes` as a protocol string: UTF-8, no NUL, at most [`MAX_STRING`]
/// bytes.
fn protocol_string(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_STRING || bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes.to_vec()).ok()
}

fn checked_string(value: &str, what: &'static str) -> Result<(), EncodeError> {
    if value.len() > MAX_STRING {
        return Err(EncodeError {
            what,
            len: value.len(),
            limit: MAX_STRING,
        });
    }
    Ok(())
}

fn length_u32(len: usize, what: &'static str) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError {
        what,
        len,
        limit: u32::MAX as usize,
    })
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[..8].copy_from_slice(&INIT_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
    out[16..].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// The client's flags after the greeting; a bit the server did not offer
/// is an error (the server must then drop the connection).
pub fn decode_client_flags(bytes: [u8; 4], offered: u16) -> Result<u32, DecodeError> {
    let flags = u32::from_be_bytes(bytes);
    let known = FLAG_C_FIXED_NEWSTYLE
        | if offered & FLAG_NO_ZEROES != 0 {
            FLAG_C_NO_ZEROES
        } else {
            0
        };
    if flags & !known != 0 {
        return Err(DecodeError::corrupt(0, "client flags"));
    }
    Ok(flags)
}

/// The client's flags as sent (for clients and tests).
pub fn encode_client_flags(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// An option's header: which option, and how many data bytes follow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OptionHeader {
    /// The option (`OPT_*`).
    pub option: u32,
    /// Bytes of option data that follow.
    pub length: u32,
}

impl OptionHeader {
    /// Decodes the 16-byte header, checking the magic.
    pub fn decode(bytes: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, DecodeError> {
        let mut cursor = Cursor::new(bytes);
        if cursor.u64("option magic")? != OPTION_MAGIC {
            return Err(DecodeError::corrupt(0, "option magic"));
        }
        Ok(OptionHeader {
            option: cursor.u32("option")?,
            length: cursor.u32("option length")?,
        })
    }

    /// Encodes the header (for clients and tests).
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0u8; OPTION_HEADER_LEN];
        out[..8].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// The data of `NBD_OPT_EXPORT_NAME`: the whole payload is the name.
pub fn decode_export_name(data: &[u8]) -> Result<String, DecodeError> {
    protocol_string(data).ok_or(DecodeError::corrupt(0, "export name"))
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExportRequest {
    /// The export's name (empty: the default export).
    pub name: String,
    /// The information items asked for (`INFO_*`), in request order.
    pub info_requests: Vec<u16>,
}

impl ExportRequest {
    /// Decodes the option data; trailing bytes are an error.
    pub fn decode(data: &[u8]) -> Result<ExportRequest, DecodeError> {
        let mut cursor = Cursor::new(data);
        let name = cursor.string_u32("export name")?;
        let count = cursor.u16("information request count")?;
        let mut info_requests = Vec::with_capacity(usize::from(count).min(cursor.remaining() / 2));
        for _ in 0..count {
            info_requests.push(cursor.u16("information request")?);
        }
        cursor.finish("information requests")?;
        Ok(ExportRequest {
            name,
            info_requests,
        })
    }

    /// Encodes the option data.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        checked_string(&self.name, "export name")?;
        let count = u16::try_from(self.info_requests.len()).map_err(|_| EncodeError {
            what: "information requests",
            len: self.info_requests.len(),
            limit: usize::from(u16::MAX),
        })?;
        let mut out = Vec::with_capacity(6 + self.name.len() + 2 * self.info_requests.len());
        out.extend_from_slice(&length_u32(self.name.len(), "export name")?.to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        for item in &self.info_requests {
            out.extend_from_slice(&item.to_be_bytes());
        }
        Ok(out)
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MetaContextRequest {
    /// The export the contexts are for.
    pub export: String,
    /// The queries, in request order.
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    /// Decodes the option data; trailing bytes are an error.
    pub fn decode(data: &[u8]) -> Result<MetaContextRequest, DecodeError> {
        let mut cursor = Cursor::new(data);
        let export = cursor.string_u32("export name")?;
        let count = cursor.u32("query count")?;
        // Each query takes at least its 4-byte length: a count the data
        // cannot hold fails below without reserving for it.
        let mut queries = Vec::with_capacity((cursor.remaining() / 4).min(count as usize));
        for _ in 0..count {
            queries.push(cursor.string_u32("query")?);
        }
        cursor.finish("queries")?;
        Ok(MetaContextRequest { export, queries })
    }

    /// Encodes the option data.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        checked_string(&self.export, "export name")?;
        let mut out = Vec::new();
        out.extend_from_slice(&length_u32(self.export.len(), "export name")?.to_be_bytes());
        out.extend_from_slice(self.export.as_bytes());
        out.extend_from_slice(&length_u32(self.queries.len(), "queries")?.to_be_bytes());
        for query in &self.queries {
            checked_string(query, "query")?;
            out.extend_from_slice(&length_u32(query.len(), "query")?.to_be_bytes());
            out.extend_from_slice(query.as_bytes());
        }
        Ok(out)
    }
}

/// An option reply: header and data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let length = length_u32(data.len(), "option reply")?;
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// An option reply's header, as a client reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OptionReplyHeader {
    /// The option replied to.
    pub option: u32,
    /// The reply type (`REP_*`).
    pub reply: u32,
    /// Bytes of reply data that follow.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Decodes the 20-byte header, checking the magic.
    pub fn decode(bytes: &[u8; OPTION_REPLY_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut cursor = Cursor::new(bytes);
        if cursor.u64("option reply magic")? != OPTION_REPLY_MAGIC {
            return Err(DecodeError::corrupt(0, "option reply magic"));
        }
        Ok(OptionReplyHeader {
            option: cursor.u32("option")?,
            reply: cursor.u32("reply type")?,
            length: cursor.u32("reply length")?,
        })
    }
}

/// `NBD_REP_SERVER` data: a name and a description for humans.
pub fn server_entry(name: &str, description: &str) -> Result<Vec<u8>, EncodeError> {
    checked_string(name, "export name")?;
    checked_string(description, "export description")?;
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.extend_from_slice(&length_u32(name.len(), "export name")?.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(description.as_bytes());
    Ok(out)
}

/// `NBD_INFO_EXPORT` data: size and transmission flags.
pub fn info_export(size: u64, transmission_flags: u16) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    out[2..10].copy_from_slice(&size.to_be_bytes());
    out[10..].copy_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` data.
pub fn info_text(item: u16, text: &str) -> Result<Vec<u8>, EncodeError> {
    checked_string(text, "information text")?;
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&item.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// The block size constraints an export advertises.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockSizes {
    /// Smallest addressable length and alignment.
    pub minimum: u32,
    /// Size at which aligned requests are efficient.
    pub preferred: u32,
    /// Largest payload of one request.
    pub maximum: u32,
}

/// `NBD_INFO_BLOCK_SIZE` data.
pub fn info_block_size(sizes: BlockSizes) -> [u8; 14] {
    let mut out = [0u8; 14];
    out[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out[2..6].copy_from_slice(&sizes.minimum.to_be_bytes());
    out[6..10].copy_from_slice(&sizes.preferred.to_be_bytes());
    out[10..].copy_from_slice(&sizes.maximum.to_be_bytes());
    out
}

/// `NBD_REP_META_CONTEXT` data: the context's id and name.
pub fn meta_context_entry(id: u32, name: &str) -> Result<Vec<u8>, EncodeError> {
    checked_string(name, "context name")?;
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(out)
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and the
/// 124 zero bytes unless the client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + EXPORT_NAME_PADDING, 0);
    }
    out
}

/// A transmission request's header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`).
    pub command: u16,
    /// The client's cookie, echoed in every reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes (of the payload that follows, for writes).
    pub length: u32,
}

impl Request {
    /// Decodes the 28-byte header, checking the magic.
    pub fn decode(bytes: &[u8; REQUEST_LEN]) -> Result<Request, DecodeError> {
        let mut cursor = Cursor::new(bytes);
        if cursor.u32("request magic")? != REQUEST_MAGIC {
            return Err(DecodeError::corrupt(0, "request magic"));
        }
        Ok(Request {
            flags: cursor.u16("command flags")?,
            command: cursor.u16("command")?,
            cookie: cursor.u64("cookie")?,
            offset: cursor.u64("offset")?,
            length: cursor.u32("length")?,
        })
    }

    /// Encodes the header (for clients and tests).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// A simple reply's header (the data of a successful read follows it).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk's header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChunkHeader {
    /// Reply flags (`REPLY_FLAG_*`).
    pub flags: u16,
    /// The chunk's type (`REPLY_TYPE_*`).
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Bytes of payload that follow.
    pub length: u32,
}

impl ChunkHeader {
    /// Encodes the 20-byte header.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut out = [0u8; CHUNK_HEADER_LEN];
        out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Decodes a header, checking the magic (for clients and tests).
    pub fn decode(bytes: &[u8; CHUNK_HEADER_LEN]) -> Result<ChunkHeader, DecodeError> {
        let mut cursor = Cursor::new(bytes);
        if cursor.u32("reply magic")? != STRUCTURED_REPLY_MAGIC {
            return Err(DecodeError::corrupt(0, "reply magic"));
        }
        Ok(ChunkHeader {
            flags: cursor.u16("reply flags")?,
            kind: cursor.u16("reply type")?,
            cookie: cursor.u64("cookie")?,
            length: cursor.u32("reply length")?,
        })
    }
}

/// A reply message's header as a client reads it: the magic says which of
/// the two kinds follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReplyHeader {
    /// A simple reply: error and cookie (16 bytes in all).
    Simple {
        /// The error (0: success).
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk (20 bytes in all).
    Structured(ChunkHeader),
}

impl ReplyHeader {
    /// Bytes of the header whose first four bytes are `magic`, if any.
    pub fn length_for_magic(magic: [u8; 4]) -> Option<usize> {
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => Some(SIMPLE_REPLY_LEN),
            STRUCTURED_REPLY_MAGIC => Some(CHUNK_HEADER_LEN),
            _ => None,
        }
    }

    /// Decodes a whole header (16 or 20 bytes).
    pub fn decode(bytes: &[u8]) -> Result<ReplyHeader, DecodeError> {
        if let Ok(chunk) = <&[u8; CHUNK_HEADER_LEN]>::try_from(bytes) {
            return ChunkHeader::decode(chunk).map(ReplyHeader::Structured);
        }
        let mut cursor = Cursor::new(bytes);
        if cursor.u32("reply magic")? != SIMPLE_REPLY_MAGIC {
            return Err(DecodeError::corrupt(0, "reply magic"));
        }
        let error = cursor.u32("error")?;
        let cookie = cursor.u64("cookie")?;
        cursor.finish("simple reply")?;
        Ok(ReplyHeader::Simple { error, cookie })
    }
}

/// The start of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk's payload (the data
/// follows).
pub fn data_offset(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// The payload of an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk.
pub fn hole_payload(offset: u64, length: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&offset.to_be_bytes());
    out[8..].copy_from_slice(&length.to_be_bytes());
    out
}

/// `message` cut to [`MAX_STRING`] bytes at a character boundary: the
/// text of an error reply or error chunk (it is for humans).
pub fn message_text(message: &str) -> &str {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.get(..end).unwrap_or_default()
}

/// The payload of an `NBD_REPLY_TYPE_ERROR` chunk; the message is cut to
/// [`MAX_STRING`] bytes at a character boundary (it is for humans).
pub fn error_payload(error: u32, message: &str) -> Vec<u8> {
    let text = message_text(message);
    let mut out = Vec::with_capacity(6 + text.len());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// The payload of an `NBD_REPLY_TYPE_ERROR_OFFSET` chunk: an error at
/// `offset`, with its message cut as [`error_payload`] cuts it.
pub fn error_offset_payload(error: u32, message: &str, offset: u64) -> Vec<u8> {
    let mut out = error_payload(error, message);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// One extent of a block status reply: its length and status flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Extent {
    /// Bytes; never zero.
    pub length: u32,
    /// Status flags of the context.
    pub flags: u32,
}

/// The payload of an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk.
pub fn block_status_payload(context: u32, extents: &[Extent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * extents.len());
    out.extend_from_slice(&context.to_be_bytes());
    for extent in extents {
        out.extend_from_slice(&extent.length.to_be_bytes());
        out.extend_from_slice(&extent.flags.to_be_bytes());
    }
    out
}

/// Decodes a block status payload (for clients and tests): the context id
/// and at least one extent, none of length zero.
pub fn decode_block_status(payload: &[u8]) -> Result<(u32, Vec<Extent>), DecodeError> {
    let mut cursor = Cursor::new(payload);
    let context = cursor.u32("context id")?;
    if cursor.remaining() == 0 || !cursor.remaining().is_multiple_of(8) {
        return Err(DecodeError::corrupt(4, "extents"));
    }
    let mut extents = Vec::with_capacity(cursor.remaining() / 8);
    while cursor.remaining() > 0 {
        let at = cursor.position();
        let length = cursor.u32("extent length")?;
        if length == 0 {
            return Err(DecodeError::corrupt(at, "extent length"));
        }
        extents.push(Extent {
            length,
            flags: cursor.u32("extent flags")?,
        });
    }
    Ok((context, extents))
}

/// Decodes an error chunk's payload (for clients and tests): the error and
/// its message.
pub fn decode_error_payload(payload: &[u8]) -> Result<(u32, String), DecodeError> {
    let mut cursor = Cursor::new(payload);
    let error = cursor.u32("error")?;
    let length = usize::from(cursor.u16("message length")?);
    let message = cursor.string(length, "message")?;
    Ok((error, message))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_is_the_specifications_bytes() {
        assert_eq!(
            &greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
            b"NBDMAGICIHAVEOPT\0\x03"
        );
    }

    #[test]
    fn client_flags_the_server_did_not_offer_are_refused() {
        assert_eq!(decode_client_flags([0, 0, 0, 3], FLAG_NO_ZEROES), Ok(3));
        assert!(decode_client_flags([0, 0, 0, 2], 0).is_err());
        assert!(decode_client_flags([0, 0, 0, 4], FLAG_NO_ZEROES).is_err());
    }

    #[test]
    fn export_requests_round_trip_and_reject_trailing_or_short_data() {
        let request = ExportRequest {
            name: "snap-0123456789abcdef0".into(),
            info_requests: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let bytes = request.encode().expect("encodable");
        assert_eq!(ExportRequest::decode(&bytes), Ok(request));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ExportRequest::decode(&trailing).is_err());
        assert!(ExportRequest::decode(&bytes[..bytes.len() - 1]).is_err());
        // A name length beyond the data.
        assert!(ExportRequest::decode(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
    }

    #[test]
    fn meta_context_requests_round_trip_and_huge_counts_fail_without_reserving() {
        let request = MetaContextRequest {
            export: "x".into(),
            queries: vec!["base:allocation".into(), "blocksnap:changed:snap-1".into()],
        };
        let bytes = request.encode().expect("encodable");
        assert_eq!(MetaContextRequest::decode(&bytes), Ok(request));
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn strings_with_nul_or_over_4096_bytes_are_refused() {
        assert!(decode_export_name(b"a\0b").is_err());
        assert!(decode_export_name(&[b'a'; MAX_STRING + 1]).is_err());
        assert!(decode_export_name(&[0xc3]).is_err());
        assert_eq!(decode_export_name(b"snap"), Ok("snap".into()));
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let request = Request {
            flags: CMD_FLAG_DF,
            command: CMD_READ,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(Request::decode(&request.encode()), Ok(request));
        let mut bad = request.encode();
        bad[0] ^= 1;
        assert!(Request::decode(&bad).is_err());
        let chunk = ChunkHeader {
            flags: REPLY_FLAG_DONE,
            kind: REPLY_TYPE_OFFSET_HOLE,
            cookie: 9,
            length: 12,
        };
        assert_eq!(
            ReplyHeader::decode(&chunk.encode()),
            Ok(ReplyHeader::Structured(chunk))
        );
        assert_eq!(
            ReplyHeader::decode(&simple_reply(EPERM, 7)),
            Ok(ReplyHeader::Simple {
                error: EPERM,
                cookie: 7
            })
        );
        let extents = [
            Extent {
                length: 1 << 19,
                flags: STATE_HOLE | STATE_ZERO,
            },
            Extent {
                length: 4096,
                flags: 0,
            },
        ];
        assert_eq!(
            decode_block_status(&block_status_payload(3, &extents)),
            Ok((3, extents.to_vec()))
        );
        assert_eq!(
            decode_error_payload(&error_payload(EIO, "damaged")),
            Ok((EIO, "damaged".into()))
        );
    }

    #[test]
    fn an_error_message_is_cut_at_a_character_boundary() {
        let message = "é".repeat(MAX_STRING);
        let payload = error_payload(EIO, &message);
        let (_, text) = decode_error_payload(&payload).expect("decodable");
        assert!(text.len() <= MAX_STRING && text.len() >= MAX_STRING - 1);
    }
}
