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

use crate::{Error, RateLimit};

mod expiring;
mod memory;
#[cfg(feature = "redis")]
mod redis_store;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

/// Locks with an owner and an expiry, set atomically; batches' counts;
/// and the permits and rates of limits shared by processes
/// ([`crate::docs::limits`]).
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

    /// Takes one of `resource`'s permits for `holder` during `lease`, if
    /// fewer than its limit are held: `true` when `holder` holds one now
    /// (taken, or renewed if it held one already). The limit is the one set
    /// at run time ([`Store::set_permit_limit`]) if there is one, else
    /// `limit`. A permit not renewed or freed within its lease is free
    /// again. Of any number of concurrent calls, no more than the limit
    /// succeed.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn take_permit(
        &self,
        resource: &str,
        holder: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<bool, Error>;

    /// Extends `holder`'s permit of `resource` to `lease` from now; `false`
    /// if it holds none any more (its lease ran out).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn renew_permit(
        &self,
        resource: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, Error>;

    /// Frees `holder`'s permit of `resource`; whether it held one.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn free_permit(&self, resource: &str, holder: &str) -> Result<bool, Error>;

    /// Who holds `resource`'s permits now, and the limit set at run time.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn permits(&self, resource: &str) -> Result<Permits, Error>;

    /// Sets the limit of `resource` for every process that takes its
    /// permits, in place of the one they were built with (`None`: back to
    /// theirs). Permits held beyond a lowered limit stay until freed.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn set_permit_limit(&self, resource: &str, limit: Option<u32>) -> Result<(), Error>;

    /// One start under the rate `rate` kept at `key` (the generic cell rate
    /// algorithm: starts spaced `rate.per / rate.count` apart, with a burst
    /// of a tenth of `rate.count`, at least one): `None` when it may start
    /// now (counted), or how long to wait before asking again (not
    /// counted). Of any number of concurrent calls, no more than the rate
    /// allows succeed.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store could not be reached or refused.
    async fn take_rate(&self, key: &str, rate: RateLimit) -> Result<Option<Duration>, Error>;
}

/// The permits of a resource ([`Store::permits`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Permits {
    /// Who holds them, each with how long its lease has left.
    pub holders: Vec<(String, Duration)>,
    /// The limit set at run time ([`Store::set_permit_limit`]), if any.
    pub limit: Option<u32>,
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

    async fn take_permit(
        &self,
        resource: &str,
        holder: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<bool, Error> {
        (**self).take_permit(resource, holder, limit, lease).await
    }

    async fn renew_permit(
        &self,
        resource: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        (**self).renew_permit(resource, holder, lease).await
    }

    async fn free_permit(&self, resource: &str, holder: &str) -> Result<bool, Error> {
        (**self).free_permit(resource, holder).await
    }

    async fn permits(&self, resource: &str) -> Result<Permits, Error> {
        (**self).permits(resource).await
    }

    async fn set_permit_limit(&self, resource: &str, limit: Option<u32>) -> Result<(), Error> {
        (**self).set_permit_limit(resource, limit).await
    }

    async fn take_rate(&self, key: &str, rate: RateLimit) -> Result<Option<Duration>, Error> {
        (**self).take_rate(key, rate).await
    }
}

/// The spacing of starts and the burst of a rate ([`Store::take_rate`]):
/// one start every `per / count`, a burst of a tenth of `count` (at least
/// one).
pub(crate) fn rate_cell(rate: RateLimit) -> (Duration, u32) {
    let count = rate.count.max(1);
    (rate.per / count, (count / 10).max(1))
}

/// The longest a lock lasts, whatever window was asked.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The error for members added to a closed batch.
fn closed_batch(batch: &str) -> Error {
    Error::Config(format!(
        "batch {batch} is closed: no member can be added to it"
    ))
}
