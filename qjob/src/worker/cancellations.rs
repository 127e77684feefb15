//! The jobs an operator cancelled, and the attempts and waits in progress
//! that a cancel tells.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::JobId;

/// How long a worker remembers a cancelled job id by default.
pub(crate) const DEFAULT_CANCEL_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// The most cancelled ids a worker remembers; the oldest go first.
pub(crate) const CANCELLED_IDS_AT_MOST: usize = 100_000;

/// The job ids an operator cancelled, remembered for a bounded time and
/// number: a job not yet delivered is dead-lettered when it arrives, a
/// running one is told through its attempt's token ([`Cancellations::watch`],
/// which its [`crate::JobContext`] carries).
#[derive(Debug)]
pub(crate) struct Cancellations {
    ids: Mutex<Remembered>,
    /// Whether any id is remembered: the per-delivery check takes no lock
    /// while none is.
    any: AtomicBool,
    memory: Duration,
    /// Whether attempts and waits are registered: only with the console
    /// on, whose commands alone cancel them and whose heartbeats alone
    /// list them.
    watching: bool,
}

#[derive(Debug, Default)]
struct Remembered {
    /// When each id was cancelled: by this worker's clock (to forget it)
    /// and by the wall clock (a replay after it is not cancelled).
    since: HashMap<JobId, (Instant, SystemTime)>,
    order: VecDeque<(JobId, Instant)>,
    /// The attempts and waits in progress, by their number: registered and
    /// dropped once per attempt without hashing a job id; found by job id
    /// only for an operator's command, by a look at each.
    watched: BTreeMap<u64, Watched>,
    next_watch: u64,
}

/// An attempt, or a wait before a retry in place, in progress.
#[derive(Debug)]
struct Watched {
    job_id: JobId,
    /// When its delivery was replayed from its dead-letter queue.
    replayed_at: Option<SystemTime>,
    /// Cancelled when an operator cancels the job.
    token: CancellationToken,
    /// Cancelled when an operator asks a wait to end now.
    run_now: CancellationToken,
    doing: Doing,
    /// When it began, by the wall clock (what the console shows).
    began: SystemTime,
}

/// What an attempt or a wait in progress is, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Doing {
    /// Its job type's name.
    pub(crate) job: &'static str,
    /// The attempt running, or the one the wait is before.
    pub(crate) attempt: u32,
    /// A partitioned job's key.
    pub(crate) key: Option<String>,
    /// For a wait before a retry in place: when the attempt is due, and
    /// why the last one failed.
    pub(crate) retry: Option<(SystemTime, String)>,
}

/// One attempt or wait in progress, as [`Cancellations::activity`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InProgress {
    pub(crate) job_id: JobId,
    pub(crate) doing: Doing,
    pub(crate) began: SystemTime,
}

/// What a worker's handlers do now: the longest-running attempts, and the
/// waits before a retry in place soonest due, each list at most a bound
/// long, with how many there are in all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Activity {
    pub(crate) running: Vec<InProgress>,
    pub(crate) running_total: usize,
    pub(crate) waiting: Vec<InProgress>,
    pub(crate) waiting_total: usize,
}

/// The token of one attempt (or wait) of a job, cancelled when an operator
/// cancels the job; unregistered when dropped.
#[derive(Debug)]
pub(crate) struct Watch<'a> {
    cancellations: &'a Cancellations,
    /// Its key in `watched` (or [`UNWATCHED`]).
    number: u64,
    token: CancellationToken,
    run_now: CancellationToken,
}

impl Watch<'_> {
    /// The token, for the attempt's [`crate::JobContext`].
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Resolves once the job is cancelled.
    pub(crate) async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Resolves once an operator asks this wait to end now
    /// ([`Cancellations::run_now`]).
    pub(crate) async fn run_now(&self) {
        self.run_now.cancelled().await
    }
}

/// The number of a watch not registered (the console off).
const UNWATCHED: u64 = u64::MAX;

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if self.number == UNWATCHED {
            return;
        }
        self.cancellations.ids().watched.remove(&self.number);
    }
}

