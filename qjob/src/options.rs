//! [`JobOptions`]: everything `#[job(...)]` says about a job, resolved.

use std::time::Duration;

use crate::Error;
use crate::topology::names;

/// How long to wait before a retry. Only its description lives here; the
/// delays themselves are computed by the backoff policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// Retry at once.
    Immediate,
    /// The same delay before every retry.
    Fixed(Duration),
    /// `base`, then `base + step`, `base + 2 × step`, …
    Incremental {
        /// The first delay.
        base: Duration,
        /// Added for each further retry.
        step: Duration,
    },
    /// `base`, `2 × base`, `4 × base`, … capped at `max`, with jitter unless turned off.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The cap.
        max: Duration,
        /// Spread each delay randomly to avoid thundering herds.
        jitter: bool,
    },
}

/// The RabbitMQ queue type of a job's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Classic queues (the default).
    #[default]
    Classic,
    /// Replicated quorum queues.
    Quorum,
}

impl QueueType {
    /// The value of the `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// When a job type's circuit breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreaker {
    /// The failure rate (0..=1] over `window` that opens the breaker.
    pub failure_rate: f64,
    /// The fewest attempts in the window before the rate counts.
    pub min_attempts: u32,
    /// The sliding window the rate is measured over.
    pub window: Duration,
    /// How long the breaker stays open before a probe.
    pub open_for: Duration,
}

impl CircuitBreaker {
    /// A breaker description.
    pub fn new(failure_rate: f64, min_attempts: u32, window: Duration, open_for: Duration) -> Self {
        Self {
            failure_rate,
            min_attempts,
            window,
            open_for,
        }
    }
}

/// At most `count` jobs started per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Jobs per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl RateLimit {
    /// A rate limit of `count` per `per`.
    pub fn new(count: u32, per: Duration) -> Self {
        Self { count, per }
    }
}

/// Adaptive concurrency: the worker runs between `min` and `max` handlers,
/// as many as the load needs to keep jobs' wait under `target_latency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Autoscale {
    /// The fewest handlers.
    pub min: usize,
    /// The most handlers.
    pub max: usize,
    /// How long a job may wait in the queue.
    pub target_latency: Duration,
}

impl Autoscale {
    /// The prefetch each consumer holds at `handlers` handlers, when
    /// `prefetch` is what the job holds at `max`: the same share, never
    /// fewer messages than handlers, never more than `prefetch`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let scaling = qjob::Autoscale::new(1, 10, Duration::from_secs(10));
    /// assert_eq!(scaling.prefetch_at(10, 200), 200);
    /// assert_eq!(scaling.prefetch_at(1, 200), 20);
    /// assert_eq!(scaling.prefetch_at(3, 5), 3);
    /// ```
    pub fn prefetch_at(&self, handlers: usize, prefetch: u16) -> u16 {
        crate::policy::autoscale::prefetch_for(handlers, self.max, prefetch)
    }

    /// Between `min` and `max` handlers (`min` at least 1, `max` at least
    /// `min`), aiming at `target_latency`.
    pub fn new(min: usize, max: usize, target_latency: Duration) -> Self {
        let min = min.max(1);
        Self {
            min,
            max: max.max(min),
            target_latency,
        }
    }
}

/// A unique job: while its lock is held, enqueueing another job with the
/// same key returns the first one's id instead of publishing (see
/// [`crate::Client::enqueue_unique`]). The lock lives in a
/// [`crate::store::Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unique {
    /// The longest the lock is held: it expires then whatever happened (a
    /// worker that crashed never holds it for good).
    pub within: Duration,
    /// When a worker frees it before that.
    pub until: UniqueUntil,
}

impl Unique {
    /// A lock held at most `within`, freed by a worker at `until`.
    pub fn new(within: Duration, until: UniqueUntil) -> Self {
        Self { within, until }
    }
}

/// When a unique job's lock is freed (besides its expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UniqueUntil {
    /// When a worker starts the job: unique while it waits in the queue.
    Started,
    /// When the job succeeded or was dead-lettered: unique until it is done
    /// (retries included).
    Finished,
    /// Never: unique for the whole window, however soon it ran.
    Expired,
}

impl UniqueUntil {
    /// The mode as `#[job(unique(until = "…"))]` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            UniqueUntil::Started => "started",
            UniqueUntil::Finished => "finished",
            UniqueUntil::Expired => "expired",
        }
    }
}

