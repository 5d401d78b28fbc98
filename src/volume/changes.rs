//! Change lists written by other tools, mapped to 512 KiB block indexes:
//! blocksnap's own lines of indexes and ranges, LVM's `thin_delta` XML,
//! Ceph's `rbd diff --format json`, and `nbdinfo --json --map=CONTEXT`
//! output (QEMU's dirty bitmaps, blocksnap's changed-block contexts).
//! Byte ranges round outward: a block is listed if any of its bytes is.
//! Memory is one bit per block of the image, whatever the list holds.

use super::{parse_changed_blocks, BlockSet};
use crate::ids::BLOCK_SIZE;

/// A change list's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeFormat {
    /// One block index or inclusive range `A-B` per line (`#` comments).
    Lines,
    /// `thin_delta --snap1 A --snap2 B METADATA`: `<different>`,
    /// `<left_only>` and `<right_only>` ranges, in data blocks of the
    /// superblock's `data_block_size` sectors.
    ThinDelta,
    /// `rbd diff --format json`: `[{"offset", "length", "exists"}]` in
    /// bytes; every range changed (`exists: false` was discarded, reads
    /// zero now).
    RbdDiff,
    /// `nbdinfo --json --map=CONTEXT`: `[{"offset", "length", "type"}]`;
    /// ranges whose type has bit 0 set changed (dirty in a QEMU bitmap,
    /// changed in `blocksnap:changed:BASE`).
    NbdinfoMap,
}

impl ChangeFormat {
    /// Parses a format name: `lines`, `thin-delta`, `rbd-diff`,
    /// `nbdinfo-map`.
    pub fn parse(name: &str) -> Option<ChangeFormat> {
        match name {
            "lines" => Some(ChangeFormat::Lines),
            "thin-delta" => Some(ChangeFormat::ThinDelta),
            "rbd-diff" => Some(ChangeFormat::RbdDiff),
            "nbdinfo-map" => Some(ChangeFormat::NbdinfoMap),
            _ => None,
        }
    }

    /// Recognizes a list's format from its text: XML is `thin_delta`'s, a
    /// JSON array is `rbd diff`'s when its entries say `exists` and
    /// nbdinfo's otherwise, anything else is lines.
    pub fn detect(text: &str) -> ChangeFormat {
        let start = text.trim_start();
        if start.starts_with('<') {
            ChangeFormat::ThinDelta
        } else if start.starts_with('[') {
            if text.contains("\"exists\"") {
                ChangeFormat::RbdDiff
            } else {
                ChangeFormat::NbdinfoMap
            }
        } else {
            ChangeFormat::Lines
        }
    }
}

/// Why a change list was refused: the line (from 1) when the format has
/// lines that matter, and what is wrong.
pub type ChangeListError = (Option<usize>, String);

/// The block indexes a change list names for an image of `image_bytes`
/// bytes, ascending and distinct; `format` `None` detects it.
pub fn parse_change_list(
    text: &str,
    format: Option<ChangeFormat>,
    image_bytes: u64,
) -> Result<Vec<u32>, ChangeListError> {
    let whole = |message: String| (None, message);
    let blocks = u32::try_from(image_bytes.div_ceil(BLOCK_SIZE as u64))
        .map_err(|_| whole("the image is larger than 64 TiB".into()))?;
    let mut marked = Marked::new(blocks, image_bytes);
    match format.unwrap_or_else(|| ChangeFormat::detect(text)) {
        ChangeFormat::Lines => {
            return parse_changed_blocks(text, blocks)
                .map_err(|(line, message)| (Some(line), message))
        }
        ChangeFormat::ThinDelta => thin_delta(text, &mut marked).map_err(whole)?,
        ChangeFormat::RbdDiff => json_ranges(text, &mut marked, |_| true).map_err(whole)?,
        ChangeFormat::NbdinfoMap => json_ranges(text, &mut marked, |entry| {
            entry["type"].as_u64().is_some_and(|kind| kind & 1 != 0)
        })
        .map_err(whole)?,
    }
    Ok(marked.blocks.indexes())
}

/// The blocks marked so far, and the image's length.
struct Marked {
    blocks: BlockSet,
    image_bytes: u64,
}

impl Marked {
    fn new(blocks: u32, image_bytes: u64) -> Marked {
        Marked {
            blocks: BlockSet::new(blocks),
            image_bytes,
        }
    }

    /// Marks the blocks bytes `[offset, offset + length)` touch.
    fn bytes(&mut self, offset: u64, length: u64) -> Result<(), String> {
        if length == 0 {
            return Ok(());
        }
        let end = offset
            .checked_add(length)
            .filter(|end| *end <= self.image_bytes)
            .ok_or_else(|| {
                format!(
                    "{length} bytes at {offset} reach beyond the image's {} bytes",
                    self.image_bytes
                )
            })?;
        let first = offset / BLOCK_SIZE as u64;
        let last = (end - 1) / BLOCK_SIZE as u64;
        for index in first..=last {
            self.blocks.insert(index);
        }
        Ok(())
    }
}

