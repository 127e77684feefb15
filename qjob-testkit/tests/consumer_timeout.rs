//! Deliveries held in place against the broker's consumer timeout, on the
//! paused clock: `MemoryBroker` closes the channel of a consumer that holds
//! a delivery longer, as RabbitMQ does.

use std::time::Duration;

use qjob::{AttemptOutcome, JobContext, JobError, job};
use qjob_testkit::TestKit;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sync {
    pub account: String,
}

fn sync(account: &str) -> Sync {
    Sync {
        account: account.into(),
    }
}

/// `timeout = "30s", retry = 8, exponential(30s, max 10m)`: about 45
/// minutes of backoff held in place.
#[job(
    queue = "kit.timeout.backoff",
    partition_by = account,
    partitions = 1,
    timeout = "30s",
    retry = 8,
    backoff = exponential(base = "30s", max = "10m", jitter = false)
)]
async fn long_backoff(_job: Sync, _ctx: JobContext) -> Result<(), JobError> {
    Err(JobError::msg("ledger unavailable"))
}

/// A long in-place backoff is shortened to keep within the consumer
/// timeout: the job makes its 9 attempts under one delivery and ends in the
/// DLQ. Before, the broker took the delivery back at 30 minutes and the
/// redelivery started again from attempt 1, forever.
#[tokio::test(start_paused = true)]
async fn a_long_backoff_held_in_place_keeps_within_the_consumer_timeout() {
    let mut kit = TestKit::new()
        .register(LongBackoffJob)
        .consumer_timeout(CONSUMER_TIMEOUT);
    kit.enqueue::<LongBackoffJob>(sync("a")).await.unwrap();
    let start = Instant::now();
    tokio::time::timeout(6 * 60 * MINUTE, kit.run_until_idle())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not idle after 6 h: {:#?}",
                kit.attempts::<LongBackoffJob>()
            )
        });
    let attempts = kit.attempts::<LongBackoffJob>();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, (1..=9).collect::<Vec<_>>(), "{attempts:#?}");
    assert!(
        attempts.iter().all(|a| !a.redelivered),
        "the broker never took the delivery back: {attempts:#?}"
    );
    let dead = kit.assert_dead_lettered::<LongBackoffJob>(|s| s.account == "a");
    assert_eq!(
        (dead.attempts, dead.reason.as_str()),
        (9, "retries-exhausted")
    );
    assert!(start.elapsed() < CONSUMER_TIMEOUT, "{:?}", start.elapsed());
    // The early backoffs are kept; the later ones shrink to fit.
    let delays: Vec<Duration> = attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            AttemptOutcome::Retrying { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays[..3], [30, 60, 120].map(Duration::from_secs));
    assert!(delays[7] < Duration::from_secs(600), "{delays:?}");
}

/// Attempts of up to 4 minutes, 10 of them: 40 minutes of attempts alone.
#[job(
    queue = "kit.timeout.slow",
    partition_by = account,
    partitions = 1,
    timeout = "5m",
    retry = 9,
    backoff = fixed("1s")
)]
async fn slow_attempts(_job: Sync, _ctx: JobContext) -> Result<(), JobError> {
    tokio::time::sleep(4 * MINUTE).await;
    Err(JobError::msg("ledger timed out"))
}

/// Attempts that alone outlast the consumer timeout: the broker takes the
/// delivery back mid-way, and the redelivery continues from the attempts
/// the worker made, so each attempt number runs once and the job reaches
/// the DLQ. Before, the redelivery started again from attempt 1, forever.
#[tokio::test(start_paused = true)]
async fn a_redelivery_after_the_consumer_timeout_continues_from_its_attempts() {
    let mut kit = TestKit::new()
        .register(SlowAttemptsJob)
        .consumer_timeout(CONSUMER_TIMEOUT);
    kit.enqueue::<SlowAttemptsJob>(sync("b")).await.unwrap();
    tokio::time::timeout(6 * 60 * MINUTE, kit.run_until_idle())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not idle after 6 h: {:#?}",
                kit.attempts::<SlowAttemptsJob>()
            )
        });
    let attempts = kit.attempts::<SlowAttemptsJob>();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>(), "{attempts:#?}");
    assert!(
        attempts.iter().any(|a| a.redelivered),
        "the broker took the delivery back: {attempts:#?}"
    );
    let dead = kit.assert_dead_lettered::<SlowAttemptsJob>(|s| s.account == "b");
    assert_eq!(
        (dead.attempts, dead.reason.as_str()),
        (10, "retries-exhausted")
    );
    assert_eq!(dead.error, "ledger timed out");
}

