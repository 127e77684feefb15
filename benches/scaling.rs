//! How throughput grows with worker processes and with job types per
//! worker, and what a worker costs in memory per job type and per 1 000
//! jobs in flight.
//!
//! ```text
//! cargo bench -p qjob-benches --bench scaling
//! QJOB_BENCH_ONLY=memory cargo bench -p qjob-benches --bench scaling
//! QJOB_BENCH_JOBS=60000 QJOB_BENCH_ROUNDS=3 cargo bench -p qjob-benches --bench scaling
//! ```
//!
//! - processes: the queue is filled with no-op jobs (prefetch and
//!   concurrency 25), then 1, 2 or 4 worker processes (this binary run
//!   again with `--worker`) drain it; timed from their start until the
//!   queue is empty and nothing is unacked. Prints the rate, the ratio to
//!   one process and the workers' CPU per job;
//! - job types: one worker with 1, 10 or 50 job types, the jobs spread
//!   evenly over their queues (prefetch and concurrency 25 each);
//! - memory (`QJOB_BENCH_ONLY=memory` for it alone): the resident memory
//!   of a fresh process after building and starting a worker with 1 job
//!   type, then with 10, 25 and 50 (the difference over the added types
//!   is the cost of a job type); then with 1 000 and 4 000 handlers blocked
//!   in flight on 256-byte jobs, and 1 000 on 4 KB jobs (prefetch and
//!   concurrency to match), against the same worker idle. Each figure is
//!   the median of 3 processes.
//!
//! On a 2-core machine the broker shares the cores with the workers, so
//! more processes cannot add cores: the ratios say what they cost.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qjob::broker::Broker;
use qjob::{Client, Job, JobContext, JobError, Worker, WorkerBuilder, job};
use qjob_benches::{
    BENCH_QUEUE, Bench, BenchJob, Cpu, amqp_url, broker_quiet, env_number, median, rate,
};
use tokio::sync::Notify;

/// Handlers of the in-flight round that have started.
static STARTED: AtomicUsize = AtomicUsize::new(0);
/// Released at the end of the in-flight round.
static RELEASE: Notify = Notify::const_new();

#[job(queue = "qjob.bench.scaling.held", retry = 0)]
async fn held(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
    std::hint::black_box(job);
    STARTED.fetch_add(1, Ordering::SeqCst);
    RELEASE.notified().await;
    Ok(())
}

/// Declares `$n` job types `$name`, no-op handlers on their own queues,
/// and `types()` registering the first `n` of them and enqueueing to them.
macro_rules! job_types {
    ($($name:ident $ty:ident $queue:tt),* $(,)?) => {
        $(
            #[job(queue = $queue, retry = 0)]
            async fn $name(job: Bench, _ctx: JobContext) -> Result<(), JobError> {
                std::hint::black_box(job);
                qjob_benches::handled();
                Ok(())
            }
        )*

        /// Registers the first `n` job types with `builder`.
        fn register(mut builder: WorkerBuilder, n: usize) -> WorkerBuilder {
            let mut left = n;
            $(
                if left > 0 {
                    builder = builder.register($ty);
                    left -= 1;
                }
            )*
            let _ = left;
            builder
        }

        /// Enqueues `jobs` over the first `n` job types, evenly.
        async fn fill(client: &Client, n: usize, jobs: usize) {
            let per_type = jobs / n;
            let mut left = n;
            $(
                if left > 0 {
                    let results = client
                        .enqueue_all::<$ty>((0..per_type).map(|i| Bench::new(i as u64)))
                        .await
                        .unwrap();
                    assert!(results.iter().all(Result::is_ok));
                    left -= 1;
                }
            )*
            let _ = left;
        }

        /// The queues of the first `n` job types.
        fn queues(n: usize) -> Vec<&'static str> {
            [$($queue),*].into_iter().take(n).collect()
        }
    };
}

