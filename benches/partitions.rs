//! Partitioned throughput on RabbitMQ: 30 partition queues, handlers of
//! 10 ms of I/O (`qjob_benches::io`: a service call, or with
//! `QJOB_BENCH_IO=timer` a tokio sleep), concurrency 50, prefetch 10 per
//! partition consumer.
//!
//! ```text
//! cargo bench -p qjob-benches --bench partitions
//! QJOB_BENCH_JOBS=12000 QJOB_BENCH_ROUNDS=5 cargo bench -p qjob-benches --bench partitions
//! ```
//!
//! The rate is timed from the first handler's start to the last job
//! handled (the worker's start, 30 consumers, and its stop are printed
//! apart), the median of the rounds.
//!
//! With 30 keys (one lane per partition at most) the ideal is 30 / 10 ms =
//! 3000 jobs/s; with 300 keys it is concurrency-bound, 50 / 10 ms = 5000.

use std::time::{Duration, Instant};

use qjob::broker::Broker;
use qjob::{Client, Job, Worker};
use qjob_benches::{
    Cpu, DONE, Keyed, PartitionedJob, amqp_url, env_number, io_alone, median, rate, round_span,
    start_round,
};

#[tokio::main]
async fn main() {
    qjob_benches::io_from_env();
    let url = amqp_url();
    let broker = qjob::AmqpBroker::connect(url.as_str())
        .await
        .expect("the bench needs RabbitMQ");
    let client = Client::new(broker.clone());
    let jobs = env_number("QJOB_BENCH_JOBS", 6000) as u64;
    let rounds: usize = env_number("QJOB_BENCH_ROUNDS", 3);
    for (keys, ideal) in [(30u64, 3000.0), (300, 5000.0)] {
        // The same waits with no broker: one task per key (30) or per
        // handler slot (50), whichever binds.
        let lanes = keys.min(50) as usize;
        let (mut steady, mut whole, mut timers) = (Vec::new(), Vec::new(), Vec::new());
        let mut cpu = Vec::new();
        for _ in 0..rounds {
            let (span, took, used) = round(&broker, &client, jobs, keys).await;
            steady.push(rate(jobs as usize, span));
            whole.push(rate(jobs as usize, took));
            cpu.push(used);
            timers.push(io_alone(jobs as usize, lanes, Duration::from_millis(10)).await);
        }
        let (steady, whole, timers) = (median(&steady), median(&whole), median(&timers));
        println!(
            "{keys:>3} keys over 30 partitions, 10 ms handlers, concurrency 50: {steady:.0} jobs/s \
             from the first handler to the last job ({:.0}% of the ideal {ideal}; {:.0}% of \
             {timers:.0}/s, the same 10 ms of I/O on {lanes} tasks without a broker); \
             {whole:.0}/s with the worker's start and stop ({:.0}%); {:.0} µs CPU/job",
            100.0 * steady / ideal,
            100.0 * steady / timers,
            100.0 * whole / ideal,
            median(&cpu),
        );
    }
}

/// Enqueues `jobs` jobs over `keys` keys and runs a worker until every
/// one was handled: the span from the first handler start to the last job
/// handled, the worker's whole run, and its CPU per job.
async fn round(
    broker: &qjob::AmqpBroker,
    client: &Client,
    jobs: u64,
    keys: u64,
) -> (Duration, Duration, f64) {
    let total = count_ready(broker).await;
    assert_eq!(total, 0, "the partition queues start empty");
    let results = client
        .enqueue_all::<PartitionedJob>((0..jobs).map(|seq| Keyed {
            customer: format!("customer-{}", seq % keys),
            seq,
        }))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    start_round(jobs as usize);
    let cpu = Cpu::now();
    let started = Instant::now();
    Worker::builder(broker.clone())
        .register(PartitionedJob)
        .build()
        .run_until(DONE.notified())
        .await
        .unwrap();
    let took = started.elapsed();
    let used = cpu.per_job_since(jobs as usize).0;
    (round_span().expect("the round ran"), took, used)
}

async fn count_ready(broker: &qjob::AmqpBroker) -> u32 {
    let mut total = 0;
    for index in 0..30 {
        let queue = format!("{}.p{index}", PartitionedJob::QUEUE);
        total += broker
            .queue_stats(&queue)
            .await
            .unwrap()
            .map(|s| s.messages)
            .unwrap_or(0);
    }
    total
}
