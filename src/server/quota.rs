//! Request-rate quotas, per owner and per snapshot, with the AWS defaults
//! (DESIGN.md §15). A request over its quota gets RequestThrottledException,
//! which the SDKs retry with back-off as they do against AWS.

use crate::error::Error;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests per second allowed; 0 means unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// StartSnapshot per owner (AWS: 10).
    pub start_snapshot: u32,
    /// CompleteSnapshot per owner (AWS: 10).
    pub complete_snapshot: u32,
    /// PutSnapshotBlock per owner (AWS: 1,000).
    pub put_snapshot_block: u32,
    /// PutSnapshotBlock per snapshot (AWS: 1,000).
    pub put_snapshot_block_per_snapshot: u32,
    /// GetSnapshotBlock per owner (AWS: 1,000).
    pub get_snapshot_block: u32,
    /// GetSnapshotBlock per snapshot (AWS: 1,000).
    pub get_snapshot_block_per_snapshot: u32,
    /// ListSnapshotBlocks per owner (AWS: 50).
    pub list_snapshot_blocks: u32,
    /// ListChangedBlocks per owner (AWS: 50).
    pub list_changed_blocks: u32,
    /// Each of EC2's DescribeSnapshots and DescribeTags per owner (AWS
    /// refills its non-mutating actions' bucket at 20 a second).
    pub ec2_describe: u32,
    /// Each of EC2's CopySnapshot, DeleteSnapshot, CreateTags and
    /// DeleteTags per owner (AWS refills its mutating actions' bucket at 5
    /// a second).
    pub ec2_modify: u32,
}

impl Default for RateLimits {
    /// The AWS defaults ("Quotas for Amazon EBS").
    fn default() -> Self {
        RateLimits {
            start_snapshot: 10,
            complete_snapshot: 10,
            put_snapshot_block: 1000,
            put_snapshot_block_per_snapshot: 1000,
            get_snapshot_block: 1000,
            get_snapshot_block_per_snapshot: 1000,
            list_snapshot_blocks: 50,
            list_changed_blocks: 50,
            ec2_describe: 20,
            ec2_modify: 5,
        }
    }
}

impl RateLimits {
    /// No limits at all.
    pub fn unlimited() -> RateLimits {
        RateLimits {
            start_snapshot: 0,
            complete_snapshot: 0,
            put_snapshot_block: 0,
            put_snapshot_block_per_snapshot: 0,
            get_snapshot_block: 0,
            get_snapshot_block_per_snapshot: 0,
            list_snapshot_blocks: 0,
            list_changed_blocks: 0,
            ec2_describe: 0,
            ec2_modify: 0,
        }
    }

    /// Sets one limit by its name: the operation (per owner), the
    /// operation followed by `PerSnapshot`, or `Ec2Describe` / `Ec2Modify`
    /// for EC2's actions.
    pub fn set(&mut self, name: &str, per_second: u32) -> Result<(), String> {
        let slot = match name {
            "StartSnapshot" => &mut self.start_snapshot,
            "CompleteSnapshot" => &mut self.complete_snapshot,
            "PutSnapshotBlock" => &mut self.put_snapshot_block,
            "PutSnapshotBlockPerSnapshot" => &mut self.put_snapshot_block_per_snapshot,
            "GetSnapshotBlock" => &mut self.get_snapshot_block,
            "GetSnapshotBlockPerSnapshot" => &mut self.get_snapshot_block_per_snapshot,
            "ListSnapshotBlocks" => &mut self.list_snapshot_blocks,
            "ListChangedBlocks" => &mut self.list_changed_blocks,
            "Ec2Describe" => &mut self.ec2_describe,
            "Ec2Modify" => &mut self.ec2_modify,
            other => return Err(format!("no rate limit is named '{other}'")),
        };
        *slot = per_second;
        Ok(())
    }

    fn per_owner(&self, operation: &str) -> u32 {
        match operation {
            "StartSnapshot" => self.start_snapshot,
            "CompleteSnapshot" => self.complete_snapshot,
            "PutSnapshotBlock" => self.put_snapshot_block,
            "GetSnapshotBlock" => self.get_snapshot_block,
            "ListSnapshotBlocks" => self.list_snapshot_blocks,
            "ListChangedBlocks" => self.list_changed_blocks,
            "DescribeSnapshots" | "DescribeTags" => self.ec2_describe,
            "CopySnapshot" | "DeleteSnapshot" | "CreateTags" | "DeleteTags" => self.ec2_modify,
            _ => 0,
        }
    }

