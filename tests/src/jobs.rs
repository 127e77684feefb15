//! The job types of the worker scenarios, one queue each. The memory tests
//! use the same names: a fresh `MemoryBroker` shares nothing with RabbitMQ.

use crate::test_job;

test_job!(retry, "qjob.test.retry", retry = 3);
test_job!(permanent, "qjob.test.permanent", retry = 5);
test_job!(garbage, "qjob.test.garbage", retry = 2);
test_job!(panic, "qjob.test.panic", retry = 2);
test_job!(
    concurrency,
    "qjob.test.concurrency",
    prefetch = 10,
    concurrency = 4
);
test_job!(
    shutdown,
    "qjob.test.shutdown",
    prefetch = 10,
    concurrency = 2
);
test_job!(stuck, "qjob.test.stuck");
test_job!(prefetch, "qjob.test.prefetch", prefetch = 7);
test_job!(panic_always, "qjob.test.panic-always", retry = 1);
test_job!(timeout, "qjob.test.timeout", retry = 0, timeout = "150ms");
test_job!(
    backoff,
    "qjob.test.backoff",
    retry = 2,
    backoff = fixed("300ms")
);
test_job!(
    single_slot,
    "qjob.test.single-slot",
    prefetch = 1,
    concurrency = 1,
    backoff = fixed("1s")
);
test_job!(noop, "qjob.test.noop", retry = 0);
test_job!(
    restart,
    "qjob.test.restart",
    retry = 2,
    backoff = fixed("1s")
);
test_job!(replay, "qjob.test.replay", retry = 0);
test_job!(long_walk, "qjob.test.long-walk", retry = 0);
test_job!(
    old_quorum_dlq,
    "qjob.test.old-quorum-dlq",
    retry = 0,
    queue_type = "quorum"
);
test_job!(
    switched_delay,
    "qjob.test.switched-delay",
    queue_type = "quorum"
);
test_job!(
    quorum_dlq,
    "qjob.test.quorum-dlq",
    retry = 0,
    queue_type = "quorum"
);
test_job!(
    ordered,
    "qjob.test.ordered",
    partition_by = key,
    partitions = 4,
    prefetch = 20,
    concurrency = 6,
    retry = 2,
    backoff = fixed("50ms")
);
test_job!(
    sac,
    "qjob.test.sac",
    partition_by = key,
    partitions = 3,
    retry = 0
);
test_job!(
    few_partitions,
    "qjob.test.mismatch",
    partition_by = key,
    partitions = 2
);
test_job!(
    more_partitions,
    "qjob.test.mismatch",
    partition_by = key,
    partitions = 3
);
test_job!(
    ordered_kill,
    "qjob.test.ordered-kill",
    partition_by = key,
    partitions = 4,
    prefetch = 10,
    concurrency = 4,
    retry = 2,
    backoff = fixed("50ms")
);
test_job!(
    single_active,
    "qjob.test.single-active",
    single_active = true,
    retry = 0
);
test_job!(
    breaker,
    "qjob.test.breaker",
    retry = 100,
    backoff = fixed("100ms"),
    concurrency = 2,
    prefetch = 4,
    circuit_breaker(
        failure_rate = 0.5,
        min_attempts = 10,
        window = "60s",
        open_for = "3s"
    )
);
test_job!(capped, "qjob.test.capped", max_length = 5);
test_job!(
    capped_retry,
    "qjob.test.capped-retry",
    max_length = 2,
    prefetch = 1,
    concurrency = 1,
    retry = 1,
    backoff = fixed("1s")
);
test_job!(
    quorum_retry,
    "qjob.test.quorum-retry",
    queue_type = "quorum",
    concurrency = 2,
    retry = 1,
    backoff = fixed("1s")
);
test_job!(
    quorum_declared,
    "qjob.test.quorum-declared",
    queue_type = "quorum"
);
test_job!(
    observed,
    "qjob.test.observed",
    partition_by = key,
    partitions = 1,
    retry = 2,
    backoff = fixed("50ms")
);
test_job!(dlq_deleted, "qjob.test.dlq-deleted", retry = 0);
test_job!(
    handover,
    "qjob.test.handover",
    partition_by = key,
    partitions = 1,
    prefetch = 2
);
test_job!(
    handover_quorum,
    "qjob.test.handover-quorum",
    queue_type = "quorum",
    partition_by = key,
    partitions = 1,
    prefetch = 2
);
test_job!(
    rolling,
    "qjob.test.rolling",
    partition_by = key,
    partitions = 6,
    prefetch = 10,
    concurrency = 6,
    retry = 2,
    backoff = fixed("50ms")
);
test_job!(health, "qjob.test.health", retry = 0);
test_job!(
    scaled,
    "qjob.test.scaled",
    prefetch = 40,
    retry = 0,
    autoscale(min = 1, max = 12, target_latency = "1s")
);