static LONG_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One attempt of 35 minutes that succeeds, on a partitioned job.
#[job(queue = "kit.timeout.long-partitioned", partition_by = account, partitions = 1, retry = 0)]
async fn long_partitioned(_job: Sync, _ctx: JobContext) -> Result<(), JobError> {
    LONG_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(35 * MINUTE).await;
    Ok(())
}

static QUORUM_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The same on a quorum queue (in place, no lanes): the redelivery arrives
/// while the attempt still runs.
#[job(queue = "kit.timeout.long-quorum", queue_type = "quorum", retry = 0)]
async fn long_quorum(_job: Sync, _ctx: JobContext) -> Result<(), JobError> {
    QUORUM_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(35 * MINUTE).await;
    Ok(())
}

static PLAIN_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The same on a plain (classic) job with no timeout and a free slot for
/// the redelivery.
#[job(queue = "kit.timeout.long-plain", retry = 0, concurrency = 2)]
async fn long_plain(_job: Sync, _ctx: JobContext) -> Result<(), JobError> {
    PLAIN_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(35 * MINUTE).await;
    Ok(())
}

/// An attempt that outlasts the consumer timeout and succeeds: its ack
/// fails (the channel closed), and the redelivery is acked without running
/// the job again, once the attempt has ended. Before, the redelivery was
/// dead-lettered as out of attempts (or, on the quorum queue and the plain
/// job with a free slot, run again beside the first).
#[tokio::test(start_paused = true)]
async fn a_success_past_the_consumer_timeout_is_acked_on_redelivery() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut kit = TestKit::new()
        .register(LongPartitionedJob)
        .register(LongQuorumJob)
        .register(LongPlainJob)
        .consumer_timeout(CONSUMER_TIMEOUT);
    kit.enqueue::<LongPartitionedJob>(sync("c")).await.unwrap();
    kit.enqueue::<LongQuorumJob>(sync("d")).await.unwrap();
    kit.enqueue::<LongPlainJob>(sync("e")).await.unwrap();
    tokio::time::timeout(6 * 60 * MINUTE, kit.run_until_idle())
        .await
        .expect("idle");
    let runs = [&LONG_RUNS, &QUORUM_RUNS, &PLAIN_RUNS].map(|runs| runs.load(SeqCst));
    assert_eq!(runs, [1, 1, 1], "each job ran once");
    assert_eq!(kit.succeeded::<LongPlainJob>(), [sync("e")]);
    assert_eq!(kit.succeeded::<LongPartitionedJob>(), [sync("c")]);
    assert_eq!(kit.succeeded::<LongQuorumJob>(), [sync("d")]);
    assert!(kit.dead_lettered::<LongPartitionedJob>().is_empty());
    assert!(kit.dead_lettered::<LongQuorumJob>().is_empty());
    let attempts = kit.attempts::<LongPartitionedJob>();
    assert!(attempts.iter().all(|a| a.redelivered), "{attempts:#?}");
}

/// A partitioned job that always fails: attempts 1 and 2 run, then the
/// connection drops during the backoff.
#[job(
    queue = "kit.timeout.dropped",
    partition_by = account,
    partitions = 1,
    retry = 3,
    backoff = fixed("10s")
)]
async fn dropped(_job: Sync, _ctx: JobContext) -> Result<(), JobError> {
    Err(JobError::msg("still down"))
}

/// On a broker without a consumer timeout (MemoryBroker's default) a lost
/// connection still takes held deliveries back; the redelivery continues
/// from the attempts made. Before, with no consumer timeout the worker kept
/// no memory and the job started over from attempt 1.
#[tokio::test(start_paused = true)]
async fn a_redelivery_after_a_lost_connection_continues_from_its_attempts() {
    let mut kit = TestKit::new().register(DroppedJob);
    kit.enqueue::<DroppedJob>(sync("f")).await.unwrap();
    kit.start().await;
    while kit.attempts::<DroppedJob>().len() < 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    kit.broker().drop_connection();
    kit.run_until_idle().await;
    let numbers: Vec<u32> = kit
        .attempts::<DroppedJob>()
        .iter()
        .map(|a| a.attempt)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    let dead = kit.assert_dead_lettered::<DroppedJob>(|s| s.account == "f");
    assert_eq!(dead.attempts, 4);
}
