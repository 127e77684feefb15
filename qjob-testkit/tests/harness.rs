//! The harness on virtual time: retries, delays, chains of jobs and faults,
//! in milliseconds of real time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use qjob::{AttemptOutcome, Client, Error, Job, JobContext, JobError, job};
use qjob_testkit::TestKit;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub account: String,
    pub cents: u64,
}

fn charge(account: &str) -> Charge {
    Charge {
        account: account.into(),
        cents: 100,
    }
}

#[job(queue = "kit.always-fails", retry = 5, backoff = exponential(base = "1s", max = "5m"))]
async fn always_fails(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Err(JobError::msg("downstream is down"))
}

#[tokio::test(start_paused = true)]
async fn five_exponential_retries_reach_the_dlq_in_milliseconds_of_real_time() {
    let mut kit = TestKit::new().register(AlwaysFailsJob);
    kit.enqueue::<AlwaysFailsJob>(charge("a")).await.unwrap();
    let wall = std::time::Instant::now();
    let virtual_start = Instant::now();
    kit.run_until_idle().await;
    let wall = wall.elapsed();
    let waited = virtual_start.elapsed();

    let dead = kit.assert_dead_lettered::<AlwaysFailsJob>(|c| c.account == "a");
    assert_eq!(dead.attempts, 6);
    assert_eq!(dead.reason, "retries-exhausted");
    assert_eq!(dead.error, "downstream is down");
    let attempts = kit.attempts::<AlwaysFailsJob>();
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    // Jittered exponential delays: between half and all of 1, 2, 4, 8, 16 s.
    let delays: Vec<Duration> = attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            AttemptOutcome::Retrying { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 5);
    for (retry, delay) in delays.iter().enumerate() {
        let full = Duration::from_secs(1 << retry);
        assert!(
            *delay >= full / 2 && *delay <= full,
            "retry {retry}: {delay:?}"
        );
    }
    let total: Duration = delays.iter().sum();
    assert!(
        waited >= total,
        "virtual time {waited:?} covers the backoff {total:?}"
    );
    println!("6 attempts over {waited:?} of virtual time took {wall:?} of real time");
    assert!(wall < Duration::from_millis(50), "took {wall:?}");
}

#[job(queue = "kit.chain", retry = 0)]
async fn chain(job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    // Each job enqueues the next, with one fewer cent, until zero: the
    // harness must not call the system idle in between.
    if job.cents > 0 {
        let next = Charge {
            cents: job.cents - 1,
            ..job
        };
        CLIENT
            .get()
            .expect("client set")
            .enqueue::<ChainJob>(next)
            .await?;
    }
    Ok(())
}

static CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();

#[tokio::test(start_paused = true)]
async fn run_until_idle_waits_for_jobs_enqueued_by_handlers() {
    let mut kit = TestKit::new().register(ChainJob);
    let _ = CLIENT.set(kit.client().clone());
    kit.enqueue::<ChainJob>(Charge {
        account: "chain".into(),
        cents: 20,
    })
    .await
    .unwrap();
    kit.run_until_idle().await;
    let cents: Vec<u64> = kit
        .succeeded::<ChainJob>()
        .iter()
        .map(|c| c.cents)
        .collect();
    assert_eq!(cents, (0..=20).rev().collect::<Vec<_>>());
    assert!(kit.enqueued::<ChainJob>().is_empty());
}

