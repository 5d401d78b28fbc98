//! DESIGN.md is the format specification. This test parses its tables and
//! checks each documented field against the code twice: the documented
//! offset equals the constant, and a real encoding holds that field's value
//! at that offset with that size. Totals are checked too.

use blocksnap::format::catalog::{self as catalog_format, CatalogRecord};
use blocksnap::format::header::{self, FILE_HEADER_SIZE};
use blocksnap::format::index::{self as index_format, IndexEntry};
use blocksnap::format::journal::{self as journal_format, JournalRecord};
use blocksnap::format::node::{self as node_format, Node};
use blocksnap::format::pack::{self as pack_format, Codec, RecordKind};
use blocksnap::format::store::{self as store_format, StoreHeader};
use blocksnap::format::token::TokenBody;
use blocksnap::ids::{BlockIndex, ChunkId, Sha256Digest, SnapshotId};

/// One table: its (offset, size, field) rows.
type Table = Vec<(String, String, String)>;
/// Tables by section heading.
type Sections = Vec<(String, Vec<Table>)>;

/// (offset, size, field) rows of each table, by section heading.
fn design_tables() -> Sections {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/DESIGN.md"))
        .expect("DESIGN.md");
    let mut sections: Sections = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            sections.push((heading.to_string(), Vec::new()));
            in_table = false;
            continue;
        }
        let Some((_, tables)) = sections.last_mut() else {
            continue;
        };
        if line.starts_with("| offset | size | field |") {
            tables.push(Vec::new());
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if in_table && !line.starts_with("|---") {
            let cells: Vec<String> = line
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect();
            if let Some(table) = tables.last_mut() {
                table.push((cells[1].clone(), cells[2].clone(), cells[3].clone()));
            }
        }
    }
    sections
}

/// One documented field: name, constant offset (if the code has one), and
/// the bytes a sample encoding must hold there.
struct Field {
    name: &'static str,
    constant: Option<usize>,
    bytes: Vec<u8>,
}

fn field(name: &'static str, constant: Option<usize>, bytes: impl Into<Vec<u8>>) -> Field {
    Field {
        name,
        constant,
        bytes: bytes.into(),
    }
}

/// Checks one documented table against a sample encoding.
fn check_table(
    section: &str,
    rows: &[(String, String, String)],
    encoded: &[u8],
    base: usize,
    fields: &[Field],
    total: usize,
) {
    let (total_rows, field_rows): (Vec<_>, Vec<_>) =
        rows.iter().partition(|(offset, _, _)| offset == "total");
    let names: Vec<&str> = field_rows
        .iter()
        .map(|(_, _, name)| name.as_str())
        .collect();
    let expected: Vec<&str> = fields.iter().map(|f| f.name).collect();
    assert_eq!(names, expected, "{section}: documented fields");
    for ((offset, size, name), field) in field_rows.iter().zip(fields) {
        let offset: usize = offset
            .parse()
            .unwrap_or_else(|_| panic!("{section}: offset of {name}"));
        let size: usize = size
            .parse()
            .unwrap_or_else(|_| panic!("{section}: size of {name}"));
        if let Some(constant) = field.constant {
            assert_eq!(
                offset, constant,
                "{section}: offset of {name} differs from the code's constant"
            );
        }
        if !field.bytes.is_empty() {
            assert_eq!(size, field.bytes.len(), "{section}: size of {name}");
            let start = offset - base;
            assert_eq!(
                &encoded[start..start + size],
                &field.bytes[..],
                "{section}: encoded {name}"
            );
        }
    }
    let (_, size, _) = total_rows
        .first()
        .unwrap_or_else(|| panic!("{section}: total row"));
    assert_eq!(
        size.parse::<usize>().expect("total"),
        total,
        "{section}: total"
    );
}

fn tables_of(sections: &Sections, heading: &str) -> Vec<Table> {
    sections
        .iter()
        .find(|(name, _)| name.ends_with(heading))
        .unwrap_or_else(|| panic!("DESIGN.md has no section {heading}"))
        .1
        .clone()
}

const ID: ChunkId = ChunkId([0xA1; 32]);
const SHA: Sha256Digest = Sha256Digest([0xB2; 32]);

