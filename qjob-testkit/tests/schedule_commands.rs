//! The console's commands to a schedule on virtual time: fire one tick
//! now, pause, resume, each against the regular ticks an hour of
//! schedule would fire.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qjob::admin::Admin;
use qjob::schedule::{Missed, Schedule};
use qjob::{Error, JobContext, JobError, job};
use qjob_testkit::TestKit;

const MINUTE: Duration = Duration::from_secs(60);

#[job(queue = "kit.schedule.commands.minutely", cron = "* * * * *")]
async fn minutely(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// The ids [`InboxedJob`] ran with (its handler, not the observer: the
/// observer also sees a delivery the inbox acked without running it).
static INBOXED_RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Each tick once to an inbox: a tick fired twice within a second runs
/// once.
#[job(
    queue = "kit.schedule.commands.inboxed",
    cron = "* * * * *",
    inbox = "1h"
)]
async fn inboxed(_: (), ctx: JobContext) -> Result<(), JobError> {
    INBOXED_RAN.lock().unwrap().push(ctx.job_id().to_string());
    Ok(())
}

#[job(queue = "kit.schedule.commands.report")]
async fn report(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// A tick id's time (`<name>@<time>`).
fn tick_time(id: &str) -> SystemTime {
    let (_, at) = id.split_once('@').expect("a tick id");
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("a tick time");
    UNIX_EPOCH + Duration::from_millis(at.timestamp_millis() as u64)
}

/// The ids of the jobs run, in the order they ran.
fn ran(kit: &TestKit) -> Vec<String> {
    let mut ids: Vec<String> = kit
        .attempts::<MinutelyJob>()
        .into_iter()
        .map(|a| a.job_id.to_string())
        .collect();
    ids.extend(
        kit.attempts::<ReportJob>()
            .into_iter()
            .map(|a| a.job_id.to_string()),
    );
    ids
}

fn inboxed_ran() -> Vec<String> {
    INBOXED_RAN.lock().unwrap().clone()
}

/// Whether `ids` are consecutive ticks a minute apart, each once.
fn a_minute_apart(ids: &[String]) -> bool {
    ids.windows(2)
        .all(|w| tick_time(&w[1]).duration_since(tick_time(&w[0])).ok() == Some(MINUTE))
}

/// The tick id a fire-now reply names.
fn fired(reply: &qjob::admin::Reply) -> String {
    assert!(reply.ok, "{reply:?}");
    let (_, rest) = reply.message.split_once("tick ").expect("a tick id");
    rest.split_whitespace().next().unwrap().to_owned()
}

fn minutely_kit() -> TestKit {
    TestKit::new().register(MinutelyJob)
}

/// The kit running, and a console that sees its worker lead `name`.
async fn led(mut kit: TestKit, name: &str) -> (TestKit, Admin) {
    kit.start().await;
    let admin = Admin::connect(kit.broker().clone()).await.unwrap();
    while !admin
        .schedules()
        .iter()
        .any(|s| s.name == name && s.leader.is_some())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (kit, admin)
}

fn next_tick(kit: &TestKit, name: &str) -> SystemTime {
    kit.health().unwrap().schedules[name].next.unwrap()
}

/// Steps virtual time 100 ms at a time until [`InboxedJob`]'s next
/// regular tick ran; returns its id. The worker's clock is then within
/// 100 ms of that tick.
async fn until_a_tick(kit: &mut TestKit) -> String {
    let before = inboxed_ran().len();
    while inboxed_ran().len() == before {
        kit.advance(Duration::from_millis(100)).await;
    }
    inboxed_ran().last().unwrap().clone()
}

/// A tick fired now is the current second's: in the second of a regular
/// tick, that tick (an inbox runs it once); two within a second, one tick
/// to an inbox (the second is dropped once the first succeeded). It moves
/// neither the next regular tick nor the lease's record: the regular
/// ticks come each minute, none skipped or repeated, also across a
/// leader's crash.
#[tokio::test(start_paused = true)]
async fn a_tick_fired_now_leaves_the_regular_ticks_as_they_were() {
    let kit = TestKit::new()
        .register(InboxedJob)
        .store(qjob::store::MemoryStore::new());
    let (mut kit, admin) = led(kit, "inboxed").await;
    kit.advance(2 * MINUTE).await;
    let regular = until_a_tick(&mut kit).await;
    // Settled (recorded in the inbox) before the same tick comes again.
    kit.run_until_idle().await;
    assert_eq!(
        fired(&admin.fire_schedule("inboxed").await.unwrap()),
        regular
    );
    kit.run_until_idle().await;
    let ran_once = |id: &str| inboxed_ran().iter().filter(|ran| *ran == id).count() == 1;
    assert!(ran_once(&regular), "{:?}", inboxed_ran());

    kit.advance(Duration::from_secs(30)).await;
    let last = tick_time(&regular);
    let next = next_tick(&kit, "inboxed");
    assert_eq!(next, last + MINUTE);
    let first = fired(&admin.fire_schedule("inboxed").await.unwrap());
    kit.run_until_idle().await;
    let again = fired(&admin.fire_schedule("inboxed").await.unwrap());
    assert_eq!(first, again, "one second, one tick id");
    let at = tick_time(&first);
    assert!(first.starts_with("inboxed@") && first.ends_with(".000Z"));
    assert!(
        at > last && at < next,
        "{first} between {regular} and {next:?}"
    );
    kit.run_until_idle().await;
    let schedule = &kit.health().unwrap().schedules["inboxed"];
    assert_eq!(
        schedule.last_fired,
        Some(last),
        "the record of the last tick"
    );
    assert_eq!(schedule.next, Some(next), "the next regular tick");
    // Both were delivered; the inbox ran the tick once.
    let delivered = kit.attempts::<InboxedJob>();
    assert_eq!(
        delivered
            .iter()
            .filter(|a| a.job_id.as_str() == first)
            .count(),
        2
    );
    assert!(ran_once(&first), "{:?}", inboxed_ran());

    // Five minutes, a crash, five minutes down (the latest missed tick
    // fires when the next leader takes over), five more.
    kit.advance(5 * MINUTE).await;
    kit.crash_worker().await;
    tokio::time::sleep(5 * MINUTE).await;
    kit.advance(5 * MINUTE).await;
    let mut ids = inboxed_ran();
    ids.retain(|id| *id != first);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no regular tick twice: {ids:?}");
    let gaps: Vec<u64> = ids
        .windows(2)
        .map(|w| {
            tick_time(&w[1])
                .duration_since(tick_time(&w[0]))
                .unwrap()
                .as_secs()
                / 60
        })
        .collect();
    let down = gaps.iter().filter(|gap| **gap != 1).count();
    assert_eq!(down, 1, "every minute but the crash: {gaps:?}");
    assert_eq!(gaps.iter().filter(|gap| **gap > 6).count(), 0, "{gaps:?}");
}

/// Paused, the schedule fires nothing while its next tick moves on; on
/// resume, the latest tick missed meanwhile fires at once (the default
/// policy), then every minute again.
#[tokio::test(start_paused = true)]
async fn a_paused_schedule_fires_nothing_and_resumes_with_the_latest_missed_tick() {
    let (mut kit, admin) = led(minutely_kit(), "minutely").await;
    kit.advance(3 * MINUTE).await;
    let replies = admin.pause_schedule("minutely").await.unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].ok && replies[0].message.contains("paused"),
        "{replies:?}"
    );
    let before = ran(&kit);
    let next = next_tick(&kit, "minutely");
    kit.advance(10 * MINUTE).await;
    assert_eq!(ran(&kit), before, "nothing fired while paused");
    let health = kit.health().unwrap();
    let schedule = &health.schedules["minutely"];
    assert!(schedule.paused && schedule.leader, "{schedule:?}");
    let moved = schedule.next.unwrap();
    assert!(moved >= next + 9 * MINUTE, "the next tick moves on");
    assert_eq!(admin.schedules()[0].paused_on, 1);

    let replies = admin.resume_schedule("minutely").await.unwrap();
    assert!(replies[0].ok, "{replies:?}");
    kit.run_until_idle().await;
    let ids = ran(&kit);
    assert_eq!(ids.len(), before.len() + 1, "the latest missed: {ids:?}");
    assert_eq!(tick_time(ids.last().unwrap()), moved - MINUTE);
    assert!(!kit.health().unwrap().schedules["minutely"].paused);
    kit.advance(3 * MINUTE).await;
    let after = &ran(&kit)[before.len()..];
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(a_minute_apart(after), "{after:?}");
}