job_types!(
    t00 T00Job "qjob.bench.types.00", t01 T01Job "qjob.bench.types.01", t02 T02Job "qjob.bench.types.02",
    t03 T03Job "qjob.bench.types.03", t04 T04Job "qjob.bench.types.04", t05 T05Job "qjob.bench.types.05",
    t06 T06Job "qjob.bench.types.06", t07 T07Job "qjob.bench.types.07", t08 T08Job "qjob.bench.types.08",
    t09 T09Job "qjob.bench.types.09", t10 T10Job "qjob.bench.types.10", t11 T11Job "qjob.bench.types.11",
    t12 T12Job "qjob.bench.types.12", t13 T13Job "qjob.bench.types.13", t14 T14Job "qjob.bench.types.14",
    t15 T15Job "qjob.bench.types.15", t16 T16Job "qjob.bench.types.16", t17 T17Job "qjob.bench.types.17",
    t18 T18Job "qjob.bench.types.18", t19 T19Job "qjob.bench.types.19", t20 T20Job "qjob.bench.types.20",
    t21 T21Job "qjob.bench.types.21", t22 T22Job "qjob.bench.types.22", t23 T23Job "qjob.bench.types.23",
    t24 T24Job "qjob.bench.types.24", t25 T25Job "qjob.bench.types.25", t26 T26Job "qjob.bench.types.26",
    t27 T27Job "qjob.bench.types.27", t28 T28Job "qjob.bench.types.28", t29 T29Job "qjob.bench.types.29",
    t30 T30Job "qjob.bench.types.30", t31 T31Job "qjob.bench.types.31", t32 T32Job "qjob.bench.types.32",
    t33 T33Job "qjob.bench.types.33", t34 T34Job "qjob.bench.types.34", t35 T35Job "qjob.bench.types.35",
    t36 T36Job "qjob.bench.types.36", t37 T37Job "qjob.bench.types.37", t38 T38Job "qjob.bench.types.38",
    t39 T39Job "qjob.bench.types.39", t40 T40Job "qjob.bench.types.40", t41 T41Job "qjob.bench.types.41",
    t42 T42Job "qjob.bench.types.42", t43 T43Job "qjob.bench.types.43", t44 T44Job "qjob.bench.types.44",
    t45 T45Job "qjob.bench.types.45", t46 T46Job "qjob.bench.types.46", t47 T47Job "qjob.bench.types.47",
    t48 T48Job "qjob.bench.types.48", t49 T49Job "qjob.bench.types.49",
);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--worker") {
        return worker_process().await;
    }
    if let Some(at) = args.iter().position(|arg| arg == "--memory") {
        let broker = qjob::AmqpBroker::connect(amqp_url().as_str())
            .await
            .unwrap();
        let number = |n: usize| -> usize {
            let arg = args
                .get(at + n)
                .expect("--memory <types> | in-flight <jobs> <bytes>");
            arg.parse().expect("a number")
        };
        return match args.get(at + 1).map(String::as_str) {
            Some("in-flight") => in_flight_memory(&broker, number(2), number(3)).await,
            _ => types_memory(&broker, number(1)).await,
        };
    }
    let jobs = env_number("QJOB_BENCH_JOBS", 40_000);
    let rounds = env_number("QJOB_BENCH_ROUNDS", 3);
    let broker = qjob::AmqpBroker::connect(amqp_url().as_str())
        .await
        .expect("the bench needs RabbitMQ");
    let only = std::env::var("QJOB_BENCH_ONLY").unwrap_or_default();
    if only != "memory" {
        println!("{jobs} persistent 256-byte no-op jobs per round, {rounds} rounds");
        processes(&broker, jobs, rounds).await;
        job_types(&broker, jobs, rounds).await;
    }
    memory(&broker).await;
}

/// A worker process: consumes the bench queue until killed.
async fn worker_process() {
    let broker = qjob::AmqpBroker::connect(amqp_url().as_str())
        .await
        .unwrap();
    Worker::builder(broker)
        .register(BenchJob)
        .console(false)
        .build()
        .run_until(std::future::pending())
        .await
        .unwrap();
}

/// Ready messages of `queue`.
async fn ready(broker: &qjob::AmqpBroker, queue: &str) -> u32 {
    broker
        .queue_stats(queue)
        .await
        .unwrap()
        .map_or(0, |stats| stats.messages)
}

/// Ready plus unacked messages of `queues`, as RabbitMQ counts them.
fn held_messages(queues: &[&str]) -> u64 {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let count: u64 = fields.next()?.parse().ok()?;
            queues.contains(&name).then_some(count)
        })
        .sum()
}

