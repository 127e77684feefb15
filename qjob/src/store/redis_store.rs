//! [`RedisStore`]: locks and batches in Redis, shared by processes.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BatchCounts, BatchUpdate, Permits, Store};
use crate::{Error, RateLimit};

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

/// Redis's clock, in milliseconds (`now`) and microseconds (`now_us`):
/// every process's permits and rates go by the one clock. (Redis before 5
/// allows writes after `TIME` only once a script replicates its effects.)
const CLOCK: &str = r"
    if redis.replicate_commands then redis.replicate_commands() end
    local t = redis.call('TIME')
    local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local now = math.floor(now_us / 1000)
";

/// Takes a permit (`KEYS[1]`, a sorted set of holders by lease deadline)
/// if fewer than the limit (`KEYS[2]` if set, else `ARGV[2]`) are live,
/// or renews the holder's: 1 if held now, else 0.
const TAKE_PERMIT: &str = r"
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    local limit = tonumber(redis.call('GET', KEYS[2]) or ARGV[2])
    local lease = tonumber(ARGV[3])
    if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < limit then
        redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
        if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
        return 1
    end
    return 0
";

/// Extends a live permit's lease: 1, or 0 if the holder has none.
const RENEW_PERMIT: &str = r"
    local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
    if not deadline or tonumber(deadline) <= now then return 0 end
    local lease = tonumber(ARGV[2])
    redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
    if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
    return 1
";

/// Frees a permit: 1 if it was live, else 0.
const FREE_PERMIT: &str = r"
    local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[1], ARGV[1])
    if deadline and tonumber(deadline) > now then return 1 end
    return 0
";

/// The live permits: `{limit set or '', holder, ms left, holder, ms left, …}`.
const PERMITS: &str = r"
    local reply = {redis.call('GET', KEYS[2]) or ''}
    local held = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
    for i = 1, #held, 2 do
        reply[#reply + 1] = held[i]
        reply[#reply + 1] = tostring(tonumber(held[i + 1]) - now)
    end
    return reply
";

/// One start under a rate (the generic cell rate algorithm): `KEYS[1]`
/// holds when the rate is next free, in microseconds; starts are
/// `ARGV[1]` µs apart, `ARGV[2]` of them may come at once. 0 when it may
/// start now, else the µs to wait.
const TAKE_RATE: &str = r"
    local spacing = tonumber(ARGV[1])
    local next = tonumber(redis.call('GET', KEYS[1]) or now_us)
    if next < now_us then next = now_us end
    local allowed_at = next - spacing * (tonumber(ARGV[2]) - 1)
    if allowed_at > now_us then return math.ceil(allowed_at - now_us) end
    next = next + spacing
    redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now_us) / 1000) + 1)
    return 0
";

/// Locks in Redis, shared by every process that uses the same server
/// and prefix. It reconnects by itself after a lost connection; a call
/// meanwhile is an [`Error::Store`]. Connecting, and each call, take at
/// most [`RedisStore::DEFAULT_TIMEOUT`] (or the bound given to
/// [`RedisStore::connect_within`]): a Redis that is down or does not
/// answer is an [`Error::Store`] within it.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    /// The most a call may take.
    timeout: Duration,
    acquire: redis::Script,
    release: redis::Script,
    batch_create: redis::Script,
    batch_update: redis::Script,
    take_permit: redis::Script,
    renew_permit: redis::Script,
    free_permit: redis::Script,
    permits: redis::Script,
    take_rate: redis::Script,
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
    /// Connecting, and each call later, take at most
    /// [`RedisStore::DEFAULT_TIMEOUT`]; [`RedisStore::connect_within`]
    /// sets another bound.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the URL is malformed or Redis cannot be
    /// reached within the bound; [`Error::Config`] if Redis has a memory
    /// limit and evicts keys when it reaches it.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_within(url, Self::DEFAULT_TIMEOUT).await
    }

    /// How long connecting, and each call, may take unless
    /// [`RedisStore::connect_within`] says otherwise: 2 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// As [`RedisStore::connect`], with `timeout` as the most that
    /// connecting, and each call later, may take. A call that gets no
    /// answer within it (Redis down, unreachable, or stalled) is an
    /// [`Error::Store`]; one Redis does not answer on a connection it has
    /// fails after half a second already (or `timeout` if less). A unique
    /// job's lock its call may have taken is given back (see the unique
    /// jobs guide, `qjob::docs::unique`).
    ///
    /// # Errors
    ///
    /// As [`RedisStore::connect`]; [`Error::Config`] for a zero `timeout`.
    pub async fn connect_within(url: &str, timeout: Duration) -> Result<Self, Error> {
        if timeout.is_zero() {
            return Err(Error::Config(
                "a Redis store's timeout must be longer than 0".to_owned(),
            ));
        }
        let client = redis::Client::open(url).map_err(|e| store_error("open", e))?;
        // A reconnection waits at most the bound between its tries, and
        // each try gives up after it; a command Redis does not answer,
        // after half a second (redis's own default) or the bound if less.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout.min(UNANSWERED)))
            .set_max_delay(timeout);
        let connecting = async {
            let mut connection = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| store_error("connect", e))?;
            let eviction = read_eviction(&mut connection).await;
            Ok::<_, Error>((connection, eviction))
        };
        let (connection, eviction) = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| unanswered("connect", timeout))??;
        match eviction {
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
            timeout,
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            batch_create: redis::Script::new(BATCH_CREATE),
            batch_update: redis::Script::new(BATCH_UPDATE),
            take_permit: clocked(TAKE_PERMIT),
            renew_permit: clocked(RENEW_PERMIT),
            free_permit: clocked(FREE_PERMIT),
            permits: clocked(PERMITS),
            take_rate: clocked(TAKE_RATE),
        })
    }

    /// Writes keys under `prefix` instead of `qjob:` (several
    /// applications on one Redis, or tests).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Runs `script` with its keys and arguments, within the bound.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &str,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        self.within(operation, script.invoke_async(&mut connection))
            .await
    }

    /// Runs `command`, within the bound.
    async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &str,
        command: &redis::Cmd,
    ) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        self.within(operation, command.query_async(&mut connection))
            .await
    }

    /// `call`'s reply, or an [`Error::Store`] once the bound passed.
    async fn within<T>(
        &self,
        operation: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => reply.map_err(|e| store_error(operation, e)),
            Err(_) => Err(unanswered(operation, self.timeout)),
        }
    }
}

