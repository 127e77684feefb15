//! The job the benches run: a no-op handler over a 256-byte JSON payload.

use std::sync::atomic::{AtomicUsize, Ordering};

use qjob::{JobContext, JobError, job};
use serde::{Deserialize, Serialize};

/// The benches' queue.
pub const BENCH_QUEUE: &str = "qjob.bench";

/// Jobs handled in the current round.
pub static HANDLED: AtomicUsize = AtomicUsize::new(0);

/// The number of jobs after which [`DONE`] is notified.
pub static TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Notified when [`HANDLED`] reaches [`TARGET`].
pub static DONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Starts a round that ends after `jobs` jobs.
pub fn start_round(jobs: usize) {
    HANDLED.store(0, Ordering::SeqCst);
    TARGET.store(jobs, Ordering::SeqCst);
}

/// The payload: a charge padded to 256 bytes of JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bench {
    /// The account.
    pub account: String,
    /// The amount.
    pub cents: u64,
    /// Padding.
    pub note: String,
}

impl Bench {
    /// Job `n`.
    pub fn new(n: u64) -> Self {
        let mut bench = Bench {
            account: format!("acct-{:08}", n % 1000),
            cents: n,
            note: String::new(),
        };
        let len = serde_json::to_vec(&bench).unwrap().len();
        bench.note = "x".repeat(256 - len);
        bench
    }
}

/// Job `n`'s JSON bytes (256 of them).
pub fn payload(n: u64) -> Vec<u8> {
    serde_json::to_vec(&Bench::new(n)).unwrap()
}

/// The no-op handler.
#[job(queue = "qjob.bench", retry = 0)]
pub async fn bench(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    let handled = HANDLED.fetch_add(1, Ordering::SeqCst) + 1;
    if handled == TARGET.load(Ordering::SeqCst) {
        DONE.notify_one();
    }
    Ok(())
}

/// The no-op job of the in-memory bench: wide prefetch and concurrency.
#[job(
    queue = "qjob.bench.memory",
    prefetch = 500,
    concurrency = 100,
    retry = 0
)]
pub async fn memory_noop(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    Ok(())
}

/// A job keyed by customer, for the partitioned bench.
#[derive(Debug, Serialize, Deserialize)]
pub struct Keyed {
    /// The partition key.
    pub customer: String,
    /// A sequence number.
    pub seq: u64,
}

/// 10 ms of work per job, 30 partitions, 50 handlers.
#[job(
    queue = "qjob.bench.partitions",
    partition_by = customer,
    partitions = 30,
    concurrency = 50,
    prefetch = 10,
    retry = 0
)]
pub async fn partitioned(job: Keyed, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let handled = HANDLED.fetch_add(1, Ordering::SeqCst) + 1;
    if handled == TARGET.load(Ordering::SeqCst) {
        DONE.notify_one();
    }
    Ok(())
}

/// Deletes `queue` and its `.dlq`, and declares them again as qjob does
/// (durable, classic), so a round starts from nothing.
pub async fn reset_queue(channel: &lapin::Channel, queue: &str) {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    for queue in [queue.to_owned(), format!("{queue}.dlq")] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .unwrap();
    }
}

/// A number from the environment variable `name`, or `default`.
///
/// # Panics
///
/// If the variable is set and not a number.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// Times a qjob worker draining `jobs` of [`BenchJob`] already enqueued,
/// with `prefetch` and as many handlers (set through the operator's
/// overrides, as an operator would).
pub async fn qjob_consume(
    broker: &qjob::AmqpBroker,
    jobs: usize,
    prefetch: u16,
) -> std::time::Duration {
    use qjob::Job;
    start_round(jobs);
    let prefix = BenchJob::options().env_prefix();
    let worker = qjob::Worker::builder(broker.clone())
        .register(BenchJob)
        .overrides(move |name| {
            let knob = name.strip_prefix(prefix.as_str())?;
            matches!(knob, "PREFETCH" | "CONCURRENCY").then(|| prefetch.to_string())
        })
        .build();
    let started = std::time::Instant::now();
    worker.run_until(DONE.notified()).await.unwrap();
    started.elapsed()
}

/// Jobs per second.
pub fn rate(jobs: usize, elapsed: std::time::Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64()
}

/// The median of `rates`.
///
/// # Panics
///
/// If `rates` is empty.
pub fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