// Run by worker processes the console tests command
// (`qjob-test-worker console`).
test_job!(
    console_process,
    "qjob.test.process.console",
    prefetch = 5,
    concurrency = 2
);

/// Kills its worker process whenever it runs task 0 (a poison message);
/// other tasks succeed. Run by `qjob-test-worker poison`, which prints
/// `started <seq>` and `done <seq>`.
#[qjob::job(
    queue = "qjob.test.process.poison",
    queue_type = "quorum",
    delivery_limit = 2,
    prefetch = 1
)]
pub async fn poison(task: crate::Task, _ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    use std::io::Write;
    let say = |what: &str| -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{what} {}", task.seq)?;
        stdout.flush()
    };
    say("started")?;
    if task.seq == 0 {
        std::process::exit(POISON_EXIT);
    }
    say("done")?;
    Ok(())
}

/// The exit code of a worker that ran the poison task.
pub const POISON_EXIT: i32 = 70;

// The cluster tests' jobs (`tests/cluster.rs`), run by worker processes
// (`qjob-test-worker cluster-retry` and `cluster-ordered`).
test_job!(
    cluster_retry,
    "qjob.test.cluster.retry",
    queue_type = "quorum",
    prefetch = 50,
    concurrency = 20,
    retry = 3,
    backoff = fixed("300ms")
);
test_job!(
    cluster_ordered,
    "qjob.test.cluster.ordered",
    queue_type = "quorum",
    partition_by = key,
    partitions = 12,
    prefetch = 20,
    concurrency = 12,
    retry = 3,
    backoff = fixed("50ms")
);

/// The job the schedule processes fire every second (they do not consume
/// it: the test reads its queue).
#[qjob::job(queue = "qjob.test.process.schedule")]
pub async fn schedule_tick(_: (), _ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    Ok(())
}

/// A member of the process test's batch: dead-lettered (no retry) when
/// `fail`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BatchPart {
    /// Its number.
    pub n: u32,
    /// Whether it fails.
    pub fail: bool,
}

#[qjob::job(queue = "qjob.test.process.batch-part", retry = 0, concurrency = 8)]
pub async fn batch_part(part: BatchPart, _ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    if part.fail {
        return Err(qjob::JobError::msg(format!("part {} failed", part.n)));
    }
    Ok(())
}

/// The batch's callback: prints `callback <batch> <total> <succeeded>
/// <dead-lettered>`. Its inbox drops a second delivery of the same
/// callback (a worker killed between enqueueing it and acking the last
/// member enqueues it again, with the same id).
#[qjob::job(queue = "qjob.test.process.batch-done", inbox = "1h")]
pub async fn batch_done(
    done: qjob::batch::BatchDone,
    _ctx: qjob::JobContext,
) -> Result<(), qjob::JobError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "callback {} {} {} {}",
        done.batch, done.total, done.succeeded, done.dead_lettered
    )?;
    stdout.flush()?;
    Ok(())
}

// The outbox kill test's job: the relay process declares its queue.
test_job!(outbox_kill, "qjob.test.outbox.kill");

// `enqueue_all` of large batches: a job without an order to keep, the same
// on a capped queue, one partitioned and one single-active.
test_job!(spread, "qjob.test.batch.spread");
test_job!(spread_capped, "qjob.test.batch.capped", max_length = 2500);
test_job!(
    spread_partitioned,
    "qjob.test.batch.partitioned",
    partition_by = key,
    partitions = 3
);
test_job!(
    spread_capped_partitioned,
    "qjob.test.batch.capped-partitioned",
    partition_by = key,
    partitions = 2,
    max_length = 5000
);
test_job!(
    spread_capped_plain,
    "qjob.test.batch.capped-plain",
    max_length = 5000
);
test_job!(spread_sharded, "qjob.test.batch.sharded", shards = 4);
test_job!(
    spread_single_active,
    "qjob.test.batch.single-active",
    single_active = true
);

// A job sharded over three queues, whose retries wait 200 ms.
test_job!(
    sharded,
    "qjob.test.sharded",
    shards = 3,
    retry = 1,
    backoff = fixed("200ms")
);

// One queue sharded three ways and not at all, as in a deploy that
// changes `shards`.
test_job!(more_shards, "qjob.test.shard-deploy", shards = 3);
test_job!(unsharded, "qjob.test.shard-deploy");

// A job whose queue has a namesake of its shards that qjob did not
// declare.
test_job!(foreign_shard, "qjob.test.foreign-shard");
