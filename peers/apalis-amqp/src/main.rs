//! Consume throughput of qjob against apalis-amqp 1.0, alternating rounds on
//! the same broker: persistent 256-byte JSON jobs, a no-op handler, prefetch
//! 25 and 200 with as many handlers (qjob's `concurrency`, apalis's
//! `concurrency` layer). The queue is filled first, then timed from the
//! worker's start until every job was handled. Prints each round and the
//! ratio qjob / apalis of the median rates.
//!
//! ```text
//! cd peers/apalis-amqp && cargo run --release
//! QJOB_BENCH_JOBS=50000 QJOB_BENCH_ROUNDS=5 cargo run --release
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_amqp::AmqpBackend;
use apalis_amqp::Config;
use qjob::Client;
use qjob_benches::{
    Bench, BenchJob, Cpu, HANDLED, TARGET, amqp_url, broker_quiet, ceiling_batch, env_number,
    median, qjob_consume, rate, raw_ceiling, start_round,
};

/// The same no-op as qjob's `BenchJob`: counts, and stops the worker at
/// the round's last job.
async fn apalis_handler(job: Bench, worker: WorkerContext) -> Result<(), BoxDynError> {
    std::hint::black_box(job);
    if HANDLED.fetch_add(1, Ordering::SeqCst) + 1 == TARGET.load(Ordering::SeqCst) {
        worker.stop()?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let url = amqp_url();
    let jobs = env_number("QJOB_BENCH_JOBS", 20_000);
    let rounds = env_number("QJOB_BENCH_ROUNDS", 3);
    let broker = qjob::AmqpBroker::connect(url.as_str())
        .await
        .expect("the bench needs RabbitMQ");
    println!("{jobs} persistent 256-byte jobs per round, {rounds} rounds");
    for prefetch in [25u16, 200] {
        let (mut apalis_rates, mut qjob_rates) = (Vec::new(), Vec::new());
        let mut ceiling_rates = Vec::new();
        for round in 0..rounds {
            let queue = format!("qjob.peer.ceiling.{prefetch}.{round}");
            let (took, cpu) = ceiling_round(&url, &queue, jobs, prefetch).await;
            ceiling_rates.push(rate(jobs, took));
            println!("  ceiling round {round}: {}", cpu_text(cpu));
            let queue = format!("qjob.peer.apalis.{prefetch}.{round}");
            let (took, cpu) = apalis_round(&url, &queue, jobs, prefetch).await;
            apalis_rates.push(rate(jobs + 1, took));
            println!("  apalis round {round}: {}", cpu_text(cpu));
            let (took, cpu) = qjob_round(&broker, jobs, prefetch).await;
            qjob_rates.push(rate(jobs, took));
            println!("  qjob   round {round}: {}", cpu_text(cpu));
        }
        let (apalis, qjob) = (median(&apalis_rates), median(&qjob_rates));
        println!(
            "consume, prefetch {prefetch:>3}  apalis {apalis:>8.0}/s  qjob {qjob:>8.0}/s  ratio qjob/apalis {:.2}   (rounds: apalis {:?}, qjob {:?})",
            qjob / apalis,
            apalis_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            qjob_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        );
        let ceiling = median(&ceiling_rates);
        println!(
            "  broker ceiling (raw lapin, no work, one multiple ack per {} deliveries) {ceiling:>8.0}/s: apalis at {:.0} %, qjob at {:.0} %",
            ceiling_batch(prefetch),
            100.0 * apalis / ceiling,
            100.0 * qjob / ceiling,
        );
    }
}

/// CPU microseconds per job of the client and the broker.
type CpuPerJob = (f64, Option<f64>);

fn cpu_text((client, broker): CpuPerJob) -> String {
    let broker = broker.map_or("-".to_owned(), |b| format!("{b:.1}"));
    format!("CPU per job: client {client:.1} µs, broker {broker} µs")
}

/// Fills a fresh apalis queue with `jobs`, then times a worker draining it.
async fn apalis_round(url: &str, queue: &str, jobs: usize, prefetch: u16) -> (Duration, CpuPerJob) {
    // apalis publishes transient messages; the jobs here are persistent,
    // as qjob's are: published raw (the body apalis's JSON codec reads),
    // into the queue as apalis declares it.
    fill_persistent(url, queue, jobs).await;
    let config = Config::default().queue(queue).prefetch_count(prefetch);
    let mut backend = AmqpBackend::<Bench>::new_from_addr(url)
        .unwrap()
        .with_config(config);
    // apalis-amqp 1.0 sets up its channel on the first push, and its worker
    // panics if it starts without one: push one more job through it.
    backend.push(Bench::new(u64::MAX)).await.unwrap();
    broker_quiet().await;
    start_round(jobs + 1);
    let cpu = Cpu::now();
    let started = Instant::now();
    WorkerBuilder::new(format!("bench-{queue}"))
        .backend(backend)
        .concurrency(usize::from(prefetch))
        .build(apalis_handler)
        .run()
        .await
        .unwrap();
    (started.elapsed(), cpu.per_job_since(jobs + 1))
}

/// What the broker delivers at most on one channel with this prefetch
/// ([`raw_ceiling`]), on a queue filled as apalis's is.
async fn ceiling_round(
    url: &str,
    queue: &str,
    jobs: usize,
    prefetch: u16,
) -> (Duration, CpuPerJob) {
    fill_persistent(url, queue, jobs).await;
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    broker_quiet().await;
    let cpu = Cpu::now();
    let took = raw_ceiling(&connection, queue, jobs, prefetch).await;
    let _ = connection.close(200, "done".into()).await;
    (took, cpu.per_job_since(jobs))
}

/// Declares `queue` as apalis does (durable, no arguments) and publishes
/// `jobs` persistent messages into it, confirmed.
async fn fill_persistent(url: &str, queue: &str, jobs: usize) {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = qjob_benches::confirming_channel(&connection).await;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(jobs);
    for n in 0..jobs as u64 {
        let body = serde_json::to_vec(&Bench::new(n)).unwrap();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _ = connection.close(200, "filled".into()).await;
}

/// Fills qjob's queue with `jobs`, then times a worker draining it.
async fn qjob_round(
    broker: &qjob::AmqpBroker,
    jobs: usize,
    prefetch: u16,
) -> (Duration, CpuPerJob) {
    let client = Client::new(broker.clone());
    let results = client
        .enqueue_all::<BenchJob>((0..jobs as u64).map(Bench::new))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    broker_quiet().await;
    let cpu = Cpu::now();
    let took = qjob_consume(broker, jobs, prefetch).await;
    (took, cpu.per_job_since(jobs))
}
