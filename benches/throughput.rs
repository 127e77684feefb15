//! Throughput of qjob against a raw lapin loop on the same broker, in the
//! same run: persistent 256-byte JSON jobs, prefetch 1, 25 and 200.
//!
//! ```text
//! cargo bench -p qjob-benches
//! QJOB_BENCH_JOBS=50000 QJOB_BENCH_ROUNDS=5 cargo bench -p qjob-benches
//! ```
//!
//! Both sides put the same messages on the wire: the JSON body, persistent,
//! `content_type` and a UUID v7 `message_id`, which is what qjob's first
//! attempts carry (no headers).
//!
//! Consume: the queue is filled first, then timed from the consumer's start
//! until every message is acked and the consumer is closed. The raw loop
//! keeps its acks in flight (a `FuturesUnordered`), as a tuned hand-written
//! consumer does; qjob acks each job after its (no-op) handler returns, with
//! `concurrency = prefetch`. Beside them, the broker's ceiling: a raw
//! consumer that does nothing with a delivery and sends one multiple ack
//! per half prefetch (what the broker delivers at most on one channel);
//! qjob's rate and CPU per job are printed against it too.
//! `QJOB_BENCH_PREFETCH=200` (a comma-separated list) picks the prefetches,
//! and `QJOB_BENCH_ONLY=qjob` (or `ceiling`) runs only that side's consume
//! rounds (under a profiler).
//! Publish: `enqueue_all` against the same
//! confirmed publishes spread the same way (contiguous runs on four
//! channels, 512 confirms in flight on each), and against one channel
//! publishing without confirms, timed until the queue holds every message
//! (what the broker stores when nobody waits for it).
//!
//! Prints each round and the ratio qjob / lapin of the median rates.
//!
//! `QJOB_BENCH_ONLY=console` measures instead what the console costs: qjob
//! with its console on (a heartbeat every second, five times the default
//! rate) against the console off, alternating rounds, prefetch 1, 25 and
//! 200: the rate, and this process's CPU per job.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qjob::Client;
use qjob_benches::{
    BENCH_QUEUE, Bench, BenchJob, Cpu, amqp_url, broker_quiet, confirming_channel, env_number,
    median, payload, qjob_consume, qjob_consume_with, rate, raw_ack_all, raw_ceiling, raw_consumer,
    reset_queue,
};

/// Confirms in flight at once on each channel of the publish loops (qjob's
/// window per channel).
const PUBLISH_WINDOW: usize = 512;

/// Channels the raw loop publishes one batch on at once (qjob's lanes in
/// `enqueue_all`).
const LANES: usize = 4;

#[tokio::main]
async fn main() {
    let url = amqp_url();
    let jobs: usize = env_number("QJOB_BENCH_JOBS", 20_000);
    let rounds: usize = env_number("QJOB_BENCH_ROUNDS", 3);
    let raw = Raw::connect(&url).await;
    let broker = qjob::AmqpBroker::connect(url.as_str())
        .await
        .expect("the bench needs RabbitMQ");
    println!(
        "{jobs} persistent {}-byte jobs per round, {rounds} rounds",
        payload(0).len()
    );

    let only = std::env::var("QJOB_BENCH_ONLY").unwrap_or_default();
    if only == "console" {
        return console_cost(&raw, &broker, jobs, rounds).await;
    }
    let mut publish = Rates::default();
    let mut unconfirmed = Vec::new();
    for _ in 0..rounds {
        if ["consume", "qjob", "ceiling"].contains(&only.as_str()) {
            break;
        }
        raw.reset().await;
        broker_quiet().await;
        unconfirmed.push(rate(jobs, raw.publish_unconfirmed(jobs).await));
        raw.reset().await;
        broker_quiet().await;
        publish.lapin(measured(jobs, raw.publish_lanes(jobs)).await);
        raw.reset().await;
        broker_quiet().await;
        let enqueue = async {
            let client = Client::new(broker.clone());
            let started = Instant::now();
            let results = client
                .enqueue_all::<BenchJob>((0..jobs).map(|n| Bench::new(n as u64)))
                .await
                .unwrap();
            assert!(results.iter().all(Result::is_ok));
            started.elapsed()
        };
        publish.qjob(measured(jobs, enqueue).await);
    }
    if !["consume", "qjob", "ceiling"].contains(&only.as_str()) {
        publish.report("publish (confirmed)");
        println!(
            "publish: lapin unconfirmed {:>8.0}/s; qjob confirmed / lapin unconfirmed {:.2}   (rounds: {:?})",
            median(&unconfirmed),
            median(&publish.qjob) / median(&unconfirmed),
            unconfirmed.iter().map(|r| r.round()).collect::<Vec<_>>(),
        );
    }
    if only == "publish" {
        return;
    }

    for prefetch in prefetches() {
        // Prefetch 1 is latency-bound: fewer jobs keep the round short.
        let jobs = if prefetch == 1 { jobs / 4 } else { jobs };
        let mut consume = Rates::default();
        let mut ceiling = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            if only == "qjob" || only == "ceiling" {
                raw.reset().await;
                raw.publish(jobs).await;
                broker_quiet().await;
                let (rate, cpu) = if only == "qjob" {
                    measured(jobs, qjob_consume(&broker, jobs, prefetch)).await
                } else {
                    measured(jobs, raw.ceiling(jobs, prefetch)).await
                };
                println!("{only}, prefetch {prefetch:>3}: {rate:.0}/s, {cpu:.1} µs CPU/job");
                continue;
            }
            raw.reset().await;
            raw.publish(jobs).await;
            broker_quiet().await;
            let (rate, cpu) = measured(jobs, raw.ceiling(jobs, prefetch)).await;
            ceiling.0.push(rate);
            ceiling.1.push(cpu);

            raw.reset().await;
            raw.publish(jobs).await;
            broker_quiet().await;
            consume.lapin(measured(jobs, raw.consume(jobs, prefetch)).await);

            raw.reset().await;
            raw.publish(jobs).await;
            broker_quiet().await;
            consume.qjob(measured(jobs, qjob_consume(&broker, jobs, prefetch)).await);
        }
        if only == "qjob" || only == "ceiling" {
            continue;
        }
        consume.report(&format!("consume, prefetch {prefetch:>3}"));
        let (qjob, qjob_cpu) = (median(&consume.qjob), median(&consume.qjob_cpu));
        let (limit, limit_cpu) = (median(&ceiling.0), median(&ceiling.1));
        println!(
            "{:<24} ceiling {limit:>6.0}/s ({limit_cpu:.1} µs CPU/job)  qjob at {:.0} % of the ceiling, CPU per job {:.2}x the ceiling's   (rounds: {:?})",
            "",
            100.0 * qjob / limit,
            qjob_cpu / limit_cpu,
            ceiling.0.iter().map(|r| r.round()).collect::<Vec<_>>(),
        );
    }
    raw.reset().await;
}

