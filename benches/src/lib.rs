//! The job the benches run: a no-op handler over a 256-byte JSON payload.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qjob::{JobContext, JobError, job};
use serde::{Deserialize, Serialize};

/// The benches' queue.
pub const BENCH_QUEUE: &str = "qjob.bench";

/// Jobs handled in the current round.
pub static HANDLED: AtomicUsize = AtomicUsize::new(0);

/// The number of jobs after which [`DONE`] is notified.
pub static TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Notified when [`HANDLED`] reaches [`TARGET`].
pub static DONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// When the round's first handler began (see [`begun`]) and its last job
/// was handled.
static SPAN: Mutex<(Option<Instant>, Option<Instant>)> = Mutex::new((None, None));

/// Marks a handler's start: the first of the round starts its span.
pub fn begun() {
    let mut span = SPAN.lock().unwrap();
    span.0.get_or_insert_with(Instant::now);
}

/// Counts a handled job, and notifies [`DONE`] at the round's last.
pub fn handled() {
    let handled = HANDLED.fetch_add(1, Ordering::SeqCst) + 1;
    if handled == TARGET.load(Ordering::SeqCst) {
        SPAN.lock().unwrap().1 = Some(Instant::now());
        DONE.notify_one();
    }
}

/// Starts a round that ends after `jobs` jobs.
pub fn start_round(jobs: usize) {
    *SPAN.lock().unwrap() = (None, None);
    HANDLED.store(0, Ordering::SeqCst);
    TARGET.store(jobs, Ordering::SeqCst);
}

/// From the round's first handler start ([`begun`]) to its last job
/// handled: the worker's start and stop left out.
pub fn round_span() -> Option<Duration> {
    match *SPAN.lock().unwrap() {
        (Some(first), Some(last)) => Some(last - first),
        _ => None,
    }
}

/// The payload: a charge padded to 256 bytes of JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bench {
    /// The account.
    pub account: String,
    /// The amount.
    pub cents: u64,
    /// Padding.
    pub note: String,
}

impl Bench {
    /// Job `n`.
    pub fn new(n: u64) -> Self {
        let mut bench = Bench {
            account: format!("acct-{:08}", n % 1000),
            cents: n,
            note: String::new(),
        };
        let len = serde_json::to_vec(&bench).unwrap().len();
        bench.note = "x".repeat(256 - len);
        bench
    }
}

/// Job `n`'s JSON bytes (256 of them).
pub fn payload(n: u64) -> Vec<u8> {
    serde_json::to_vec(&Bench::new(n)).unwrap()
}

/// The no-op handler.
#[job(queue = "qjob.bench", retry = 0)]
pub async fn bench(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    handled();
    Ok(())
}

/// The no-op job of the in-memory bench: wide prefetch and concurrency.
#[job(
    queue = "qjob.bench.memory",
    prefetch = 500,
    concurrency = 100,
    retry = 0
)]
pub async fn memory_noop(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    Ok(())
}

/// A job keyed by customer, for the partitioned bench.
#[derive(Debug, Serialize, Deserialize)]
pub struct Keyed {
    /// The partition key.
    pub customer: String,
    /// A sequence number.
    pub seq: u64,
}

/// 10 ms of work per job, 30 partitions, 50 handlers.
#[job(
    queue = "qjob.bench.partitions",
    partition_by = customer,
    partitions = 30,
    concurrency = 50,
    prefetch = 10,
    retry = 0
)]
pub async fn partitioned(job: Keyed, _ctx: JobContext) -> Result<(), JobError> {
    begun();
    std::hint::black_box(job);
    io(std::time::Duration::from_millis(10)).await;
    handled();
    Ok(())
}

/// A new channel on `connection` in confirm mode: each publish is
/// confirmed by the broker.
pub async fn confirming_channel(connection: &lapin::Connection) -> lapin::Channel {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

/// Deletes `queue` and its `.dlq`, and declares them again as qjob does
/// (durable, classic), so a round starts from nothing.
pub async fn reset_queue(channel: &lapin::Channel, queue: &str) {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    for queue in [queue.to_owned(), format!("{queue}.dlq")] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .unwrap();
    }
}

