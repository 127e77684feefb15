//! Rate limits and circuit breakers on the paused clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use qjob::{JobContext, JobError, job};
use qjob_testkit::TestKit;
use tokio::time::Instant;

static LIMITED_STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[job(
    queue = "protect.limited",
    rate_limit = "10/s",
    concurrency = 20,
    prefetch = 50
)]
async fn limited(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    LIMITED_STARTS.lock().unwrap().push(Instant::now());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_spaces_starts_evenly() {
    let mut kit = TestKit::new().register(LimitedJob);
    let results = kit.client().enqueue_all::<LimitedJob>(0..50).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let start = Instant::now();
    kit.run_until_idle().await;
    let starts = LIMITED_STARTS.lock().unwrap().clone();
    assert_eq!(starts.len(), 50);
    // One token in the bucket at first, then one every 100 ms.
    let took = starts.last().unwrap().duration_since(start);
    assert!(took >= Duration::from_millis(4800), "{took:?}");
    for window in starts.windows(11) {
        let span = window[10] - window[0];
        assert!(
            span >= Duration::from_millis(900),
            "11 starts within {span:?}"
        );
    }
}

static DOWNSTREAM_UP: AtomicBool = AtomicBool::new(false);
static BREAKER_CALLS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[job(
    queue = "protect.breaker",
    retry = 100,
    backoff = fixed("1s"),
    concurrency = 1,
    circuit_breaker(failure_rate = 0.5, min_attempts = 10, window = "60s", open_for = "3s")
)]
async fn guarded(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    BREAKER_CALLS.lock().unwrap().push(Instant::now());
    if DOWNSTREAM_UP.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(JobError::msg("downstream is down"))
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_probes_every_open_interval_and_closes_on_success() {
    let mut kit = TestKit::new().register(GuardedJob);
    let results = kit.client().enqueue_all::<GuardedJob>(0..5).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    kit.start().await;
    // Let it fail for 20 s of virtual time, then recover.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let calls = BREAKER_CALLS.lock().unwrap().clone();
    let opened = calls[9];
    let after: Vec<Duration> = calls[10..].iter().map(|t| *t - opened).collect();
    // While open, one probe per 3 s interval, nothing in between.
    assert!(!after.is_empty());
    for pair in after.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(3), "{after:?}");
    }
    assert!(after.len() <= 7, "{after:?}");
    DOWNSTREAM_UP.store(true, Ordering::SeqCst);
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<GuardedJob>().len(), 5);
    assert!(kit.dead_lettered::<GuardedJob>().is_empty());
}

static HEALTH_UP: AtomicBool = AtomicBool::new(true);

#[job(
    queue = "protect.health",
    retry = 100,
    backoff = fixed("1s"),
    circuit_breaker(failure_rate = 0.5, min_attempts = 4, window = "60s", open_for = "30s")
)]
async fn watched(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    if HEALTH_UP.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(JobError::msg("down"))
    }
}

#[tokio::test(start_paused = true)]
async fn health_reports_consumers_breakers_errors_and_acks() {
    use qjob::{BreakerHealth, Client, Worker};
    use qjob_testkit::MemoryBroker;

    let broker = MemoryBroker::new();
    let worker = Worker::builder(broker.clone()).register(WatchedJob).build();
    let health = worker.health();
    assert!(!health.report().running);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    broker
        .wait_until(|b| b.consumer_count("protect.health") == 1)
        .await;
    let report = health.report();
    assert!(report.running && report.is_ready(), "{report:?}");
    assert_eq!(report.breakers.get("watched"), Some(&BreakerHealth::Closed));
    assert_eq!(report.last_ack, None);

    let client = Client::new(broker.clone());
    client.enqueue::<WatchedJob>(1).await.unwrap();
    broker.wait_until_empty("protect.health").await;
    assert!(health.report().last_ack.is_some());

    HEALTH_UP.store(false, Ordering::SeqCst);
    client.enqueue_all::<WatchedJob>(0..4).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        health.report().breakers.get("watched"),
        Some(&BreakerHealth::Open)
    );

    broker.drop_connection();
    let report = eventually(&health, |r| r.last_error.is_some()).await;
    assert!(report.last_error.unwrap().contains("connection closed"));
    eventually(&health, qjob::HealthReport::is_ready).await;

    HEALTH_UP.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        health.report().breakers.get("watched"),
        Some(&BreakerHealth::Closed)
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    // A stopped worker says so: not running, not connected, no consumer up
    // (the broker itself is still there for clients).
    let report = health.report();
    assert!(!report.running && !report.connected, "{report:?}");
    assert!(report.consumers.values().all(|up| !up), "{report:?}");
    assert!(!report.is_ready());
}