impl Cancellations {
    /// Cancellations remembered for `memory`; with `watching` off (the
    /// console off), attempts and waits are not registered.
    pub(crate) fn new(memory: Duration, watching: bool) -> Self {
        Self {
            ids: Mutex::default(),
            any: AtomicBool::new(false),
            memory,
            watching,
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.ids.lock().expect("cancelled ids poisoned")
    }

    /// Remembers `job_id` as cancelled and tells its running handler, if
    /// any. Cancelling it again changes nothing.
    pub(crate) fn cancel(&self, job_id: JobId) {
        let now = Instant::now();
        let mut ids = self.ids();
        self.expire(&mut ids, now);
        if !ids.since.contains_key(&job_id) {
            ids.since.insert(job_id.clone(), (now, SystemTime::now()));
            ids.order.push_back((job_id.clone(), now));
        }
        while ids.order.len() > CANCELLED_IDS_AT_MOST {
            let (oldest, _) = ids.order.pop_front().expect("over the bound");
            ids.since.remove(&oldest);
        }
        self.any.store(true, Ordering::Release);
        let of_job = ids.watched.values().filter(|w| w.job_id == job_id);
        for watched in of_job {
            if Self::cancelled_in(&ids, &job_id, watched.replayed_at) {
                watched.token.cancel();
            }
        }
    }

    /// A token for an attempt (or a wait) of `job_id`, as delivered with
    /// `replayed_at`: cancelled already if the job is, and when it is. The
    /// console lists it as `doing` until it is dropped.
    pub(crate) fn watch(
        &self,
        job_id: &JobId,
        replayed_at: Option<SystemTime>,
        doing: Doing,
    ) -> Watch<'_> {
        let (token, run_now) = (CancellationToken::new(), CancellationToken::new());
        if !self.watching {
            return Watch {
                cancellations: self,
                number: UNWATCHED,
                token,
                run_now,
            };
        }
        let began = SystemTime::now();
        // Checked and registered under one lock: a cancel in between
        // would find no token to cancel, and be lost.
        let mut ids = self.ids();
        if self.any.load(Ordering::Acquire) {
            self.expire(&mut ids, Instant::now());
            if Self::cancelled_in(&ids, job_id, replayed_at) {
                token.cancel();
            }
        }
        let number = ids.next_watch;
        ids.next_watch += 1;
        let watched = Watched {
            job_id: job_id.clone(),
            replayed_at,
            token: token.clone(),
            run_now: run_now.clone(),
            doing,
            began,
        };
        ids.watched.insert(number, watched);
        Watch {
            cancellations: self,
            number,
            token,
            run_now,
        }
    }

    /// Ends the waits before a retry in place of `job_id` now: their next
    /// attempt starts at once. Returns how many there were.
    pub(crate) fn run_now(&self, job_id: &JobId) -> usize {
        let ids = self.ids();
        let of_job = ids.watched.values().filter(|w| &w.job_id == job_id);
        of_job
            .filter(|watched| watched.doing.retry.is_some())
            .inspect(|watched| watched.run_now.cancel())
            .count()
    }

    /// What runs and waits here now: the `at_most` longest-running
    /// attempts, and the `at_most` waits soonest due. Only those are
    /// copied, so a worker with many handlers holds the lock briefly.
    pub(crate) fn activity(&self, at_most: usize) -> Activity {
        let ids = self.ids();
        let (mut running, mut waiting) = (Vec::new(), Vec::new());
        for watched in ids.watched.values() {
            let job_id = &watched.job_id;
            match &watched.doing.retry {
                Some((due, _)) => waiting.push((*due, job_id, watched)),
                None => running.push((watched.began, job_id, watched)),
            }
        }
        let (running_total, waiting_total) = (running.len(), waiting.len());
        Activity {
            running: first(running, at_most),
            running_total,
            waiting: first(waiting, at_most),
            waiting_total,
        }
    }

    /// Whether `job_id` was cancelled (and is still remembered), unless
    /// this delivery of it was replayed from its dead-letter queue after
    /// the cancel (`replayed_at`).
    pub(crate) fn contains(&self, job_id: &JobId, replayed_at: Option<SystemTime>) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut ids = self.ids();
        self.expire(&mut ids, Instant::now());
        Self::cancelled_in(&ids, job_id, replayed_at)
    }

    /// Whether `ids` holds `job_id` as cancelled for a delivery replayed
    /// at `replayed_at`.
    fn cancelled_in(ids: &Remembered, job_id: &JobId, replayed_at: Option<SystemTime>) -> bool {
        ids.since
            .get(job_id)
            .is_some_and(|(_, at)| replayed_at.is_none_or(|replayed| replayed < *at))
    }

    fn expire(&self, ids: &mut Remembered, now: Instant) {
        while let Some((id, at)) = ids.order.front() {
            if now.duration_since(*at) < self.memory {
                break;
            }
            if ids.since.get(id).is_some_and(|(since, _)| since == at) {
                ids.since.remove(id);
            }
            ids.order.pop_front();
        }
        if ids.order.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }
}

