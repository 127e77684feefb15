//! What the store keeps of a batch: its counts and its callback, and the
//! callback's enqueue once the counts say the batch is complete. Below
//! the client and the worker, which both update a batch.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::JobId;
use crate::broker::{Broker, Message};
use crate::store::{BatchCounts, BatchUpdate, Store};
use crate::{Error, headers};

/// How long a store keeps a batch's counts by default.
pub const DEFAULT_BATCH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The payload of a batch's callback job: the batch and how its members
/// ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchDone {
    /// The batch's id.
    pub batch: String,
    /// Its members.
    pub total: u64,
    /// The members that succeeded.
    pub succeeded: u64,
    /// The members that were dead-lettered.
    pub dead_lettered: u64,
    /// What the batch was given at creation ([`BatchBuilder::data`](super::BatchBuilder::data)).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// A batch's progress ([`Client::batch_progress`](crate::Client::batch_progress)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchProgress {
    /// Members added.
    pub total: u64,
    /// Members not finished yet.
    pub pending: u64,
    /// Members that succeeded.
    pub succeeded: u64,
    /// Members that were dead-lettered.
    pub failed: u64,
    /// Whether it is closed (no member will be added).
    pub closed: bool,
    /// Whether its callback was enqueued (or, for a callback only on
    /// success, found not due).
    pub callback_enqueued: bool,
}

impl From<BatchCounts> for BatchProgress {
    fn from(counts: BatchCounts) -> Self {
        Self {
            total: counts.total,
            pending: counts.pending(),
            succeeded: counts.succeeded,
            failed: counts.dead_lettered,
            closed: counts.closed,
            callback_enqueued: counts.fired,
        }
    }
}

/// The callback as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Callback {
    pub(super) job: String,
    pub(super) queue: String,
    pub(super) only_on_success: bool,
    #[serde(default)]
    pub(super) data: serde_json::Value,
}

pub(crate) fn signed(members: usize) -> i64 {
    i64::try_from(members).unwrap_or(i64::MAX)
}

/// Takes back `members` of batch `batch` counted but not stored; if that
/// completes a closed batch (the others all finished), the callback goes
/// now. A failure is logged, not returned: the members that were stored
/// are, and the caller must not enqueue them again.
pub(crate) async fn uncount(broker: &dyn Broker, store: &dyn Store, batch: &str, members: usize) {
    if members == 0 {
        return;
    }
    let uncounted = async {
        let counts = store
            .batch_update(batch, BatchUpdate::Add(-signed(members)), CLOSER)
            .await?
            .ok_or_else(|| gone(batch))?;
        fire(broker, store, batch, counts, CLOSER).await
    };
    if let Err(error) = uncounted.await {
        tracing::error!(batch, members, %error, "could not take back batch members that were not stored: the batch waits for them (close it again to retry its callback)");
    }
}

/// Who claims a callback when the batch completes as it closes (or as a
/// member whose enqueue failed is uncounted).
pub(crate) const CLOSER: &str = "client";

pub(crate) fn gone(batch: &str) -> Error {
    Error::Store {
        operation: "update a batch".into(),
        message: format!("no batch {batch} (never created, or expired)"),
    }
}

/// Closes batch `batch` and enqueues its callback if that completed it.
pub(crate) async fn close(
    broker: &dyn Broker,
    store: &dyn Store,
    batch: &str,
) -> Result<BatchProgress, Error> {
    let counts = store
        .batch_update(batch, BatchUpdate::Close, CLOSER)
        .await?
        .ok_or_else(|| gone(batch))?;
    let counts = fire(broker, store, batch, counts, CLOSER).await?;
    Ok(counts.into())
}

/// The job id of batch `batch`'s callback.
pub fn callback_id(batch: &str) -> JobId {
    JobId::from(format!("{batch}:done"))
}

/// Enqueues the callback of batch `batch` if `claimant` claimed it and it
/// is not enqueued yet, then records it enqueued; returns the counts after.
pub(crate) async fn fire(
    broker: &dyn Broker,
    store: &dyn Store,
    batch: &str,
    counts: BatchCounts,
    claimant: &str,
) -> Result<BatchCounts, Error> {
    if counts.fired || counts.claimed_by.as_deref() != Some(claimant) {
        return Ok(counts);
    }
    let callback: Callback = serde_json::from_str(&counts.callback).map_err(|e| Error::Store {
        operation: "read a batch's callback".into(),
        message: e.to_string(),
    })?;
    if !(callback.only_on_success && counts.dead_lettered > 0) {
        let done = BatchDone {
            batch: batch.to_owned(),
            total: counts.total,
            succeeded: counts.succeeded,
            dead_lettered: counts.dead_lettered,
            data: callback.data,
        };
        let body = serde_json::to_vec(&done).expect("a batch's outcome serializes");
        let mut message: Message = headers::new_job(&callback_id(batch), body);
        crate::trace::inject(&mut message.headers);
        broker.publish(&callback.queue, message).await?;
        tracing::info!(batch, job = %callback.job, "batch complete: callback enqueued");
    }
    Ok(store
        .batch_update(batch, BatchUpdate::Fired, claimant)
        .await?
        .unwrap_or(counts))
}

/// The progress of batch `batch` in `store`.
pub(crate) async fn progress(
    store: &dyn Store,
    batch: &str,
) -> Result<Option<BatchProgress>, Error> {
    Ok(store
        .batch_update(batch, BatchUpdate::Read, "")
        .await?
        .map(BatchProgress::from))
}
