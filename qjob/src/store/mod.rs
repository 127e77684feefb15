//! [`Store`]: where qjob keeps what RabbitMQ cannot hold, such as the
//! locks of unique jobs. [`MemoryStore`] serves tests and a single process;
//! [`RedisStore`] (cargo feature `redis`) serves several.
//!
//! A store that cannot be reached is an error for the producer
//! ([`Error::Store`]): qjob never enqueues a unique job it could not lock,
//! so an outage never turns into a silent duplicate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Error;

mod expiring;
mod memory;
#[cfg(feature = "redis")]
mod redis_store;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

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

/// The error for members added to a closed batch.
fn closed_batch(batch: &str) -> Error {
    Error::Config(format!(
        "batch {batch} is closed: no member can be added to it"
    ))
}
