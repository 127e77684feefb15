//! The worker's metrics, through the `metrics` crate: install any recorder
//! (metrics-exporter-prometheus, say) and they appear. Names, types and
//! labels are documented in [`crate::docs::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::worker::history::History;
use crate::worker::observer::AttemptOutcome;

/// One job type's series, registered once: recording is then a handle
/// update, with no label allocated and no registry lookup per attempt.
#[derive(Clone)]
pub(crate) struct JobMetrics {
    queue: String,
    consumed: Counter,
    settlement_failures: Counter,
    time_in_queue: Histogram,
    in_flight: Gauge,
    succeeded: Counter,
    failed: Counter,
    retried: Counter,
    /// `qjob_handler_duration_seconds` by outcome: succeeded, retried,
    /// dead-lettered.
    durations: [Histogram; 3],
    /// The same counts, read back for the worker's heartbeats.
    counts: Arc<Counts>,
    /// Whether the last hour is kept (the console on: only its heartbeats
    /// send it).
    history: bool,
}

/// A job type's counts since the worker started, as its heartbeats report
/// them: one relaxed atomic add per settlement.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    /// The last failure's error (only failures take the lock).
    pub(crate) last_error: Mutex<Option<String>>,
    /// The last hour, minute by minute.
    pub(crate) history: History,
}

impl Counts {
    fn failed(&self, error: &str) {
        *self.last_error.lock().expect("last error poisoned") = Some(error.to_owned());
    }

    pub(crate) fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl JobMetrics {
    /// The series of the job whose queue is `queue` (the label a
    /// partitioned job's partition queues share); its last hour is kept
    /// if `history`.
    pub(crate) fn new(queue: &str, history: bool) -> Self {
        let duration = |outcome: &'static str| histogram!("qjob_handler_duration_seconds", "queue" => queue.to_owned(), "outcome" => outcome);
        Self {
            queue: queue.to_owned(),
            consumed: counter!("qjob_jobs_consumed_total", "queue" => queue.to_owned()),
            settlement_failures: counter!("qjob_settlement_failures_total", "queue" => queue.to_owned()),
            time_in_queue: histogram!("qjob_time_in_queue_seconds", "queue" => queue.to_owned()),
            in_flight: gauge!("qjob_jobs_in_flight", "queue" => queue.to_owned()),
            succeeded: counter!("qjob_jobs_succeeded_total", "queue" => queue.to_owned()),
            failed: counter!("qjob_jobs_failed_total", "queue" => queue.to_owned()),
            retried: counter!("qjob_jobs_retried_total", "queue" => queue.to_owned()),
            durations: [
                duration("succeeded"),
                duration("retried"),
                duration("dead_lettered"),
            ],
            counts: Arc::default(),
            history,
        }
    }

    /// The counts the heartbeats report.
    pub(crate) fn counts(&self) -> &Arc<Counts> {
        &self.counts
    }

    /// A delivery was taken.
    pub(crate) fn consumed(&self) {
        self.consumed.increment(1);
    }

    /// A settlement's publish (a retry, a dead letter) failed and is tried
    /// again while its delivery is held.
    pub(crate) fn settlement_failed(&self) {
        self.settlement_failures.increment(1);
    }

    /// How long a job waited between its first enqueue and this attempt.
    pub(crate) fn time_in_queue(&self, enqueued_at: SystemTime) {
        let waited = SystemTime::now()
            .duration_since(enqueued_at)
            .unwrap_or_default();
        self.time_in_queue.record(waited.as_secs_f64());
    }

    /// Handlers running now: +1 at start, -1 at the end.
    pub(crate) fn in_flight(&self, delta: f64) {
        self.in_flight.increment(delta);
        if delta > 0.0 {
            self.counts.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counts.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// An attempt ended (its settlement confirmed) after running `took`.
    pub(crate) fn attempt(&self, outcome: &AttemptOutcome, took: Option<Duration>) {
        let index = match outcome {
            AttemptOutcome::Succeeded => 0,
            AttemptOutcome::Retrying { .. } => 1,
            AttemptOutcome::DeadLettered { .. } => 2,
        };
        if let Some(took) = took {
            self.durations[index].record(took.as_secs_f64());
        }
        let counts = &*self.counts;
        match outcome {
            AttemptOutcome::Succeeded => {
                self.succeeded.increment(1);
                counts.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            AttemptOutcome::Retrying { error, .. } => {
                self.failed.increment(1);
                self.retried.increment(1);
                counts.failed.fetch_add(1, Ordering::Relaxed);
                counts.retried.fetch_add(1, Ordering::Relaxed);
                counts.failed(error);
            }
            AttemptOutcome::DeadLettered { reason, error } => {
                if outcome.is_handler_failure() {
                    self.failed.increment(1);
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
                counts.failed(error);
                // Rare: registered when it happens.
                counter!("qjob_jobs_dead_lettered_total", "queue" => self.queue.clone(), "reason" => reason.label())
                    .increment(1);
            }
        }
        if self.history {
            counts.history.record(outcome, took);
        }
    }
}

/// The configured handler slots of a job's queue.
pub(crate) fn concurrency(queue: &str, slots: usize) {
    gauge!("qjob_worker_concurrency", "queue" => queue.to_owned()).set(slots as f64);
}
