//! [`Store`]: where qjob keeps what RabbitMQ cannot hold, such as the
//! locks of unique jobs. [`MemoryStore`] serves tests and a single process;
//! [`RedisStore`] (cargo feature `redis`) serves several.
//!
//! A store that cannot be reached is an error for the producer
//! ([`Error::Store`]): qjob never enqueues a unique job it could not lock,
//! so an outage never turns into a silent duplicate.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::Error;

mod expiring;

use expiring::ExpiringMap;

/// Locks with an owner and an expiry, set atomically.
///
/// Implement it to keep qjob's locks elsewhere; the contract is what
/// [`MemoryStore`] and `RedisStore` do (the scenarios of
/// `tests/src/unique.rs` run on them).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Takes `key` for `owner` during `ttl`, unless someone holds it:
    /// `Ok(None)` when taken now, `Ok(Some(holder))` with the one who holds
    /// it. Of any number of concurrent calls for a free key, exactly one
    /// takes it.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn acquire(&self, key: &str, owner: &str, ttl: Duration)
    -> Result<Option<String>, Error>;

    /// Frees `key` if `owner` holds it; whether it did.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn release(&self, key: &str, owner: &str) -> Result<bool, Error>;

    /// Who holds `key` now, if anyone.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn holder(&self, key: &str) -> Result<Option<String>, Error>;

    /// Creates batch `batch` (no member, open), kept for `ttl`, with its
    /// callback's description; `false` if it exists already.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn batch_create(&self, batch: &str, callback: &str, ttl: Duration)
    -> Result<bool, Error>;

    /// Applies `update` to batch `batch` atomically and returns its counts
    /// after it, or `None` if there is no such batch (or it expired). When
    /// the batch is complete (closed, every member finished) and nobody
    /// claimed its callback yet, `claimant` claims it (the counts say
    /// who did). [`BatchUpdate::Finish`] counts a member once, however
    /// often it is told.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused;
    /// [`Error::Config`] for [`BatchUpdate::Add`] of members to a closed
    /// batch.
    async fn batch_update(
        &self,
        batch: &str,
        update: BatchUpdate<'_>,
        claimant: &str,
    ) -> Result<Option<BatchCounts>, Error>;
}

/// A change to a batch's counts ([`Store::batch_update`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchUpdate<'a> {
    /// Nothing: read the counts.
    Read,
    /// Members enqueued (a negative count: members whose enqueue failed
    /// after they were added). Refused once the batch is closed, unless
    /// negative.
    Add(i64),
    /// No member will be added any more.
    Close,
    /// Member `member` (its job id) finished: it succeeded, or was
    /// dead-lettered. Its first finish counts; later ones change nothing.
    Finish {
        /// The member's job id.
        member: &'a str,
        /// Whether it succeeded.
        succeeded: bool,
    },
    /// The callback was enqueued (or, for a callback only on success,
    /// found not to be due).
    Fired,
}

/// A batch's counts as a store keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BatchCounts {
    /// Members added.
    pub total: u64,
    /// Members that succeeded.
    pub succeeded: u64,
    /// Members that were dead-lettered.
    pub dead_lettered: u64,
    /// Whether the batch is closed (no member will be added).
    pub closed: bool,
    /// Who fires the callback, once the batch is complete.
    pub claimed_by: Option<String>,
    /// Whether the callback was enqueued.
    pub fired: bool,
    /// The callback's description, as given at creation.
    pub callback: String,
}

impl BatchCounts {
    /// Members not finished yet.
    pub fn pending(&self) -> u64 {
        self.total
            .saturating_sub(self.succeeded)
            .saturating_sub(self.dead_lettered)
    }

    /// Closed, with every member finished.
    pub fn is_complete(&self) -> bool {
        self.closed && self.pending() == 0
    }
}

