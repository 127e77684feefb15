//! The transactional outbox against plain `Client::enqueue`, in the same
//! run: persistent 256-byte jobs enqueued by 1 and by 16 concurrent
//! producers.
//!
//! ```text
//! cargo bench -p qjob-benches --bench outbox
//! QJOB_BENCH_JOBS=20000 QJOB_BENCH_ROUNDS=5 cargo bench -p qjob-benches --bench outbox
//! ```
//!
//! Needs PostgreSQL (`QJOB_PG_URL`, by default the database `test` on
//! 127.0.0.1:5432) beside RabbitMQ.
//!
//! - plain: each producer awaits `Client::enqueue` (one confirmed publish)
//!   per job;
//! - outbox: each producer runs one transaction per job (`BEGIN`,
//!   `Outbox::enqueue`, `COMMIT`), as a request handler would, while a
//!   relay in the same process publishes; timed until the relay has
//!   published and deleted every row. Once with the default settings
//!   (commits wake a relay that waits for rows, and it polls every second),
//!   once with the relay polling every 10 ms (`Outbox::notify(false)`);
//! - commits alone: the same producers committing the same rows into the
//!   default outbox's table with no relay running, timed until every
//!   `COMMIT` has returned (the table is emptied after, untimed): the pace
//!   the database commits at, which no relay can beat;
//! - relay alone: the rows committed beforehand in one transaction, timed
//!   from the relay's start until every row is published;
//! - latency, default settings: one transaction per job started at a
//!   steady rate (100/s, then 1 000/s, for 2 s each), and a consumer on the
//!   queue; from each `COMMIT`'s return in the producer to the message's
//!   delivery to the consumer (so the broker's delivery counts too).
//!
//! Rounds alternate. Prints, per producer count, the median rates, the
//! ratio of each outbox's end-to-end rate (and of the commits alone) to
//! plain's, the default outbox's ratio to the commits alone, and the
//! client CPU per job; then the latency's p50, p99 and maximum at each
//! rate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use qjob::Client;
use qjob::outbox::Outbox;
use qjob_benches::{
    BENCH_QUEUE, Bench, BenchJob, Cpu, amqp_url, broker_quiet, env_number, median, rate,
    reset_queue,
};
use sqlx::PgPool;

/// The tables: with the notify trigger, and without.
const NOTIFIED: &str = "qjob_bench_outbox";
const POLLED: &str = "qjob_bench_outbox_polled";

/// One round's figures: jobs per second and client CPU µs per job.
#[derive(Default)]
struct Figures {
    rates: Vec<f64>,
    committed: Vec<f64>,
    cpu: Vec<f64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        median(&self.rates)
    }
}