/// The `at_most` first of `found` by time (then job id), in order, copied.
fn first(mut found: Vec<(SystemTime, &JobId, &Watched)>, at_most: usize) -> Vec<InProgress> {
    let order = |a: &(SystemTime, &JobId, &Watched), b: &(SystemTime, &JobId, &Watched)| {
        (a.0, a.1).cmp(&(b.0, b.1))
    };
    if found.len() > at_most && at_most > 0 {
        found.select_nth_unstable_by(at_most - 1, order);
    }
    found.truncate(at_most);
    found.sort_unstable_by(order);
    found
        .into_iter()
        .map(|(_, job_id, watched)| InProgress {
            job_id: job_id.clone(),
            doing: watched.doing.clone(),
            began: watched.began,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn running(attempt: u32) -> Doing {
        Doing {
            job: "email",
            attempt,
            key: None,
            retry: None,
        }
    }

    fn waiting(due_in: u64) -> Doing {
        let due = SystemTime::now() + Duration::from_secs(due_in);
        Doing {
            retry: Some((due, "smtp down".to_owned())),
            ..running(2)
        }
    }

    #[test]
    fn activity_lists_the_longest_running_and_the_soonest_due_within_a_bound() {
        let cancellations = Cancellations::new(Duration::from_secs(60), true);
        let ids: Vec<JobId> = (0..5).map(|n| JobId::from(format!("job-{n}"))).collect();
        // Registered in order: the first began first (or at the same
        // instant, then by id).
        let runs: Vec<_> = ids
            .iter()
            .map(|id| cancellations.watch(id, None, running(1)))
            .collect();
        let waits: Vec<_> = ids
            .iter()
            .zip([50, 10, 40, 20, 30])
            .map(|(id, due_in)| cancellations.watch(id, None, waiting(due_in)))
            .collect();
        let activity = cancellations.activity(3);
        assert_eq!((activity.running_total, activity.waiting_total), (5, 5));
        let running: Vec<&str> = activity.running.iter().map(|r| r.job_id.as_str()).collect();
        assert_eq!(running, ["job-0", "job-1", "job-2"]);
        let waiting: Vec<&str> = activity.waiting.iter().map(|w| w.job_id.as_str()).collect();
        assert_eq!(waiting, ["job-1", "job-3", "job-4"], "soonest due first");
        drop(runs);
        let activity = cancellations.activity(3);
        assert_eq!((activity.running_total, activity.waiting_total), (0, 5));
        drop(waits);
        assert_eq!(cancellations.activity(3), Activity::default());
    }

    #[tokio::test]
    async fn run_now_ends_a_wait_and_not_an_attempt() {
        let cancellations = Cancellations::new(Duration::from_secs(60), true);
        let id = JobId::from("job-9");
        let attempt = cancellations.watch(&id, None, running(1));
        let wait = cancellations.watch(&id, None, waiting(3600));
        assert_eq!(cancellations.run_now(&JobId::from("other")), 0);
        assert_eq!(cancellations.run_now(&id), 1);
        wait.run_now().await;
        assert!(!attempt.run_now.is_cancelled(), "an attempt runs already");
        assert!(!wait.token().is_cancelled(), "run now is not a cancel");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_ids_are_forgotten_after_their_memory() {
        let cancellations = Cancellations::new(Duration::from_secs(60), true);
        let id = JobId::from("job-1");
        assert!(!cancellations.contains(&id, None));
        cancellations.cancel(id.clone());
        tokio::time::advance(Duration::from_secs(30)).await;
        cancellations.cancel(id.clone());
        assert!(cancellations.contains(&id, None));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!cancellations.contains(&id, None), "from the first cancel");
        assert!(!cancellations.any.load(Ordering::Acquire));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_ids_are_bounded() {
        let cancellations = Cancellations::new(Duration::from_secs(60), true);
        for n in 0..=CANCELLED_IDS_AT_MOST {
            cancellations.cancel(JobId::from(n.to_string()));
        }
        assert!(!cancellations.contains(&JobId::from("0"), None));
        assert!(cancellations.contains(&JobId::from("1"), None));
        assert_eq!(cancellations.ids().since.len(), CANCELLED_IDS_AT_MOST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_after_the_cancel_is_not_cancelled() {
        let cancellations = Cancellations::new(Duration::from_secs(60), true);
        let id = JobId::from("job-3");
        let before = SystemTime::now() - Duration::from_secs(1);
        cancellations.cancel(id.clone());
        let after = SystemTime::now() + Duration::from_secs(1);
        assert!(cancellations.contains(&id, Some(before)));
        assert!(!cancellations.contains(&id, Some(after)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_handler_is_told() {
        let cancellations = Arc::new(Cancellations::new(Duration::from_secs(60), true));
        let id = JobId::from("job-2");
        let watch = cancellations.watch(&id, None, running(1));
        let token = watch.token();
        let waiting = tokio::spawn(async move { token.cancelled().await });
        tokio::task::yield_now().await;
        cancellations.cancel(JobId::from("another"));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        cancellations.cancel(id.clone());
        waiting.await.unwrap();
        drop(watch);
        assert!(cancellations.ids().watched.is_empty(), "unregistered");
        assert!(
            cancellations
                .watch(&id, None, running(1))
                .token()
                .is_cancelled(),
            "a later attempt of a cancelled job starts cancelled"
        );
        let replayed = SystemTime::now() + Duration::from_secs(1);
        let replay = cancellations.watch(&id, Some(replayed), running(1));
        cancellations.cancel(id);
        assert!(!replay.token().is_cancelled(), "a replay after the cancel");
    }
}