/// Everything that configures one job type. `#[job(...)]` builds it; the
/// environment can override the operator's knobs
/// ([`crate::WorkerBuilder::overrides`], the configuration guide).
///
/// # Examples
///
/// ```
/// use qjob::JobOptions;
///
/// let options = JobOptions::new("billing.charge").with_prefetch(25).with_retry(5).with_concurrency(50);
/// assert_eq!(options.queue(), "billing.charge");
/// assert_eq!(options.max_attempts(), 6);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    queue: String,
    prefetch: u16,
    retry: u32,
    concurrency: usize,
    backoff: Backoff,
    timeout: Option<Duration>,
    partitions: Option<u16>,
    shards: u16,
    single_active: bool,
    circuit_breaker: Option<CircuitBreaker>,
    rate_limit: Option<RateLimit>,
    queue_type: QueueType,
    max_length: Option<u32>,
    delivery_limit: Option<u32>,
    priorities: Option<u8>,
    autoscale: Option<Autoscale>,
    unique: Option<Unique>,
    inbox: Option<Duration>,
    pub(crate) limits: crate::limits::Limits,
}

/// The default prefetch: enough to keep a handful of handlers busy.
pub(crate) const DEFAULT_PREFETCH: u16 = 25;
/// The default number of handlers running at once per worker.
pub(crate) const DEFAULT_CONCURRENCY: usize = 10;
/// The default number of retries after the first attempt.
pub(crate) const DEFAULT_RETRY: u32 = 3;