#[tokio::main]
async fn main() {
    let jobs: usize = env_number("QJOB_BENCH_JOBS", 5_000);
    let rounds: usize = env_number("QJOB_BENCH_ROUNDS", 3);
    let pg_url = std::env::var("QJOB_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .connect(&pg_url)
        .await
        .expect("the bench needs PostgreSQL");
    let url = amqp_url();
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("the bench needs RabbitMQ");
    let channel = connection.create_channel().await.unwrap();
    let client = Client::new(qjob::AmqpBroker::connect(url.as_str()).await.unwrap());
    let notified = Outbox::new(client.clone()).with_table(NOTIFIED).unwrap();
    let polled = Outbox::new(client.clone())
        .with_table(POLLED)
        .unwrap()
        .notify(false);
    for outbox in [&notified, &polled] {
        drop_table(&pool, outbox.table()).await;
        outbox.migrate(&pool).await.unwrap();
    }
    println!("{jobs} persistent 256-byte jobs per round, {rounds} rounds, alternating");

    for producers in [1, 16] {
        let (mut plain, mut by_notify, mut by_poll, mut commits, mut alone) = Default::default();
        for _ in 0..rounds {
            round(
                &channel,
                &mut plain,
                || {
                    produce(producers, jobs, |n| {
                        let client = client.clone();
                        async move {
                            client.enqueue::<BenchJob>(Bench::new(n)).await.unwrap();
                        }
                    })
                },
                jobs,
            )
            .await;
            for (outbox, figures) in [(&notified, &mut by_notify), (&polled, &mut by_poll)] {
                round(
                    &channel,
                    figures,
                    || outbox_round(outbox, &pool, producers, jobs),
                    jobs,
                )
                .await;
            }
            round(
                &channel,
                &mut commits,
                || commit_each(&notified, &pool, producers, jobs),
                jobs,
            )
            .await;
            empty(&pool, notified.table()).await;
            if producers == 1 {
                relay_alone(&channel, &mut alone, &notified, &pool, jobs).await;
            }
        }
        println!("{producers:>2} producer(s):");
        let plain_rate = plain.rate();
        println!(
            "   plain enqueue           {plain_rate:>7.0}/s  {:>4.0} µs CPU/job",
            median(&plain.cpu)
        );
        for (name, figures) in [
            ("outbox, default", &by_notify),
            ("outbox, 10 ms poll", &by_poll),
        ] {
            println!(
                "   {name:<22}  {:>7.0}/s  {:>4.0} µs CPU/job  (commits {:.0}/s)  ratio to plain {:.2}",
                figures.rate(),
                median(&figures.cpu),
                median(&figures.committed),
                figures.rate() / plain_rate
            );
        }
        println!(
            "   commits alone           {:>7.0}/s  {:>4.0} µs CPU/job  ratio to plain {:.2}",
            commits.rate(),
            median(&commits.cpu),
            commits.rate() / plain_rate
        );
        println!(
            "   outbox, default / commits alone: {:.2}",
            by_notify.rate() / commits.rate()
        );
        if producers == 1 {
            println!(
                "   relay alone             {:>7.0}/s  {:>4.0} µs CPU/job",
                alone.rate(),
                median(&alone.cpu)
            );
        }
    }
    println!("latency from COMMIT to delivery, default settings:");
    for per_second in [100, 1_000] {
        let mut took = latencies(&connection, &channel, &notified, &pool, per_second).await;
        took.sort_by(f64::total_cmp);
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
        println!(
            "   {per_second:>5} jobs/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} jobs)",
            at(0.5),
            at(0.99),
            at(1.0),
            took.len()
        );
    }
    reset_queue(&channel, BENCH_QUEUE).await;
    for table in [NOTIFIED, POLLED] {
        drop_table(&pool, table).await;
    }
}

async fn drop_table(pool: &PgPool, table: &str) {
    sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(pool)
        .await
        .unwrap();
}

/// Runs one timed round on an empty queue; `run` returns when every job
/// is in the queue, and the rate its producers committed at (if any).
async fn round<F, Fut>(channel: &lapin::Channel, figures: &mut Figures, run: F, jobs: usize)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<f64>>,
{
    reset_queue(channel, BENCH_QUEUE).await;
    broker_quiet().await;
    let cpu = Cpu::now();
    let started = Instant::now();
    if let Some(committed) = run().await {
        figures.committed.push(committed);
    }
    figures.rates.push(rate(jobs, started.elapsed()));
    figures.cpu.push(cpu.per_job_since(jobs).0);
}

/// Producers committing one job per transaction while a relay publishes;
/// returns once the relay has published every row, with the commit rate.
async fn outbox_round(
    outbox: &Outbox,
    pool: &PgPool,
    producers: usize,
    jobs: usize,
) -> Option<f64> {
    let relay = match outbox.table() {
        POLLED => outbox
            .relay(pool.clone())
            .poll_interval(Duration::from_millis(10)),
        _ => outbox.relay(pool.clone()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    commit_each(outbox, pool, producers, jobs).await;
    let committed = rate(jobs, started.elapsed());
    drained(outbox, pool).await;
    let _ = stop.send(());
    relay.await.unwrap().unwrap();
    Some(committed)
}

/// The producers of the outbox's rounds: `jobs` transactions of one row
/// each (`BEGIN`, `Outbox::enqueue`, `COMMIT`) on `producers` concurrent
/// producers; returns once every transaction has committed.
/// [`outbox_round`] runs a relay beside them; alone, the rows stay:
/// [`empty`] the table.
async fn commit_each(outbox: &Outbox, pool: &PgPool, producers: usize, jobs: usize) -> Option<f64> {
    produce(producers, jobs, |n| {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            outbox
                .enqueue::<BenchJob>(&mut tx, Bench::new(n))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    })
    .await
}

/// Deletes every row of `table` (after [`commit_each`], untimed).
async fn empty(pool: &PgPool, table: &str) {
    sqlx::raw_sql(&format!("TRUNCATE {table}"))
        .execute(pool)
        .await
        .unwrap();
}

/// The relay on `jobs` rows committed beforehand: timed from its start
/// until every row is published.
async fn relay_alone(
    channel: &lapin::Channel,
    figures: &mut Figures,
    outbox: &Outbox,
    pool: &PgPool,
    jobs: usize,
) {
    reset_queue(channel, BENCH_QUEUE).await;
    let mut tx = pool.begin().await.unwrap();
    for n in 0..jobs as u64 {
        outbox
            .enqueue::<BenchJob>(&mut tx, Bench::new(n))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    broker_quiet().await;
    let cpu = Cpu::now();
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(outbox.relay(pool.clone()).run_until(async {
        let _ = stopped.await;
    }));
    drained(outbox, pool).await;
    figures.rates.push(rate(jobs, started.elapsed()));
    figures.cpu.push(cpu.per_job_since(jobs).0);
    let _ = stop.send(());
    relay.await.unwrap().unwrap();
}

/// Returns once the outbox is empty.
async fn drained(outbox: &Outbox, pool: &PgPool) {
    while outbox.stats(pool).await.unwrap().depth > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `enqueue(n)` for n in 0..jobs on `producers` concurrent producers
/// (no commit rate: plain enqueue commits nothing).
async fn produce<F, Fut>(producers: usize, jobs: usize, enqueue: F) -> Option<f64>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    futures_util::stream::iter(0..jobs as u64)
        .map(enqueue)
        .buffer_unordered(producers)
        .collect::<()>()
        .await;
    None
}

/// Milliseconds from each `COMMIT`'s return to the delivery of its job,
/// for 2 s of transactions started `per_second` times a second while a
/// relay with the default settings publishes and a consumer receives.
async fn latencies(
    connection: &Connection,
    channel: &lapin::Channel,
    outbox: &Outbox,
    pool: &PgPool,
    per_second: u64,
) -> Vec<f64> {
    reset_queue(channel, BENCH_QUEUE).await;
    broker_quiet().await;
    let jobs = per_second * 2;
    let consuming = connection.create_channel().await.unwrap();
    let mut consumer = consuming
        .basic_consume(
            BENCH_QUEUE.into(),
            "outbox-latency".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(outbox.relay(pool.clone()).run_until(async {
        let _ = stopped.await;
    }));
    let delivered = tokio::spawn(async move {
        let mut delivered = Vec::new();
        while delivered.len() < jobs as usize {
            let delivery = consumer.next().await.unwrap().unwrap();
            let id = delivery.properties.message_id().clone().unwrap();
            delivered.push((id.to_string(), Instant::now()));
        }
        delivered
    });
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut every = tokio::time::interval(Duration::from_secs(1) / per_second as u32);
    let mut producers = Vec::new();
    for n in 0..jobs {
        every.tick().await;
        let (outbox, pool, committed) = (outbox.clone(), pool.clone(), committed.clone());
        producers.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let id = outbox
                .enqueue::<BenchJob>(&mut tx, Bench::new(n))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            committed
                .lock()
                .unwrap()
                .insert(id.to_string(), Instant::now());
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let delivered = delivered.await.unwrap();
    let _ = stop.send(());
    relay.await.unwrap().unwrap();
    consuming.close(200, "done".into()).await.unwrap();
    let committed = committed.lock().unwrap();
    delivered
        .into_iter()
        .map(|(id, at)| {
            let commit = committed[&id];
            // A delivery can beat the producer's wake-up after its commit.
            at.saturating_duration_since(commit).as_secs_f64() * 1000.0
        })
        .collect()
}