#[test]
fn store_header_table() {
    let sections = design_tables();
    let sample = StoreHeader {
        store_id: [0x11; 16],
        token_secret: [0x22; 32],
        created_millis: 0x0102_0304_0506_0708,
    };
    let encoded = sample.encode();
    let crc = blocksnap::format::crc32(&[&encoded[..72]]);
    let fields = [
        field("magic", Some(0), store_format::STORE_MAGIC),
        field(
            "version",
            Some(8),
            store_format::STORE_VERSION.to_le_bytes(),
        ),
        field(
            "flags",
            Some(store_format::STORE_FLAGS_OFFSET),
            0u32.to_le_bytes(),
        ),
        field("store_id", Some(store_format::STORE_ID_OFFSET), [0x11; 16]),
        field(
            "token_secret",
            Some(store_format::STORE_SECRET_OFFSET),
            [0x22; 32],
        ),
        field(
            "created_millis",
            Some(store_format::STORE_CREATED_OFFSET),
            0x0102_0304_0506_0708u64.to_le_bytes(),
        ),
        field(
            "crc32",
            Some(store_format::STORE_CRC_OFFSET),
            crc.to_le_bytes(),
        ),
    ];
    check_table(
        "store header",
        &tables_of(&sections, "Store header")[0],
        &encoded,
        0,
        &fields,
        store_format::STORE_HEADER_SIZE,
    );
}

#[test]
fn file_header_table() {
    let sections = design_tables();
    let encoded = header::encode_with_flags(header::JOURNAL_MAGIC, 0x1122_3344_5566_7788, 1);
    let crc = blocksnap::format::crc32(&[&encoded[..28]]);
    let fields = [
        field("magic", Some(header::MAGIC_OFFSET), header::JOURNAL_MAGIC),
        field(
            "version",
            Some(header::VERSION_OFFSET),
            header::FORMAT_VERSION.to_le_bytes(),
        ),
        field("flags", Some(header::FLAGS_OFFSET), 1u32.to_le_bytes()),
        field(
            "subject",
            Some(header::SUBJECT_OFFSET),
            0x1122_3344_5566_7788u64.to_le_bytes(),
        ),
        field("unused", Some(header::UNUSED_OFFSET), 0u32.to_le_bytes()),
        field("crc32", Some(header::CRC_OFFSET), crc.to_le_bytes()),
    ];
    check_table(
        "file header",
        &tables_of(&sections, "File header")[0],
        &encoded,
        0,
        &fields,
        FILE_HEADER_SIZE,
    );
}

#[test]
fn pack_record_table() {
    let sections = design_tables();
    let payload = b"payload bytes";
    let encoded = pack_format::encode_record_header(
        RecordKind::MapNode,
        Codec::Zstd,
        4096,
        &ID,
        &SHA,
        payload,
    )
    .expect("encodes");
    let fields = [
        field(
            "crc32",
            Some(pack_format::RECORD_CRC_OFFSET),
            encoded[..4].to_vec(),
        ),
        field(
            "payload_len",
            Some(pack_format::RECORD_PAYLOAD_LEN_OFFSET),
            (payload.len() as u32).to_le_bytes(),
        ),
        field("kind", Some(pack_format::RECORD_KIND_OFFSET), [2]),
        field("codec", Some(pack_format::RECORD_CODEC_OFFSET), [1]),
        field("domain", Some(pack_format::RECORD_DOMAIN_OFFSET), [0, 0]),
        field(
            "raw_len",
            Some(pack_format::RECORD_RAW_LEN_OFFSET),
            4096u32.to_le_bytes(),
        ),
        field("chunk_id", Some(pack_format::RECORD_CHUNK_ID_OFFSET), ID.0),
        field("sha256", Some(pack_format::RECORD_SHA256_OFFSET), SHA.0),
    ];
    let crc = blocksnap::format::crc32(&[&encoded[4..], payload]);
    assert_eq!(
        encoded[..4],
        crc.to_le_bytes(),
        "the crc covers bytes 4..80 and the payload"
    );
    check_table(
        "pack record",
        &tables_of(&sections, "Pack record")[0],
        &encoded,
        0,
        &fields,
        pack_format::RECORD_HEADER_SIZE,
    );
}

