//! What a worker knows about the deliveries it holds in place: how long the
//! broker lets it hold one, and the attempts a job already made under a
//! delivery the broker took back.
//!
//! RabbitMQ closes a channel whose delivery stays unacked past its
//! `consumer_timeout`, and delivers the message again with the attempt
//! number it was published with. A job retrying in place would start its
//! attempts over each time and never reach its dead-letter queue. So the
//! worker squeezes in-place backoffs into a hold budget below the consumer
//! timeout ([`Hold::next_start`]), and remembers each job's attempts
//! ([`Attempts`]) so that a redelivery continues from them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::JobId;

/// The hold budget: the part of the broker's consumer timeout a delivery
/// may be held, leaving a tenth of it for the settlement and the broker's
/// own timer.
pub(crate) fn hold_budget(consumer_timeout: Duration) -> Duration {
    consumer_timeout - consumer_timeout / 10
}

/// One held delivery's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    /// When the delivery must be settled by.
    pub(crate) deadline: Instant,
    /// The longest one attempt runs (the job's timeout), if bounded.
    pub(crate) attempt_limit: Option<Duration>,
}

impl Hold {
    /// The hold of a delivery received at `received`.
    pub(crate) fn new(
        received: Instant,
        budget: Duration,
        attempt_limit: Option<Duration>,
    ) -> Self {
        Self {
            deadline: received + budget,
            attempt_limit,
        }
    }

    /// How long to wait before the next attempt, given the backoff `delay`:
    /// the delay, or less if the attempt would then end after the deadline
    /// (`true` when shortened). An attempt that cannot end in time anyway
    /// starts at once.
    pub(crate) fn next_start(&self, now: Instant, delay: Duration) -> (Duration, bool) {
        let latest = self
            .deadline
            .checked_sub(self.attempt_limit.unwrap_or_default())
            .map_or(Duration::ZERO, |latest| {
                latest.saturating_duration_since(now)
            });
        (delay.min(latest), delay > latest)
    }
}

/// The most jobs remembered; past it the oldest are forgotten first.
const REMEMBERED: usize = 10_000;

/// Attempts made in place, per job, until the job is settled.
#[derive(Debug)]
pub(crate) struct Attempts {
    seen: Mutex<HashMap<JobId, Seen>>,
    /// How long an unsettled job is remembered.
    keep: Duration,
}

/// The last attempt a job started, and how the one before it failed.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) attempt: u32,
    pub(crate) error: Option<String>,
    at: Instant,
}

impl Attempts {
    /// Remembers jobs for `keep` after their last attempt.
    pub(crate) fn new(keep: Duration) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            keep,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Seen>> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What this worker remembers of `job`'s attempts.
    pub(crate) fn last(&self, job: &JobId) -> Option<Seen> {
        self.seen().get(job).cloned()
    }

    /// Attempt `attempt` of `job` starts.
    pub(crate) fn started(&self, job: &JobId, attempt: u32) {
        let now = Instant::now();
        let mut seen = self.seen();
        if seen.len() >= REMEMBERED && !seen.contains_key(job) {
            seen.retain(|_, s| now.saturating_duration_since(s.at) < self.keep);
            if seen.len() >= REMEMBERED
                && let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, s)| s.at)
                    .map(|(id, _)| id.clone())
            {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(job.clone()).or_insert(Seen {
            attempt,
            error: None,
            at: now,
        });
        entry.attempt = entry.attempt.max(attempt);
        entry.at = now;
    }

    /// An attempt of `job` failed with `error` and will be retried.
    pub(crate) fn failed(&self, job: &JobId, error: &str) {
        if let Some(seen) = self.seen().get_mut(job) {
            seen.error = Some(error.to_owned());
        }
    }

    /// `job` is settled: nothing to remember.
    pub(crate) fn forget(&self, job: &JobId) {
        self.seen().remove(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_budget_leaves_a_tenth_of_the_consumer_timeout() {
        assert_eq!(hold_budget(30 * MINUTE), 27 * MINUTE);
    }

    #[test]
    fn a_backoff_that_would_end_past_the_deadline_is_shortened() {
        let now = Instant::now();
        let hold = Hold::new(now, 27 * MINUTE, Some(MINUTE));
        assert_eq!(hold.next_start(now, 10 * MINUTE), (10 * MINUTE, false));
        let later = now + 20 * MINUTE;
        assert_eq!(hold.next_start(later, 10 * MINUTE), (6 * MINUTE, true));
        // No room left: the attempt starts at once.
        let late = now + 26 * MINUTE + 30 * Duration::from_secs(1);
        assert_eq!(hold.next_start(late, MINUTE), (Duration::ZERO, true));
        // Without a job timeout only the start must be in time.
        let unbounded = Hold::new(now, 27 * MINUTE, None);
        assert_eq!(unbounded.next_start(later, 10 * MINUTE), (7 * MINUTE, true));
    }

    #[test]
    fn attempts_are_remembered_until_settled() {
        let attempts = Attempts::new(MINUTE);
        let job = JobId::from("j");
        assert!(attempts.last(&job).is_none());
        attempts.started(&job, 2);
        attempts.failed(&job, "boom");
        attempts.started(&job, 3);
        let seen = attempts.last(&job).unwrap();
        assert_eq!((seen.attempt, seen.error.as_deref()), (3, Some("boom")));
        // A redelivery with an older header does not go back.
        attempts.started(&job, 1);
        assert_eq!(attempts.last(&job).unwrap().attempt, 3);
        attempts.forget(&job);
        assert!(attempts.last(&job).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let attempts = Attempts::new(MINUTE);
        for n in 0..REMEMBERED + 5 {
            attempts.started(&JobId::from(n.to_string()), 1);
        }
        assert_eq!(attempts.seen().len(), REMEMBERED);
    }
}
