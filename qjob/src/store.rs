//! [`Store`]: where qjob keeps what RabbitMQ cannot hold, such as the
//! locks of unique jobs. [`MemoryStore`] serves tests and a single process;
//! [`RedisStore`] (cargo feature `redis`) serves several.
//!
//! A store that cannot be reached is an error for the producer
//! ([`Error::Store`]): qjob never enqueues a unique job it could not lock,
//! so an outage never turns into a silent duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::Error;

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
}

/// The longest a lock lasts, whatever window was asked.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Locks in this process's memory, on Tokio's clock (so tests on virtual
/// time see them expire). Clones share the locks. Right for tests and for
/// one process; several processes need a shared store ([`RedisStore`]).
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    locks: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The owner holding `key` now, if any (as [`Store::holder`], at once).
    pub fn held(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        self.locks()
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(owner, _)| owner.clone())
    }
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
        // Expired locks go as they are met, and all of them now and then.
        if locks.len() > 1024 {
            locks.retain(|_, (_, until)| *until > now);
        }
        match locks.get(key) {
            Some((holder, until)) if *until > now => Ok(Some(holder.clone())),
            _ => {
                // A window too long for the clock lasts a century.
                let until = now
                    .checked_add(ttl.max(Duration::from_millis(1)))
                    .unwrap_or_else(|| now + CENTURY);
                locks.insert(key.to_owned(), (owner.to_owned(), until));
                Ok(None)
            }
        }
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, Error> {
        let mut locks = self.locks();
        let held = locks
            .get(key)
            .is_some_and(|(holder, until)| holder == owner && *until > Instant::now());
        if held {
            locks.remove(key);
        }
        Ok(held)
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self.held(key))
    }
}

#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

#[cfg(feature = "redis")]
mod redis_store {
    use std::time::Duration;

    use async_trait::async_trait;
    use redis::aio::ConnectionManager;

    use super::Store;
    use crate::Error;

    /// Takes a free key (`SET … PX`) or returns its holder, in one step;
    /// an empty string when taken now (the same reply in RESP2 and RESP3).
    const ACQUIRE: &str = r"
        local holder = redis.call('GET', KEYS[1])
        if holder then return holder end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return ''
    ";

    /// Deletes a key only if `owner` holds it.
    const RELEASE: &str = r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        end
        return 0
    ";

    /// Locks in Redis, shared by every process that uses the same server
    /// and prefix. It reconnects by itself after a lost connection; a call
    /// meanwhile is an [`Error::Store`].
    #[derive(Clone)]
    pub struct RedisStore {
        connection: ConnectionManager,
        prefix: String,
        acquire: redis::Script,
        release: redis::Script,
    }

    impl std::fmt::Debug for RedisStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisStore")
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    impl RedisStore {
        /// Connects to Redis at `url` (`redis://host:port/db`); keys are
        /// written under `qjob:`.
        ///
        /// # Errors
        ///
        /// [`Error::Store`] if the URL is malformed or Redis cannot be
        /// reached.
        pub async fn connect(url: &str) -> Result<Self, Error> {
            let client = redis::Client::open(url).map_err(|e| store_error("open", e))?;
            let connection = ConnectionManager::new(client)
                .await
                .map_err(|e| store_error("connect", e))?;
            Ok(Self {
                connection,
                prefix: "qjob:".to_owned(),
                acquire: redis::Script::new(ACQUIRE),
                release: redis::Script::new(RELEASE),
            })
        }

        /// Writes keys under `prefix` instead of `qjob:` (several
        /// applications on one Redis, or tests).
        pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = prefix.into();
            self
        }
    }

    fn store_error(operation: &str, error: redis::RedisError) -> Error {
        Error::Store {
            operation: format!("redis {operation}"),
            message: error.to_string(),
        }
    }

    #[async_trait]
    impl Store for RedisStore {
        async fn acquire(
            &self,
            key: &str,
            owner: &str,
            ttl: Duration,
        ) -> Result<Option<String>, Error> {
            let millis = u64::try_from(ttl.min(super::CENTURY).as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let holder: String = self
                .acquire
                .key(format!("{}{key}", self.prefix))
                .arg(owner)
                .arg(millis)
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(|e| store_error("acquire", e))?;
            Ok(Some(holder).filter(|holder| !holder.is_empty()))
        }

        async fn holder(&self, key: &str) -> Result<Option<String>, Error> {
            redis::cmd("GET")
                .arg(format!("{}{key}", self.prefix))
                .query_async(&mut self.connection.clone())
                .await
                .map_err(|e| store_error("get", e))
        }

        async fn release(&self, key: &str, owner: &str) -> Result<bool, Error> {
            let deleted: i64 = self
                .release
                .key(format!("{}{key}", self.prefix))
                .arg(owner)
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(|e| store_error("release", e))?;
            Ok(deleted == 1)
        }
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
}