impl JobOptions {
    /// The defaults for a job consuming `queue`: prefetch 25, concurrency 10,
    /// 3 retries, immediate backoff, classic queue.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            prefetch: DEFAULT_PREFETCH,
            retry: DEFAULT_RETRY,
            concurrency: DEFAULT_CONCURRENCY,
            backoff: Backoff::Immediate,
            timeout: None,
            partitions: None,
            shards: 1,
            single_active: false,
            circuit_breaker: None,
            rate_limit: None,
            queue_type: QueueType::Classic,
            max_length: None,
            delivery_limit: None,
            priorities: None,
            autoscale: None,
            unique: None,
            inbox: None,
            limits: crate::limits::Limits::default(),
        }
    }

    /// Sets the prefetch (unacked deliveries per consumer, 1..=65535).
    ///
    /// # Panics
    ///
    /// If `prefetch` is 0 (`#[job]` rejects it at compile time).
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        assert!(prefetch >= 1, "prefetch must be at least 1");
        self.prefetch = prefetch;
        self
    }

    /// Sets the number of retries after the first attempt.
    pub fn with_retry(mut self, retry: u32) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how many handlers run at once in one worker.
    ///
    /// # Panics
    ///
    /// If `concurrency` is 0 (`#[job]` rejects it at compile time).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        assert!(concurrency >= 1, "concurrency must be at least 1");
        self.concurrency = concurrency;
        self
    }

    /// Sets the backoff between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the handler timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Spreads the job over `partitions` partition queues by key.
    pub fn with_partitions(mut self, partitions: u16) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Spreads a job with no order to keep over `shards` queues: its work
    /// queue and `<queue>.s1` … `<queue>.s<N-1>`. A queue is one process on
    /// the broker: shards carry more jobs a second than one queue can.
    ///
    /// Producers spread the jobs that go out at once over the shards, and
    /// every worker consumes all of them, `prefetch` (and `max_length`)
    /// per shard. What waits (retries, delayed jobs) and what comes back
    /// (replayed dead letters, a schedule's ticks) goes to the work queue,
    /// which every worker consumes whatever its `shards`; a quorum or
    /// capped job holds its retries in the worker, as any quorum or capped
    /// job does. Dead letters go to the one dead-letter queue. Not with
    /// partitions or single-active (they keep an order; shards do not). A
    /// worker also consumes the shards past its `shards` that exist when it
    /// starts, until they are deleted: a deploy that changes `shards`
    /// strands nothing (the performance guide, `qjob::docs::performance`).
    ///
    /// ```
    /// let options = qjob::JobOptions::new("mail").with_shards(3);
    /// assert_eq!(options.consumed_queues(), ["mail", "mail.s1", "mail.s2"]);
    /// ```
    ///
    /// # Panics
    ///
    /// If `shards` is 0 (`#[job]` rejects it at compile time).
    pub fn with_shards(mut self, shards: u16) -> Self {
        assert!(shards >= 1, "shards must be at least 1");
        self.shards = shards;
        self
    }

    /// Declares the queue single-active-consumer.
    pub fn with_single_active(mut self, single_active: bool) -> Self {
        self.single_active = single_active;
        self
    }

    /// Sets the circuit breaker.
    pub fn with_circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.circuit_breaker = Some(breaker);
        self
    }

    /// Sets the rate limit.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets the queue type.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Caps the queue's length; publishes beyond it are rejected.
    pub fn with_max_length(mut self, max_length: u32) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Bounds how often a message may come back to its (quorum) queue
    /// unsettled — a worker that crashed or lost its connection while
    /// holding it — before RabbitMQ moves it to the dead-letter queue: a
    /// job that kills its worker every time stops at the limit instead of
    /// looping. Needs [`QueueType::Quorum`].
    pub fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = Some(limit);
        self
    }

    /// Lets the job's jobs carry a priority from 0 to `priorities`
    /// ([`crate::EnqueueOptions::priority`]): a worker takes the waiting
    /// jobs of higher priority first, and those of one priority in the
    /// order they came. A job enqueued without one has priority 0.
    ///
    /// A classic queue is declared with `x-max-priority = priorities` (the
    /// work queue, its shards or partitions); RabbitMQ keeps a sub-queue
    /// per level and recommends at most 10. A quorum queue takes no such
    /// argument: RabbitMQ 4.0 to 4.2 know two levels (0 to 4 normal, 5 and
    /// above high, a high job taken twice for each normal one), RabbitMQ
    /// 4.3 and later 32 strict levels (a job without a priority counts as
    /// 4 there), and RabbitMQ 3 none. Delay and dead-letter queues are
    /// declared without it; the job keeps its priority through them. The
    /// [limits guide](crate::docs::limits) has the details.
    ///
    /// A queue's `x-max-priority` cannot change once it is declared: a
    /// classic work queue declared before (with another or no
    /// `priorities`) makes the declare fail with [`Error::QueueMismatch`].
    ///
    /// ```
    /// let options = qjob::JobOptions::new("reports").with_priorities(3);
    /// assert_eq!(options.priorities(), Some(3));
    /// ```
    ///
    /// # Panics
    ///
    /// If `priorities` is 0 (`#[job]` rejects it at compile time).
    pub fn with_priorities(mut self, priorities: u8) -> Self {
        assert!(priorities >= 1, "priorities must be at least 1");
        self.priorities = Some(priorities);
        self
    }

    /// The highest priority the job's jobs may carry, if they carry one.
    pub fn priorities(&self) -> Option<u8> {
        self.priorities
    }

    /// Adapts the number of handlers to the load (see [`Autoscale`]).
    pub fn with_autoscale(mut self, autoscale: Autoscale) -> Self {
        self.autoscale = Some(autoscale);
        self
    }

    /// The adaptive concurrency, if any.
    pub fn autoscale(&self) -> Option<Autoscale> {
        self.autoscale
    }

    /// Makes the job unique by [`crate::Job::unique_key`] (see [`Unique`]).
    pub fn with_unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }

    /// The uniqueness, if any.
    pub fn unique(&self) -> Option<Unique> {
        self.unique
    }

    /// Deduplicates deliveries by job id on the consumer side (an inbox):
    /// once a job succeeded, another delivery of the same id within
    /// `window` is acked without running (a producer that published
    /// twice). Kept in the worker's [`crate::store::Store`].
    pub fn with_inbox(mut self, window: Duration) -> Self {
        self.inbox = Some(window);
        self
    }

    /// The inbox window, if the job deduplicates by job id.
    pub fn inbox(&self) -> Option<Duration> {
        self.inbox
    }

    /// The work queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The name of the dead-letter queue: the work queue's name plus `.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        names::dead_letter_queue(&self.queue)
    }

    /// Unacked deliveries per consumer.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// Retries after the first attempt.
    pub fn retry(&self) -> u32 {
        self.retry
    }

    /// All attempts a job gets: the first plus the retries.
    pub fn max_attempts(&self) -> u32 {
        self.retry.saturating_add(1)
    }

    /// Handlers running at once in one worker.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The handler timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The number of partition queues, if partitioned.
    pub fn partitions(&self) -> Option<u16> {
        self.partitions
    }

    /// The number of queues a job without a key is spread over: 1 unless
    /// sharded ([`JobOptions::with_shards`]).
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Whether the queue is single-active-consumer.
    pub fn single_active(&self) -> bool {
        self.single_active
    }

    /// The circuit breaker, if any.
    pub fn circuit_breaker(&self) -> Option<CircuitBreaker> {
        self.circuit_breaker
    }

    /// The rate limit, if any.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// The queue type.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The queue length cap, if any.
    pub fn max_length(&self) -> Option<u32> {
        self.max_length
    }

    /// The delivery limit of a quorum queue, if any.
    pub fn delivery_limit(&self) -> Option<u32> {
        self.delivery_limit
    }

    /// The queues a worker consumes for this job: its queue, its partition
    /// queues `<queue>.p0` … `<queue>.p<N-1>` when partitioned, or its queue
    /// and `<queue>.s1` … `<queue>.s<N-1>` when sharded.
    ///
    /// ```
    /// let options = qjob::JobOptions::new("events").with_partitions(3);
    /// assert_eq!(options.consumed_queues(), ["events.p0", "events.p1", "events.p2"]);
    /// assert_eq!(qjob::JobOptions::new("mail").consumed_queues(), ["mail"]);
    /// ```
    pub fn consumed_queues(&self) -> Vec<String> {
        names::consumed_queues(&self.queue, self.partitions, self.shards)
    }

    /// The prefix of this queue's environment variables: `QJOB_` plus the
    /// queue name upper-cased with every non-alphanumeric character as `_`.
    ///
    /// ```
    /// assert_eq!(qjob::JobOptions::new("billing.charge").env_prefix(), "QJOB_BILLING_CHARGE_");
    /// ```
    pub fn env_prefix(&self) -> String {
        let name: String = self
            .queue
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("QJOB_{name}_")
    }

    /// Applies the overrides that `lookup` returns for each variable name
    /// (`QJOB_<QUEUE>_PREFETCH`, `…_CONCURRENCY`, …; the worker's lookup is
    /// the environment, see [`crate::WorkerBuilder::overrides`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable and the value when a value is
    /// not a valid number for that knob.
    pub(crate) fn with_overrides_from(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let prefix = self.env_prefix();
        if let Some(prefetch) = parse_override::<u16>(&lookup, &prefix, "PREFETCH", "1..=65535")? {
            self.prefetch = prefetch;
        }
        if let Some(concurrency) = parse_override::<usize>(&lookup, &prefix, "CONCURRENCY", ">= 1")?
        {
            self.concurrency = concurrency;
        }
        if let Some(retry) = parse_override_allow_zero::<u32>(&lookup, &prefix, "RETRY")? {
            self.retry = retry;
        }
        Ok(self)
    }
}