/// Under `Missed::Skip`, a resumed schedule fires none of the ticks
/// missed while paused: its next tick is the next to come.
#[tokio::test(start_paused = true)]
async fn a_resumed_schedule_skips_what_it_missed_under_skip() {
    let schedule = Schedule::cron("* * * * *")
        .unwrap()
        .with_missed(Missed::Skip)
        .named("skipping");
    let kit = TestKit::new()
        .register(ReportJob)
        .schedule::<ReportJob>(schedule, ());
    let (mut kit, admin) = led(kit, "skipping").await;
    assert_eq!(admin.schedules()[0].schedule.missed, "skip");
    kit.advance(3 * MINUTE).await;
    assert!(admin.pause_schedule("skipping").await.unwrap()[0].ok);
    let before = ran(&kit);
    kit.advance(10 * MINUTE).await;
    assert!(admin.resume_schedule("skipping").await.unwrap()[0].ok);
    kit.run_until_idle().await;
    assert_eq!(ran(&kit), before, "no missed tick fires");
    let next = next_tick(&kit, "skipping");
    kit.advance(3 * MINUTE).await;
    let after = &ran(&kit)[before.len()..];
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(tick_time(&after[0]), next);
    assert!(a_minute_apart(after), "{after:?}");
}

/// A pause belongs to the worker that got it: a worker started later (a
/// deploy, a crash) fires the schedule.
#[tokio::test(start_paused = true)]
async fn a_worker_started_later_does_not_know_the_pause() {
    let (mut kit, admin) = led(minutely_kit(), "minutely").await;
    kit.advance(2 * MINUTE).await;
    assert!(admin.pause_schedule("minutely").await.unwrap()[0].ok);
    let before = ran(&kit);
    kit.crash_worker().await;
    kit.advance(3 * MINUTE).await;
    assert!(ran(&kit).len() > before.len(), "the new worker fires");
    assert!(!kit.health().unwrap().schedules["minutely"].paused);
}

/// A fire now that no leader answers is an error, and so is an empty
/// name; a pause of a schedule nobody carries has no reply.
#[tokio::test(start_paused = true)]
async fn a_schedule_nobody_leads_cannot_be_fired() {
    let (_kit, admin) = led(minutely_kit(), "minutely").await;
    let error = admin.fire_schedule("nope").await.unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(
        error.to_string().contains("no worker leading it answered"),
        "{error}"
    );
    assert!(matches!(
        admin.fire_schedule(" ").await.unwrap_err(),
        Error::Config(_)
    ));
    assert!(admin.pause_schedule("nope").await.unwrap().is_empty());
    // The one it carries, paused, can still be fired by hand.
    assert!(admin.pause_schedule("minutely").await.unwrap()[0].ok);
    assert!(admin.fire_schedule("minutely").await.unwrap().ok);
}
