//! Operations beyond the six of the EBS direct API, in the same style:
//! cancelling a pending snapshot and deleting a snapshot.

use super::types::{
    CancelSnapshotRequest, CancelSnapshotResponse, DeleteSnapshotRequest, DescribeSnapshotRequest,
    SnapshotDescription,
};
use super::Ebs;
use super::{start_response, status_of, validate};
use crate::catalog::SnapshotState;
use crate::clock::millis_to_system_time;
use crate::error::Result;

impl Ebs<'_> {
    /// Cancels a pending snapshot: it moves to `error` exactly as a timeout
    /// would, later puts and completes are refused, and the blocks only it
    /// wrote become garbage for the collector.
    pub fn cancel_snapshot(
        &self,
        request: CancelSnapshotRequest,
    ) -> Result<CancelSnapshotResponse> {
        let snapshot = validate::snapshot_id("SnapshotId", &request.snapshot_id)?;
        let record = self.engine.cancel(snapshot)?;
        Ok(CancelSnapshotResponse {
            status: status_of(&record),
        })
    }

    /// Deletes a completed or failed snapshot. It disappears from every
    /// operation at once; the blocks and map nodes no other snapshot
    /// references become garbage for the collector. A pending snapshot must
    /// be cancelled first, and a snapshot cannot be deleted while it is the
    /// parent of a pending one. Children of a deleted snapshot stay whole.
    pub fn delete_snapshot(&self, request: DeleteSnapshotRequest) -> Result<()> {
        let snapshot = validate::snapshot_id("SnapshotId", &request.snapshot_id)?;
        self.engine.delete(snapshot)
    }

    /// Describes one snapshot: its StartSnapshot parameters, status, and
    /// the lifecycle times and reasons. A pending snapshot's deadline is
    /// applied first, as on every access.
    pub fn describe_snapshot(
        &self,
        request: DescribeSnapshotRequest,
    ) -> Result<SnapshotDescription> {
        let snapshot = validate::snapshot_id("SnapshotId", &request.snapshot_id)?;
        let (record, deadline) = self.engine.describe(snapshot)?;
        let mut description = SnapshotDescription {
            snapshot: start_response(&record),
            timeout: record.started.timeout_minutes as i32,
            deadline: deadline.map(millis_to_system_time),
            completion_time: None,
            changed_blocks_count: None,
            error_time: None,
            error_reason: None,
        };
        match record.state {
            SnapshotState::Pending => {}
            SnapshotState::Completed {
                completed_millis,
                changed_blocks,
                ..
            } => {
                description.completion_time = Some(millis_to_system_time(completed_millis));
                description.changed_blocks_count = Some(i64::from(changed_blocks));
            }
            SnapshotState::Error { at_millis, reason } => {
                description.error_time = Some(millis_to_system_time(at_millis));
                description.error_reason = Some(reason);
            }
        }
        Ok(description)
    }

    /// Describes every snapshot of the caller's, oldest start first (ties by
    /// id): pending, completed and failed ones; deleted ones are gone.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotDescription>> {
        let mut records = self.engine.snapshots();
        records.sort_by_key(|record| (record.started.start_millis, record.started.snapshot));
        let mut descriptions = Vec::with_capacity(records.len());
        for record in records {
            let request = DescribeSnapshotRequest {
                snapshot_id: record.started.snapshot.to_string(),
            };
            match self.describe_snapshot(request) {
                Ok(description) => descriptions.push(description),
                // Deleted since the records were read.
                Err(crate::Error::NotFound { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(descriptions)
    }

    /// [`Ebs::describe_snapshot`] on tokio's blocking pool.
    pub async fn describe_snapshot_async(
        &self,
        request: DescribeSnapshotRequest,
    ) -> Result<SnapshotDescription> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).describe_snapshot(request))
            .await
    }

    /// [`Ebs::cancel_snapshot`] on tokio's blocking pool.
    pub async fn cancel_snapshot_async(
        &self,
        request: CancelSnapshotRequest,
    ) -> Result<CancelSnapshotResponse> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).cancel_snapshot(request))
            .await
    }

    /// [`Ebs::delete_snapshot`] on tokio's blocking pool.
    pub async fn delete_snapshot_async(&self, request: DeleteSnapshotRequest) -> Result<()> {
        self.engine
            .run_blocking(move |engine| Ebs::new(engine).delete_snapshot(request))
            .await
    }
}
