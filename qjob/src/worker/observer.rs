//! [`Observer`]: a hook told about every settled attempt (the test harness
//! records them; metrics can count them).

use std::time::Duration;

use crate::JobId;

/// How a settled attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// The handler succeeded; the message was acked.
    Succeeded,
    /// The attempt failed and the next one was scheduled.
    Retrying {
        /// The error, with its sources.
        error: String,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The job went to the dead-letter queue.
    DeadLettered {
        /// Why.
        reason: crate::DeadReason,
        /// The error, with its sources.
        error: String,
    },
}

impl AttemptOutcome {
    /// The outcome's name in metrics and spans: `succeeded`, `retried` or
    /// `dead_lettered`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Retrying { .. } => "retried",
            AttemptOutcome::DeadLettered { .. } => "dead_lettered",
        }
    }

    /// Whether the handler failed: a retry, or a dead letter other than a
    /// malformed or cancelled job (neither is a handler's failure).
    pub(crate) fn is_handler_failure(&self) -> bool {
        match self {
            AttemptOutcome::Succeeded => false,
            AttemptOutcome::Retrying { .. } => true,
            AttemptOutcome::DeadLettered { reason, .. } => !matches!(
                reason,
                crate::DeadReason::Malformed | crate::DeadReason::Cancelled
            ),
        }
    }
}

/// One settled attempt.
#[derive(Debug)]
#[non_exhaustive]
pub struct AttemptEvent<'a> {
    /// The job type's name.
    pub job: &'static str,
    /// The work queue.
    pub queue: &'a str,
    /// The job's id.
    pub job_id: &'a JobId,
    /// The attempt number (1-based).
    pub attempt: u32,
    /// Whether the broker redelivered the message.
    pub redelivered: bool,
    /// The message body as delivered.
    pub payload: &'a [u8],
    /// How it ended.
    pub outcome: &'a AttemptOutcome,
}

/// Told about every attempt once its outcome is settled on the broker (the
/// retry or dead letter confirmed, the original acked). Called on the
/// handler's task: keep it quick.
pub trait Observer: Send + Sync + 'static {
    /// An attempt was settled.
    fn attempt_settled(&self, event: &AttemptEvent<'_>);
}