async fn processes(broker: &qjob::AmqpBroker, jobs: usize, rounds: usize) {
    let client = Client::new(broker.clone());
    let exe = std::env::current_exe().unwrap();
    let mut by_count: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
    for count in [1, 2, 4] {
        by_count.push((count, Vec::new(), Vec::new()));
    }
    for _ in 0..rounds {
        for (count, rates, cpu) in &mut by_count {
            let results = client
                .enqueue_all::<BenchJob>((0..jobs).map(|n| Bench::new(n as u64)))
                .await
                .unwrap();
            assert!(results.iter().all(Result::is_ok));
            broker_quiet().await;
            let started = Instant::now();
            let mut children: Vec<_> = (0..*count)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .arg("--worker")
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            // Timed until nothing is ready: at most `prefetch` per
            // process are still being acked then.
            while ready(broker, BENCH_QUEUE).await > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            rates.push(rate(jobs, started.elapsed()));
            while held_messages(&[BENCH_QUEUE]) > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let used: f64 = children
                .iter()
                .map(|child| cpu_of(child.id()).as_secs_f64())
                .sum();
            cpu.push(used * 1e6 / jobs as f64);
            for child in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let one = median(&by_count[0].1);
    for (count, rates, cpu) in &by_count {
        let rate = median(rates);
        println!(
            "{count} worker process(es): {rate:>7.0} jobs/s, {:.2}× one process, {:.0} µs CPU/job in the workers",
            rate / one,
            median(cpu)
        );
    }
}

async fn job_types(broker: &qjob::AmqpBroker, jobs: usize, rounds: usize) {
    let client = Client::new(broker.clone());
    let mut by_types: Vec<(usize, Vec<f64>, Vec<f64>)> =
        [1, 10, 50].map(|types| (types, vec![], vec![])).into();
    for _ in 0..rounds {
        for (types, rates, cpu) in &mut by_types {
            let total = jobs / *types * *types;
            fill(&client, *types, total).await;
            broker_quiet().await;
            qjob_benches::start_round(total);
            let worker = register(Worker::builder(broker.clone()), *types)
                .console(false)
                .build();
            let used = Cpu::now();
            let started = Instant::now();
            worker
                .run_until(qjob_benches::DONE.notified())
                .await
                .unwrap();
            rates.push(rate(total, started.elapsed()));
            cpu.push(used.per_job_since(total).0);
            while held_messages(&queues(*types)) > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let one = median(&by_types[0].1);
    for (types, rates, cpu) in &by_types {
        let rate = median(rates);
        println!(
            "{types:>2} job type(s) in one worker: {rate:>7.0} jobs/s, {:.2}× one type, {:.0} µs CPU/job",
            rate / one,
            median(cpu)
        );
    }
}

/// Runs this binary with `--memory <what>` in fresh processes (resident
/// memory never shrinks back), `MEMORY_RUNS` times, and returns the median
/// of each number it prints.
fn measured(what: &[&str]) -> Vec<f64> {
    let runs: Vec<Vec<f64>> = (0..MEMORY_RUNS)
        .map(|_| {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .arg("--memory")
                .args(what)
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .collect();
    (0..runs[0].len())
        .map(|i| median(&runs.iter().map(|run| run[i]).collect::<Vec<_>>()))
        .collect()
}

/// Fresh processes per memory figure; the median is printed.
const MEMORY_RUNS: usize = 3;

async fn memory(_broker: &qjob::AmqpBroker) {
    let one = measured(&["1"])[0];
    for types in [10usize, 25, 50] {
        let resident = measured(&[&types.to_string()])[0];
        println!(
            "memory: {:.1} MB resident with 1 job type, {:.1} MB with {types}: {:.0} KB per job type",
            one / 1e6,
            resident / 1e6,
            (resident - one) / (types - 1) as f64 / 1e3
        );
    }
    for (jobs, bytes) in [(1000usize, 256usize), (4000, 256), (1000, 4096)] {
        let held = measured(&["in-flight", &jobs.to_string(), &bytes.to_string()]);
        println!(
            "memory: {:.1} MB resident idle, {:.1} MB with {jobs} handlers in flight on \
             {bytes}-byte jobs: {:.1} KB per job in flight",
            held[0] / 1e6,
            held[1] / 1e6,
            (held[1] - held[0]) / jobs as f64 / 1e3
        );
    }
}

/// Prints the resident memory with a worker of `types` job types started.
async fn types_memory(broker: &qjob::AmqpBroker, types: usize) {
    let worker = register(Worker::builder(broker.clone()), types)
        .console(false)
        .build();
    let (stop, running) = started(worker).await;
    println!("{}", resident_bytes());
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// Prints the resident memory of an idle worker, then with `jobs`
/// handlers in flight, each holding a payload of about `bytes` bytes.
async fn in_flight_memory(broker: &qjob::AmqpBroker, jobs: usize, bytes: usize) {
    let client = Client::new(broker.clone());
    let prefix = HeldJob::options().env_prefix();
    let slots = jobs.to_string();
    let worker = Worker::builder(broker.clone())
        .register(HeldJob)
        .console(false)
        .overrides(move |name| {
            let knob = name.strip_prefix(prefix.as_str())?;
            matches!(knob, "PREFETCH" | "CONCURRENCY").then(|| slots.clone())
        })
        .build();
    let (stop, running) = started(worker).await;
    let idle = resident_bytes();
    let payloads = (0..jobs).map(|n| {
        let mut job = Bench::new(n as u64);
        let padding = bytes.saturating_sub(256);
        job.note.push_str(&"x".repeat(padding));
        job
    });
    let results = client.enqueue_all::<HeldJob>(payloads).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    while STARTED.load(Ordering::SeqCst) < jobs {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{idle} {}", resident_bytes());
    RELEASE.notify_waiters();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// This process's resident memory, in bytes (`/proc/self/statm`).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// User + system CPU of process `pid` so far.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Runs `worker` until `stop` is sent, once it is ready.
async fn started(
    worker: Worker,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), qjob::Error>>,
) {
    let health = worker.health();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    while !health.report().is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (stop, running)
}