/// How long a command waits for Redis's answer on a connection it has.
const UNANSWERED: Duration = Duration::from_millis(500);

/// No answer from Redis to `operation` within `timeout`.
fn unanswered(operation: &str, timeout: Duration) -> Error {
    Error::Store {
        operation: format!("redis {operation}"),
        message: format!("no answer within {timeout:?}"),
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
            .invoke(
                "acquire",
                self.acquire
                    .key(format!("{}{key}", self.prefix))
                    .arg(owner)
                    .arg(millis(ttl)),
            )
            .await?;
        Ok(Some(holder).filter(|holder| !holder.is_empty()))
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, Error> {
        self.query(
            "get",
            redis::cmd("GET").arg(format!("{}{key}", self.prefix)),
        )
        .await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, Error> {
        let deleted: i64 = self
            .invoke(
                "release",
                self.release.key(format!("{}{key}", self.prefix)).arg(owner),
            )
            .await?;
        Ok(deleted == 1)
    }

    async fn batch_create(
        &self,
        batch: &str,
        callback: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let created: i64 = self
            .invoke(
                "create a batch",
                self.batch_create
                    .key(batch_key(&self.prefix, batch))
                    .arg(callback)
                    .arg(millis(ttl)),
            )
            .await?;
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
            .invoke(
                "update a batch",
                self.batch_update
                    .key(batch_key(&self.prefix, batch))
                    .key(format!("{}:members", batch_key(&self.prefix, batch)))
                    .arg(op)
                    .arg(arg)
                    .arg(if succeeded { "1" } else { "0" })
                    .arg(claimant),
            )
            .await?;
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

    async fn take_permit(
        &self,
        resource: &str,
        holder: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<bool, Error> {
        let (permits, limit_key) = permit_keys(&self.prefix, resource);
        let taken: i64 = self
            .invoke(
                "take a permit",
                self.take_permit
                    .key(permits)
                    .key(limit_key)
                    .arg(holder)
                    .arg(limit)
                    .arg(millis(lease)),
            )
            .await?;
        Ok(taken == 1)
    }

    async fn renew_permit(
        &self,
        resource: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let renewed: i64 = self
            .invoke(
                "renew a permit",
                self.renew_permit
                    .key(permit_keys(&self.prefix, resource).0)
                    .arg(holder)
                    .arg(millis(lease)),
            )
            .await?;
        Ok(renewed == 1)
    }

    async fn free_permit(&self, resource: &str, holder: &str) -> Result<bool, Error> {
        let freed: i64 = self
            .invoke(
                "free a permit",
                self.free_permit
                    .key(permit_keys(&self.prefix, resource).0)
                    .arg(holder),
            )
            .await?;
        Ok(freed == 1)
    }

    async fn permits(&self, resource: &str) -> Result<Permits, Error> {
        let (permits, limit_key) = permit_keys(&self.prefix, resource);
        let reply: Vec<String> = self
            .invoke("read permits", self.permits.key(permits).key(limit_key))
            .await?;
        let limit = reply.first().and_then(|limit| limit.parse().ok());
        let holders = reply
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|pair| {
                let left = pair[1].parse::<u64>().unwrap_or(0);
                (pair[0].clone(), Duration::from_millis(left))
            })
            .collect();
        Ok(Permits { holders, limit })
    }

    async fn set_permit_limit(&self, resource: &str, limit: Option<u32>) -> Result<(), Error> {
        let key = permit_keys(&self.prefix, resource).1;
        let command = match limit {
            Some(limit) => redis::cmd("SET").arg(key).arg(limit).clone(),
            None => redis::cmd("DEL").arg(key).clone(),
        };
        self.query("set a permit limit", &command).await
    }

    async fn take_rate(&self, key: &str, rate: RateLimit) -> Result<Option<Duration>, Error> {
        let (spacing, burst) = super::rate_cell(rate);
        let wait: u64 = self
            .invoke(
                "take a rate",
                self.take_rate
                    .key(format!("{}rate:{key}", self.prefix))
                    .arg(
                        u64::try_from(spacing.as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    )
                    .arg(burst),
            )
            .await?;
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }
}

/// A script that starts by reading Redis's clock ([`CLOCK`]).
fn clocked(body: &str) -> redis::Script {
    redis::Script::new(&format!("{CLOCK}{body}"))
}

/// A resource's permits and its limit set at run time; the resource is
/// the hash tag, so both land in one slot of a Redis Cluster.
fn permit_keys(prefix: &str, resource: &str) -> (String, String) {
    (
        format!("{prefix}permits:{{{resource}}}"),
        format!("{prefix}permit-limit:{{{resource}}}"),
    )
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