/// A store behind an `Arc` is a store.
#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, Error> {
        (**self).acquire(key, owner, ttl).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, Error> {
        (**self).release(key, owner).await
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, Error> {
        (**self).holder(key).await
    }

    async fn batch_create(
        &self,
        batch: &str,
        callback: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        (**self).batch_create(batch, callback, ttl).await
    }

    async fn batch_update(
        &self,
        batch: &str,
        update: BatchUpdate<'_>,
        claimant: &str,
    ) -> Result<Option<BatchCounts>, Error> {
        (**self).batch_update(batch, update, claimant).await
    }
}

/// The longest a lock lasts, whatever window was asked.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Locks in this process's memory, on Tokio's clock (so tests on virtual
/// time see them expire). Clones share the locks. Right for tests and for
/// one process; several processes need a shared store ([`RedisStore`]).
///
/// A call costs O(log n) in the n locks (or batches) held, whatever their
/// number: expired ones go in the order of their deadlines.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    /// Owners by key.
    locks: Arc<Mutex<ExpiringMap<String>>>,
    batches: Arc<Mutex<ExpiringMap<MemoryBatch>>>,
}

#[derive(Debug)]
struct MemoryBatch {
    counts: BatchCounts,
    /// The members finished, by job id.
    finished: HashSet<String>,
}

/// The error for members added to a closed batch.
fn closed_batch(batch: &str) -> Error {
    Error::Config(format!(
        "batch {batch} is closed: no member can be added to it"
    ))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn locks(&self) -> MutexGuard<'_, ExpiringMap<String>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn batches(&self) -> MutexGuard<'_, ExpiringMap<MemoryBatch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The owner holding `key` now, if any (as [`Store::holder`], at once).
    pub fn held(&self, key: &str) -> Option<String> {
        self.locks()
            .get(key, Instant::now())
            .map(|(owner, _)| owner.clone())
    }
}

/// `now + ttl`, or a century from now for a window too long for the clock.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl).unwrap_or_else(|| now + CENTURY)
}

#[async_trait]
impl Store for MemoryStore {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, Error> {
        let now = Instant::now();
        let mut locks = self.locks();
        locks.expire(now);
        if let Some((holder, _)) = locks.get(key, now) {
            return Ok(Some(holder.clone()));
        }
        let until = deadline(now, ttl.max(Duration::from_millis(1)));
        locks.insert(key, owner.to_owned(), until);
        Ok(None)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, Error> {
        let mut locks = self.locks();
        let held = locks
            .get(key, Instant::now())
            .is_some_and(|(holder, _)| holder == owner);
        if held {
            locks.remove(key);
        }
        Ok(held)
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self.held(key))
    }

    async fn batch_create(
        &self,
        batch: &str,
        callback: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let now = Instant::now();
        let mut batches = self.batches();
        batches.expire(now);
        if batches.get(batch, now).is_some() {
            return Ok(false);
        }
        let counts = BatchCounts {
            callback: callback.to_owned(),
            ..BatchCounts::default()
        };
        let finished = HashSet::new();
        batches.insert(batch, MemoryBatch { counts, finished }, deadline(now, ttl));
        Ok(true)
    }

    async fn batch_update(
        &self,
        batch: &str,
        update: BatchUpdate<'_>,
        claimant: &str,
    ) -> Result<Option<BatchCounts>, Error> {
        let mut batches = self.batches();
        let Some(entry) = batches.get_mut(batch, Instant::now()) else {
            return Ok(None);
        };
        let counts = &mut entry.counts;
        match update {
            BatchUpdate::Read | BatchUpdate::Fired => {}
            BatchUpdate::Add(members) if members > 0 && counts.closed => {
                return Err(closed_batch(batch));
            }
            BatchUpdate::Add(members) => {
                counts.total = counts.total.saturating_add_signed(members);
            }
            BatchUpdate::Close => counts.closed = true,
            BatchUpdate::Finish { member, succeeded } => {
                if entry.finished.insert(member.to_owned()) {
                    if succeeded {
                        counts.succeeded += 1;
                    } else {
                        counts.dead_lettered += 1;
                    }
                }
            }
        }
        if update == BatchUpdate::Fired {
            counts.fired = true;
        } else if update != BatchUpdate::Read && counts.is_complete() && counts.claimed_by.is_none()
        {
            counts.claimed_by = Some(claimant.to_owned());
        }
        Ok(Some(counts.clone()))
    }
}