fn read_override(
    lookup: &impl Fn(&str) -> Option<String>,
    prefix: &str,
    knob: &str,
) -> Option<(String, String)> {
    let name = format!("{prefix}{knob}");
    lookup(&name).map(|value| (name, value))
}

fn parse_override<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    prefix: &str,
    knob: &str,
    range: &str,
) -> Result<Option<T>, Error>
where
    T: std::str::FromStr + PartialEq + From<u8>,
{
    let Some((name, value)) = read_override(lookup, prefix, knob) else {
        return Ok(None);
    };
    match value.trim().parse::<T>() {
        Ok(n) if n != T::from(0) => Ok(Some(n)),
        _ => Err(Error::Config(format!(
            "{name}={value:?} is not a valid {}: expected an integer in {range}",
            knob.to_ascii_lowercase()
        ))),
    }
}

fn parse_override_allow_zero<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    prefix: &str,
    knob: &str,
) -> Result<Option<T>, Error> {
    let Some((name, value)) = read_override(lookup, prefix, knob) else {
        return Ok(None);
    };
    value.trim().parse::<T>().map(Some).map_err(|_| {
        Error::Config(format!(
            "{name}={value:?} is not a valid {}: expected an integer >= 0",
            knob.to_ascii_lowercase()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn env_prefix_upper_cases_and_replaces_non_alphanumerics() {
        assert_eq!(JobOptions::new("a-b.c_d9").env_prefix(), "QJOB_A_B_C_D9_");
    }

    #[test]
    fn overrides_replace_attribute_values() {
        let options = JobOptions::new("billing.charge")
            .with_prefetch(25)
            .with_concurrency(50)
            .with_overrides_from(env(&[
                ("QJOB_BILLING_CHARGE_PREFETCH", "200"),
                ("QJOB_BILLING_CHARGE_CONCURRENCY", " 7 "),
                ("QJOB_BILLING_CHARGE_RETRY", "0"),
                ("QJOB_OTHER_PREFETCH", "1"),
            ]))
            .unwrap();
        assert_eq!(options.prefetch(), 200);
        assert_eq!(options.concurrency(), 7);
        assert_eq!(options.retry(), 0);
    }

    #[test]
    fn malformed_overrides_are_errors_naming_variable_and_value() {
        for (name, value) in [
            ("QJOB_Q_PREFETCH", "0"),
            ("QJOB_Q_PREFETCH", "65536"),
            ("QJOB_Q_PREFETCH", "ten"),
            ("QJOB_Q_CONCURRENCY", "0"),
            ("QJOB_Q_CONCURRENCY", "-3"),
            ("QJOB_Q_RETRY", "many"),
        ] {
            let error = JobOptions::new("q")
                .with_overrides_from(env(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(name), "{error}");
            assert!(error.contains(value), "{error}");
        }
    }
}