#[test]
fn pack_index_tables() {
    let sections = design_tables();
    let tables = tables_of(&sections, "Pack index");
    let entry = IndexEntry {
        id_prefix: 0x0102_0304_0506_0708,
        offset: 0x1000,
        record_len: 0x2000,
    };
    let encoded = index_format::encode_index(5, &[entry]).expect("encodes");
    let fields = [
        field(
            "count",
            Some(index_format::INDEX_COUNT_OFFSET),
            1u32.to_le_bytes(),
        ),
        field(
            "reserved",
            Some(index_format::INDEX_RESERVED_OFFSET),
            0u32.to_le_bytes(),
        ),
        field(
            "entries",
            Some(index_format::INDEX_ENTRIES_OFFSET),
            encoded[40..56].to_vec(),
        ),
    ];
    let total = index_format::INDEX_ENTRIES_OFFSET + index_format::INDEX_TRAILER_SIZE;
    check_table(
        "pack index",
        &tables[0],
        &encoded[FILE_HEADER_SIZE..],
        FILE_HEADER_SIZE,
        &fields,
        total,
    );
    let crc = blocksnap::format::crc32(&[&encoded[..encoded.len() - 4]]);
    assert_eq!(encoded[encoded.len() - 4..], crc.to_le_bytes());
    let entry_bytes =
        &encoded[index_format::INDEX_ENTRIES_OFFSET..index_format::INDEX_ENTRIES_OFFSET + 16];
    let fields = [
        field("id_prefix", None, 0x0102_0304_0506_0708u64.to_le_bytes()),
        field("offset", None, 0x1000u32.to_le_bytes()),
        field("record_len", None, 0x2000u32.to_le_bytes()),
    ];
    check_table(
        "index entry",
        &tables[1],
        entry_bytes,
        0,
        &fields,
        index_format::INDEX_ENTRY_SIZE,
    );
}

#[test]
fn map_node_table() {
    let sections = design_tables();
    let mut node = Node::empty(3);
    node.slots[5] = Some(ID);
    let encoded = node.encode();
    let fields = [
        field(
            "version",
            Some(node_format::NODE_VERSION_OFFSET),
            [node_format::NODE_VERSION],
        ),
        field("level", Some(node_format::NODE_LEVEL_OFFSET), [3]),
        field("reserved", Some(node_format::NODE_RESERVED_OFFSET), [0; 6]),
        field(
            "bitmap",
            Some(node_format::NODE_BITMAP_OFFSET),
            (1u64 << 5).to_le_bytes(),
        ),
        field("entries", Some(node_format::NODE_ENTRIES_OFFSET), ID.0),
    ];
    check_table(
        "map node",
        &tables_of(&sections, "Map node")[0],
        &encoded,
        0,
        &fields,
        node_format::NODE_ENTRIES_OFFSET,
    );
    assert_eq!(node_format::MAX_NODE_SIZE, 2064);
}

#[test]
fn catalog_frame_table() {
    let sections = design_tables();
    let record = CatalogRecord::Failed {
        snapshot: SnapshotId(9),
        at_millis: 10,
        reason: "r".into(),
    };
    let encoded = record.encode_frame().expect("encodes");
    let body_len = encoded.len() - catalog_format::FRAME_BODY_OFFSET;
    let fields = [
        field(
            "crc32",
            Some(catalog_format::FRAME_CRC_OFFSET),
            blocksnap::format::crc32(&[&encoded[4..]]).to_le_bytes(),
        ),
        field(
            "len",
            Some(catalog_format::FRAME_LEN_OFFSET),
            (body_len as u32).to_le_bytes(),
        ),
        field("body", Some(catalog_format::FRAME_BODY_OFFSET), Vec::new()),
    ];
    check_table(
        "catalog frame",
        &tables_of(&sections, "Catalog frame")[0],
        &encoded,
        0,
        &fields,
        catalog_format::FRAME_BODY_OFFSET,
    );
    assert_eq!(
        encoded[catalog_format::FRAME_BODY_OFFSET],
        3,
        "the body starts with the record kind"
    );
    assert_eq!(catalog_format::MAX_BODY_LEN, 65_536);
}

#[test]
fn journal_record_table() {
    let sections = design_tables();
    let encoded = JournalRecord {
        index: BlockIndex(0x0A0B_0C0D),
        chunk_id: ID,
        sha256: SHA,
        put_millis: Some(0x0102_0304_0506_0708),
    }
    .encode();
    let fields = [
        field(
            "crc32",
            Some(journal_format::JOURNAL_CRC_OFFSET),
            blocksnap::format::crc32(&[&encoded[4..]]).to_le_bytes(),
        ),
        field(
            "index",
            Some(journal_format::JOURNAL_INDEX_OFFSET),
            0x0A0B_0C0Du32.to_le_bytes(),
        ),
        field(
            "chunk_id",
            Some(journal_format::JOURNAL_CHUNK_ID_OFFSET),
            ID.0,
        ),
        field("sha256", Some(journal_format::JOURNAL_SHA256_OFFSET), SHA.0),
        field(
            "put_millis",
            Some(journal_format::JOURNAL_PUT_MILLIS_OFFSET),
            0x0102_0304_0506_0708u64.to_le_bytes(),
        ),
    ];
    check_table(
        "journal record",
        &tables_of(&sections, "Journal record")[0],
        &encoded,
        0,
        &fields,
        journal_format::JOURNAL_RECORD_SIZE,
    );
}

