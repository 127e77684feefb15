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
//! ([`Attempts`]) so that a redelivery continues from them, waits for an
//! attempt still running, and carries out an outcome already decided.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::JobId;
use crate::broker::{HeaderValue, Message};
use crate::headers;
use crate::worker::decide::Action;

/// The hold budget: the part of the broker's consumer timeout a delivery
/// may be held, leaving a tenth of it for the settlement and the broker's
/// own timer. `None` when the broker has no consumer timeout (zero).
pub(crate) fn hold_budget(consumer_timeout: Duration) -> Option<Duration> {
    (!consumer_timeout.is_zero()).then(|| consumer_timeout - consumer_timeout / 10)
}

/// Whether one attempt, bounded by the job's `timeout`, can run past the
/// hold budget.
pub(crate) fn outlasts(timeout: Option<Duration>, consumer_timeout: Duration) -> bool {
    match (hold_budget(consumer_timeout), timeout) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(budget), Some(timeout)) => timeout >= budget,
    }
}

/// One held delivery's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    /// When the delivery must be settled by, if ever.
    deadline: Option<Instant>,
    /// The longest one attempt runs (the job's timeout), if bounded.
    attempt_limit: Option<Duration>,
}

impl Hold {
    /// The hold of a delivery received at `received`.
    pub(crate) fn new(
        received: Instant,
        budget: Option<Duration>,
        attempt_limit: Option<Duration>,
    ) -> Self {
        Self {
            deadline: budget.and_then(|budget| received.checked_add(budget)),
            attempt_limit,
        }
    }

    /// How long to wait before the next attempt, given the backoff `delay`:
    /// the delay, or less if the attempt would then end after the deadline
    /// (`true` when shortened). An attempt that cannot end in time anyway
    /// starts at once.
    pub(crate) fn next_start(&self, now: Instant, delay: Duration) -> (Duration, bool) {
        let Some(deadline) = self.deadline else {
            return (delay, false);
        };
        let latest = deadline
            .checked_sub(self.attempt_limit.unwrap_or_default())
            .map_or(Duration::ZERO, |latest| {
                latest.saturating_duration_since(now)
            });
        (delay.min(latest), delay > latest)
    }
}

/// The shortest time a job is remembered.
const MIN_KEEP: Duration = Duration::from_secs(3600);

/// The most jobs remembered; past it the oldest are forgotten first.
const REMEMBERED: usize = 10_000;

/// The jobs remembered as settled here lately (see
/// [`Attempts::was_settled`]): at least the last this many, and at most
/// twice as many.
const SETTLED_REMEMBERED: usize = 4_096;

/// Attempts made in place, per job, until the job is settled.
#[derive(Debug)]
pub(crate) struct Attempts {
    /// What is known of each job, and the jobs settled lately: one lock,
    /// taken once per change.
    book: Mutex<Book>,
    /// How long an unsettled job is remembered.
    keep: Duration,
    /// Woken whenever an attempt ends.
    ended: Notify,
}

/// What [`Attempts`] keeps under its lock.
#[derive(Debug, Default)]
struct Book {
    seen: HashMap<JobId, Seen>,
    /// The jobs settled here lately, each with its number in the order
    /// they were settled and the attempt it was settled after.
    settled: HashMap<JobId, (u64, u32)>,
    /// How many jobs were settled here.
    settled_count: u64,
}

/// What this worker knows of a job's attempts.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The last attempt started.
    pub(crate) attempt: u32,
    /// Whether it still runs.
    pub(crate) running: bool,
    /// How the last attempt that ended failed.
    pub(crate) error: Option<String>,
    /// The outcome decided (succeeded or dead), not yet settled.
    pub(crate) decided: Option<Action>,
    at: Instant,
}

/// The key a job is remembered by: its id, and how often it was replayed
/// from its DLQ (a replay starts its attempts again).
pub(crate) fn key(job_id: &JobId, message: &Message) -> JobId {
    match message
        .headers
        .get(headers::REPLAYS)
        .and_then(HeaderValue::as_int)
    {
        Some(replays) => JobId::from(format!("{job_id}#replay-{replays}")),
        None => job_id.clone(),
    }
}