/// The prefetches to consume with: `QJOB_BENCH_PREFETCH` (a comma-separated
/// list), by default 1, 25 and 200.
fn prefetches() -> Vec<u16> {
    std::env::var("QJOB_BENCH_PREFETCH").map_or(vec![1, 25, 200], |list| {
        list.split(',')
            .map(|p| {
                p.trim()
                    .parse()
                    .expect("QJOB_BENCH_PREFETCH is a list of numbers")
            })
            .collect()
    })
}

/// qjob's consume rate, and its CPU per job (steadier than the rate on a
/// shared machine), with its console on against off, same run.
async fn console_cost(raw: &Raw, broker: &qjob::AmqpBroker, jobs: usize, rounds: usize) {
    for prefetch in [1u16, 25, 200] {
        // Prefetch 1 is latency-bound: fewer jobs keep the round short.
        let jobs = if prefetch == 1 { jobs / 4 } else { jobs };
        let (mut on, mut off) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for _ in 0..rounds {
            for heartbeat in [Some(Duration::from_secs(1)), None] {
                raw.reset().await;
                raw.publish(jobs).await;
                let (rate, cpu) =
                    measured(jobs, qjob_consume_with(broker, jobs, prefetch, heartbeat)).await;
                let side = if heartbeat.is_some() {
                    &mut on
                } else {
                    &mut off
                };
                side.0.push(rate);
                side.1.push(cpu);
            }
        }
        println!(
            "consume, prefetch {prefetch:>3}  console off {:>8.0}/s {:>5.1} µs/job  on {:>8.0}/s {:>5.1} µs/job  ratio on/off: rate {:.3}, CPU {:.3}   (rates: off {:?}, on {:?})",
            median(&off.0),
            median(&off.1),
            median(&on.0),
            median(&on.1),
            median(&on.0) / median(&off.0),
            median(&on.1) / median(&off.1),
            off.0.iter().map(|r| r.round()).collect::<Vec<_>>(),
            on.0.iter().map(|r| r.round()).collect::<Vec<_>>(),
        );
    }
    raw.reset().await;
}

/// A round's rate over `jobs` and this process's CPU per job in it.
async fn measured(jobs: usize, round: impl std::future::Future<Output = Duration>) -> (f64, f64) {
    let cpu = Cpu::now();
    let took = round.await;
    (rate(jobs, took), cpu.per_job_since(jobs).0)
}

/// The rounds of lapin and of qjob: rates and client CPU per job.
#[derive(Default)]
struct Rates {
    lapin: Vec<f64>,
    qjob: Vec<f64>,
    lapin_cpu: Vec<f64>,
    qjob_cpu: Vec<f64>,
}

impl Rates {
    fn lapin(&mut self, (rate, cpu): (f64, f64)) {
        self.lapin.push(rate);
        self.lapin_cpu.push(cpu);
    }

    fn qjob(&mut self, (rate, cpu): (f64, f64)) {
        self.qjob.push(rate);
        self.qjob_cpu.push(cpu);
    }

