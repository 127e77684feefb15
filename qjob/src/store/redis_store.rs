//! [`RedisStore`]: locks and batches in Redis, shared by processes.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{BatchCounts, BatchUpdate, Store};
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

/// Creates a batch's hash unless it exists.
const BATCH_CREATE: &str = r"
    if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
    redis.call('HSET', KEYS[1], 'total', 0, 'succeeded', 0, 'dead', 0,
        'closed', 0, 'claim', '', 'fired', 0, 'callback', ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
";

/// Applies an update to a batch and returns its counts: `{1}` if it
/// does not exist, `{2}` for members added once closed, else `{0,
/// total, succeeded, dead, closed, claim, fired, callback}`. Members
/// finished are a hash beside it, so that each counts once.
const BATCH_UPDATE: &str = r"
    if redis.call('EXISTS', KEYS[1]) == 0 then return {1} end
    local op = ARGV[1]
    if op == 'add' then
        local members = tonumber(ARGV[2])
        if members > 0 and redis.call('HGET', KEYS[1], 'closed') == '1' then return {2} end
        if redis.call('HINCRBY', KEYS[1], 'total', members) < 0 then
            redis.call('HSET', KEYS[1], 'total', 0)
        end
    elseif op == 'close' then
        redis.call('HSET', KEYS[1], 'closed', 1)
    elseif op == 'finish' then
        if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
            redis.call('PEXPIRE', KEYS[2], math.max(redis.call('PTTL', KEYS[1]), 1))
            if ARGV[3] == '1' then
                redis.call('HINCRBY', KEYS[1], 'succeeded', 1)
            else
                redis.call('HINCRBY', KEYS[1], 'dead', 1)
            end
        end
    elseif op == 'fired' then
        redis.call('HSET', KEYS[1], 'fired', 1)
    end
    local f = redis.call('HMGET', KEYS[1], 'total', 'succeeded', 'dead', 'closed', 'claim', 'fired', 'callback')
    local total = tonumber(f[1]) or 0
    local done = (tonumber(f[2]) or 0) + (tonumber(f[3]) or 0)
    local claim = f[5] or ''
    if op ~= 'read' and op ~= 'fired' and f[4] == '1' and done >= total and claim == '' then
        claim = ARGV[4]
        redis.call('HSET', KEYS[1], 'claim', claim)
    end
    return {0, tostring(total), tostring(f[2] or 0), tostring(f[3] or 0), tostring(f[4] or 0), claim, tostring(f[6] or 0), f[7] or ''}
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
    batch_create: redis::Script,
    batch_update: redis::Script,
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
    /// It reads Redis's `maxmemory` and `maxmemory-policy` first: every key
    /// qjob writes carries a TTL, so a Redis that evicts keys when full
    /// (any policy but `noeviction`, `volatile-*` included) could drop a
    /// lock or a batch's counts and let a duplicate through. Such a Redis
    /// is refused. If the settings cannot be read (`CONFIG` renamed or
    /// not permitted, as on some managed services), a warning says so and
    /// the store connects. See the unique jobs guide,
    /// `qjob::docs::unique`, "Redis settings".
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the URL is malformed or Redis cannot be
    /// reached; [`Error::Config`] if Redis has a memory limit and evicts
    /// keys when it reaches it.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| store_error("open", e))?;
        let mut connection = ConnectionManager::new(client)
            .await
            .map_err(|e| store_error("connect", e))?;
        match read_eviction(&mut connection).await {
            Ok(Eviction::Never) => {}
            Ok(Eviction::Evicts { policy, maxmemory }) => {
                return Err(Error::Config(format!(
                    "Redis evicts keys when full (maxmemory-policy {policy}, maxmemory \
                     {maxmemory} bytes): qjob's keys all carry a TTL, so it could drop a \
                     unique job's lock or a batch's counts (a duplicate job, a callback that \
                     never fires). Set maxmemory-policy noeviction (a full Redis then fails \
                     writes, which qjob reports as errors) or give qjob a Redis of its own"
                )));
            }
            Ok(Eviction::Unknown { policy }) => tracing::warn!(
                policy,
                "Redis's maxmemory-policy is unknown to qjob: if it evicts keys, qjob's locks \
                 and batch counts can be lost; noeviction keeps them"
            ),
            Err(error) => tracing::warn!(
                %error,
                "could not read Redis's maxmemory-policy (CONFIG GET): if Redis evicts keys \
                 when full, qjob's locks and batch counts can be lost; noeviction keeps them"
            ),
        }
        Ok(Self {
            connection,
            prefix: "qjob:".to_owned(),
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            batch_create: redis::Script::new(BATCH_CREATE),
            batch_update: redis::Script::new(BATCH_UPDATE),
        })
    }

    /// Writes keys under `prefix` instead of `qjob:` (several
    /// applications on one Redis, or tests).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// What Redis does with qjob's keys when it reaches its memory limit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Eviction {
    /// Nothing is evicted: no limit (`maxmemory 0`), or `noeviction`
    /// (writes fail instead, and qjob reports them as errors).
    Never,
    /// Keys with a TTL, or all keys, may go. Every key qjob writes has a
    /// TTL (a lock's window, an inbox's, a batch's `ttl`), so `volatile-*`
    /// evicts them as readily as `allkeys-*`.
    Evicts { policy: String, maxmemory: u64 },
    /// A policy this version does not know.
    Unknown { policy: String },
}

