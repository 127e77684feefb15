//! [`MemoryStore`]: locks and batches in this process's memory.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::expiring::ExpiringMap;
use super::{BatchCounts, BatchUpdate, CENTURY, Store, closed_batch};
use crate::Error;

/// Locks in this process's memory, on Tokio's clock (so tests on virtual
/// time see them expire). Clones share the locks. Right for tests and for
/// one process; several processes need a shared store ([`RedisStore`](super::RedisStore)).
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
