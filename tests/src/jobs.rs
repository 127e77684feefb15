//! The job types that tests use outside the shared scenarios (whose jobs
//! sit beside them in [`scenarios`](crate::scenarios)): the RabbitMQ-only
//! tests of `tests/amqp_worker.rs` and `tests/amqp_process.rs`, and the
//! jobs that worker processes (`qjob-test-worker`) run for
//! `tests/amqp_process.rs`, `tests/cluster.rs` and
//! `tests/postgres_outbox.rs`.

use crate::test_job;

test_job!(prefetch, "qjob.test.prefetch", prefetch = 7);
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
    quorum_declared,
    "qjob.test.quorum-declared",
    queue_type = "quorum"
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

// One queue sharded three ways and not at all, as in a deploy that
// changes `shards`.
test_job!(more_shards, "qjob.test.shard-deploy", shards = 3);
test_job!(unsharded, "qjob.test.shard-deploy");
