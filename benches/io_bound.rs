//! I/O-bound jobs: each handler awaits 10 ms of I/O (a call to a service
//! that answers after 10 ms, or with `QJOB_BENCH_IO=timer` a tokio
//! sleep: see `qjob_benches::io`), on one worker.
//!
//! ```text
//! cargo bench -p qjob-benches --bench io_bound
//! QJOB_BENCH_JOBS=30000 QJOB_BENCH_ROUNDS=5 cargo bench -p qjob-benches --bench io_bound
//! QJOB_BENCH_IO=timer cargo bench -p qjob-benches --bench io_bound
//! ```
//!
//! - concurrency 100 (prefetch 100): the ideal is 100 / 10 ms = 10 000
//!   jobs/s; prints the rate as a share of it;
//! - concurrency 1 000 (prefetch 1 000): the ideal, 100 000 jobs/s, is past
//!   what the broker delivers, so the baseline is a raw lapin consumer
//!   with the same prefetch acking at once (no work), in the same run:
//!   what the broker delivers. Prints the ratio. The I/O is a timer here:
//!   its precision does not matter, and a service's thread answering a
//!   thousand calls at once would take CPU from the broker.
//!
//! The queue is filled before each round (not timed); a round is timed
//! from the consumer's start until every job is acked. Rounds alternate;
//! medians are printed with client CPU per job.

use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use qjob::{Client, Job, Worker};
use qjob_benches::{
    Bench, Cpu, DONE, IoBoundJob, amqp_url, broker_quiet, env_number, io_alone, median, rate,
    raw_ack_all, raw_consumer, reset_queue, start_round,
};

#[tokio::main]
async fn main() {
    qjob_benches::io_from_env();
    let url = amqp_url();
    let jobs: usize = env_number("QJOB_BENCH_JOBS", 20_000);
    let rounds: usize = env_number("QJOB_BENCH_ROUNDS", 3);
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("the bench needs RabbitMQ");
    let channel = connection.create_channel().await.unwrap();
    let broker = qjob::AmqpBroker::connect(url.as_str()).await.unwrap();
    let client = Client::new(broker.clone());
    let queue = IoBoundJob::QUEUE;
    println!("{jobs} persistent 256-byte jobs per round, 10 ms of I/O each, {rounds} rounds");

    let fill = async || {
        reset_queue(&channel, queue).await;
        let results = client
            .enqueue_all::<IoBoundJob>((0..jobs).map(|n| Bench::new(n as u64)))
            .await
            .unwrap();
        assert!(results.iter().all(Result::is_ok));
        broker_quiet().await;
    };

    let prefetch = env_number("QJOB_BENCH_PREFETCH", 100) as u16;
    let (mut rates, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        fill().await;
        let (elapsed, used) = qjob_round(&broker, jobs, 100, prefetch).await;
        rates.push(rate(jobs, elapsed));
        cpu.push(used);
    }
    let at_100 = median(&rates);
    let alone = io_alone(jobs, 100, Duration::from_millis(10)).await;
    println!(
        "100 tasks awaiting the same 10 ms of I/O, no broker: {alone:.0}/s ({:.0}% of 10 000/s)",
        alone / 100.0
    );
    println!(
        "concurrency 100 (prefetch {prefetch}): {at_100:>7.0} jobs/s, {:.0}% of the ideal 10 000/s, \
         {:.0}% of the same I/O without a broker, {:.0} µs CPU/job",
        at_100 / 100.0,
        100.0 * at_100 / alone,
        median(&cpu)
    );

    // A thousand calls at once would keep the service's thread busy
    // enough to slow the broker: here the broker's delivery binds, not
    // the I/O's precision.
    qjob_benches::timer_io();
    let (mut qjob_rates, mut raw_rates, mut qjob_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        fill().await;
        raw_rates.push(rate(jobs, raw_round(&connection, jobs, 1000).await));
        fill().await;
        let (elapsed, used) = qjob_round(&broker, jobs, 1000, 1000).await;
        qjob_rates.push(rate(jobs, elapsed));
        qjob_cpu.push(used);
    }
    let (qjob_rate, raw_rate) = (median(&qjob_rates), median(&raw_rates));
    println!(
        "concurrency 1 000: {qjob_rate:>7.0} jobs/s against {raw_rate:.0}/s delivered to a raw \
         consumer (no work): {:.0}%, {:.0} µs CPU/job",
        100.0 * qjob_rate / raw_rate,
        median(&qjob_cpu)
    );
    reset_queue(&channel, queue).await;
}

/// A worker with `slots` handlers and as much prefetch draining the queue:
/// how long it took, and the client CPU per job.
async fn qjob_round(
    broker: &qjob::AmqpBroker,
    jobs: usize,
    slots: u16,
    prefetch: u16,
) -> (Duration, f64) {
    start_round(jobs);
    let prefix = IoBoundJob::options().env_prefix();
    let worker = Worker::builder(broker.clone())
        .register(IoBoundJob)
        .console(false)
        .overrides(move |name| {
            let knob = name.strip_prefix(prefix.as_str())?;
            match knob {
                "PREFETCH" => Some(prefetch.to_string()),
                "CONCURRENCY" => Some(slots.to_string()),
                _ => None,
            }
        })
        .build();
    let cpu = Cpu::now();
    let started = Instant::now();
    worker.run_until(DONE.notified()).await.unwrap();
    (started.elapsed(), cpu.per_job_since(jobs).0)
}

/// A raw lapin consumer with `prefetch`, acking each delivery at once.
async fn raw_round(connection: &Connection, jobs: usize, prefetch: u16) -> Duration {
    let channel = connection.create_channel().await.unwrap();
    let started = Instant::now();
    let consumer = raw_consumer(&channel, IoBoundJob::QUEUE, "raw-io", prefetch).await;
    raw_ack_all(consumer, jobs, |_| {}).await;
    channel.close(200, "done".into()).await.unwrap();
    started.elapsed()
}