/// A raw lapin consumer of `queue` on `channel`, with `prefetch`: the
/// baselines' consumers.
pub async fn raw_consumer(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> lapin::Consumer {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .unwrap();
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap()
}

/// The broker the benches run on: `QJOB_AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("QJOB_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A number from the environment variable `name`, or `default`.
///
/// # Panics
///
/// If the variable is set and not a number.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// Times a qjob worker draining `jobs` of [`BenchJob`] already enqueued,
/// with `prefetch` and as many handlers (set through the operator's
/// overrides, as an operator would).
pub async fn qjob_consume(
    broker: &qjob::AmqpBroker,
    jobs: usize,
    prefetch: u16,
) -> std::time::Duration {
    qjob_consume_with(
        broker,
        jobs,
        prefetch,
        Some(std::time::Duration::from_secs(5)),
    )
    .await
}

/// As [`qjob_consume`], with the worker's console heartbeat every
/// `heartbeat` (`None`: the console off).
pub async fn qjob_consume_with(
    broker: &qjob::AmqpBroker,
    jobs: usize,
    prefetch: u16,
    heartbeat: Option<std::time::Duration>,
) -> std::time::Duration {
    use qjob::Job;
    start_round(jobs);
    let prefix = BenchJob::options().env_prefix();
    let builder = qjob::Worker::builder(broker.clone())
        .register(BenchJob)
        .overrides(move |name| {
            let knob = name.strip_prefix(prefix.as_str())?;
            matches!(knob, "PREFETCH" | "CONCURRENCY").then(|| prefetch.to_string())
        });
    let worker = match heartbeat {
        Some(every) => builder.heartbeat_interval(every),
        None => builder.console(false),
    }
    .build();
    let started = std::time::Instant::now();
    worker.run_until(DONE.notified()).await.unwrap();
    started.elapsed()
}

/// Jobs per second.
pub fn rate(jobs: usize, elapsed: std::time::Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64()
}

/// The median of `rates`.
///
/// # Panics
///
/// If `rates` is empty.
pub fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// CPU time (user + system) used so far by this process and by the local
/// RabbitMQ node (`beam.smp`, if one runs here), read from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    /// This process.
    pub client: std::time::Duration,
    /// The broker's Erlang VM.
    pub broker: Option<std::time::Duration>,
}

impl Cpu {
    /// The CPU time used until now.
    pub fn now() -> Self {
        Cpu {
            client: process_cpu("self").unwrap_or_default(),
            broker: broker_pid().and_then(|pid| process_cpu(&pid)),
        }
    }

    /// Microseconds of CPU per job since `self`: (client, broker).
    pub fn per_job_since(&self, jobs: usize) -> (f64, Option<f64>) {
        let now = Cpu::now();
        let per_job = |d: std::time::Duration| d.as_secs_f64() * 1e6 / jobs as f64;
        let broker = now
            .broker
            .zip(self.broker)
            .map(|(b, a)| per_job(b.saturating_sub(a)));
        (per_job(now.client.saturating_sub(self.client)), broker)
    }
}

/// Waits (up to 10 s) until the local broker is idle: under 10 % of a core
/// over 200 ms, so that work left from filling a queue (writes to its
/// message store) is not timed as part of the next round.
pub async fn broker_quiet() {
    let Some(pid) = broker_pid() else { return };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let before = process_cpu(&pid).unwrap_or_default();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let used = process_cpu(&pid).unwrap_or_default().saturating_sub(before);
        if used < std::time::Duration::from_millis(20) {
            return;
        }
    }
}

/// User + system time of `/proc/<pid>`.
fn process_cpu(pid: &str) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Clock ticks are 100 per second on Linux.
    Some(std::time::Duration::from_millis(ticks * 10))
}

/// The pid of the local RabbitMQ node listening on 5672, by name: the first
/// `beam.smp` that is not a node of `scripts/cluster` (named `qjob-c…`).
fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            (comm.trim() == "beam.smp" && !cmdline.contains("qjob-c")).then_some(pid)
        })
}

/// A job that awaits 10 ms of I/O ([`io`]), for the I/O-bound bench; its
/// prefetch and concurrency are set per round through the overrides.
#[job(queue = "qjob.bench.io", retry = 0)]
pub async fn io_bound(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    io(std::time::Duration::from_millis(10)).await;
    handled();
    Ok(())
}

/// Whether [`io`] is a tokio sleep rather than a [`service_call`].
static TIMER_IO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What stands for a handler's I/O: a call to a service that answers
/// after exactly `wait` ([`service_call`]), or after [`timer_io`] (or
/// [`io_from_env`] with `QJOB_BENCH_IO=timer`) a tokio sleep, which ends on the first
/// millisecond tick after its deadline (a 10 ms sleep takes 10–11 ms,
/// more under load) but costs less CPU.
pub async fn io(wait: std::time::Duration) {
    if TIMER_IO.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(wait).await;
    } else {
        service_call(wait).await;
    }
}

/// Reads `QJOB_BENCH_IO` (`service`, the default, or `timer`) for [`io`];
/// a bench calls it first.
///
/// # Panics
///
/// On another value.
pub fn io_from_env() {
    match std::env::var("QJOB_BENCH_IO").as_deref() {
        Ok("timer") => timer_io(),
        Ok("service") | Err(_) => {}
        Ok(other) => panic!("QJOB_BENCH_IO is `service` or `timer`, not {other:?}"),
    }
}

