//! A worker process for the tests that kill one. It exits after two
//! minutes at the latest.
//!
//! - `qjob-test-worker` consumes `qjob.test.process.kill`, prints
//!   `started <seq>` for each attempt and never finishes a handler;
//! - `qjob-test-worker ordered` runs the partitioned `OrderedKillJob`, and
//!   prints `done <seq>` for each job it finishes;
//! - `qjob-test-worker poison` runs `PoisonJob`, which exits the process
//!   on task 0;
//! - `qjob-test-worker cluster-retry` and `cluster-ordered` run the cluster
//!   tests' jobs;
//! - `qjob-test-worker console` runs `ConsoleProcessJob` with a heartbeat
//!   every `QJOB_TEST_HEARTBEAT_MS` (200 by default), and stops gracefully
//!   when its stdin closes;
//! - `qjob-test-worker batch` runs `BatchPartJob` and `BatchDoneJob` with
//!   a Redis store (`QJOB_REDIS_URL`, keys under `QJOB_TEST_REDIS_PREFIX`),
//!   and stops when its stdin closes;
//! - `qjob-test-worker schedule` carries a schedule that enqueues
//!   `ScheduleTickJob` every second (it consumes nothing), with heartbeats
//!   as `console`, and stops when its stdin closes;
//! - `qjob-test-worker limits` runs the shared-limits jobs
//!   (`qjob_tests::limits`) with a Redis store as `batch` does, permits
//!   leased for `QJOB_TEST_PERMIT_LEASE_MS`, and stops when its stdin
//!   closes;
//! - `qjob-test-worker relay` runs only an outbox relay on the table
//!   `QJOB_TEST_OUTBOX_TABLE` (PostgreSQL at `QJOB_PG_URL`), for
//!   `OutboxKillJob`'s rows, and stops when its stdin closes.
//!
//! With `QJOB_CLUSTER_URLS` (comma-separated) it connects to the first of
//! those nodes that answers, reconnects the same way, and prints
//! `consuming <true|false> <µs>` when its consumers come up or go down.

use std::io::Write;
use std::time::Duration;

use qjob::{JobContext, JobError, Worker, job};
use qjob_tests::Task;
use qjob_tests::jobs::{
    BatchDoneJob, BatchPartJob, ClusterOrderedJob, ClusterRetryJob, ConsoleProcessJob,
    OrderedKillJob, OutboxKillJob, PoisonJob, ScheduleTickJob,
};
use qjob_tests::limits::{GloballyLimitedJob, GloballyRatedJob, RatedPerKeyJob};
use tokio::io::AsyncReadExt;

#[job(queue = "qjob.test.process.kill", prefetch = 10, concurrency = 4)]
async fn stuck(task: Task, _ctx: JobContext) -> Result<(), JobError> {
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "started {}", task.seq)?;
        stdout.flush()?;
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let cluster = std::env::var("QJOB_CLUSTER_URLS").ok();
    let broker = match &cluster {
        Some(urls) => {
            let urls = urls.split(',').map(str::to_owned);
            qjob::AmqpBroker::connect_with(urls, qjob::AmqpOptions::default())
                .await
                .expect("a cluster node answers")
        }
        None => qjob_tests::amqp().await,
    };
    let client = qjob::Client::new(broker.clone());
    let builder = Worker::builder(broker);
    let mode = std::env::args().nth(1);
    let heartbeat = std::env::var("QJOB_TEST_HEARTBEAT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_millis(200), Duration::from_millis);
    let worker = match mode.as_deref() {
        Some("console") => builder
            .register(ConsoleProcessJob)
            .heartbeat_interval(heartbeat),
        Some("batch") => builder
            .register(BatchPartJob)
            .register(BatchDoneJob)
            .store(redis_store().await),
        Some("limits") => {
            let lease = std::env::var("QJOB_TEST_PERMIT_LEASE_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map_or(Duration::from_secs(15), Duration::from_millis);
            builder
                .register(GloballyLimitedJob)
                .register(GloballyRatedJob)
                .register(RatedPerKeyJob)
                .store(redis_store().await)
                .permit_lease(lease)
                .console(false)
        }
        Some("schedule") => builder
            .schedule::<ScheduleTickJob>(
                qjob::Schedule::cron("* * * * * *").expect("a valid expression"),
                (),
            )
            .heartbeat_interval(heartbeat),
        Some("relay") => {
            let table = std::env::var("QJOB_TEST_OUTBOX_TABLE").expect("a table");
            let outbox = qjob::outbox::Outbox::new(client)
                .with_table(&table)
                .expect("a valid table name");
            let pool = qjob_tests::outbox::pg_pool().await;
            builder
                .relay(outbox.relay(pool).job::<OutboxKillJob>())
                .console(false)
        }
        Some("ordered") => builder.register(OrderedKillJob),
        Some("poison") => builder.register(PoisonJob),
        Some("cluster-retry") => builder.register(ClusterRetryJob),
        Some("cluster-ordered") => builder.register(ClusterOrderedJob),
        _ => builder.register(StuckJob),
    }
    .build();
    if cluster.is_some() {
        tokio::spawn(announce_consuming(worker.health()));
    }
    let stop = async {
        if matches!(
            mode.as_deref(),
            Some("console" | "schedule" | "batch" | "relay" | "limits")
        ) {
            // Until the parent closes stdin.
            let mut rest = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut rest).await;
        } else {
            std::future::pending::<()>().await
        }
    };
    let shutdown = async {
        tokio::select! {
            _ = stop => {}
            _ = tokio::time::sleep(Duration::from_secs(120)) => {}
        }
    };
    if let Err(error) = worker.run_until(shutdown).await {
        eprintln!("worker failed: {error}");
        std::process::exit(2);
    }
}

/// The store of `QJOB_REDIS_URL`, keys under `QJOB_TEST_REDIS_PREFIX`.
async fn redis_store() -> qjob::store::RedisStore {
    let url =
        std::env::var("QJOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let prefix = std::env::var("QJOB_TEST_REDIS_PREFIX").expect("a key prefix");
    qjob::store::RedisStore::connect(&url)
        .await
        .expect("Redis answers")
        .with_prefix(prefix)
}

/// Prints `consuming <true|false> <µs since the epoch>` each time the
/// worker's consumers all come up or one goes down, for the cluster tests
/// to time a reconnection.
async fn announce_consuming(health: qjob::Health) {
    let mut was = false;
    loop {
        let report = health.report();
        let up = !report.consumers.is_empty() && report.consumers.values().all(|up| *up);
        if up != was {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "consuming {up} {}",
                qjob_tests::micros_since_epoch()
            );
            let _ = stdout.flush();
            was = up;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
