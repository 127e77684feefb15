//! Periodic jobs on virtual time: an hour of ticks in milliseconds, a
//! leader crash, and each missed-tick policy.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qjob::schedule::{Missed, Schedule};
use qjob::{JobContext, JobError, job};
use qjob_testkit::TestKit;
use serde::{Deserialize, Serialize};

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
        .missed(missed)
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
    use qjob::Broker;
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
