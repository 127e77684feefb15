//! What limits shared by processes cost, on RabbitMQ and Redis (the
//! limits guide, `qjob::docs::limits`):
//!
//! - per job, a global concurrency permit (taken, renewed, freed) and a
//!   global rate check against no limit: a no-op job at prefetch and
//!   concurrency 25, rounds alternating, µs per job (a worker's start to
//!   its stop after the last job) from the medians;
//! - three workers (each its own RabbitMQ and Redis connections, in this
//!   process) running 10 ms of I/O at concurrency 25 each: at a global
//!   concurrency of 50 against the same job without the limit (75
//!   handlers), and against the ideal 50 / 10 ms = 5 000 jobs/s.
//!
//! ```text
//! cargo bench -p qjob-benches --bench limits
//! QJOB_BENCH_JOBS=20000 QJOB_BENCH_ROUNDS=5 cargo bench -p qjob-benches --bench limits
//! ```

use std::time::{Duration, Instant};

use qjob::store::RedisStore;
use qjob::{Client, Job, Worker};
use qjob_benches::{
    Bench, BenchJob, DONE, IoBoundJob, IoGlobalJob, PermitBenchJob, RatedBenchJob, amqp_url,
    broker_quiet, env_number, median, rate, start_round,
};

#[tokio::main]
async fn main() {
    let url = amqp_url();
    let redis =
        std::env::var("QJOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let jobs: usize = env_number("QJOB_BENCH_JOBS", 10_000);
    let rounds: usize = env_number("QJOB_BENCH_ROUNDS", 3);
    let broker = qjob::AmqpBroker::connect(url.as_str())
        .await
        .expect("the bench needs RabbitMQ");
    let prefix = format!("qjob-bench:{}:", uuid::Uuid::now_v7().simple());
    let store = RedisStore::connect(&redis)
        .await
        .expect("the bench needs Redis")
        .with_prefix(prefix.clone());
    let client = Client::new(broker.clone());
    println!("{jobs} persistent 256-byte jobs per round, {rounds} rounds");

    let (mut none, mut permit, mut rated) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let plain = per_job::<BenchJob>(&client, &broker, None, jobs).await;
        let with_permit = per_job::<PermitBenchJob>(&client, &broker, Some(&store), jobs).await;
        let with_rate = per_job::<RatedBenchJob>(&client, &broker, Some(&store), jobs).await;
        println!(
            "round {round}: no limit {plain:.1} µs/job, a permit {with_permit:.1} µs/job, \
             a rate check {with_rate:.1} µs/job"
        );
        none.push(plain);
        permit.push(with_permit);
        rated.push(with_rate);
    }
    let (none, permit, rated) = (median(&none), median(&permit), median(&rated));
    println!(
        "per job: a global concurrency permit costs {:.1} µs ({:.2}× no limit), \
         a global rate check {:.1} µs ({:.2}×)",
        permit - none,
        permit / none,
        rated - none,
        rated / none
    );

    qjob_benches::timer_io();
    let mut connections = Vec::new();
    for _ in 0..3 {
        let broker = qjob::AmqpBroker::connect(url.as_str()).await.unwrap();
        let store = RedisStore::connect(&redis)
            .await
            .unwrap()
            .with_prefix(prefix.clone());
        connections.push((broker, store));
    }
    let (mut limited, mut unlimited) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let free = three_workers::<IoBoundJob>(&client, &connections, jobs).await;
        let held = three_workers::<IoGlobalJob>(&client, &connections, jobs).await;
        println!(
            "round {round}: three workers of 25, 10 ms of I/O: {free:.0} jobs/s without a limit, \
             {held:.0} jobs/s at a global concurrency of 50"
        );
        unlimited.push(free);
        limited.push(held);
    }
    let (free, held) = (median(&unlimited), median(&limited));
    println!(
        "global concurrency 50 over three workers: {held:.0} jobs/s, {:.0}% of the ideal 5 000/s; \
         without the limit (75 handlers) {free:.0} jobs/s ({:.0}% of its ideal 7 500/s)",
        held / 50.0,
        free / 75.0
    );
}

/// Fills `J`'s queue with `jobs` jobs (not timed).
async fn fill<J: Job<Payload = Bench>>(client: &Client, jobs: usize) {
    let results = client
        .enqueue_all::<J>((0..jobs).map(|n| Bench::new(n as u64)))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    broker_quiet().await;
}

/// One worker at prefetch and concurrency 25 draining `jobs` of `J`: µs
/// per job, from the worker's start until it stopped after the last job.
async fn per_job<J: Job<Payload = Bench> + Default>(
    client: &Client,
    broker: &qjob::AmqpBroker,
    store: Option<&RedisStore>,
    jobs: usize,
) -> f64 {
    fill::<J>(client, jobs).await;
    start_round(jobs);
    let prefix = J::options().env_prefix();
    let mut builder = Worker::builder(broker.clone())
        .register(J::default())
        .console(false)
        .overrides(move |name| {
            let knob = name.strip_prefix(prefix.as_str())?;
            matches!(knob, "PREFETCH" | "CONCURRENCY").then(|| "25".to_owned())
        });
    if let Some(store) = store {
        builder = builder.store(store.clone());
    }
    let started = Instant::now();
    builder.build().run_until(DONE.notified()).await.unwrap();
    started.elapsed().as_secs_f64() * 1e6 / jobs as f64
}

/// Three workers of concurrency 25 (prefetch 50) draining `jobs` of `J`:
/// jobs a second from the start until the last is handled.
async fn three_workers<J: Job<Payload = Bench> + Default>(
    client: &Client,
    connections: &[(qjob::AmqpBroker, RedisStore)],
    jobs: usize,
) -> f64 {
    fill::<J>(client, jobs).await;
    start_round(jobs);
    let stop = stop_signal();
    let started = Instant::now();
    let mut running = Vec::new();
    for (broker, store) in connections {
        let prefix = J::options().env_prefix();
        let worker = Worker::builder(broker.clone())
            .register(J::default())
            .store(store.clone())
            .console(false)
            .overrides(move |name| match name.strip_prefix(prefix.as_str())? {
                "PREFETCH" => Some("50".to_owned()),
                "CONCURRENCY" => Some("25".to_owned()),
                _ => None,
            })
            .build();
        let stopped = stop.subscribe();
        running.push(tokio::spawn(worker.run_until(async move {
            let mut stopped = stopped;
            let _ = stopped.changed().await;
        })));
    }
    DONE.notified().await;
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    for worker in running {
        worker.await.unwrap().unwrap();
    }
    rate(jobs, elapsed.max(Duration::from_micros(1)))
}

/// A stop signal every worker of a round waits on.
fn stop_signal() -> tokio::sync::watch::Sender<bool> {
    tokio::sync::watch::Sender::new(false)
}
