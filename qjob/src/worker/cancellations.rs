//! The jobs an operator cancelled, and the attempts and waits in progress
//! that a cancel tells.

use std::collections::{HashMap, VecDeque};
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
}

#[derive(Debug, Default)]
struct Remembered {
    /// When each id was cancelled: by this worker's clock (to forget it)
    /// and by the wall clock (a replay after it is not cancelled).
    since: HashMap<JobId, (Instant, SystemTime)>,
    order: VecDeque<(JobId, Instant)>,
    /// The tokens of the attempts and waits in progress, by job id, with
    /// when their delivery was replayed and a number to find them by.
    watched: HashMap<JobId, Vec<(u64, Option<SystemTime>, CancellationToken)>>,
    next_watch: u64,
}

/// The token of one attempt (or wait) of a job, cancelled when an operator
/// cancels the job; unregistered when dropped.
#[derive(Debug)]
pub(crate) struct Watch<'a> {
    cancellations: &'a Cancellations,
    job_id: JobId,
    number: u64,
    token: CancellationToken,
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
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut ids = self.cancellations.ids();
        if let Some(watches) = ids.watched.get_mut(&self.job_id) {
            watches.retain(|(number, _, _)| *number != self.number);
            if watches.is_empty() {
                ids.watched.remove(&self.job_id);
            }
        }
    }
}

impl Cancellations {
    pub(crate) fn new(memory: Duration) -> Self {
        Self {
            ids: Mutex::default(),
            any: AtomicBool::new(false),
            memory,
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
        for (_, replayed_at, token) in ids.watched.get(&job_id).into_iter().flatten() {
            if Self::cancelled_in(&ids, &job_id, *replayed_at) {
                token.cancel();
            }
        }
    }

    /// A token for an attempt (or a wait) of `job_id`, as delivered with
    /// `replayed_at`: cancelled already if the job is, and when it is.
    pub(crate) fn watch(&self, job_id: &JobId, replayed_at: Option<SystemTime>) -> Watch<'_> {
        let token = CancellationToken::new();
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
        ids.watched
            .entry(job_id.clone())
            .or_default()
            .push((number, replayed_at, token.clone()));
        Watch {
            cancellations: self,
            job_id: job_id.clone(),
            number,
            token,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cancelled_ids_are_forgotten_after_their_memory() {
        let cancellations = Cancellations::new(Duration::from_secs(60));
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
        let cancellations = Cancellations::new(Duration::from_secs(60));
        for n in 0..=CANCELLED_IDS_AT_MOST {
            cancellations.cancel(JobId::from(n.to_string()));
        }
        assert!(!cancellations.contains(&JobId::from("0"), None));
        assert!(cancellations.contains(&JobId::from("1"), None));
        assert_eq!(cancellations.ids().since.len(), CANCELLED_IDS_AT_MOST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_after_the_cancel_is_not_cancelled() {
        let cancellations = Cancellations::new(Duration::from_secs(60));
        let id = JobId::from("job-3");
        let before = SystemTime::now() - Duration::from_secs(1);
        cancellations.cancel(id.clone());
        let after = SystemTime::now() + Duration::from_secs(1);
        assert!(cancellations.contains(&id, Some(before)));
        assert!(!cancellations.contains(&id, Some(after)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_handler_is_told() {
        let cancellations = Arc::new(Cancellations::new(Duration::from_secs(60)));
        let id = JobId::from("job-2");
        let watch = cancellations.watch(&id, None);
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
            cancellations.watch(&id, None).token().is_cancelled(),
            "a later attempt of a cancelled job starts cancelled"
        );
        let replayed = SystemTime::now() + Duration::from_secs(1);
        let replay = cancellations.watch(&id, Some(replayed));
        cancellations.cancel(id);
        assert!(!replay.token().is_cancelled(), "a replay after the cancel");
    }
}
