//! Periodic jobs on virtual time: an hour of ticks in milliseconds, a
//! leader crash, and each missed-tick policy.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Faulty;
use qjob::broker::{Broker, QueueSpec};
use qjob::schedule::{LEASE_QUEUE_PREFIX, Missed, Schedule};
use qjob::{JobContext, JobError, Worker, job};
use qjob_testkit::TestKit;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

#[job(queue = "kit.schedule.minutely", cron = "* * * * *")]
async fn minutely(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Report {
    kind: String,
}

#[job(queue = "kit.schedule.report")]
async fn report(_: Report, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// The tick times of the jobs run, from their ids (`<name>@<time>`).
fn ticks(ids: impl IntoIterator<Item = String>) -> Vec<SystemTime> {
    ids.into_iter()
        .map(|id| {
            let (_, at) = id.split_once('@').expect("a tick id");
            let at = chrono::DateTime::parse_from_rfc3339(at).expect("a tick time");
            UNIX_EPOCH + Duration::from_millis(at.timestamp_millis() as u64)
        })
        .collect()
}

/// The time between each tick and the next.
fn gaps(ticks: &[SystemTime]) -> Vec<Duration> {
    ticks
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap())
        .collect()
}

/// Whether every tick came a minute after the one before.
fn a_minute_apart(ticks: &[SystemTime]) -> bool {
    gaps(ticks)
        .iter()
        .all(|gap| *gap == Duration::from_secs(60))
}

/// The ids of the per-minute schedule's jobs run, in the order they ran.
fn minutely_ids(kit: &TestKit) -> Vec<String> {
    kit.attempts::<MinutelyJob>()
        .into_iter()
        .map(|a| a.job_id.to_string())
        .collect()
}

fn minute_aligned(tick: SystemTime) -> bool {
    tick.duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .is_multiple_of(60_000)
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_a_per_minute_schedule_is_60_ticks_each_once() {
    let mut kit = TestKit::new().register(MinutelyJob);
    let started = SystemTime::now();
    kit.advance(Duration::from_secs(3600)).await;
    let ids = minutely_ids(&kit);
    assert_eq!(ids.len(), 60, "{ids:?}");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 60, "no tick twice");
    let ticks = ticks(ids.iter().cloned());
    assert!(ticks.iter().all(|t| minute_aligned(*t)), "{ticks:?}");
    assert!(a_minute_apart(&ticks), "{ticks:?}");
    assert!(ticks[0] > started && ticks[0] <= started + Duration::from_secs(60));
    assert!(ids[0].starts_with("minutely@"), "{}", ids[0]);
    let health = kit.health().expect("the worker runs");
    let schedule = &health.schedules["minutely"];
    assert!(schedule.leader);
    assert_eq!(schedule.expression, "* * * * *");
    assert_eq!(schedule.last_fired, ticks.last().copied());
    assert_eq!(
        schedule.next,
        ticks.last().map(|t| *t + Duration::from_secs(60))
    );
}

#[tokio::test(start_paused = true)]
async fn a_schedule_added_on_the_builder_carries_its_payload() {
    let payload = Report {
        kind: "daily".into(),
    };
    let schedule = Schedule::cron("0 */10 * * * *")
        .unwrap()
        .named("report-10m");
    let mut kit = TestKit::new()
        .register(ReportJob)
        .schedule::<ReportJob>(schedule, payload.clone());
    kit.advance(Duration::from_secs(3600)).await;
    let succeeded = kit.succeeded::<ReportJob>();
    assert_eq!(succeeded.len(), 6);
    assert!(succeeded.iter().all(|p| *p == payload));
}

/// Minutes of ticks missed while no worker ran: the policy decides.
async fn after_a_crash_and_10_minutes_down(missed: Missed) -> Vec<SystemTime> {
    let schedule = Schedule::cron("0 * * * * *")
        .unwrap()
        .with_missed(missed)
        .named("gap");
    let mut kit = TestKit::new()
        .register(ReportJob)
        .schedule::<ReportJob>(schedule, Report::default());
    kit.advance(Duration::from_secs(300)).await;
    kit.crash_worker().await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    kit.advance(Duration::from_secs(300)).await;
    ticks(
        kit.attempts::<ReportJob>()
            .into_iter()
            .map(|a| a.job_id.to_string()),
    )
}

#[tokio::test(start_paused = true)]
async fn the_latest_missed_tick_fires_once_by_default() {
    let ticks = after_a_crash_and_10_minutes_down(Missed::Latest).await;
    // 5 before, the latest of the 10 missed, 5 after.
    assert_eq!(ticks.len(), 11, "{ticks:?}");
    let minutes: Vec<u64> = gaps(&ticks).iter().map(|gap| gap.as_secs() / 60).collect();
    assert_eq!(minutes, [1, 1, 1, 1, 10, 1, 1, 1, 1, 1], "{ticks:?}");
}

#[tokio::test(start_paused = true)]
async fn missed_ticks_can_be_skipped() {
    let ticks = after_a_crash_and_10_minutes_down(Missed::Skip).await;
    assert_eq!(ticks.len(), 10, "{ticks:?}");
    let minutes: Vec<u64> = gaps(&ticks).iter().map(|gap| gap.as_secs() / 60).collect();
    assert_eq!(minutes, [1, 1, 1, 1, 11, 1, 1, 1, 1], "{ticks:?}");
}

#[tokio::test(start_paused = true)]
async fn two_schedules_with_one_name_are_refused() {
    let schedule = Schedule::cron("@hourly").unwrap();
    let broker = qjob_testkit::MemoryBroker::new();
    let error = qjob::Worker::builder(broker)
        .schedule::<ReportJob>(schedule.clone(), Report::default())
        .schedule::<ReportJob>(schedule, Report::default())
        .build()
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("two schedules are named \"report\""),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_queue_declared_with_other_arguments_is_used_as_it_is() {
    let mut kit = TestKit::new().register(MinutelyJob);
    let queue = format!("{}minutely", qjob::schedule::LEASE_QUEUE_PREFIX);
    kit.broker()
        .declare_queue(&qjob::broker::QueueSpec::new(&queue).with_single_active(true))
        .await
        .unwrap();
    kit.advance(Duration::from_secs(600)).await;
    assert_eq!(kit.attempts::<MinutelyJob>().len(), 10);
}

/// The first tick ever, refused: the lease recorded when the schedule
/// started, so the leader that takes over fires it as the missed one
/// (before, a leader that had fired no tick started from now, and the
/// first tick was never enqueued).
#[tokio::test(start_paused = true)]
async fn a_first_tick_whose_publish_failed_fires_late_once() {
    let started = SystemTime::now();
    let mut kit = TestKit::new().register(MinutelyJob);
    kit.broker()
        .fail_next_publish_to(<MinutelyJob as qjob::Job>::QUEUE);
    kit.advance(Duration::from_secs(150)).await;
    let ids = minutely_ids(&kit);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no tick twice: {ids:?}");
    let ticks = ticks(ids.iter().cloned());
    // The first minute boundary after the start was refused, then fired
    // late; the next ones on time.
    assert!(ticks.len() >= 2, "{ids:?}");
    assert!(
        ticks[0] > started && ticks[0] <= started + Duration::from_secs(60),
        "the first tick fired: {ids:?}"
    );
    assert!(a_minute_apart(&ticks), "{ids:?}");
    assert!(kit.health().unwrap().last_error.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_tick_whose_publish_failed_fires_late_once() {
    let mut kit = TestKit::new().register(MinutelyJob);
    kit.advance(Duration::from_secs(90)).await;
    kit.broker()
        .fail_next_publish_to(<MinutelyJob as qjob::Job>::QUEUE);
    kit.advance(Duration::from_secs(210)).await;
    let ids = minutely_ids(&kit);
    // The third tick's publish was refused: the leader gave up the lease,
    // took it again, and fired that tick as the latest missed one.
    assert_eq!(ids.len(), 5, "{ids:?}");
    let ticks = ticks(ids.iter().cloned());
    assert!(a_minute_apart(&ticks), "{ids:?}");
    assert!(kit.health().unwrap().last_error.is_some());
}

/// A worker carrying `schedule` (of [`ReportJob`]) on `broker`, running
/// until the sender is dropped or sent to.
fn spawn_worker(
    broker: impl Broker,
    schedule: Schedule,
) -> (
    qjob::Health,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), qjob::Error>>,
) {
    let worker = Worker::builder(broker)
        .schedule::<ReportJob>(schedule, Report::default())
        .build();
    let health = worker.health();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    (health, stop, handle)
}

/// Waits on virtual time, in steps of 100 ms, until `done` holds; panics
/// after `limit`.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = tokio::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// The tick ids waiting in `queue`, read off it.
async fn drain_ids(broker: &qjob_testkit::MemoryBroker, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(delivery) = broker.get(queue).await.unwrap() {
        ids.push(delivery.message.id.clone().expect("a tick has an id"));
        delivery.acker.ack().await.unwrap();
    }
    ids
}

/// A leader whose lease consumer silently stopped being the active one
/// (its records go to another) steps down within the 10 s its records
/// have to come back, however often it ticks: each record used to move
/// the deadline on, so a leader ticking every 2 s never stepped down.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_leases_go_elsewhere_steps_down_at_a_2_s_schedule() {
    let broker = Faulty::new(qjob_testkit::MemoryBroker::new());
    let schedule = Schedule::cron("*/2 * * * * *").unwrap().named("every-2s");
    let (health, _stop, _worker) = spawn_worker(broker.clone(), schedule);
    let fired = |health: &qjob::Health| {
        health
            .report()
            .schedules
            .get("every-2s")
            .and_then(|s| s.last_fired)
    };
    wait_until(Duration::from_secs(10), "a first tick", || {
        fired(&health).is_some()
    })
    .await;
    broker.leases_elsewhere.store(true, Ordering::SeqCst);
    let took = wait_until(Duration::from_secs(60), "the leader steps down", || {
        health
            .report()
            .last_error
            .is_some_and(|e| e.contains("did not come back"))
    })
    .await;
    // The next tick's record (within 2 s), then its 10 s to come back.
    assert!(
        took <= Duration::from_millis(12_200),
        "stepped down after {took:?}"
    );
}

fn lease_queue(name: &str) -> String {
    format!("{LEASE_QUEUE_PREFIX}{name}")
}

/// The lease queue as the scheduler declares it.
async fn declare_lease_queue(broker: &qjob_testkit::MemoryBroker, name: &str) -> String {
    let queue = lease_queue(name);
    broker
        .declare_queue(
            &QueueSpec::new(&queue)
                .with_queue_type(qjob::QueueType::Quorum)
                .with_single_active(true)
                .with_delivery_limit(1_000_000_000),
        )
        .await
        .unwrap();
    queue
}

fn lease_body(last: SystemTime) -> Vec<u8> {
    format!(
        r#"{{"format":1,"last_ms":{}}}"#,
        last.duration_since(UNIX_EPOCH).unwrap().as_millis()
    )
    .into_bytes()
}

/// A lease recording a tick a day ahead (a leader whose clock was wrong)
/// counts as now: the schedule goes on, and says why. It used to halt on
/// every worker until that day came (0 ticks in the hour, and after a
/// restart).
#[tokio::test(start_paused = true)]
async fn a_lease_a_day_ahead_counts_as_now() {
    let mut kit = TestKit::new().register(MinutelyJob);
    let queue = declare_lease_queue(kit.broker(), "minutely").await;
    kit.broker()
        .publish_raw(
            &queue,
            lease_body(SystemTime::now() + Duration::from_secs(24 * 3600)),
        )
        .await
        .unwrap();
    kit.advance(Duration::from_secs(3600)).await;
    let ids = minutely_ids(&kit);
    assert!(ids.len() >= 59, "{} ticks in the hour: {ids:?}", ids.len());
    let problem = kit.health().unwrap().schedules["minutely"].problem.clone();
    assert!(
        problem.as_deref().is_some_and(|p| p.contains("ahead")),
        "{problem:?}"
    );
    kit.crash_worker().await;
    kit.advance(Duration::from_secs(600)).await;
    let after = minutely_ids(&kit).len() - ids.len();
    assert!(after >= 9, "{after} ticks in 10 minutes after a restart");
    let unique: BTreeSet<String> = minutely_ids(&kit).into_iter().collect();
    assert_eq!(unique.len(), minutely_ids(&kit).len(), "no tick twice");
}

/// Two leases in the queue when a worker takes over (a leader stopped
/// between recording a tick and acking the lease before): it reads both
/// before it acts, so the tick the later one records does not fire again.
/// It used to act on the first alone and fire that tick a second time.
#[tokio::test(start_paused = true)]
async fn a_new_leader_reads_every_lease_before_it_fires() {
    let mut kit = TestKit::new().register(MinutelyJob);
    let queue = declare_lease_queue(kit.broker(), "minutely").await;
    let now = SystemTime::now();
    let minute = |at: SystemTime| {
        let ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        UNIX_EPOCH + Duration::from_millis(ms - ms % 60_000)
    };
    let t1 = minute(now);
    let t0 = t1 - Duration::from_secs(60);
    for tick in [t0, t1] {
        kit.broker()
            .publish_raw(&queue, lease_body(tick))
            .await
            .unwrap();
    }
    kit.advance(Duration::from_secs(150)).await;
    let ticks = ticks(minutely_ids(&kit));
    assert!(!ticks.contains(&t1), "{t1:?} fired again: {ticks:?}");
    assert_eq!(ticks.first(), Some(&(t1 + Duration::from_secs(60))));
    assert!(a_minute_apart(&ticks), "{ticks:?}");
}

/// A rolling deploy: three workers carry a 10 s schedule, lease records
/// take 20 ms to publish; after each of 10 ticks the leader stops
/// gracefully (`after` the tick) and a new worker starts. Each tick is
/// enqueued once.
async fn graceful_stops_of_the_leader(after: Duration) -> Vec<String> {
    let memory = qjob_testkit::MemoryBroker::new();
    let broker = Faulty::new(memory.clone());
    broker.lease_latency.store(20, Ordering::SeqCst);
    let schedule = || Schedule::cron("*/10 * * * * *").unwrap().named("rolling");
    let mut workers: Vec<_> = (0..3)
        .map(|_| spawn_worker(broker.clone(), schedule()))
        .collect();
    let fired_by = |workers: &[(qjob::Health, _, _)]| {
        workers
            .iter()
            .filter_map(|(health, _, _)| health.report().schedules.get("rolling")?.last_fired)
            .max()
    };
    let mut last = None;
    for round in 0..10 {
        let started = tokio::time::Instant::now();
        while fired_by(&workers) <= last {
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "round {round}: no tick"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last = fired_by(&workers);
        tokio::time::sleep(after).await;
        let leader = workers
            .iter()
            .position(|(health, _, _)| health.report().schedules["rolling"].leader)
            .unwrap_or_else(|| panic!("round {round}: no leader"));
        let (_, stop, handle) = workers.remove(leader);
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
        workers.push(spawn_worker(broker.clone(), schedule()));
    }
    drain_ids(&memory, <ReportJob as qjob::Job>::QUEUE).await
}

#[tokio::test(start_paused = true)]
async fn graceful_stops_of_the_leader_right_after_each_tick_fire_no_tick_twice() {
    let ids = graceful_stops_of_the_leader(Duration::ZERO).await;
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a tick twice: {ids:?}");
    assert!(ids.len() >= 10, "{ids:?}");
}

#[tokio::test(start_paused = true)]
async fn graceful_stops_of_the_leader_1_s_after_each_tick_fire_no_tick_twice() {
    let ids = graceful_stops_of_the_leader(Duration::from_secs(1)).await;
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a tick twice: {ids:?}");
    assert!(ids.len() >= 10, "{ids:?}");
}

/// A lease queue without a single active consumer would let every worker
/// lead: the schedule is refused, with the reason in the health report,
/// and fires nothing. It used to be used as it was (a warning only).
#[tokio::test(start_paused = true)]
async fn a_lease_queue_without_a_single_active_consumer_is_refused() {
    let mut kit = TestKit::new().register(MinutelyJob);
    kit.broker()
        .declare_queue(&QueueSpec::new(lease_queue("minutely")))
        .await
        .unwrap();
    kit.advance(Duration::from_secs(600)).await;
    assert_eq!(kit.attempts::<MinutelyJob>().len(), 0);
    let health = kit.health().unwrap();
    let problem = health.schedules["minutely"].problem.clone();
    assert!(
        problem
            .as_deref()
            .is_some_and(|p| p.contains("without a single active consumer")),
        "{problem:?}"
    );
    assert!(!health.schedules["minutely"].leader);
}
