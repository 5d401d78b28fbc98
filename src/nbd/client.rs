//! A small synchronous NBD client: what a backup from an NBD source needs
//! (the fixed newstyle handshake, `NBD_OPT_GO`, structured reads, block
//! status of `base:allocation` and `qemu:dirty-bitmap:NAME`), on the
//! protocol layouts the server uses (`format::nbd`). DESIGN.md §19 says
//! why it is ours and not libnbd.

// The protocol is big-endian.
#![allow(clippy::big_endian_bytes)]

use crate::error::{Error, Result, ValidationReason};
use crate::format::nbd::{self as wire, ChunkHeader, OptionHeader, OptionReplyHeader, Request};
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where an NBD export is: a URI as libnbd and QEMU write them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdSource {
    /// The URI as given.
    pub uri: String,
    /// The server's address.
    pub address: NbdAddress,
    /// The export's name.
    pub export: String,
}

/// An NBD server's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddress {
    /// A Unix socket.
    Unix(PathBuf),
    /// `HOST:PORT` over TCP.
    Tcp(String),
}

/// The port of `nbd://HOST/EXPORT` without one.
const DEFAULT_PORT: u16 = 10809;

impl NbdSource {
    /// Whether `text` is an NBD URI (rather than a path).
    pub fn is_uri(text: &str) -> bool {
        text.starts_with("nbd://") || text.starts_with("nbd+unix://")
    }

    /// Parses `nbd+unix:///EXPORT?socket=PATH` or
    /// `nbd://HOST[:PORT]/EXPORT`. TLS (`nbds://`) is not supported.
    pub fn parse(uri: &str) -> Result<NbdSource> {
        let bad = |why: &str| {
            Error::invalid(
                ValidationReason::InvalidParameterValue,
                format!("'{uri}' is not an NBD URI this client takes: {why}"),
            )
        };
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(|| bad("no ?socket="))?;
            let export = path.strip_prefix('/').unwrap_or(path);
            let socket = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("socket="))
                .filter(|socket| !socket.is_empty())
                .ok_or_else(|| bad("no ?socket="))?;
            return Ok(NbdSource {
                uri: uri.to_string(),
                address: NbdAddress::Unix(PathBuf::from(percent_decode(socket))),
                export: percent_decode(export),
            });
        }
        if let Some(rest) = uri.strip_prefix("nbd://") {
            let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.is_empty() {
                return Err(bad("no host"));
            }
            let has_port = match authority.rsplit_once(':') {
                Some((_, port)) => !authority.ends_with(']') && port.parse::<u16>().is_ok(),
                None => false,
            };
            let address = if has_port {
                authority.to_string()
            } else {
                format!("{authority}:{DEFAULT_PORT}")
            };
            let export = export.split('?').next().unwrap_or_default();
            return Ok(NbdSource {
                uri: uri.to_string(),
                address: NbdAddress::Tcp(address),
                export: percent_decode(export),
            });
        }
        Err(bad(
            "use nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT",
        ))
    }
}