/// Waits (on the paused clock) until the health report satisfies `check`.
async fn eventually(
    health: &qjob::Health,
    check: impl Fn(&qjob::HealthReport) -> bool,
) -> qjob::HealthReport {
    for _ in 0..1000 {
        let report = health.report();
        if check(&report) {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the health report never got there: {:?}", health.report());
}

static FLAKY_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[job(queue = "protect.alarm", retry = 3, backoff = fixed("1s"))]
async fn flaky(_n: u32, ctx: JobContext) -> Result<(), JobError> {
    FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt() == 1 {
        return Err(JobError::msg("first try fails"));
    }
    Ok(())
}

/// A resource alarm (publishes blocked) while a failed job's retry is being
/// published: the delivery is held, the handler does not run again, and
/// the retry goes out once the alarm clears.
#[tokio::test(start_paused = true)]
async fn a_resource_alarm_holds_the_settlement_without_rerunning_the_job() {
    let mut kit = TestKit::new().register(FlakyJob);
    kit.enqueue::<FlakyJob>(1).await.unwrap();
    kit.broker().block_publishes("memory");
    kit.start().await;
    let broker = kit.broker().clone();
    broker
        .wait_until(|b| {
            b.unacked_count("protect.alarm") == 1 && FLAKY_RUNS.load(Ordering::SeqCst) == 1
        })
        .await;
    assert_eq!(
        qjob::broker::Broker::blocked_reason(&broker).as_deref(),
        Some("memory")
    );
    assert!(matches!(
        kit.enqueue::<FlakyJob>(2).await,
        Err(qjob::Error::Blocked { .. })
    ));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 1, "not run again");
    assert_eq!(broker.unacked_count("protect.alarm"), 1, "still held");
    broker.unblock_publishes();
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<FlakyJob>(), [1]);
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 2);
}

static ALARM_RUNS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[job(
    queue = "protect.alarm-window",
    prefetch = 20,
    concurrency = 10,
    retry = 3,
    backoff = fixed("1s")
)]
async fn alarm_window(n: u32, ctx: JobContext) -> Result<(), JobError> {
    ALARM_RUNS.lock().unwrap().push(n);
    if n.is_multiple_of(4) && ctx.attempt() == 1 {
        return Err(JobError::msg("first try fails"));
    }
    Ok(())
}

/// A resource alarm through 400 jobs, a quarter failing once, prefetch
/// 20: the held retries are kept out of the window, so all 300 that need
/// no publish run and are acked during the alarm (before, the worker
/// stopped once 20 held retries filled its prefetch: 77 jobs had run);
/// after it, all 400 succeed, none run twice but the retries.
#[tokio::test(start_paused = true)]
async fn held_settlements_stay_out_of_the_window_during_an_alarm() {
    let mut kit = TestKit::new().register(AlarmWindowJob);
    let results = kit
        .client()
        .enqueue_all::<AlarmWindowJob>(0..400)
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    kit.broker().block_publishes("memory");
    kit.start().await;
    let broker = kit.broker().clone();
    let queue = <AlarmWindowJob as qjob::Job>::QUEUE;
    let runs = || ALARM_RUNS.lock().unwrap().len();
    let started = Instant::now();
    while !(runs() == 400 && broker.ready_count(queue) == 0 && broker.unacked_count(queue) == 100) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} runs, {} ready, {} unacked during the alarm",
            runs(),
            broker.ready_count(queue),
            broker.unacked_count(queue)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.unblock_publishes();
    kit.run_until_idle().await;
    let mut succeeded = kit.succeeded::<AlarmWindowJob>();
    succeeded.sort_unstable();
    assert_eq!(succeeded, (0..400).collect::<Vec<_>>());
    assert_eq!(runs(), 500, "each job once, the failed ones twice");
}

/// Waits on virtual time, in steps of 100 ms, until `done` holds; fails the
/// test after `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker on `broker` for `job`, with `shutdown_timeout`; stopped by
/// the sender.
fn spawn_worker<J: qjob::Job + Clone>(
    broker: &qjob_testkit::MemoryBroker,
    job: J,
    shutdown_timeout: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), qjob::Error>>,
) {
    let worker = qjob::Worker::builder(broker.clone())
        .register(job)
        .shutdown_timeout(shutdown_timeout)
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    (stop, handle)
}

static SERIAL_RUNNING: AtomicUsize = AtomicUsize::new(0);
static SERIAL_MOST: AtomicUsize = AtomicUsize::new(0);
static SERIAL_ORDER: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[job(
    queue = "protect.alarm-single-active",
    single_active = true,
    prefetch = 10,
    concurrency = 1,
    retry = 3,
    backoff = fixed("1s")
)]
async fn serial(n: u32, ctx: JobContext) -> Result<(), JobError> {
    let now = SERIAL_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    SERIAL_MOST.fetch_max(now, Ordering::SeqCst);
    SERIAL_ORDER.lock().unwrap().push(n);
    tokio::time::sleep(Duration::from_millis(500)).await;
    SERIAL_RUNNING.fetch_sub(1, Ordering::SeqCst);
    if n == 0 && ctx.attempt() == 1 {
        return Err(JobError::msg("first try fails"));
    }
    Ok(())
}

