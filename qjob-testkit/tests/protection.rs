//! Rate limits and circuit breakers on the paused clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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