/// The attribute `name="value"` of one XML tag's text.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = tag;
    while let Some(at) = rest.find(name) {
        let before = rest[..at].chars().last();
        let after = &rest[at + name.len()..];
        if before.is_some_and(char::is_whitespace) {
            if let Some(value) = after.trim_start().strip_prefix('=') {
                let value = value.trim_start();
                let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
                let value = &value[1..];
                return value.find(quote).map(|end| &value[..end]);
            }
        }
        rest = after;
    }
    None
}

/// `thin_delta`'s XML: the tags are its fixed output, one per element, so
/// a scan of tags and attributes reads it (no XML library needed).
fn thin_delta(text: &str, marked: &mut Marked) -> Result<(), String> {
    let number = |tag: &str, name: &str| -> Result<u64, String> {
        attribute(tag, name)
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| format!("<{tag}> has no numeric {name}"))
    };
    let mut block_bytes = None;
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let close = rest[open..]
            .find('>')
            .ok_or_else(|| "an unterminated tag".to_string())?;
        let tag = rest[open + 1..open + close].trim_end_matches('/').trim();
        rest = &rest[open + close + 1..];
        let name = tag.split_whitespace().next().unwrap_or_default();
        match name {
            "superblock" => {
                let sectors = number(tag, "data_block_size")?;
                if sectors == 0 {
                    return Err("data_block_size is 0".into());
                }
                block_bytes = Some(sectors * 512);
            }
            "different" | "left_only" | "right_only" => {
                let size =
                    block_bytes.ok_or_else(|| "a range before the <superblock> tag".to_string())?;
                let begin = number(tag, "begin")?;
                let length = number(tag, "length")?;
                let (offset, bytes) = begin
                    .checked_mul(size)
                    .zip(length.checked_mul(size))
                    .ok_or_else(|| format!("<{tag}> overflows"))?;
                // The thin device may be larger than the image: clip.
                let end = offset.saturating_add(bytes).min(marked.image_bytes);
                marked.bytes(offset.min(end), end - offset.min(end))?;
            }
            _ => {}
        }
    }
    if block_bytes.is_none() {
        return Err("no <superblock> tag: not thin_delta output".into());
    }
    Ok(())
}

/// A JSON array of `{offset, length, ...}` byte ranges; `changed` picks
/// the entries that count.
fn json_ranges(
    text: &str,
    marked: &mut Marked,
    changed: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), String> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|error| format!("not a JSON array: {error}"))?;
    for (position, entry) in entries.iter().enumerate() {
        let field = |name: &str| {
            entry[name]
                .as_u64()
                .ok_or_else(|| format!("entry {position} has no numeric \"{name}\""))
        };
        let (offset, length) = (field("offset")?, field("length")?);
        if changed(entry) {
            marked.bytes(offset, length)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = BLOCK_SIZE as u64;

    #[test]
    fn thin_delta_ranges_are_data_blocks_of_the_superblocks_size() {
        // 128 sectors = 64 KiB data blocks: 8 per 512 KiB block.
        let xml = r#"<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
  <diff left="1" right="2">
    <same begin="0" length="4"/>
    <different begin="4" length="2"/>
    <same begin="6" length="4"/>
    <left_only begin="40" length="1"/>
    <right_only begin="50" length="9"/>
  </diff>
</superblock>"#;
        assert_eq!(ChangeFormat::detect(xml), ChangeFormat::ThinDelta);
        assert_eq!(
            parse_change_list(xml, None, 16 * BLOCK),
            Ok(vec![0, 5, 6, 7])
        );
        assert!(parse_change_list("<diff/>", Some(ChangeFormat::ThinDelta), BLOCK).is_err());
    }

    #[test]
    fn rbd_diff_counts_every_range_and_nbdinfo_only_dirty_ones() {
        let rbd = r#"[{"offset":0,"length":4194304,"exists":"true"},{"offset":8388608,"length":1,"exists":"false"}]"#;
        assert_eq!(ChangeFormat::detect(rbd), ChangeFormat::RbdDiff);
        assert_eq!(
            parse_change_list(rbd, None, 32 * BLOCK),
            Ok(vec![0, 1, 2, 3, 4, 5, 6, 7, 16])
        );
        let map = r#"[{"offset":0,"length":524289,"type":1,"description":"dirty"},{"offset":524289,"length":3145727,"type":0,"description":"clean"},{"offset":3670016,"length":65536,"type":1,"description":"dirty"}]"#;
        assert_eq!(ChangeFormat::detect(map), ChangeFormat::NbdinfoMap);
        assert_eq!(parse_change_list(map, None, 8 * BLOCK), Ok(vec![0, 1, 7]));
    }

    #[test]
    fn ranges_beyond_the_image_and_malformed_entries_are_errors() {
        assert!(parse_change_list(r#"[{"offset":0,"length":2,"type":1}]"#, None, 1).is_err());
        assert!(parse_change_list(r#"[{"offset":"0","length":2,"type":1}]"#, None, BLOCK).is_err());
        assert!(parse_change_list("[", None, BLOCK).is_err());
        assert_eq!(
            parse_change_list("1\n3-4\n", None, 8 * BLOCK),
            Ok(vec![1, 3, 4])
        );
        assert_eq!(
            ChangeFormat::parse("thin-delta"),
            Some(ChangeFormat::ThinDelta)
        );
        assert_eq!(ChangeFormat::parse("xml"), None);
    }
}