/// What `maxmemory` bytes under `policy` mean for qjob's keys.
fn eviction(maxmemory: u64, policy: &str) -> Eviction {
    const EVICTING: [&str; 7] = [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ];
    let policy = policy.to_ascii_lowercase();
    if maxmemory == 0 || policy == "noeviction" {
        Eviction::Never
    } else if EVICTING.contains(&policy.as_str()) {
        Eviction::Evicts { policy, maxmemory }
    } else {
        Eviction::Unknown { policy }
    }
}

/// Reads `maxmemory` and `maxmemory-policy` (`CONFIG GET`, one at a time:
/// Redis before 7 takes one pattern).
async fn read_eviction(connection: &mut ConnectionManager) -> Result<Eviction, redis::RedisError> {
    async fn get(
        connection: &mut ConnectionManager,
        name: &str,
    ) -> Result<Option<String>, redis::RedisError> {
        let reply: redis::Value = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(connection)
            .await?;
        // `[name, value]` in RESP2, `{name: value}` in RESP3.
        let value = match reply {
            redis::Value::Array(items) => items.into_iter().nth(1),
            redis::Value::Map(pairs) => pairs.into_iter().next().map(|(_, value)| value),
            _ => None,
        };
        Ok(value.map(redis::from_redis_value).transpose()?)
    }
    let maxmemory = get(connection, "maxmemory").await?;
    let policy = get(connection, "maxmemory-policy").await?;
    match (maxmemory.and_then(|m| m.parse().ok()), policy) {
        (Some(maxmemory), Some(policy)) => Ok(eviction(maxmemory, &policy)),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "CONFIG GET returned no maxmemory or maxmemory-policy",
        ))),
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
        let holder: String = self
            .acquire
            .key(format!("{}{key}", self.prefix))
            .arg(owner)
            .arg(millis(ttl))
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

    async fn batch_create(
        &self,
        batch: &str,
        callback: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let created: i64 = self
            .batch_create
            .key(batch_key(&self.prefix, batch))
            .arg(callback)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| store_error("create a batch", e))?;
        Ok(created == 1)
    }

    async fn batch_update(
        &self,
        batch: &str,
        update: BatchUpdate<'_>,
        claimant: &str,
    ) -> Result<Option<BatchCounts>, Error> {
        let (op, arg, succeeded) = match update {
            BatchUpdate::Read => ("read", String::new(), false),
            BatchUpdate::Add(members) => ("add", members.to_string(), false),
            BatchUpdate::Close => ("close", String::new(), false),
            BatchUpdate::Finish { member, succeeded } => ("finish", member.to_owned(), succeeded),
            BatchUpdate::Fired => ("fired", String::new(), false),
        };
        let reply: Vec<String> = self
            .batch_update
            .key(batch_key(&self.prefix, batch))
            .key(format!("{}:members", batch_key(&self.prefix, batch)))
            .arg(op)
            .arg(arg)
            .arg(if succeeded { "1" } else { "0" })
            .arg(claimant)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| store_error("update a batch", e))?;
        let number = |i: usize| {
            reply
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match reply.first().map(String::as_str) {
            Some("0") => Ok(Some(BatchCounts {
                total: number(1),
                succeeded: number(2),
                dead_lettered: number(3),
                closed: number(4) == 1,
                claimed_by: reply.get(5).filter(|c| !c.is_empty()).cloned(),
                fired: number(6) == 1,
                callback: reply.get(7).cloned().unwrap_or_default(),
            })),
            Some("2") => Err(super::closed_batch(batch)),
            _ => Ok(None),
        }
    }
}

/// A batch's key; its id is the hash tag, so that its members' key
/// lands in the same slot of a Redis Cluster.
fn batch_key(prefix: &str, batch: &str) -> String {
    format!("{prefix}batch:{{{batch}}}")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.min(super::CENTURY).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_redis_that_never_evicts_keeps_qjobs_keys() {
        let gb = 1 << 30;
        assert_eq!(eviction(gb, "noeviction"), Eviction::Never);
        for policy in ["allkeys-lru", "volatile-lru", "noeviction", "unheard-of"] {
            assert_eq!(eviction(0, policy), Eviction::Never, "no limit: {policy}");
        }
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let expected = Eviction::Evicts {
                policy: policy.to_owned(),
                maxmemory: gb,
            };
            assert_eq!(eviction(gb, policy), expected);
        }
        assert_eq!(
            eviction(gb, "VOLATILE-LRU"),
            Eviction::Evicts {
                policy: "volatile-lru".to_owned(),
                maxmemory: gb
            }
        );
        assert_eq!(
            eviction(gb, "unheard-of"),
            Eviction::Unknown {
                policy: "unheard-of".to_owned()
            }
        );
    }
}
