//! Leaving `pending` other than by completion, and leaving the catalog:
//! timeouts (lazily on access and by the reaper), explicit cancellation,
//! and deletion.

use super::{Engine, EngineInner};
use crate::catalog::{SnapshotRecord, SnapshotState};
use crate::error::Result;
use crate::ids::SnapshotId;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How every timeout's failure reason starts (the catalog keeps reasons as
/// text; writes to a timed-out snapshot answer `WRITE_REQUEST_TIMEOUT`).
pub(crate) const TIMEOUT_REASON_PREFIX: &str = "Timed out";

/// The failure reason of an explicit cancellation.
pub(crate) const CANCEL_REASON: &str = "Cancelled by the caller.";

/// The longest the reaper sleeps without looking, so a wall clock that
/// jumps is noticed within this bound.
const REAPER_MAX_SLEEP: Duration = Duration::from_secs(60);

impl Engine {
    /// Cancels every pending snapshot whose deadline has passed; returns the
    /// earliest deadline still ahead, if any snapshot is pending.
    pub(crate) fn expire_due(&self) -> Result<Option<u64>> {
        self.check_transitions_writable()?;
        let now = self.now_millis();
        let sessions: Vec<_> = self.inner.sessions.read().values().cloned().collect();
        let mut next = None;
        for session in sessions {
            // Whether it ever completed is unknown: only repair or an
            // explicit cancel may decide it.
            if session.unprovable.is_some() || session.elsewhere {
                continue;
            }
            if session.deadline_millis() <= now {
                let guard = self.inner.reference_guard.read();
                match self.lock_live(&guard, &session) {
                    // A put moved the deadline since it was read.
                    Ok(_) => {}
                    Err(error) if error.is_fatal_io() => return Err(error),
                    // Cancelled now, or it left `pending` meanwhile.
                    Err(_) => continue,
                }
            }
            let deadline = session.deadline_millis();
            next = Some(next.map_or(deadline, |next: u64| next.min(deadline)));
        }
        Ok(next)
    }

    /// Spawns the reaper on the current tokio runtime, if there is one. It
    /// holds only a weak reference and is aborted when the engine drops.
    pub(super) fn start_reaper(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn(reap(
            Arc::downgrade(&self.inner),
            self.inner.reaper_wake.clone(),
        ));
        *self.inner.reaper.lock() = Some(task.abort_handle());
    }

    /// Cancels a pending snapshot (an extension beyond the EBS API): the
    /// same path as a timeout, with its own reason. The blocks only it
    /// wrote become garbage for the collector. Needs no free space (a
    /// backup that filled the disk can cancel its snapshot).
    pub fn cancel(&self, snapshot: SnapshotId) -> Result<SnapshotRecord> {
        self.check_transitions_writable()?;
        let session = self.session(snapshot)?;
        session.check_here()?;
        let guard = self.inner.reference_guard.read();
        let state = self.lock_live(&guard, &session)?;
        self.fail_pending(&session, state, CANCEL_REASON.to_string())?;
        self.snapshot(snapshot)
    }

    /// A snapshot's record after applying its deadline (a pending snapshot
    /// whose timeout passed is cancelled first), and the deadline still
    /// ahead, epoch milliseconds, if it is pending.
    pub fn describe(&self, snapshot: SnapshotId) -> Result<(SnapshotRecord, Option<u64>)> {
        let record = self.snapshot(snapshot)?;
        let session = self.inner.sessions.read().get(&snapshot).cloned();
        let Some(session) = session else {
            return Ok((record, None));
        };
        let guard = self.inner.reference_guard.read();
        let deadline = match self.lock_live(&guard, &session) {
            Ok(_) => Some(session.deadline_millis()),
            Err(error) if error.is_fatal_io() => return Err(error),
            // Timed out just now, or completed meanwhile.
            Err(_) => None,
        };
        Ok((self.snapshot(snapshot)?, deadline))
    }

    /// Deletes a completed or failed snapshot: it leaves the catalog at once
    /// (the catalog record is the commit point) and its references are
    /// dropped, so the chunks only it held die and the collector can
    /// reclaim them. Work is proportional to what dies, not to the volume.
    /// A pending snapshot must be cancelled first, and the parent of a
    /// pending one cannot be deleted; children stay whole, and an open
    /// [`super::SnapshotReader`] keeps reading it until it is dropped.
    pub fn delete(&self, snapshot: SnapshotId) -> Result<()> {
        self.check_transitions_writable()?;
        // Serialized with starts: no child can pick this snapshot as its
        // parent between the check and the release.
        let _serial = self.inner.start_lock.lock();
        // Only the owner's snapshots; the catalog checks the state.
        self.snapshot(snapshot)?;
        let now = self.now_millis();
        let _guard = self.inner.reference_guard.read();
        // The state as deleted, not as read before: a pending snapshot
        // completed meanwhile must have its root released.
        let deleted =
            self.poison_catalog_on_io(self.rebasing(|| self.inner.catalog.delete(snapshot, now)))?;
        if let SnapshotState::Completed { root, .. } = deleted.state {
            self.inner.references.release_tree(&self.maps(), root);
        }
        Ok(())
    }

    /// Replaces the tags of one of the owner's snapshots (in any state)
    /// with what `edit` makes of them (EC2's CreateTags and DeleteTags;
    /// `blocksnap tag`), and returns the new tags. `edit` sees the tags
    /// as they are when the change is recorded, so concurrent edits of one
    /// snapshot, in this process or another writer of a shared store,
    /// never lose each other's changes. Tags change nothing else: the
    /// snapshot's blocks, state and lineage are untouched.
    pub fn retag(
        &self,
        snapshot: SnapshotId,
        edit: impl Fn(&[(String, String)]) -> Result<Vec<(String, String)>>,
    ) -> Result<Vec<(String, String)>> {
        self.check_transitions_writable()?;
        // Only the owner's snapshots.
        self.snapshot(snapshot)?;
        let now = self.now_millis();
        self.poison_catalog_on_io(self.rebasing(|| self.inner.catalog.retag(snapshot, now, &edit)))
    }
}

/// The reaper: cancels timed-out snapshots at their deadlines.
async fn reap(engine: Weak<EngineInner>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let sleep = {
            let Some(inner) = engine.upgrade() else {
                return;
            };
            // Expiry is the same for every owner's snapshots.
            let owner = std::sync::Arc::from(inner.config.owner_id.as_str());
            let engine = Engine { inner, owner };
            match engine.run_blocking(Engine::expire_due).await {
                Ok(Some(deadline)) => {
                    Duration::from_millis(deadline.saturating_sub(engine.now_millis()))
                        .min(REAPER_MAX_SLEEP)
                }
                // Nothing pending, or the engine is poisoned (every write
                // fails until it is reopened): wait to be woken.
                Ok(None) | Err(_) => REAPER_MAX_SLEEP,
            }
        };
        // Woken early when a snapshot starts; otherwise at the deadline.
        let _ = tokio::time::timeout(sleep, wake.notified()).await;
    }
}