/// `%XX` escapes decoded (export names and socket paths in URIs).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut position = 0;
    while let Some(&byte) = bytes.get(position) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(position + 1..position + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                position += 3;
            }
            None => {
                out.push(byte);
                position += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(stream) => Stream::Unix(stream.try_clone()?),
            Stream::Tcp(stream) => Stream::Tcp(stream.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.read(buf),
            Stream::Tcp(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.write(buf),
            Stream::Tcp(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(stream) => stream.flush(),
            Stream::Tcp(stream) => stream.flush(),
        }
    }
}

/// How long one reply may take before the connection is deemed dead.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest option reply accepted (a description, a context name).
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// The largest read issued at once.
const MAX_READ: u32 = 32 << 20;

/// One connection to an export, in the transmission phase.
pub struct NbdClient {
    source: NbdSource,
    reader: BufReader<Stream>,
    writer: Stream,
    size: u64,
    transmission_flags: u16,
    max_payload: u32,
    /// Selected metadata contexts by name, with their ids.
    contexts: HashMap<String, u32>,
    next_cookie: u64,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("uri", &self.source.uri)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl NbdClient {
    /// Connects to `source` and enters transmission with structured
    /// replies and the metadata `contexts` selected (each must be offered:
    /// a missing one is an error naming it).
    pub fn connect(source: &NbdSource, contexts: &[&str]) -> Result<NbdClient> {
        let io =
            |what: &str, error: std::io::Error| Error::io(format!("{what} {}", source.uri), error);
        let stream = match &source.address {
            NbdAddress::Unix(path) => {
                Stream::Unix(UnixStream::connect(path).map_err(|error| io("connecting to", error))?)
            }
            NbdAddress::Tcp(address) => {
                let stream =
                    TcpStream::connect(address).map_err(|error| io("connecting to", error))?;
                stream
                    .set_nodelay(true)
                    .map_err(|error| io("connecting to", error))?;
                Stream::Tcp(stream)
            }
        };
        match &stream {
            Stream::Unix(stream) => stream.set_read_timeout(Some(REPLY_TIMEOUT)),
            Stream::Tcp(stream) => stream.set_read_timeout(Some(REPLY_TIMEOUT)),
        }
        .map_err(|error| io("connecting to", error))?;
        let writer = stream
            .try_clone()
            .map_err(|error| io("connecting to", error))?;
        let mut client = NbdClient {
            source: source.clone(),
            reader: BufReader::with_capacity(256 << 10, stream),
            writer,
            size: 0,
            transmission_flags: 0,
            max_payload: MAX_READ,
            contexts: HashMap::new(),
            next_cookie: 1,
        };
        client.handshake(contexts)?;
        Ok(client)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the server allows several connections to the export.
    pub fn can_multi_conn(&self) -> bool {
        self.transmission_flags & wire::FLAG_CAN_MULTI_CONN != 0
    }

    fn io_error(&self, what: &str, error: std::io::Error) -> Error {
        Error::io(format!("{what} {}", self.source.uri), error)
    }

    fn violation(&self, what: impl Into<String>) -> Error {
        self.io_error(
            "talking to",
            std::io::Error::new(std::io::ErrorKind::InvalidData, what.into()),
        )
    }

    fn refused(&self, what: impl Into<String>) -> Error {
        Error::invalid(
            ValidationReason::InvalidParameterValue,
            format!("{}: {}", self.source.uri, what.into()),
        )
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> Result<()> {
        self.reader
            .read_exact(buffer)
            .map_err(|error| Error::io(format!("reading from {}", self.source.uri), error))
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|error| Error::io(format!("writing to {}", self.source.uri), error))
    }

    fn handshake(&mut self, contexts: &[&str]) -> Result<()> {
        let mut greeting = [0u8; wire::GREETING_LEN];
        self.read_exact(&mut greeting)?;
        if greeting[..16] != wire::greeting(0)[..16] {
            return Err(self.violation("not an NBD newstyle server"));
        }
        let handshake_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        if handshake_flags & wire::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.violation("the server does not speak fixed newstyle"));
        }
        let mut flags = wire::FLAG_C_FIXED_NEWSTYLE;
        if handshake_flags & wire::FLAG_NO_ZEROES != 0 {
            flags |= wire::FLAG_C_NO_ZEROES;
        }
        self.send(&wire::encode_client_flags(flags))?;
        let (reply, data) = self.option(wire::OPT_STRUCTURED_REPLY, &[])?;
        if reply != wire::REP_ACK {
            return Err(self.refused(format!(
                "the server refuses structured replies: {}",
                String::from_utf8_lossy(&data)
            )));
        }
        if !contexts.is_empty() {
            let request = wire::MetaContextRequest {
                export: self.source.export.clone(),
                queries: contexts.iter().map(|context| context.to_string()).collect(),
            }
            .encode()
            .map_err(|error| self.refused(error.to_string()))?;
            self.send_option(wire::OPT_SET_META_CONTEXT, &request)?;
            loop {
                let (header, data) = self.option_reply(wire::OPT_SET_META_CONTEXT)?;
                match header.reply {
                    wire::REP_META_CONTEXT => {
                        let (id, name) = data.split_at_checked(4).ok_or_else(|| {
                            self.violation("a metadata context reply shorter than 4 bytes")
                        })?;
                        let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
                        self.contexts
                            .insert(String::from_utf8_lossy(name).into_owned(), id);
                    }
                    wire::REP_ACK => break,
                    _ => {
                        return Err(self.refused(format!(
                            "selecting {contexts:?} failed: {}",
                            String::from_utf8_lossy(&data)
                        )))
                    }
                }
            }
            if let Some(missing) = contexts
                .iter()
                .find(|name| !self.contexts.contains_key(**name))
            {
                return Err(self.refused(format!(
                    "the server does not offer the metadata context {missing} for this export"
                )));
            }
        }
        let request = wire::ExportRequest {
            name: self.source.export.clone(),
            info_requests: vec![wire::INFO_BLOCK_SIZE],
        }
        .encode()
        .map_err(|error| self.refused(error.to_string()))?;
        self.send_option(wire::OPT_GO, &request)?;
        let mut described = false;
        loop {
            let (header, data) = self.option_reply(wire::OPT_GO)?;
            match header.reply {
                wire::REP_INFO => match data
                    .get(..2)
                    .map(|kind| u16::from_be_bytes([kind[0], kind[1]]))
                {
                    Some(wire::INFO_EXPORT) if data.len() == 12 => {
                        let mut size = [0u8; 8];
                        size.copy_from_slice(&data[2..10]);
                        self.size = u64::from_be_bytes(size);
                        self.transmission_flags = u16::from_be_bytes([data[10], data[11]]);
                        described = true;
                    }
                    Some(wire::INFO_BLOCK_SIZE) if data.len() == 14 => {
                        let maximum = u32::from_be_bytes([data[10], data[11], data[12], data[13]]);
                        self.max_payload = maximum.clamp(wire::MAX_STRING as u32, MAX_READ);
                    }
                    _ => {}
                },
                wire::REP_ACK if described => return Ok(()),
                wire::REP_ACK => {
                    return Err(self.violation("NBD_OPT_GO succeeded without NBD_INFO_EXPORT"))
                }
                _ => {
                    return Err(self.refused(format!(
                        "export '{}' not available: {}",
                        self.source.export,
                        String::from_utf8_lossy(&data)
                    )))
                }
            }
        }
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<()> {
        let header = OptionHeader {
            option,
            length: data.len() as u32,
        };
        let mut message = header.encode().to_vec();
        message.extend_from_slice(data);
        self.send(&message)
    }

    fn option_reply(&mut self, option: u32) -> Result<(OptionReplyHeader, Vec<u8>)> {
        let mut header = [0u8; wire::OPTION_REPLY_HEADER_LEN];
        self.read_exact(&mut header)?;
        let header = OptionReplyHeader::decode(&header)
            .map_err(|_| self.violation("a bad option reply magic"))?;
        if header.option != option || header.length > MAX_OPTION_REPLY {
            return Err(self.violation("an option reply out of step"));
        }
        let mut data = vec![0u8; header.length as usize];
        self.read_exact(&mut data)?;
        Ok((header, data))
    }

    /// Sends an option that has one final reply; returns its type and data.
    fn option(&mut self, option: u32, data: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.send_option(option, data)?;
        let (header, data) = self.option_reply(option)?;
        Ok((header.reply, data))
    }

    fn request(&mut self, command: u16, flags: u16, offset: u64, length: u32) -> Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let request = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.send(&request.encode())?;
        Ok(cookie)
    }

    /// Reads the next structured chunk of the reply to `cookie` (requests
    /// are sent one at a time).
    fn chunk(&mut self, cookie: u64) -> Result<(ChunkHeader, Vec<u8>)> {
        let mut header = [0u8; wire::CHUNK_HEADER_LEN];
        self.read_exact(&mut header)?;
        let header = ChunkHeader::decode(&header)
            .map_err(|_| self.violation("a reply that is not a structured chunk"))?;
        if header.cookie != cookie {
            return Err(self.violation("a reply to a request never sent"));
        }
        if header.length > self.max_payload.saturating_add(64) {
            return Err(self.violation(format!("a reply chunk of {} bytes", header.length)));
        }
        let mut payload = vec![0u8; header.length as usize];
        self.read_exact(&mut payload)?;
        Ok((header, payload))
    }

    fn error_of(&self, kind: u16, payload: &[u8], at: u64) -> Error {
        let (code, message) = wire::decode_error_payload(payload).unwrap_or((
            wire::EIO,
            format!("an undecodable error chunk of type {kind}"),
        ));
        self.io_error(
            &format!("reading at byte {at} of"),
            std::io::Error::other(format!("NBD error {code}: {message}")),
        )
    }

    /// Fills `buffer` with the export's bytes from `offset` (holes read as
    /// zeros). Every byte must be covered by the reply.
    pub fn read(&mut self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buffer.len() {
            let length = (buffer.len() - done).min(self.max_payload as usize);
            let start = offset + done as u64;
            let part = &mut buffer[done..done + length];
            self.read_part(start, part)?;
            done += length;
        }
        Ok(())
    }

    fn read_part(&mut self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        let length = buffer.len() as u32;
        let cookie = self.request(wire::CMD_READ, 0, offset, length)?;
        let mut covered = 0u64;
        let mut failure = None;
        loop {
            let (header, payload) = self.chunk(cookie)?;
            match header.kind {
                wire::REPLY_TYPE_OFFSET_DATA | wire::REPLY_TYPE_OFFSET_HOLE => {
                    let (at, bytes) = payload
                        .split_at_checked(8)
                        .ok_or_else(|| self.violation("a short content chunk"))?;
                    let at = u64::from_be_bytes(at.try_into().unwrap_or_default());
                    let span = if header.kind == wire::REPLY_TYPE_OFFSET_DATA {
                        bytes.len() as u64
                    } else {
                        let size: [u8; 4] = bytes
                            .try_into()
                            .map_err(|_| self.violation("a hole chunk of the wrong size"))?;
                        u64::from(u32::from_be_bytes(size))
                    };
                    let inside = at
                        .checked_sub(offset)
                        .filter(|start| start + span <= u64::from(length));
                    let Some(start) = inside else {
                        return Err(self.violation("a content chunk outside the request"));
                    };
                    let target = &mut buffer[start as usize..(start + span) as usize];
                    if header.kind == wire::REPLY_TYPE_OFFSET_DATA {
                        target.copy_from_slice(bytes);
                    } else {
                        target.fill(0);
                    }
                    covered += span;
                }
                wire::REPLY_TYPE_NONE => {}
                kind if kind & 0x8000 != 0 => {
                    failure.get_or_insert_with(|| self.error_of(kind, &payload, offset));
                }
                kind => return Err(self.violation(format!("an unexpected chunk type {kind}"))),
            }
            if header.flags & wire::REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        if covered != u64::from(length) {
            return Err(self.violation(format!("a read of {length} bytes answered with {covered}")));
        }
        Ok(())
    }

    /// The extents of `context` over `[offset, offset + length)`, in order
    /// and covering the range exactly: (offset, length, flags) each.
    pub fn extents(
        &mut self,
        context: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<(u64, u64, u32)>> {
        let id = *self
            .contexts
            .get(context)
            .ok_or_else(|| self.refused(format!("metadata context {context} was not selected")))?;
        let end = offset + length;
        let mut out: Vec<(u64, u64, u32)> = Vec::new();
        let mut position = offset;
        while position < end {
            // Under 4 GiB, in whole 512 KiB blocks where possible.
            let ask = (end - position).min(1 << 31) as u32;
            let cookie = self.request(wire::CMD_BLOCK_STATUS, 0, position, ask)?;
            let mut found = None;
            let mut failure = None;
            loop {
                let (header, payload) = self.chunk(cookie)?;
                match header.kind {
                    wire::REPLY_TYPE_BLOCK_STATUS => {
                        let (context_id, extents) = wire::decode_block_status(&payload)
                            .map_err(|_| self.violation("a malformed block status chunk"))?;
                        if context_id == id {
                            found = Some(extents);
                        }
                    }
                    wire::REPLY_TYPE_NONE => {}
                    kind if kind & 0x8000 != 0 => {
                        failure.get_or_insert_with(|| self.error_of(kind, &payload, position));
                    }
                    kind => return Err(self.violation(format!("an unexpected chunk type {kind}"))),
                }
                if header.flags & wire::REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            if let Some(error) = failure {
                return Err(error);
            }
            let extents =
                found.ok_or_else(|| self.violation(format!("no status for {context}")))?;
            for extent in extents {
                let span = u64::from(extent.length).min(end - position);
                match out.last_mut() {
                    Some(last) if last.2 == extent.flags && last.0 + last.1 == position => {
                        last.1 += span
                    }
                    _ => out.push((position, span, extent.flags)),
                }
                position += span;
                if position >= end {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Ends the session politely (`NBD_CMD_DISC`).
    pub fn disconnect(mut self) {
        let _ = self.request(wire::CMD_DISC, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_libnbd_writes_them() {
        let unix = NbdSource::parse("nbd+unix:///disk%201?socket=/run/q%20d.sock").expect("unix");
        assert_eq!(unix.address, NbdAddress::Unix("/run/q d.sock".into()));
        assert_eq!(unix.export, "disk 1");
        let tcp = NbdSource::parse("nbd://127.0.0.1:10810/snap").expect("tcp");
        assert_eq!(tcp.address, NbdAddress::Tcp("127.0.0.1:10810".into()));
        assert_eq!(tcp.export, "snap");
        let default_port = NbdSource::parse("nbd://host").expect("tcp");
        assert_eq!(default_port.address, NbdAddress::Tcp("host:10809".into()));
        assert_eq!(default_port.export, "");
        assert!(NbdSource::parse("nbd+unix:///x").is_err());
        assert!(NbdSource::parse("nbds://host/x").is_err());
        assert!(NbdSource::is_uri("nbd://h/x") && !NbdSource::is_uri("/dev/sda"));
    }
}
