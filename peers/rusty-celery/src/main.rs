//! Enqueue throughput of qjob against rusty-celery 0.5.5, alternating
//! rounds on the same broker: the same persistent 256-byte jobs (a charge
//! padded to 256 bytes of JSON), one producer.
//!
//! - qjob: `Client::enqueue_all`, every job confirmed by the broker;
//! - celery: `Celery::send_task` for each job, as its producers do,
//!   *without* publisher confirms (celery's AMQP broker has none), timed
//!   until the broker holds every message (its queue depth, polled);
//! - qjob sharded: the same jobs as a job sharded over four queues
//!   (`shards = 4`), `Client::enqueue_all`, confirmed: what spreading one
//!   job type over several broker queue processes brings.
//!
//! Prints the median rates, the ratios to celery, and the client's and the
//! local broker's CPU per job.
//!
//! ```text
//! cd peers/rusty-celery && cargo run --release
//! QJOB_BENCH_JOBS=50000 QJOB_BENCH_ROUNDS=5 cargo run --release
//! ```

use std::time::{Duration, Instant};

use celery::prelude::*;
use qjob::broker::Broker;
use qjob::{Client, Job};
use qjob_benches::{
    BENCH_QUEUE, Bench, BenchJob, Cpu, amqp_url, broker_quiet, env_number, median, rate,
    reset_queue,
};

const CELERY_QUEUE: &str = "qjob.bench.celery";

/// The same jobs, sharded over four queues: what one job type gains when
/// its jobs are spread over several broker queue processes.
#[qjob::job(queue = "qjob.bench.sharded4", shards = 4, retry = 0)]
async fn sharded4(job: Bench, _ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    std::hint::black_box(job);
    Ok(())
}

#[celery::task]
fn charge(account: String, cents: u64, note: String) -> TaskResult<()> {
    std::hint::black_box((account, cents, note));
    Ok(())
}

#[tokio::main]
async fn main() {
    let url = amqp_url();
    let jobs = env_number("QJOB_BENCH_JOBS", 50_000);
    let rounds = env_number("QJOB_BENCH_ROUNDS", 3);
    let broker = qjob::AmqpBroker::connect(url.as_str())
        .await
        .expect("the bench needs RabbitMQ");
    let celery = celery::app!(
        broker = AMQPBroker { url.clone() },
        tasks = [charge],
        task_routes = ["*" => CELERY_QUEUE],
    )
    .await
    .expect("celery connects");
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    println!("{jobs} persistent 256-byte jobs per round, {rounds} rounds, alternating");

    let (mut qjob, mut sharded, mut celery_side) = (
        Measured::default(),
        Measured::default(),
        Measured::default(),
    );
    for round in 0..rounds {
        let shards = Sharded4Job::options().consumed_queues();
        let enqueue_sharded = enqueue::<Sharded4Job>(&broker, jobs);
        sharded.push(measure(&channel, shards, jobs, enqueue_sharded).await);
        let enqueue_plain = enqueue::<BenchJob>(&broker, jobs);
        qjob.push(measure(&channel, vec![BENCH_QUEUE.into()], jobs, enqueue_plain).await);
        let send = async {
            for n in 0..jobs {
                let Bench {
                    account,
                    cents,
                    note,
                } = Bench::new(n as u64);
                celery
                    .send_task(charge::new(account, cents, note))
                    .await
                    .unwrap();
            }
            // Not confirmed: done when the broker holds them all.
            while depth(&broker, CELERY_QUEUE).await < jobs as u32 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        celery_side.push(measure(&channel, vec![CELERY_QUEUE.into()], jobs, send).await);
        println!(
            "round {round}: qjob {:.0}/s, qjob sharded {:.0}/s, celery {:.0}/s",
            qjob.rates[round], sharded.rates[round], celery_side.rates[round]
        );
    }
    let c = median(&celery_side.rates);
    println!(
        "enqueue: qjob enqueue_all (confirmed) {:.0}/s ({:.0} µs CPU/job), celery send_task \
         (unconfirmed) {c:.0}/s ({:.0} µs CPU/job): ratio qjob/celery {:.2}",
        median(&qjob.rates),
        median(&qjob.client),
        median(&celery_side.client),
        median(&qjob.rates) / c
    );
    println!(
        "enqueue: qjob enqueue_all of a job sharded over 4 queues (confirmed) {:.0}/s ({:.0} µs \
         CPU/job): ratio to celery's one queue {:.2}",
        median(&sharded.rates),
        median(&sharded.client),
        median(&sharded.rates) / c
    );
    if !qjob.broker.is_empty() {
        println!(
            "broker CPU per job: qjob {:.0} µs, qjob sharded {:.0} µs, celery {:.0} µs",
            median(&qjob.broker),
            median(&sharded.broker),
            median(&celery_side.broker)
        );
    }
    reset_queue(&channel, BENCH_QUEUE).await;
    reset_queue(&channel, CELERY_QUEUE).await;
    for queue in Sharded4Job::options().consumed_queues() {
        reset_queue(&channel, &queue).await;
    }
}

/// What the rounds of one producer measured: rates, and client and broker
/// CPU per job.
#[derive(Default)]
struct Measured {
    rates: Vec<f64>,
    client: Vec<f64>,
    broker: Vec<f64>,
}

impl Measured {
    fn push(&mut self, (rate, client, broker): (f64, f64, Option<f64>)) {
        self.rates.push(rate);
        self.client.push(client);
        self.broker.extend(broker);
    }
}

/// One round: `queues` emptied, the broker quiet, then `enqueue` timed
/// with the CPU it and the broker spent per job.
async fn measure(
    channel: &lapin::Channel,
    queues: Vec<String>,
    jobs: usize,
    enqueue: impl std::future::Future<Output = ()>,
) -> (f64, f64, Option<f64>) {
    for queue in &queues {
        reset_queue(channel, queue).await;
    }
    broker_quiet().await;
    let cpu = Cpu::now();
    let started = Instant::now();
    enqueue.await;
    let rate = rate(jobs, started.elapsed());
    let (client, broker) = cpu.per_job_since(jobs);
    (rate, client, broker)
}

/// `Client::enqueue_all` of `jobs` jobs of `J`, every one confirmed.
async fn enqueue<J: Job<Payload = Bench>>(broker: &qjob::AmqpBroker, jobs: usize) {
    let results = Client::new(broker.clone())
        .enqueue_all::<J>((0..jobs).map(|n| Bench::new(n as u64)))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
}

async fn depth(broker: &qjob::AmqpBroker, queue: &str) -> u32 {
    broker
        .queue_stats(queue)
        .await
        .unwrap()
        .map_or(0, |stats| stats.messages)
}