#[test]
fn token_tables() {
    let sections = design_tables();
    let tables = tables_of(&sections, "Tokens");
    let mut block = TokenBody::Block {
        snapshot: 0x1111,
        index: 0x2222,
        expiry_secs: 0x3333,
    }
    .encode();
    block.extend_from_slice(&[0xEE; 16]);
    let fields = [
        field("version", None, [1]),
        field("kind", None, [1]),
        field("snapshot", None, 0x1111u64.to_le_bytes()),
        field("index", None, 0x2222u32.to_le_bytes()),
        field("expiry_secs", None, 0x3333u64.to_le_bytes()),
        field(
            "mac",
            Some(blocksnap::format::token::BLOCK_TOKEN_BODY_SIZE),
            [0xEE; 16],
        ),
    ];
    check_table("block token", &tables[0], &block, 0, &fields, 38);
    let mut page = TokenBody::Page {
        kind: 3,
        snapshot: 0x1111,
        other: 0x4444,
        next_index: 0x5555,
        expiry_secs: 0x6666,
    }
    .encode();
    page.extend_from_slice(&[0xEE; 16]);
    let fields = [
        field("version", None, [1]),
        field("kind", None, [3]),
        field("snapshot", None, 0x1111u64.to_le_bytes()),
        field("other", None, 0x4444u64.to_le_bytes()),
        field("next_index", None, 0x5555u32.to_le_bytes()),
        field("expiry_secs", None, 0x6666u64.to_le_bytes()),
        field(
            "mac",
            Some(blocksnap::format::token::PAGE_TOKEN_BODY_SIZE),
            [0xEE; 16],
        ),
    ];
    check_table("page token", &tables[1], &page, 0, &fields, 46);
}

#[test]
fn compaction_marker_table() {
    use blocksnap::format::compaction as marker_format;
    let sections = design_tables();
    let encoded = marker_format::encode_marker(0x0B, &[]).expect("encodes");
    let fields = [
        field(
            "header",
            Some(0),
            header::encode(header::COMPACTION_MAGIC, 0x0B).to_vec(),
        ),
        field(
            "count",
            Some(marker_format::MARKER_COUNT_OFFSET),
            0u32.to_le_bytes(),
        ),
        field("sources", Some(marker_format::MARKER_SOURCES_OFFSET), []),
    ];
    check_table(
        "compaction marker",
        &tables_of(&sections, "Compaction marker")[0],
        &encoded,
        0,
        &fields,
        encoded.len(),
    );
    assert_eq!(
        marker_format::decode_marker(&marker_format::encode_marker(3, &[1, 2]).expect("encodes")),
        Ok((3, vec![1, 2]))
    );
    assert_eq!(
        marker_format::encode_marker(3, &[1, 2])
            .expect("encodes")
            .len(),
        encoded.len() + 8,
        "4 bytes per source"
    );
}

#[test]
fn sealed_record_table() {
    let sections = design_tables();
    let payload = b"ciphertext bytes";
    let nonce = [0xC3; 12];
    let tag = [0xD4; 16];
    let aad = pack_format::encode_aad(RecordKind::Block, Codec::Zstd, 7, 4096, &ID, payload.len())
        .expect("encodes");
    let encoded = pack_format::encode_sealed_header(&aad, &nonce, &tag, payload);
    let fields = [
        field("nonce", Some(pack_format::RECORD_NONCE_OFFSET), nonce),
        field("tag", Some(pack_format::RECORD_TAG_OFFSET), tag),
        field(
            "zero",
            Some(pack_format::RECORD_SEAL_RESERVED_OFFSET),
            [0; 4],
        ),
    ];
    check_table(
        "encrypted record seal",
        &tables_of(&sections, "Pack record")[1],
        &encoded,
        0,
        &fields,
        pack_format::RECORD_HEADER_SIZE,
    );
    assert_eq!(&encoded[10..12], &7u16.to_le_bytes(), "the domain");
    assert_eq!(pack_format::RECORD_AAD, 4..48, "the associated data");
}