    fn per_snapshot(&self, operation: &str) -> u32 {
        match operation {
            "PutSnapshotBlock" => self.put_snapshot_block_per_snapshot,
            "GetSnapshotBlock" => self.get_snapshot_block_per_snapshot,
            _ => 0,
        }
    }
}

const OPERATIONS: [&str; 12] = [
    "StartSnapshot",
    "CompleteSnapshot",
    "PutSnapshotBlock",
    "GetSnapshotBlock",
    "ListSnapshotBlocks",
    "ListChangedBlocks",
    "DescribeSnapshots",
    "DescribeTags",
    "CopySnapshot",
    "DeleteSnapshot",
    "CreateTags",
    "DeleteTags",
];

/// Forget idle keys after this many checks, so the key maps stay small.
const CLEANUP_EVERY: u64 = 65_536;

type Limiter = DefaultKeyedRateLimiter<String>;

fn limiter(per_second: u32) -> Option<Limiter> {
    NonZeroU32::new(per_second).map(|rate| RateLimiter::keyed(Quota::per_second(rate)))
}

/// The limiter of `operation` among `limiters`, if it is limited.
fn find<'a>(
    limiters: &'a [(&'static str, Option<Limiter>)],
    operation: &str,
) -> Option<&'a Limiter> {
    limiters
        .iter()
        .find(|(name, _)| *name == operation)
        .and_then(|(_, limiter)| limiter.as_ref())
}

/// The limiters of [`RateLimits`]: a bucket per owner (or snapshot) and
/// operation, refilled continuously, holding one second of requests.
pub(crate) struct Throttle {
    per_owner: Vec<(&'static str, Option<Limiter>)>,
    per_snapshot: Vec<(&'static str, Option<Limiter>)>,
    checks: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(limits: &RateLimits) -> Throttle {
        Throttle {
            per_owner: OPERATIONS
                .iter()
                .map(|operation| (*operation, limiter(limits.per_owner(operation))))
                .collect(),
            per_snapshot: OPERATIONS
                .iter()
                .map(|operation| (*operation, limiter(limits.per_snapshot(operation))))
                .collect(),
            checks: AtomicU64::new(0),
        }
    }

    /// Admits a request of `operation` by `owner` on `snapshot`, or refuses
    /// it with RequestThrottledException.
    pub(crate) fn admit(&self, operation: &str, owner: &str, snapshot: &str) -> Result<(), Error> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % CLEANUP_EVERY == CLEANUP_EVERY - 1 {
            for (_, limiter) in self.per_owner.iter().chain(&self.per_snapshot) {
                if let Some(limiter) = limiter {
                    limiter.retain_recent();
                }
            }
        }
        if let Some(limiter) = find(&self.per_owner, operation) {
            if limiter.check_key(&owner.to_string()).is_err() {
                return Err(Error::Throttled {
                    per_resource: false,
                    message: format!(
                        "{operation} requests of account {owner} exceed its rate quota."
                    ),
                });
            }
        }
        if let Some(limiter) = find(&self.per_snapshot, operation).filter(|_| !snapshot.is_empty())
        {
            if limiter.check_key(&snapshot.to_string()).is_err() {
                return Err(Error::Throttled {
                    per_resource: true,
                    message: format!("{operation} requests on {snapshot} exceed its rate quota."),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_the_quota_is_refused_per_owner_and_per_snapshot() {
        let mut limits = RateLimits::unlimited();
        limits.set("StartSnapshot", 3).expect("set");
        limits.set("PutSnapshotBlockPerSnapshot", 2).expect("set");
        assert!(limits.set("Nothing", 1).is_err());
        let throttle = Throttle::new(&limits);
        let admitted = (0..10)
            .filter(|_| throttle.admit("StartSnapshot", "a", "").is_ok())
            .count();
        assert_eq!(admitted, 3, "one second's worth");
        assert!(
            throttle.admit("StartSnapshot", "b", "").is_ok(),
            "per owner"
        );
        assert!(
            throttle.admit("CompleteSnapshot", "a", "").is_ok(),
            "unlimited"
        );
        assert!(throttle.admit("PutSnapshotBlock", "a", "snap-1").is_ok());
        assert!(throttle.admit("PutSnapshotBlock", "b", "snap-1").is_ok());
        assert!(matches!(
            throttle.admit("PutSnapshotBlock", "c", "snap-1"),
            Err(Error::Throttled {
                per_resource: true,
                ..
            })
        ));
        assert!(throttle.admit("PutSnapshotBlock", "a", "snap-2").is_ok());
    }
}
