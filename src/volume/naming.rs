//! Volumes: which disk a snapshot is of. A backup records its volume's
//! name as the tag [`VOLUME_TAG`] (visible to EBS and EC2 clients as any
//! tag), and an incremental backup from cron finds its parent as the
//! newest completed snapshot of the same volume ([`latest_completed`]).

use crate::catalog::{SnapshotRecord, SnapshotState};
use crate::engine::{Engine, RequestedEncryption};
use crate::error::{Error, Result, ValidationReason};
use crate::format::catalog::SseKind;
use std::path::Path;

/// The tag a backup records its volume's name under.
pub const VOLUME_TAG: &str = "blocksnap:volume";

/// Longest volume name (EC2's longest tag value).
pub const MAX_VOLUME_NAME_CHARS: usize = 256;

/// The volume a snapshot is of, if its backup recorded one.
pub fn volume_of(record: &SnapshotRecord) -> Option<&str> {
    record
        .started
        .tags
        .iter()
        .find(|(key, _)| key == VOLUME_TAG)
        .map(|(_, value)| value.as_str())
}

/// Checks a volume name: 1 to 256 characters, as a tag value.
pub fn check_volume_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > MAX_VOLUME_NAME_CHARS {
        return Err(Error::invalid(
            ValidationReason::InvalidTag,
            format!("a volume name must be 1 to {MAX_VOLUME_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The volume name a backup of `image` records when none is given: for a
/// block device, its stable name under `/dev/disk/by-id` (the first in
/// order that resolves to it), which survives renumbering (`/dev/sdb`
/// becoming `/dev/sdc`); otherwise (a file, or a device without one) its
/// canonical path.
pub fn default_volume_name(image: &Path) -> Result<String> {
    let canonical = std::fs::canonicalize(image)
        .map_err(|error| Error::io(format!("resolving {}", image.display()), error))?;
    let is_block_device = {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(&canonical).is_ok_and(|meta| meta.file_type().is_block_device())
    };
    if is_block_device {
        if let Some(stable) = stable_device_name(&canonical, Path::new("/dev/disk/by-id")) {
            return Ok(stable);
        }
    }
    let name = canonical.to_string_lossy().into_owned();
    check_volume_name(&name).map_err(|_| {
        Error::invalid(
            ValidationReason::InvalidTag,
            format!(
                "the path {name} is longer than a volume name may be ({MAX_VOLUME_NAME_CHARS} characters): name the volume"
            ),
        )
    })?;
    Ok(name)
}

/// The first name in `directory` (sorted) that links to `device`.
fn stable_device_name(device: &Path, directory: &Path) -> Option<String> {
    let mut names: Vec<_> = std::fs::read_dir(directory)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|link| std::fs::canonicalize(link).is_ok_and(|target| target == device))
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .map(|link| link.to_string_lossy().into_owned())
}

/// Whether a snapshot's encryption is what `wanted` asks for: no key, the
/// default key, or the named key.
fn encryption_matches(record: &SnapshotRecord, wanted: &RequestedEncryption) -> bool {
    match wanted {
        RequestedEncryption::None => record.started.sse == SseKind::None,
        RequestedEncryption::DefaultKey => record.started.sse == SseKind::SseEbs,
        RequestedEncryption::Key(arn) => record.started.kms_key_arn.as_deref() == Some(arn),
    }
}

/// The newest completed snapshot (by start time, then completion time)
/// of the engine owner's `volume` whose encryption is what `wanted` asks
/// for: the parent of the next incremental backup of that volume (`backup
/// --parent latest`). `None` when there is none: the backup is a full one.
pub fn latest_completed(
    engine: &Engine,
    volume: &str,
    wanted: &RequestedEncryption,
) -> Option<SnapshotRecord> {
    engine
        .snapshots()
        .into_iter()
        .filter(|record| volume_of(record) == Some(volume) && encryption_matches(record, wanted))
        .filter_map(|record| match record.state {
            SnapshotState::Completed {
                completed_millis, ..
            } => Some((record.started.start_millis, completed_millis, record)),
            _ => None,
        })
        .max_by(|a, b| (a.0, a.1, a.2.started.snapshot).cmp(&(b.0, b.1, b.2.started.snapshot)))
        .map(|(_, _, record)| record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_named_by_its_first_stable_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("sdb");
        std::fs::write(&device, b"").expect("device");
        let links = dir.path().join("by-id");
        std::fs::create_dir(&links).expect("links");
        std::os::unix::fs::symlink(&device, links.join("wwn-0x5000")).expect("link");
        std::os::unix::fs::symlink(&device, links.join("ata-DISK_SERIAL")).expect("link");
        std::os::unix::fs::symlink(dir.path().join("other"), links.join("ata-OTHER"))
            .expect("link");
        let canonical = std::fs::canonicalize(&device).expect("canonical");
        assert_eq!(
            stable_device_name(&canonical, &links),
            Some(links.join("ata-DISK_SERIAL").to_string_lossy().into_owned())
        );
        assert_eq!(
            stable_device_name(&canonical, &dir.path().join("none")),
            None
        );
    }

    #[test]
    fn a_file_is_named_by_its_canonical_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.img");
        std::fs::write(&image, b"x").expect("image");
        let relative = dir.path().join(".").join("disk.img");
        assert_eq!(
            default_volume_name(&relative).expect("name"),
            std::fs::canonicalize(&image)
                .expect("canonical")
                .to_string_lossy()
        );
        assert!(default_volume_name(&dir.path().join("missing")).is_err());
        assert!(check_volume_name("").is_err());
        assert!(check_volume_name(&"v".repeat(257)).is_err());
        assert!(check_volume_name(&"v".repeat(256)).is_ok());
    }
}