#[test]
fn keyring_tables() {
    use blocksnap::format::keyring::{self as keyring_format, KeyringEntry};
    let sections = design_tables();
    let tables = tables_of(&sections, "Keyring");
    let empty = keyring_format::encode_keyring(&[]).expect("encodes");
    let file_fields = [
        field(
            "header",
            Some(0),
            header::encode(header::KEYRING_MAGIC, 0).to_vec(),
        ),
        field("entries", Some(keyring_format::KEYRING_ENTRIES_OFFSET), []),
    ];
    check_table("keyring", &tables[0], &empty, 0, &file_fields, empty.len());
    let entry = KeyringEntry {
        domain: 0x0102,
        suite: 1,
        created_millis: 0x0A0B_0C0D,
        key_arn: String::new(),
        wrapped: Vec::new(),
    };
    let one = keyring_format::encode_keyring(std::slice::from_ref(&entry)).expect("encodes");
    let entry_bytes = &one[FILE_HEADER_SIZE..one.len() - 4];
    let entry_fields = [
        field("domain", None, 0x0102u16.to_le_bytes()),
        field("suite", None, [1]),
        field("reserved", None, [0]),
        field("created_millis", None, 0x0A0B_0C0Du64.to_le_bytes()),
        field("key_arn", None, 0u16.to_le_bytes()),
        field("wrapped", None, 0u16.to_le_bytes()),
    ];
    check_table(
        "keyring entry",
        &tables[1],
        entry_bytes,
        0,
        &entry_fields,
        entry_bytes.len(),
    );
}

#[test]
fn key_file_table() {
    use blocksnap::format::keyfile::{self as keyfile_format, KeyFileHeader};
    let sections = design_tables();
    let header = KeyFileHeader {
        memory_kib: 0x1000,
        iterations: 3,
        parallelism: 2,
        salt: [0x5A; 16],
        nonce: [0x6B; 12],
        sealed_len: 0,
    };
    let mut encoded = header.encode();
    encoded.extend_from_slice(&[0xEE; 16]);
    assert_eq!(KeyFileHeader::decode(&encoded), Ok(header));
    let fields = [
        field("magic", Some(0), keyfile_format::KEYFILE_MAGIC),
        field(
            "version",
            Some(keyfile_format::KEYFILE_VERSION_OFFSET),
            1u32.to_le_bytes(),
        ),
        field(
            "kdf",
            Some(keyfile_format::KEYFILE_KDF_OFFSET),
            keyfile_format::KDF_ARGON2ID.to_le_bytes(),
        ),
        field(
            "memory_kib",
            Some(keyfile_format::KEYFILE_MEMORY_OFFSET),
            0x1000u32.to_le_bytes(),
        ),
        field(
            "iterations",
            Some(keyfile_format::KEYFILE_ITERATIONS_OFFSET),
            3u32.to_le_bytes(),
        ),
        field(
            "parallelism",
            Some(keyfile_format::KEYFILE_PARALLELISM_OFFSET),
            2u32.to_le_bytes(),
        ),
        field(
            "salt",
            Some(keyfile_format::KEYFILE_SALT_OFFSET),
            [0x5A; 16],
        ),
        field(
            "nonce",
            Some(keyfile_format::KEYFILE_NONCE_OFFSET),
            [0x6B; 12],
        ),
        field(
            "sealed_len",
            Some(keyfile_format::KEYFILE_SEALED_LEN_OFFSET),
            0u32.to_le_bytes(),
        ),
        field("sealed", Some(keyfile_format::KEYFILE_SEALED_OFFSET), []),
    ];
    check_table(
        "key file",
        &tables_of(&sections, "Key file")[0],
        &encoded,
        0,
        &fields,
        encoded.len(),
    );
}

#[test]
fn bucket_head_table() {
    use blocksnap::format::head::{self as head_format, Head};
    let sections = design_tables();
    let empty = Head {
        generation: 0x0C,
        writer_epoch: 0x0102_0304,
        writer_id: [0x5A; 16],
        files: Vec::new(),
        commits: Vec::new(),
        condemned: Vec::new(),
        writers: Vec::new(),
        next_pack: 0,
    };
    let encoded = empty.encode().expect("encodes");
    let fields = [
        field(
            "writer_epoch",
            Some(head_format::HEAD_EPOCH_OFFSET),
            0x0102_0304u64.to_le_bytes(),
        ),
        field(
            "writer_id",
            Some(head_format::HEAD_WRITER_OFFSET),
            [0x5A; 16],
        ),
        field(
            "file_count",
            Some(head_format::HEAD_FILE_COUNT_OFFSET),
            0u32.to_le_bytes(),
        ),
        field("files", Some(head_format::HEAD_FILES_OFFSET), []),
    ];
    check_table(
        "bucket head",
        &tables_of(&sections, "Bucket head")[0],
        &encoded,
        0,
        &fields,
        encoded.len(),
    );
    assert_eq!(
        &encoded[..32],
        &header::encode(head_format::HEAD_MAGIC, 0x0C)[..],
        "a file header opens the head"
    );
}

