//! [`MemoryStore`]: locks and batches in this process's memory.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::expiring::ExpiringMap;
use super::{BatchCounts, BatchUpdate, CENTURY, Permits, Store, closed_batch, rate_cell};
use crate::{Error, RateLimit};

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
    limits: Arc<Mutex<Limits>>,
}

/// Permits and rates.
#[derive(Debug, Default)]
struct Limits {
    /// By resource: each holder's lease deadline.
    permits: HashMap<String, HashMap<String, Instant>>,
    /// Limits set at run time, by resource.
    set: HashMap<String, u32>,
    /// By rate key: when the rate is next free (its "theoretical arrival
    /// time"), forgotten once past.
    rates: ExpiringMap<Instant>,
}

impl Limits {
    /// The live permits of `resource`, the expired ones dropped.
    fn live(&mut self, resource: &str, now: Instant) -> &mut HashMap<String, Instant> {
        let held = self.permits.entry(resource.to_owned()).or_default();
        held.retain(|_, until| *until > now);
        held
    }
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

    fn limits(&self) -> MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
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

    async fn take_permit(
        &self,
        resource: &str,
        holder: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<bool, Error> {
        let now = Instant::now();
        let mut limits = self.limits();
        let limit = limits.set.get(resource).copied().unwrap_or(limit);
        let held = limits.live(resource, now);
        let taken = held.contains_key(holder) || held.len() < limit as usize;
        if taken {
            held.insert(holder.to_owned(), deadline(now, lease));
        }
        Ok(taken)
    }

    async fn renew_permit(
        &self,
        resource: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let now = Instant::now();
        let mut limits = self.limits();
        let held = limits.live(resource, now);
        Ok(match held.get_mut(holder) {
            Some(until) => {
                *until = deadline(now, lease);
                true
            }
            None => false,
        })
    }

    async fn free_permit(&self, resource: &str, holder: &str) -> Result<bool, Error> {
        let now = Instant::now();
        Ok(self.limits().live(resource, now).remove(holder).is_some())
    }

    async fn permits(&self, resource: &str) -> Result<Permits, Error> {
        let now = Instant::now();
        let mut limits = self.limits();
        let mut holders: Vec<_> = limits
            .live(resource, now)
            .iter()
            .map(|(holder, until)| (holder.clone(), *until - now))
            .collect();
        holders.sort();
        Ok(Permits {
            holders,
            limit: limits.set.get(resource).copied(),
        })
    }

    async fn set_permit_limit(&self, resource: &str, limit: Option<u32>) -> Result<(), Error> {
        let mut limits = self.limits();
        match limit {
            Some(limit) => limits.set.insert(resource.to_owned(), limit),
            None => limits.set.remove(resource),
        };
        Ok(())
    }

    async fn take_rate(&self, key: &str, rate: RateLimit) -> Result<Option<Duration>, Error> {
        let now = Instant::now();
        let mut limits = self.limits();
        limits.rates.expire(now);
        let (spacing, burst) = rate_cell(rate);
        let next = limits
            .rates
            .get(key, now)
            .map_or(now, |(next, _)| *next)
            .max(now);
        // Up to `burst` starts may be ahead of the spacing.
        let allowed_at = next.checked_sub(spacing * (burst - 1)).unwrap_or(now);
        if allowed_at > now {
            return Ok(Some(allowed_at - now));
        }
        let next = next + spacing;
        limits.rates.insert(key, next, next);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn permits_are_held_up_to_the_limit_until_freed_or_expired() {
        let store = MemoryStore::new();
        let lease = Duration::from_secs(10);
        assert!(store.take_permit("db", "a", 2, lease).await.unwrap());
        assert!(store.take_permit("db", "b", 2, lease).await.unwrap());
        assert!(!store.take_permit("db", "c", 2, lease).await.unwrap());
        assert!(
            store.take_permit("db", "a", 2, lease).await.unwrap(),
            "a holds one"
        );
        assert!(store.free_permit("db", "a").await.unwrap());
        assert!(!store.free_permit("db", "a").await.unwrap());
        assert!(store.take_permit("db", "c", 2, lease).await.unwrap());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(store.renew_permit("db", "b", lease).await.unwrap());
        tokio::time::advance(Duration::from_secs(6)).await;
        // c's lease ran out; b's was renewed.
        assert!(!store.renew_permit("db", "c", lease).await.unwrap());
        let permits = store.permits("db").await.unwrap();
        assert_eq!(permits.holders, [("b".to_owned(), Duration::from_secs(4))]);
        assert_eq!(permits.limit, None);
        store.set_permit_limit("db", Some(1)).await.unwrap();
        assert!(
            !store.take_permit("db", "d", 2, lease).await.unwrap(),
            "the limit set wins"
        );
        store.set_permit_limit("db", None).await.unwrap();
        assert!(store.take_permit("db", "d", 2, lease).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_allows_its_burst_then_one_start_per_spacing() {
        let store = MemoryStore::new();
        let rate = RateLimit::new(100, Duration::from_secs(1));
        for _ in 0..10 {
            assert_eq!(store.take_rate("r", rate).await.unwrap(), None);
        }
        assert_eq!(
            store.take_rate("r", rate).await.unwrap(),
            Some(Duration::from_millis(10))
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(store.take_rate("r", rate).await.unwrap(), None);
        assert!(store.take_rate("r", rate).await.unwrap().is_some());
        // Another key has its own rate.
        assert_eq!(store.take_rate("other", rate).await.unwrap(), None);
        // Over 10 s, the rate and one burst.
        let mut started = 0;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            match store.take_rate("steady", rate).await.unwrap() {
                None => started += 1,
                Some(wait) => tokio::time::advance(wait).await,
            }
        }
        assert!((1000..=1010).contains(&started), "{started}");
    }

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
