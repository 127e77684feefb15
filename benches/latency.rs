//! Enqueue → handler latency at a steady rate, qjob against a raw lapin
//! producer and consumer on the same broker, in the same run.
//!
//! ```text
//! cargo bench -p qjob-benches --bench latency
//! QJOB_BENCH_RATE=1000 QJOB_BENCH_SECONDS=5 QJOB_BENCH_ROUNDS=3 cargo bench -p qjob-benches --bench latency
//! ```
//!
//! Each side publishes persistent 256-byte JSON jobs at `QJOB_BENCH_RATE`
//! per second (confirmed, each publish in a task of its own so that a slow
//! confirm does not hold back the next tick), and a consumer with prefetch
//! 25 receives them. A job carries the microsecond it was sent; the handler
//! (qjob) or the delivery loop (lapin) records how long it took to arrive.
//! Prints p50, p90, p99 and max for each side and the p99 ratio.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qjob::{Client, Job, JobContext, JobError, Worker, job};
use qjob_benches::{Bench, amqp_url, env_number, raw_consumer, reset_queue};

const QUEUE: &str = "qjob.bench.latency";

/// Latencies of the current round, in microseconds.
static SEEN: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The jobs of the current round, and who waits for the last one.
static EXPECTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);
static ALL_SEEN: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn record(sent_micros: u64) {
    let latency = micros_now().saturating_sub(sent_micros);
    let mut seen = SEEN.lock().unwrap();
    seen.push(latency);
    if seen.len() == EXPECTED.load(std::sync::atomic::Ordering::SeqCst) {
        ALL_SEEN.notify_one();
    }
}

/// A job stamped with the microsecond it was sent (in `cents`).
fn stamped(n: u64) -> Bench {
    let mut job = Bench::new(n);
    job.cents = micros_now();
    job
}

#[job(
    queue = "qjob.bench.latency",
    retry = 0,
    prefetch = 25,
    concurrency = 25
)]
async fn timed(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    record(job.cents);
    Ok(())
}

#[tokio::main]
async fn main() {
    let url = amqp_url();
    let rate = env_number("QJOB_BENCH_RATE", 1000);
    let seconds = env_number("QJOB_BENCH_SECONDS", 5);
    let rounds = env_number("QJOB_BENCH_ROUNDS", 3);
    let jobs = rate * seconds;
    let tick = Duration::from_secs(1) / rate as u32;
    println!("{jobs} jobs per round at {rate}/s, prefetch 25, {rounds} rounds");
    let raw = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("the bench needs RabbitMQ");
    let broker = qjob::AmqpBroker::connect(url.as_str())
        .await
        .expect("the bench needs RabbitMQ");
    let (mut lapin_all, mut qjob_all) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        reset(&raw).await;
        lapin_all.extend(lapin_round(&raw, jobs, tick).await);
        reset(&raw).await;
        qjob_all.extend(qjob_round(&broker, jobs, tick).await);
    }
    reset(&raw).await;
    let lapin = Percentiles::of(lapin_all);
    let qjob = Percentiles::of(qjob_all);
    println!("lapin  {lapin}");
    println!("qjob   {qjob}");
    println!(
        "p99 ratio qjob/lapin {:.2}",
        qjob.p99 as f64 / lapin.p99 as f64
    );
}

async fn qjob_round(broker: &qjob::AmqpBroker, jobs: usize, tick: Duration) -> Vec<u64> {
    SEEN.lock().unwrap().clear();
    EXPECTED.store(jobs, std::sync::atomic::Ordering::SeqCst);
    let worker = Worker::builder(broker.clone()).register(TimedJob).build();
    let running = tokio::spawn(worker.run_until(ALL_SEEN.notified()));
    let client = Client::new(broker.clone());
    // The worker consumes before the first job is sent.
    wait_for_consumer(broker).await;
    let mut interval = tokio::time::interval(tick);
    for n in 0..jobs {
        interval.tick().await;
        let client = client.clone();
        tokio::spawn(async move { client.enqueue::<TimedJob>(stamped(n as u64)).await });
    }
    running.await.unwrap().unwrap();
    std::mem::take(&mut *SEEN.lock().unwrap())
}

async fn wait_for_consumer(broker: &qjob::AmqpBroker) {
    use qjob::Broker;
    loop {
        if let Ok(Some(stats)) = broker.queue_stats(TimedJob::QUEUE).await
            && stats.consumers > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lapin_round(connection: &Connection, jobs: usize, tick: Duration) -> Vec<u64> {
    let consuming = connection.create_channel().await.unwrap();
    let mut consumer = raw_consumer(&consuming, QUEUE, "raw-latency", 25).await;
    let consume = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(jobs);
        while seen.len() < jobs {
            let delivery = consumer.next().await.unwrap().unwrap();
            let job: Bench = serde_json::from_slice(&delivery.data).unwrap();
            seen.push(micros_now().saturating_sub(job.cents));
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        seen
    });
    let publishing = qjob_benches::confirming_channel(connection).await;
    let mut interval = tokio::time::interval(tick);
    for n in 0..jobs {
        interval.tick().await;
        let channel = publishing.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&stamped(n as u64)).unwrap();
            let confirm = channel
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_message_id(uuid::Uuid::now_v7().to_string().into()),
                )
                .await
                .unwrap();
            assert!(confirm.await.unwrap().is_ack());
        });
    }
    let seen = consume.await.unwrap();
    let _ = consuming.close(200, "done".into()).await;
    let _ = publishing.close(200, "done".into()).await;
    seen
}

/// Deletes and declares the queue as qjob declares it.
async fn reset(connection: &Connection) {
    let channel = connection.create_channel().await.unwrap();
    reset_queue(&channel, QUEUE).await;
    let _ = channel.close(200, "done".into()).await;
}

struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    count: usize,
}

impl Percentiles {
    fn of(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: *micros.last().unwrap(),
            count: micros.len(),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} jobs)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}
