//! The worker's metrics, through the `metrics` crate: install any recorder
//! (metrics-exporter-prometheus, say) and they appear. Names, types and
//! labels are documented in `docs/metrics.md`.

use std::time::{Duration, SystemTime};

use metrics::{counter, gauge, histogram};

use crate::worker::observer::AttemptOutcome;

/// A delivery was taken from `queue`.
pub(crate) fn consumed(queue: &str) {
    counter!("qjob_jobs_consumed_total", "queue" => queue.to_owned()).increment(1);
}

/// A settlement's publish (a retry, a dead letter) failed and is tried
/// again while its delivery is held.
pub(crate) fn settlement_failed(queue: &str) {
    counter!("qjob_settlement_failures_total", "queue" => queue.to_owned()).increment(1);
}

/// How long a job waited between its first enqueue and this attempt.
pub(crate) fn time_in_queue(queue: &str, enqueued_at: SystemTime) {
    let waited = SystemTime::now()
        .duration_since(enqueued_at)
        .unwrap_or_default();
    histogram!("qjob_time_in_queue_seconds", "queue" => queue.to_owned())
        .record(waited.as_secs_f64());
}

/// Handlers of `queue` running now: +1 at start, -1 at the end.
pub(crate) fn in_flight(queue: &str, delta: f64) {
    gauge!("qjob_jobs_in_flight", "queue" => queue.to_owned()).increment(delta);
}

/// The configured handler slots of a job's queue.
pub(crate) fn concurrency(queue: &str, slots: usize) {
    gauge!("qjob_worker_concurrency", "queue" => queue.to_owned()).set(slots as f64);
}

/// An attempt ended (its settlement confirmed) after running `took`.
pub(crate) fn attempt(queue: &str, outcome: &AttemptOutcome, took: Option<Duration>) {
    let label = outcome.label();
    if let Some(took) = took {
        histogram!("qjob_handler_duration_seconds", "queue" => queue.to_owned(), "outcome" => label)
            .record(took.as_secs_f64());
    }
    match outcome {
        AttemptOutcome::Succeeded => {
            counter!("qjob_jobs_succeeded_total", "queue" => queue.to_owned()).increment(1)
        }
        AttemptOutcome::Retrying { .. } => {
            counter!("qjob_jobs_failed_total", "queue" => queue.to_owned()).increment(1);
            counter!("qjob_jobs_retried_total", "queue" => queue.to_owned()).increment(1);
        }
        AttemptOutcome::DeadLettered { reason, .. } => {
            if *reason != crate::DeadReason::Malformed {
                counter!("qjob_jobs_failed_total", "queue" => queue.to_owned()).increment(1);
            }
            counter!("qjob_jobs_dead_lettered_total", "queue" => queue.to_owned(), "reason" => reason.label())
                .increment(1);
        }
    }
}