/// Makes [`io`] a tokio sleep from now on: where the I/O's precision does
/// not matter and its cost would (the service's thread wakes a task per
/// call, tens of microseconds of CPU that the worker and the broker need).
pub fn timer_io() {
    TIMER_IO.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A call to a service that answers `wait` after it was made. The
/// service is a thread of its own that keeps the deadlines on the
/// system's clock, as a remote service would: its answers are not rounded
/// to the runtime's millisecond tick (the OS wakes it within tens of
/// microseconds).
pub async fn service_call(wait: std::time::Duration) {
    use std::sync::mpsc;
    type Reply = tokio::sync::oneshot::Sender<()>;
    type Call = (std::time::Instant, Reply);
    static SERVICE: std::sync::OnceLock<mpsc::Sender<Call>> = std::sync::OnceLock::new();
    let service = SERVICE.get_or_init(|| {
        let (calls, incoming) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("bench-service".into())
            .spawn(move || {
                // Due calls by deadline (and arrival, for equal ones).
                let mut due: std::collections::BTreeMap<(std::time::Instant, u64), Reply> =
                    std::collections::BTreeMap::new();
                for arrival in 0u64.. {
                    let now = std::time::Instant::now();
                    while let Some(entry) = due.first_entry() {
                        let &(at, _) = entry.key();
                        if at > now {
                            break;
                        }
                        let _ = entry.remove().send(());
                    }
                    let call = match due.keys().next() {
                        Some(&(at, _)) => match incoming.recv_timeout(at - now) {
                            Ok(call) => call,
                            Err(mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        },
                        None => match incoming.recv() {
                            Ok(call) => call,
                            Err(_) => return,
                        },
                    };
                    due.insert((call.0, arrival), call.1);
                }
            })
            .expect("the bench's service starts");
        calls
    });
    let (reply, answered) = tokio::sync::oneshot::channel();
    let call = (std::time::Instant::now() + wait, reply);
    service.send(call).expect("the bench's service runs");
    let _ = answered.await;
}

/// `jobs` awaits of [`io`] for `wait` spread over `tasks` tasks, no broker:
/// the rate that I/O allows, the baseline of the benches whose handlers
/// wait on it.
pub async fn io_alone(jobs: usize, tasks: usize, wait: std::time::Duration) -> f64 {
    let started = std::time::Instant::now();
    let per_task = jobs / tasks;
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        running.spawn(async move {
            for _ in 0..per_task {
                io(wait).await;
            }
        });
    }
    while running.join_next().await.is_some() {}
    rate(per_task * tasks, started.elapsed())
}

/// Consumes `jobs` deliveries of `consumer`, acking each at once with the
/// acks kept in flight (a tuned hand-written consumer); `inspect` sees each
/// body first.
pub async fn raw_ack_all(mut consumer: lapin::Consumer, jobs: usize, inspect: impl Fn(&[u8])) {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    use lapin::options::BasicAckOptions;
    let mut acks = FuturesUnordered::new();
    let mut acked = 0;
    while acked < jobs {
        tokio::select! {
            Some(delivery) = consumer.next() => {
                let delivery = delivery.unwrap();
                inspect(&delivery.data);
                acks.push(async move { delivery.acker.ack(BasicAckOptions::default()).await });
            }
            Some(ack) = acks.next() => {
                ack.unwrap();
                acked += 1;
            }
        }
    }
}

/// The broker's ceiling's ack batch: half the prefetch.
pub fn ceiling_batch(prefetch: u16) -> u64 {
    u64::from(prefetch / 2).max(1)
}

/// What the broker delivers at most on one channel with this prefetch: a
/// raw lapin consumer that does nothing with a delivery and acks half a
/// prefetch window at a time with one multiple ack ([`ceiling_batch`]).
/// Consumes `jobs` deliveries of `queue` on a channel of its own and
/// returns the time from its subscription to the last ack sent.
pub async fn raw_ceiling(
    connection: &lapin::Connection,
    queue: &str,
    jobs: usize,
    prefetch: u16,
) -> Duration {
    use futures_util::StreamExt;
    use lapin::options::BasicAckOptions;
    let channel = connection.create_channel().await.unwrap();
    let started = Instant::now();
    let mut consumer = raw_consumer(&channel, queue, "ceiling", prefetch).await;
    let batch = ceiling_batch(prefetch);
    let mut received = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.unwrap();
        received += 1;
        if delivery.delivery_tag % batch == 0 || received == jobs {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
        if received == jobs {
            break;
        }
    }
    let took = started.elapsed();
    let _ = channel.close(200, "done".into()).await;
    took
}

/// The bench job with a global concurrency it never reaches (1 000): what
/// taking, renewing and freeing a permit in Redis costs per job.
#[job(queue = "qjob.bench.permit", retry = 0, global_concurrency = 1000)]
pub async fn permit_bench(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    handled();
    Ok(())
}

/// The bench job with a global rate it never reaches (1 000 000/s): what
/// a rate check in Redis costs per job.
#[job(queue = "qjob.bench.rated", retry = 0, global_rate = "1000000/s")]
pub async fn rated_bench(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    handled();
    Ok(())
}

/// 10 ms of I/O ([`io`]) at a global concurrency of 50.
#[job(queue = "qjob.bench.io.global", retry = 0, global_concurrency = 50)]
pub async fn io_global(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    io(std::time::Duration::from_millis(10)).await;
    handled();
    Ok(())
}