#[test]
fn nbd_message_tables() {
    use blocksnap::format::nbd as wire;
    // NBD is big-endian.
    #[allow(clippy::big_endian_bytes)]
    fn be<const N: usize>(value: u64) -> [u8; N] {
        let bytes = value.to_be_bytes();
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes[8 - N..]);
        out
    }
    let sections = design_tables();
    let tables = tables_of(&sections, "NBD message layouts");
    assert_eq!(tables.len(), 6, "six message tables");
    let greeting = wire::greeting(3);
    check_table(
        "NBD greeting",
        &tables[0],
        &greeting,
        0,
        &[
            field("init_magic", None, *b"NBDMAGIC"),
            field("option_magic", None, *b"IHAVEOPT"),
            field("handshake_flags", None, be::<2>(3)),
        ],
        wire::GREETING_LEN,
    );
    let option = wire::OptionHeader {
        option: 7,
        length: 0x0102,
    }
    .encode();
    check_table(
        "NBD option",
        &tables[1],
        &option,
        0,
        &[
            field("option_magic", None, *b"IHAVEOPT"),
            field("option", None, be::<4>(7)),
            field("length", None, be::<4>(0x0102)),
        ],
        wire::OPTION_HEADER_LEN,
    );
    let reply = wire::option_reply(7, wire::REP_ERR_UNKNOWN, b"why").expect("encodes");
    check_table(
        "NBD option reply",
        &tables[2],
        &reply,
        0,
        &[
            field("reply_magic", None, be::<8>(wire::OPTION_REPLY_MAGIC)),
            field("option", None, be::<4>(7)),
            field("reply", None, be::<4>(u64::from(wire::REP_ERR_UNKNOWN))),
            field("length", None, be::<4>(3)),
        ],
        wire::OPTION_REPLY_HEADER_LEN,
    );
    let request = wire::Request {
        flags: 0x0008,
        command: 7,
        cookie: 0x1122_3344_5566_7788,
        offset: 0x0000_0102_0304_0506,
        length: 0x0A0B_0C0D,
    }
    .encode();
    check_table(
        "NBD request",
        &tables[3],
        &request,
        0,
        &[
            field(
                "request_magic",
                None,
                be::<4>(u64::from(wire::REQUEST_MAGIC)),
            ),
            field("flags", None, be::<2>(8)),
            field("command", None, be::<2>(7)),
            field("cookie", None, be::<8>(0x1122_3344_5566_7788)),
            field("offset", None, be::<8>(0x0000_0102_0304_0506)),
            field("length", None, be::<4>(0x0A0B_0C0D)),
        ],
        wire::REQUEST_LEN,
    );
    let simple = wire::simple_reply(wire::EPERM, 9);
    check_table(
        "NBD simple reply",
        &tables[4],
        &simple,
        0,
        &[
            field(
                "simple_magic",
                None,
                be::<4>(u64::from(wire::SIMPLE_REPLY_MAGIC)),
            ),
            field("error", None, be::<4>(1)),
            field("cookie", None, be::<8>(9)),
        ],
        wire::SIMPLE_REPLY_LEN,
    );
    let chunk = wire::ChunkHeader {
        flags: wire::REPLY_FLAG_DONE,
        kind: wire::REPLY_TYPE_BLOCK_STATUS,
        cookie: 9,
        length: 12,
    }
    .encode();
    check_table(
        "NBD structured chunk",
        &tables[5],
        &chunk,
        0,
        &[
            field(
                "structured_magic",
                None,
                be::<4>(u64::from(wire::STRUCTURED_REPLY_MAGIC)),
            ),
            field("flags", None, be::<2>(1)),
            field("type", None, be::<2>(5)),
            field("cookie", None, be::<8>(9)),
            field("length", None, be::<4>(12)),
        ],
        wire::CHUNK_HEADER_LEN,
    );
}