#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lock_has_one_owner_until_it_expires_or_is_released() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        assert_eq!(store.acquire("k", "a", ttl).await.unwrap(), None);
        assert_eq!(
            store.acquire("k", "b", ttl).await.unwrap(),
            Some("a".into())
        );
        assert!(!store.release("k", "b").await.unwrap(), "not b's");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(store.held("k"), None, "expired");
        assert_eq!(store.holder("k").await.unwrap(), None);
        assert_eq!(store.acquire("k", "b", ttl).await.unwrap(), None);
        assert!(!store.release("k", "a").await.unwrap());
        assert!(store.release("k", "b").await.unwrap());
        assert_eq!(store.acquire("k", "c", ttl).await.unwrap(), None);
        // A window longer than the clock holds is a long one, not a panic.
        assert_eq!(
            store.acquire("long", "d", Duration::MAX).await.unwrap(),
            None
        );
        assert_eq!(store.held("long").as_deref(), Some("d"));
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_looks_only_at_locks_that_expired() {
        let store = MemoryStore::new();
        let hour = Duration::from_secs(3600);
        for i in 0..100 {
            let key = format!("short-{i}");
            store
                .acquire(&key, "a", Duration::from_secs(1))
                .await
                .unwrap();
        }
        for i in 0..10_000 {
            store
                .acquire(&format!("live-{i}"), "a", hour)
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let before = store.locks().examined();
        for i in 0..1_000 {
            let key = format!("new-{i}");
            assert_eq!(store.acquire(&key, "b", hour).await.unwrap(), None);
        }
        let examined = store.locks().examined() - before;
        // The 100 expired locks, and one look at a live deadline per call.
        assert!(
            examined <= 100 + 1_000,
            "1 000 acquires at 10 000 live locks examined {examined} locks"
        );
        assert_eq!(store.locks().len(), 11_000, "the expired ones gone");
        assert_eq!(store.held("short-7"), None, "expired");
        let taken = store.acquire("short-7", "b", hour).await.unwrap();
        assert_eq!(taken, None, "free again");
        let held = store.acquire("live-7", "b", hour).await.unwrap();
        assert_eq!(held, Some("a".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_taken_again_outlives_its_first_deadline() {
        let store = MemoryStore::new();
        let minute = Duration::from_secs(60);
        assert_eq!(store.acquire("k", "a", minute).await.unwrap(), None);
        assert!(store.release("k", "a").await.unwrap());
        assert_eq!(store.acquire("k", "b", minute * 10).await.unwrap(), None);
        // a's deadline passes; its entry in the heap must not free b's lock.
        tokio::time::advance(minute * 2).await;
        assert_eq!(store.acquire("other", "c", minute).await.unwrap(), None);
        assert_eq!(store.held("k").as_deref(), Some("b"));
        let held = store.acquire("k", "c", minute).await.unwrap();
        assert_eq!(held, Some("b".into()));
        tokio::time::advance(minute * 9).await;
        assert_eq!(
            store.acquire("k", "c", minute).await.unwrap(),
            None,
            "b's expired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_expires_and_its_id_can_be_created_again() {
        let store = MemoryStore::new();
        let minute = Duration::from_secs(60);
        assert!(store.batch_create("b", "cb", minute).await.unwrap());
        assert!(!store.batch_create("b", "cb", minute).await.unwrap());
        let counts = store
            .batch_update("b", BatchUpdate::Add(2), "w")
            .await
            .unwrap();
        assert_eq!(counts.map(|c| c.total), Some(2));
        tokio::time::advance(minute).await;
        let gone = store
            .batch_update("b", BatchUpdate::Read, "w")
            .await
            .unwrap();
        assert_eq!(gone, None);
        assert!(store.batch_create("b", "cb", minute).await.unwrap());
    }
}