    fn report(&self, what: &str) {
        let lapin = median(&self.lapin);
        let qjob = median(&self.qjob);
        println!(
            "{what:<24} lapin {lapin:>8.0}/s ({:.0} µs CPU/job)  qjob {qjob:>8.0}/s ({:.0} µs CPU/job)  ratio qjob/lapin {:.2}   (rounds: lapin {:?}, qjob {:?})",
            median(&self.lapin_cpu),
            median(&self.qjob_cpu),
            qjob / lapin,
            self.lapin.iter().map(|r| r.round()).collect::<Vec<_>>(),
            self.qjob.iter().map(|r| r.round()).collect::<Vec<_>>(),
        );
    }
}

/// Publishes messages `run` (persistent, as qjob's first attempts) on
/// `channel` with `PUBLISH_WINDOW` confirms in flight, or unconfirmed.
async fn publish_run(channel: &lapin::Channel, run: std::ops::Range<usize>, confirmed: bool) {
    let mut confirms: FuturesUnordered<lapin::PublisherConfirm> = FuturesUnordered::new();
    for n in run {
        if confirms.len() >= PUBLISH_WINDOW {
            let confirm: lapin::Confirmation = confirms.next().await.unwrap().unwrap();
            assert!(confirm.is_ack());
        }
        let body = payload(n as u64);
        let confirm = channel
            .basic_publish(
                "".into(),
                BENCH_QUEUE.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(uuid::Uuid::now_v7().to_string().into())
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap();
        if confirmed {
            confirms.push(confirm);
        }
    }
    while let Some(confirm) = confirms.next().await {
        assert!(confirm.unwrap().is_ack());
    }
}

/// Ready messages in the bench queue.
async fn ready(channel: &lapin::Channel) -> usize {
    let queue = channel
        .queue_declare(
            BENCH_QUEUE.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    queue.message_count() as usize
}

/// The hand-written lapin loops qjob is measured against.
struct Raw {
    connection: Connection,
    channel: lapin::Channel,
    /// Confirm channels for `publish_lanes`.
    lanes: Vec<lapin::Channel>,
    /// A channel without confirms.
    unconfirmed: lapin::Channel,
}

impl Raw {
    async fn connect(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the bench needs RabbitMQ");
        let channel = confirming_channel(&connection).await;
        let mut lanes = Vec::new();
        for _ in 0..LANES {
            lanes.push(confirming_channel(&connection).await);
        }
        let unconfirmed = connection.create_channel().await.unwrap();
        Self {
            connection,
            channel,
            lanes,
            unconfirmed,
        }
    }

    /// Deletes and re-declares the bench queue as qjob declares it.
    async fn reset(&self) {
        reset_queue(&self.channel, BENCH_QUEUE).await;
    }

    /// Publishes `jobs` persistent messages with `PUBLISH_WINDOW` confirms in flight.
    async fn publish(&self, jobs: usize) -> Duration {
        let started = Instant::now();
        publish_run(&self.channel, 0..jobs, true).await;
        started.elapsed()
    }

    /// Publishes `jobs` persistent messages as `enqueue_all` does: contiguous
    /// runs on `LANES` confirm channels at once, `PUBLISH_WINDOW` confirms
    /// in flight on each.
    async fn publish_lanes(&self, jobs: usize) -> Duration {
        let started = Instant::now();
        let per_lane = jobs.div_ceil(self.lanes.len());
        let runs = self.lanes.iter().enumerate().map(|(lane, channel)| {
            let run = lane * per_lane..((lane + 1) * per_lane).min(jobs);
            publish_run(channel, run, true)
        });
        futures_util::future::join_all(runs).await;
        started.elapsed()
    }

    /// Publishes `jobs` persistent messages without confirms, timed until
    /// the queue holds them all.
    async fn publish_unconfirmed(&self, jobs: usize) -> Duration {
        let started = Instant::now();
        publish_run(&self.unconfirmed, 0..jobs, false).await;
        while ready(&self.channel).await < jobs {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        started.elapsed()
    }

    /// The broker's ceiling: consumes `jobs` messages doing nothing, one
    /// multiple ack per half prefetch.
    async fn ceiling(&self, jobs: usize, prefetch: u16) -> Duration {
        raw_ceiling(&self.connection, BENCH_QUEUE, jobs, prefetch).await
    }

    /// Consumes `jobs` messages, decoding each and keeping acks in flight.
    async fn consume(&self, jobs: usize, prefetch: u16) -> Duration {
        let started = Instant::now();
        let channel = self.connection.create_channel().await.unwrap();
        let consumer = raw_consumer(&channel, BENCH_QUEUE, "raw", prefetch).await;
        raw_ack_all(consumer, jobs, |body| {
            let job: Bench = serde_json::from_slice(body).unwrap();
            std::hint::black_box(job);
        })
        .await;
        channel.close(200, "done".into()).await.unwrap();
        started.elapsed()
    }
}