impl Attempts {
    /// Remembers jobs for `keep` after their last attempt, and at least an
    /// hour (a broker without a consumer timeout still takes deliveries
    /// back when a connection drops).
    pub(crate) fn new(keep: Duration) -> Self {
        Self {
            book: Mutex::default(),
            keep: keep.max(MIN_KEEP),
            ended: Notify::new(),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What this worker remembers of `job`'s attempts, once no attempt of
    /// it runs any more (waiting for one that does).
    pub(crate) async fn settled_view(&self, job: &JobId) -> Option<Seen> {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let seen = self.book().seen.get(job).cloned();
            match seen {
                // An attempt still running is waited for, however old.
                Some(seen) if seen.running => ended.await,
                Some(seen) if Instant::now().saturating_duration_since(seen.at) >= self.keep => {
                    return None;
                }
                seen => return seen,
            }
        }
    }

    /// Attempt `attempt` of `job` starts.
    pub(crate) fn started(&self, job: &JobId, attempt: u32) {
        let now = Instant::now();
        let mut book = self.book();
        let seen = &mut book.seen;
        if seen.len() >= REMEMBERED && !seen.contains_key(job) {
            seen.retain(|_, s| now.saturating_duration_since(s.at) < self.keep);
            if seen.len() >= REMEMBERED {
                // Forget the oldest tenth at once, so that this scan is rare.
                let mut times: Vec<Instant> = seen.values().map(|s| s.at).collect();
                let (_, cutoff, _) = times.select_nth_unstable(REMEMBERED / 10);
                let cutoff = *cutoff;
                seen.retain(|_, s| s.at > cutoff);
            }
        }
        let entry = seen.entry(job.clone()).or_insert(Seen {
            attempt,
            running: true,
            error: None,
            decided: None,
            at: now,
        });
        entry.attempt = entry.attempt.max(attempt);
        entry.running = true;
        entry.at = now;
    }

    /// The running attempt of `job` ended with `action`.
    pub(crate) fn ended(&self, job: &JobId, action: &Action) {
        if let Some(seen) = self.book().seen.get_mut(job) {
            seen.running = false;
            match action {
                Action::Retry { error, .. } => seen.error = Some(error.clone()),
                Action::DeadLetter { error, .. } => {
                    seen.error = Some(error.clone());
                    seen.decided = Some(action.clone());
                }
                Action::Ack => seen.decided = Some(Action::Ack),
                Action::Defer { .. } => {}
            }
        }
        self.ended.notify_waiters();
    }

    /// The running attempt of `job` was abandoned (its task ended early).
    pub(crate) fn abandoned(&self, job: &JobId) {
        if let Some(seen) = self.book().seen.get_mut(job) {
            seen.running = false;
        }
        self.ended.notify_waiters();
    }

    /// `job` is settled after `attempt`: nothing to remember of its
    /// attempts; it is kept among the last jobs settled here, for a
    /// redelivery whose ack was lost.
    pub(crate) fn forget(&self, job: &JobId, attempt: u32) {
        let mut book = self.book();
        // A later attempt seen here (a retry that came back before this
        // settlement ended) is still remembered.
        let later = book
            .seen
            .get(job)
            .is_some_and(|seen| seen.attempt > attempt);
        let key = if later {
            job.clone()
        } else {
            let seen = book.seen.remove_entry(job);
            seen.map_or_else(|| job.clone(), |(key, _)| key)
        };
        book.settled_count += 1;
        let number = book.settled_count;
        let settled = book.settled.entry(key).or_insert((number, attempt));
        // Settlements may end out of order; the latest attempt counts.
        *settled = (number, settled.1.max(attempt));
        if book.settled.len() >= 2 * SETTLED_REMEMBERED {
            // Rare (once per `SETTLED_REMEMBERED` jobs settled): keeps the
            // last ones.
            let oldest_kept = number - SETTLED_REMEMBERED as u64;
            book.settled
                .retain(|_, (settled, _)| *settled > oldest_kept);
        }
    }

    /// Whether `job`, delivered as attempt `attempt`, was settled here
    /// lately: a redelivery of it means the ack went out on a connection
    /// the broker had stopped reading (the acker could not tell), and its
    /// outcome was carried out already. A later attempt (the retry that
    /// settlement published) was not.
    pub(crate) fn was_settled(&self, job: &JobId, attempt: u32) -> bool {
        let book = self.book();
        book.settled
            .get(job)
            .is_some_and(|(_, settled_after)| attempt <= *settled_after)
    }
}

/// Marks a job's attempt abandoned if its task ends before the attempt
/// does (aborted at the shutdown timeout, or a panic outside the handler).
pub(crate) struct Running<'a> {
    attempts: &'a Attempts,
    job: &'a JobId,
    armed: bool,
}