#[job(queue = "kit.noop", retry = 0)]
async fn noop(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn run_until_idle_waits_for_delayed_jobs_within_its_horizon() {
    let mut kit = TestKit::new().register(NoopJob);
    let start = Instant::now();
    kit.client()
        .enqueue_in::<NoopJob>(charge("later"), Duration::from_secs(3600))
        .await
        .unwrap();
    kit.enqueue::<NoopJob>(charge("now")).await.unwrap();
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<NoopJob>(), [charge("now"), charge("later")]);
    assert!(start.elapsed() >= Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn delayed_jobs_beyond_the_horizon_stay_enqueued() {
    let mut kit = TestKit::new()
        .register(NoopJob)
        .horizon(Duration::from_secs(60));
    kit.client()
        .enqueue_in::<NoopJob>(charge("tomorrow"), Duration::from_secs(86_400))
        .await
        .unwrap();
    kit.run_until_idle().await;
    kit.assert_not_run::<NoopJob>(|c| c.account == "tomorrow");
    assert_eq!(kit.enqueued::<NoopJob>(), [charge("tomorrow")]);
}

#[job(queue = "kit.flaky", retry = 3)]
async fn flaky(job: Charge, ctx: JobContext) -> Result<(), JobError> {
    if job.account == "declined" {
        return Err(JobError::permanent(JobError::msg("card declined")));
    }
    if ctx.attempt() < 3 {
        return Err(JobError::retry_after(
            JobError::msg("rate limited"),
            Duration::from_secs(30),
        ));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn assertions_by_job_type_and_payload() {
    let mut kit = TestKit::new().register(FlakyJob).register(NoopJob);
    kit.enqueue::<FlakyJob>(charge("ok")).await.unwrap();
    kit.enqueue::<FlakyJob>(charge("declined")).await.unwrap();
    kit.enqueue::<NoopJob>(charge("other")).await.unwrap();
    kit.run_until_idle().await;

    kit.assert_succeeded::<FlakyJob>(|c| c.account == "ok");
    kit.assert_succeeded::<NoopJob>(|c| c.account == "other");
    let dead = kit.assert_dead_lettered::<FlakyJob>(|c| c.account == "declined");
    assert_eq!((dead.reason.as_str(), dead.attempts), ("permanent", 1));
    let retried = kit.retried::<FlakyJob>();
    assert_eq!(retried.len(), 2);
    assert!(retried.iter().all(|a| a.payload == Some(charge("ok"))));
    assert!(retried.iter().all(|a| matches!(
        &a.outcome,
        AttemptOutcome::Retrying { delay, error } if *delay == Duration::from_secs(30) && error == "rate limited"
    )));
    assert_eq!(kit.failed_attempts::<FlakyJob>().len(), 3);
    assert!(kit.dead_lettered::<NoopJob>().is_empty());
}

#[tokio::test]
async fn perform_runs_one_handler_with_a_crafted_context() {
    let kit = TestKit::new();
    let ctx = JobContext::new("kit.flaky")
        .with_attempt(3)
        .with_max_attempts(4);
    kit.perform(&FlakyJob, charge("ok"), ctx).await.unwrap();
    let ctx = JobContext::new("kit.flaky").with_attempt(1);
    let error = kit.perform(&FlakyJob, charge("ok"), ctx).await.unwrap_err();
    assert_eq!(error.to_string(), "rate limited");
}

#[tokio::test(start_paused = true)]
async fn a_failed_publish_is_an_error_for_the_producer() {
    let kit = TestKit::new().register(NoopJob);
    kit.broker().fail_next_publish();
    let error = kit.enqueue::<NoopJob>(charge("lost")).await.unwrap_err();
    assert!(matches!(error, Error::PublishRejected { .. }), "{error:?}");
    kit.enqueue::<NoopJob>(charge("kept")).await.unwrap();
    assert_eq!(kit.enqueued::<NoopJob>(), [charge("kept")]);
}

#[tokio::test(start_paused = true)]
async fn garbage_goes_to_the_dlq_with_the_reason() {
    let mut kit = TestKit::new().register(NoopJob);
    kit.start().await;
    kit.broker()
        .publish_raw("kit.noop", "{not json")
        .await
        .unwrap();
    kit.enqueue::<NoopJob>(charge("fine")).await.unwrap();
    kit.run_until_idle().await;
    let dead = kit.dead_lettered::<NoopJob>();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "malformed");
    assert_eq!(dead[0].body, b"{not json");
    assert!(dead[0].payload.is_none());
    assert_eq!(kit.succeeded::<NoopJob>(), [charge("fine")]);
}

#[tokio::test(start_paused = true)]
async fn a_duplicated_delivery_runs_the_handler_twice() {
    let mut kit = TestKit::new().register(NoopJob);
    kit.broker().duplicate_next_publish("kit.noop");
    kit.enqueue::<NoopJob>(charge("twice")).await.unwrap();
    kit.run_until_idle().await;
    let attempts = kit.attempts::<NoopJob>();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].job_id, attempts[1].job_id);
    assert_eq!(attempts.iter().filter(|a| a.redelivered).count(), 1);
}

/// Handler starts for the account "crash" (tests run in parallel).
static CRASH_STARTS: AtomicU32 = AtomicU32::new(0);

#[job(queue = "kit.slow", retry = 0)]
async fn slow(job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    if job.account == "crash" {
        CRASH_STARTS.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_handler_redelivers_the_job() {
    let mut kit = TestKit::new().register(SlowJob);
    kit.enqueue::<SlowJob>(charge("crash")).await.unwrap();
    kit.start().await;
    kit.broker()
        .wait_until(|b| b.unacked_count("kit.slow") == 1)
        .await;
    kit.crash_worker().await;
    assert_eq!(kit.broker().ready_count("kit.slow"), 1);
    assert!(kit.attempts::<SlowJob>().is_empty(), "nothing was settled");
    kit.run_until_idle().await;
    let attempts = kit.attempts::<SlowJob>();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].redelivered);
    assert_eq!(CRASH_STARTS.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_redelivers_in_flight_jobs() {
    let mut kit = TestKit::new().register(NoopJob).register(SlowJob);
    kit.enqueue::<SlowJob>(charge("in flight")).await.unwrap();
    kit.start().await;
    kit.broker()
        .wait_until(|b| b.unacked_count("kit.slow") == 1)
        .await;
    kit.broker().drop_connection();
    kit.run_until_idle().await;
    // The first attempt's ack failed on the dead channel; the redelivery
    // succeeded once the worker resubscribed.
    let attempts = kit.attempts::<SlowJob>();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(attempts[0].redelivered);
    assert_eq!(kit.broker().ready_count("kit.slow"), 0);
    kit.enqueue::<NoopJob>(charge("after")).await.unwrap();
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<NoopJob>(), [charge("after")]);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub customer: String,
    pub n: u32,
}

#[job(
    queue = "kit.events",
    partition_by = customer,
    partitions = 4,
    concurrency = 8,
    prefetch = 20,
    retry = 2,
    backoff = fixed("5s")
)]
async fn event(job: Event, ctx: JobContext) -> Result<(), JobError> {
    // Later events of a customer are shorter: without lanes they would
    // overtake the earlier ones.
    tokio::time::sleep(Duration::from_millis(u64::from(50 - job.n))).await;
    if job.n % 7 == 3 && ctx.attempt() == 1 {
        return Err(JobError::msg("flaky"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn partitioned_jobs_keep_each_keys_order_through_retries() {
    let mut kit = TestKit::new().register(EventJob);
    for n in 0..20 {
        for customer in ["ada", "alan", "grace"] {
            kit.enqueue::<EventJob>(Event {
                customer: customer.into(),
                n,
            })
            .await
            .unwrap();
        }
    }
    assert_eq!(kit.enqueued::<EventJob>().len(), 60);
    kit.run_until_idle().await;
    let succeeded = kit.succeeded::<EventJob>();
    assert_eq!(succeeded.len(), 60);
    for customer in ["ada", "alan", "grace"] {
        let order: Vec<u32> = succeeded
            .iter()
            .filter(|e| e.customer == customer)
            .map(|e| e.n)
            .collect();
        assert_eq!(order, (0..20).collect::<Vec<_>>(), "{customer}");
    }
    assert_eq!(kit.retried::<EventJob>().len(), 9);
    assert!(kit.enqueued::<EventJob>().is_empty());
}

/// Payloads of the tallied job deserialized, counted by its `tally` field.
static DESERIALIZED: AtomicU32 = AtomicU32::new(0);

/// A unit field that counts each deserialization of its payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tally;

impl<'de> Deserialize<'de> for Tally {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DESERIALIZED.fetch_add(1, Ordering::SeqCst);
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Tally)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tallied {
    pub customer: String,
    pub n: u32,
    pub tally: Tally,
}

#[job(queue = "kit.tallied", partition_by = customer, partitions = 2, retry = 1, backoff = fixed("1s"))]
async fn tallied(job: Tallied, ctx: JobContext) -> Result<(), JobError> {
    if job.n == 3 && ctx.attempt() == 1 {
        return Err(JobError::msg("flaky"));
    }
    Ok(())
}

#[job(queue = "kit.sharded", shards = 3, retry = 1, backoff = fixed("1s"))]
async fn sharded(job: Charge, ctx: JobContext) -> Result<(), JobError> {
    if job.cents.is_multiple_of(5) && ctx.attempt() == 1 {
        return Err(JobError::msg("flaky"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_sharded_job_runs_from_every_shard_with_its_retries() {
    // 60 jobs over 3 shards: one left empty once in 10^10 runs.
    let mut kit = TestKit::new().register(ShardedJob);
    for cents in 0..60 {
        let payload = Charge {
            account: "ada".into(),
            cents,
        };
        kit.enqueue::<ShardedJob>(payload).await.unwrap();
    }
    for shard in ShardedJob::options().consumed_queues() {
        assert!(kit.broker().ready_count(&shard) > 0, "{shard} holds jobs");
    }
    assert_eq!(kit.enqueued::<ShardedJob>().len(), 60);
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<ShardedJob>().len(), 60);
    assert_eq!(kit.retried::<ShardedJob>().len(), 12);
    assert!(kit.enqueued::<ShardedJob>().is_empty());
    assert!(kit.dead_lettered::<ShardedJob>().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_payload_is_deserialized_once_per_attempt() {
    let mut kit = TestKit::new().register(TalliedJob);
    for n in 0..10 {
        let customer = if n % 2 == 0 { "ada" } else { "alan" };
        let payload = Tallied {
            customer: customer.into(),
            n,
            tally: Tally,
        };
        kit.enqueue::<TalliedJob>(payload).await.unwrap();
    }
    kit.run_until_idle().await;
    // Once to read the key, which the first attempt reuses; once more for
    // the one retry.
    assert_eq!(DESERIALIZED.load(Ordering::SeqCst), 11);
    assert_eq!(kit.succeeded::<TalliedJob>().len(), 10);
}

/// Whether a [`Fuse`] of `"boom"` panics (while the worker runs; the
/// kit's queries decode payloads too).
static ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A text field whose deserialization panics on `"boom"`: user code that
/// runs when the worker reads a partition key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fuse(pub String);

impl<'de> Deserialize<'de> for Fuse {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if ARMED.load(Ordering::SeqCst) {
            assert_ne!(text, "boom", "a fuse blew");
        }
        Ok(Fuse(text))
    }
}

/// A partition key whose text panics on `"bang"` (while armed).
impl std::fmt::Display for Fuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if ARMED.load(Ordering::SeqCst) {
            assert_ne!(self.0, "bang", "a key blew");
        }
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fused {
    pub customer: Fuse,
    pub fuse: Fuse,
}

#[job(queue = "kit.fused", partition_by = customer, partitions = 2, retry = 1)]
async fn fused(_job: Fused, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_payload_that_panics_while_read_for_its_key_is_dead_lettered() {
    let mut kit = TestKit::new().register(FusedJob);
    for (customer, fuse) in [("ada", "a"), ("ada", "boom"), ("bang", "c"), ("ada", "b")] {
        let payload = Fused {
            customer: Fuse(customer.into()),
            fuse: Fuse(fuse.into()),
        };
        kit.enqueue::<FusedJob>(payload).await.unwrap();
    }
    ARMED.store(true, Ordering::SeqCst);
    kit.run_until_idle().await;
    ARMED.store(false, Ordering::SeqCst);
    let succeeded = kit.succeeded::<FusedJob>();
    let fuses: Vec<&str> = succeeded.iter().map(|f| f.fuse.0.as_str()).collect();
    assert_eq!(fuses, ["a", "b"]);
    // Neither ran: a panic while reading the key is not retried on a
    // second read outside the key's lane.
    assert_eq!(kit.attempts::<FusedJob>().len(), 4);
    let mut errors: Vec<String> = kit
        .dead_lettered::<FusedJob>()
        .into_iter()
        .map(|dead| {
            assert_eq!(dead.reason, "malformed");
            dead.error
        })
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("a fuse blew"), "{errors:?}");
    assert!(errors[1].contains("a key blew"), "{errors:?}");
}

/// Handler starts of the poison job.
static POISON_STARTS: AtomicU32 = AtomicU32::new(0);

#[job(queue = "kit.poison", queue_type = "quorum", delivery_limit = 2)]
async fn poison(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    POISON_STARTS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_job_that_keeps_crashing_its_worker_stops_at_the_delivery_limit() {
    let mut kit = TestKit::new().register(PoisonJob);
    kit.enqueue::<PoisonJob>(charge("poison")).await.unwrap();
    for _ in 0..3 {
        kit.start().await;
        kit.broker()
            .wait_until(|b| b.unacked_count("kit.poison") == 1)
            .await;
        kit.crash_worker().await;
    }
    assert_eq!(POISON_STARTS.load(Ordering::SeqCst), 3);
    assert_eq!(kit.broker().ready_count("kit.poison"), 0);
    let dead = kit.dead_lettered::<PoisonJob>();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "delivery-limit");
    assert_eq!(dead[0].payload, Some(charge("poison")));
}

/// A job written by hand, as `#[job]` would refuse it: a delivery limit
/// on a classic queue.
struct ClassicLimitJob;

impl qjob::Job for ClassicLimitJob {
    type Payload = Charge;
    const NAME: &'static str = "classic_limit";
    const QUEUE: &'static str = "kit.classic-limit";

    fn options() -> qjob::JobOptions {
        qjob::JobOptions::new(Self::QUEUE).with_delivery_limit(10)
    }

    async fn perform(&self, _payload: Charge, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_delivery_limit_on_a_classic_queue_is_a_configuration_error() {
    let kit = TestKit::new();
    let error = kit
        .enqueue::<ClassicLimitJob>(charge("nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Config(text) if text.contains("quorum")),
        "{error:?}"
    );
    assert_eq!(kit.broker().ready_count("kit.classic-limit"), 0);
}

/// The panic message of `f`.
fn panic_message(f: impl FnOnce()) -> String {
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
    panicked
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panicked.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// A failed assertion says what happened, one line per attempt with the
/// payload as JSON text, the outcome first.
#[tokio::test(start_paused = true)]
async fn a_failed_assertion_reads_at_a_glance() {
    let mut kit = TestKit::new().register(AlwaysFailsJob);
    kit.enqueue::<AlwaysFailsJob>(charge("x")).await.unwrap();
    kit.run_until_idle().await;
    let message = panic_message(|| kit.assert_succeeded::<AlwaysFailsJob>(|c| c.account == "x"));
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(
        lines[0], "no always_fails job matching the filter succeeded.",
        "{message}"
    );
    assert!(lines.len() < 15, "{message}");
    assert!(
        lines[2].starts_with("  failed, retry in ")
            && lines[2].contains("downstream is down (attempt 1)")
            && lines[2].contains(r#"{"account":"x","cents":100}"#),
        "{message}"
    );
    assert!(
        message
            .contains("dead letters of always_fails (1):\n  retries-exhausted after 6 attempt(s)"),
        "{message}"
    );
}

/// Delayed jobs: `enqueue_in` runs within the horizon; past it, the
/// assertion says the job is still waiting, and an unregistered job type
/// is named as such.
#[tokio::test(start_paused = true)]
async fn delayed_jobs_and_unregistered_types_are_explained() {
    let mut kit = TestKit::new().register(NoopJob);
    kit.enqueue_in::<NoopJob>(charge("soon"), Duration::from_secs(3600))
        .await
        .unwrap();
    kit.enqueue_in::<NoopJob>(charge("later"), Duration::from_secs(48 * 3600))
        .await
        .unwrap();
    kit.run_until_idle().await;
    kit.assert_succeeded::<NoopJob>(|c| c.account == "soon");
    let later = panic_message(|| kit.assert_succeeded::<NoopJob>(|c| c.account == "later"));
    assert!(
        later.contains("1 matching job(s) still enqueued or delayed, not run"),
        "{later}"
    );
    let unregistered = panic_message(|| kit.assert_succeeded::<AlwaysFailsJob>(|_| true));
    assert!(
        unregistered.contains("job always_fails (queue \"kit.always-fails\") is not registered"),
        "{unregistered}"
    );
}

#[job(queue = "kit.noop", retry = 0)]
async fn noop_twin(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// Two job types on one queue: the error names both.
#[tokio::test]
async fn two_jobs_on_one_queue_are_named() {
    let worker = qjob::Worker::builder(qjob_testkit::MemoryBroker::new())
        .register(NoopJob)
        .register(NoopTwinJob)
        .build();
    let error = worker.run_until(async {}).await.unwrap_err();
    assert!(matches!(error, Error::QueueTaken { .. }), "{error:?}");
    let error = error.to_string();
    assert!(
        error.contains("jobs noop and noop_twin both consume queue \"kit.noop\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_worker_without_jobs_is_an_error() {
    let worker = qjob::Worker::builder(qjob_testkit::MemoryBroker::new()).build();
    let error = worker.run_until(async {}).await.unwrap_err();
    assert!(matches!(error, Error::NoJobRegistered), "{error:?}");
}

/// The operator's overrides come through a lookup the application gives
/// (the process environment by default): no environment to set in tests.
#[tokio::test]
async fn overrides_come_through_the_builders_lookup() {
    let broker = qjob_testkit::MemoryBroker::new();
    let worker = qjob::Worker::builder(broker.clone())
        .register(NoopJob)
        .overrides(|name| (name == "QJOB_KIT_NOOP_CONCURRENCY").then(|| "3".to_owned()))
        .build();
    let health = worker.health();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    broker
        .wait_until(|b| b.consumer_count("kit.noop") == 1)
        .await;
    assert_eq!(health.report().concurrency.get("kit.noop"), Some(&3));
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    let malformed = qjob::Worker::builder(qjob_testkit::MemoryBroker::new())
        .register(NoopJob)
        .overrides(|name| (name == "QJOB_KIT_NOOP_PREFETCH").then(|| "lots".to_owned()))
        .build();
    let error = malformed.run_until(async {}).await.unwrap_err().to_string();
    assert!(
        error.contains("QJOB_KIT_NOOP_PREFETCH") && error.contains("lots"),
        "{error}"
    );
}