/// A single-active job keeps its window through an alarm: renewing its
/// consumer for the held settlement would hand the queue to the standby
/// worker while this one still runs what it holds (it did: two at once,
/// order 0, 1, 10, 2, 11, …).
#[tokio::test(start_paused = true)]
async fn a_single_active_job_keeps_one_consumer_through_an_alarm() {
    let broker = qjob_testkit::MemoryBroker::new();
    let client = qjob::Client::new(broker.clone());
    let queue = <SerialJob as qjob::Job>::QUEUE;
    let _a = spawn_worker(&broker, SerialJob, Duration::from_secs(30));
    wait_for("the active worker", Duration::from_secs(5), || {
        broker.consumer_count(queue) == 1
    })
    .await;
    let _b = spawn_worker(&broker, SerialJob, Duration::from_secs(30));
    wait_for("the standby", Duration::from_secs(5), || {
        broker.consumer_count(queue) == 2
    })
    .await;
    for n in 0..30u32 {
        client.enqueue::<SerialJob>(n).await.unwrap();
    }
    broker.block_publishes("memory");
    // Job 0's retry is held by the alarm; the 29 others run.
    wait_for("every job's first attempt", Duration::from_secs(60), || {
        SERIAL_ORDER.lock().unwrap().len() == 30 && SERIAL_RUNNING.load(Ordering::SeqCst) == 0
    })
    .await;
    let order = SERIAL_ORDER.lock().unwrap().clone();
    assert_eq!(SERIAL_MOST.load(Ordering::SeqCst), 1, "{order:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}

static GATED_STARTS: Mutex<Vec<(u32, Instant)>> = Mutex::new(Vec::new());

#[job(
    queue = "protect.gated-stop",
    max_length = 1000,
    rate_limit = "6/min",
    prefetch = 10,
    concurrency = 5
)]
async fn gated(n: u32, _ctx: JobContext) -> Result<(), JobError> {
    GATED_STARTS.lock().unwrap().push((n, Instant::now()));
    Ok(())
}

/// A stop asked while held jobs wait at their rate limit starts none of
/// them (they started one every 10 s after it, until the shutdown
/// timeout), and they are back in the queue.
#[tokio::test(start_paused = true)]
async fn a_stop_starts_no_job_waiting_at_its_gate() {
    let broker = qjob_testkit::MemoryBroker::new();
    let client = qjob::Client::new(broker.clone());
    let (stop, running) = spawn_worker(&broker, GatedJob, Duration::from_secs(60));
    for n in 0..10u32 {
        client.enqueue::<GatedJob>(n).await.unwrap();
    }
    // The first starts; the rest wait at the rate limit (one per 10 s).
    wait_for("the first start", Duration::from_secs(5), || {
        !GATED_STARTS.lock().unwrap().is_empty()
    })
    .await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the stop took {:?}",
        asked.elapsed()
    );
    let starts = GATED_STARTS.lock().unwrap().clone();
    let after: Vec<u32> = starts
        .iter()
        .filter(|(_, at)| *at > asked)
        .map(|(n, _)| *n)
        .collect();
    assert!(after.is_empty(), "started after the stop: {after:?}");
    assert_eq!(
        broker.ready_count(<GatedJob as qjob::Job>::QUEUE),
        10 - starts.len(),
        "the rest are back"
    );
}

static BACKOFF_SEEN: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());
static BACKOFF_WHO: Mutex<&'static str> = Mutex::new("a");

#[job(
    queue = "protect.stop-in-backoff",
    max_length = 1000,
    retry = 2,
    backoff = fixed("2s")
)]
async fn always_failing(_n: u32, ctx: JobContext) -> Result<(), JobError> {
    let who = *BACKOFF_WHO.lock().unwrap();
    BACKOFF_SEEN.lock().unwrap().push((who, ctx.attempt()));
    Err(JobError::msg("always fails"))
}

/// A stop while a job waits out an in-place backoff lets it run its
/// retries within the shutdown timeout: its attempts live in this
/// worker's memory, and halting it made the next worker start them over
/// (4 runs for 3 attempts).
#[tokio::test(start_paused = true)]
async fn a_stop_lets_a_retry_held_in_place_finish_its_attempts() {
    let broker = qjob_testkit::MemoryBroker::new();
    let client = qjob::Client::new(broker.clone());
    let (stop_a, a) = spawn_worker(&broker, AlwaysFailingJob, Duration::from_secs(30));
    client.enqueue::<AlwaysFailingJob>(1).await.unwrap();
    wait_for(
        "the first attempt, then its backoff",
        Duration::from_secs(1),
        || BACKOFF_SEEN.lock().unwrap().len() == 1,
    )
    .await;
    stop_a.send(()).unwrap();
    a.await.unwrap().unwrap();
    *BACKOFF_WHO.lock().unwrap() = "b";
    let _b = spawn_worker(&broker, AlwaysFailingJob, Duration::from_secs(30));
    wait_for("the dead letter", Duration::from_secs(60), || {
        broker.ready_count("protect.stop-in-backoff.dlq") == 1
    })
    .await;
    let seen = BACKOFF_SEEN.lock().unwrap().clone();
    assert_eq!(seen, [("a", 1), ("a", 2), ("a", 3)]);
    assert_eq!(broker.ready_count("protect.stop-in-backoff.dlq"), 1);
}