impl<'a> Running<'a> {
    pub(crate) fn start(attempts: &'a Attempts, job: &'a JobId, attempt: u32) -> Self {
        attempts.started(job, attempt);
        Self {
            attempts,
            job,
            armed: true,
        }
    }

    /// The attempt ended with `action`.
    pub(crate) fn ended(mut self, action: &Action) {
        self.armed = false;
        self.attempts.ended(self.job, action);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.attempts.abandoned(self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeadReason;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_budget_leaves_a_tenth_of_the_consumer_timeout() {
        assert_eq!(hold_budget(30 * MINUTE), Some(27 * MINUTE));
        assert_eq!(hold_budget(Duration::ZERO), None, "no consumer timeout");
    }

    #[test]
    fn only_attempts_that_can_outlast_the_budget_are_remembered_on_the_plain_path() {
        assert!(outlasts(None, 30 * MINUTE));
        assert!(outlasts(Some(27 * MINUTE), 30 * MINUTE));
        assert!(!outlasts(Some(MINUTE), 30 * MINUTE));
        assert!(!outlasts(None, Duration::ZERO));
    }

    #[test]
    fn a_backoff_that_would_end_past_the_deadline_is_shortened() {
        let now = Instant::now();
        let hold = Hold::new(now, Some(27 * MINUTE), Some(MINUTE));
        assert_eq!(hold.next_start(now, 10 * MINUTE), (10 * MINUTE, false));
        let later = now + 20 * MINUTE;
        assert_eq!(hold.next_start(later, 10 * MINUTE), (6 * MINUTE, true));
        // No room left: the attempt starts at once.
        let late = now + 26 * MINUTE + 30 * Duration::from_secs(1);
        assert_eq!(hold.next_start(late, MINUTE), (Duration::ZERO, true));
        // Without a job timeout only the start must be in time.
        let unbounded = Hold::new(now, Some(27 * MINUTE), None);
        assert_eq!(unbounded.next_start(later, 10 * MINUTE), (7 * MINUTE, true));
        // No consumer timeout, or one too large to add: nothing shortened.
        for budget in [None, Some(Duration::MAX)] {
            let free = Hold::new(now, budget, Some(MINUTE));
            assert_eq!(free.next_start(later, 10 * MINUTE), (10 * MINUTE, false));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_remembered_until_settled() {
        let attempts = Attempts::new(MINUTE);
        let job = JobId::from("j");
        assert!(attempts.settled_view(&job).await.is_none());
        Running::start(&attempts, &job, 2).ended(&Action::Retry {
            error: "boom".into(),
            delay: MINUTE,
        });
        let running = Running::start(&attempts, &job, 3);
        let dead = Action::DeadLetter {
            reason: DeadReason::Permanent,
            error: "declined".into(),
        };
        running.ended(&dead);
        let seen = attempts.settled_view(&job).await.unwrap();
        assert_eq!((seen.attempt, seen.running), (3, false));
        assert_eq!(seen.error.as_deref(), Some("declined"));
        assert_eq!(seen.decided, Some(dead));
        attempts.forget(&job, 3);
        assert!(attempts.settled_view(&job).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_redelivery_waits_for_the_attempt_still_running() {
        let attempts = std::sync::Arc::new(Attempts::new(10 * MINUTE));
        let job = JobId::from("j");
        let running = Running::start(&attempts, &job, 1);
        let waiting = tokio::spawn({
            let (attempts, job) = (attempts.clone(), job.clone());
            async move { attempts.settled_view(&job).await }
        });
        tokio::time::sleep(MINUTE).await;
        assert!(!waiting.is_finished());
        drop(running); // abandoned: no outcome
        let seen = waiting.await.unwrap().unwrap();
        assert_eq!((seen.attempt, seen.running, seen.decided), (1, false, None));
    }

    #[tokio::test(start_paused = true)]
    async fn old_entries_and_replays_are_not_taken_for_the_job() {
        let attempts = Attempts::new(MINUTE);
        let job = JobId::from("j");
        Running::start(&attempts, &job, 4).ended(&Action::Ack);
        tokio::time::sleep(MIN_KEEP).await;
        assert!(attempts.settled_view(&job).await.is_none(), "too old");
        let mut replayed = Message::default();
        replayed
            .headers
            .insert(headers::REPLAYS.into(), HeaderValue::Int(1));
        assert_ne!(key(&job, &replayed), key(&job, &Message::default()));
    }

    #[test]
    fn memory_is_bounded() {
        let attempts = Attempts::new(MINUTE);
        for n in 0..3 * REMEMBERED {
            attempts.started(&JobId::from(n.to_string()), 1);
            assert!(attempts.book().seen.len() <= REMEMBERED);
        }
        let last = JobId::from((3 * REMEMBERED - 1).to_string());
        assert!(
            attempts.book().seen.contains_key(&last),
            "the newest is kept"
        );
    }

    #[test]
    fn the_last_jobs_settled_are_remembered_within_a_bound() {
        let attempts = Attempts::new(Duration::from_secs(60));
        let id = |n: usize| JobId::from(format!("job-{n}"));
        assert!(!attempts.was_settled(&id(0), 1));
        let last = 3 * SETTLED_REMEMBERED;
        for n in 0..=last {
            attempts.forget(&id(n), 1);
            assert!(attempts.book().settled.len() < 2 * SETTLED_REMEMBERED);
        }
        assert!(!attempts.was_settled(&id(0), 1), "the oldest is forgotten");
        for n in last + 1 - SETTLED_REMEMBERED..=last {
            assert!(attempts.was_settled(&id(n), 1), "job {n} is among the last");
        }
        let kept = attempts.book().settled.len();
        attempts.forget(&id(last), 1);
        assert_eq!(
            attempts.book().settled.len(),
            kept,
            "settled twice, kept once"
        );
    }

    #[test]
    fn the_retry_a_settlement_published_was_not_settled() {
        let attempts = Attempts::new(Duration::from_secs(60));
        let job = JobId::from("job");
        attempts.forget(&job, 2);
        assert!(attempts.was_settled(&job, 1), "retried in place from 1");
        assert!(attempts.was_settled(&job, 2), "the same delivery again");
        assert!(
            !attempts.was_settled(&job, 3),
            "the retry of attempt 2 runs"
        );
    }

    #[test]
    fn a_settlement_that_ends_after_its_retry_keeps_the_retry() {
        let attempts = Attempts::new(Duration::from_secs(60));
        let job = JobId::from("job");
        // Attempt 2 (the retry of 1) started, and settled, before the
        // settlement of attempt 1 ended.
        attempts.started(&job, 2);
        attempts.forget(&job, 1);
        assert_eq!(attempts.book().seen[&job].attempt, 2, "still running");
        attempts.forget(&job, 2);
        attempts.forget(&job, 1);
        assert!(attempts.was_settled(&job, 2), "attempt 2 stays settled");
        assert!(!attempts.was_settled(&job, 3));
    }

    #[test]
    fn a_settled_job_is_remembered_no_longer_as_seen() {
        let attempts = Attempts::new(Duration::from_secs(60));
        let job = JobId::from("job");
        attempts.started(&job, 1);
        attempts.ended(&job, &Action::Ack);
        attempts.forget(&job, 1);
        assert!(attempts.book().seen.is_empty());
        assert!(attempts.was_settled(&job, 1));
    }
}
