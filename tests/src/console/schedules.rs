//! A schedule from the console: what its page shows, a tick fired now,
//! a pause and a resume, on a schedule that ticks every second and is
//! carried by two workers, one of which leads it.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qjob::admin::{Admin, ScheduleView};
use qjob::schedule::{LEASE_QUEUE_PREFIX, Schedule};
use qjob::{Job, JobContext, JobError, Worker};

use super::support::{HEARTBEAT, connect};
use crate::env::{Env, LIMIT};
use crate::recording::Recording;

/// The job the schedule enqueues; no worker consumes it: the test reads
/// its queue.
#[qjob::job(queue = "qjob.test.console.schedule")]
pub async fn console_tick(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// The schedule's name.
const NAME: &str = "qjob-test-console-every-second";

const SECOND: Duration = Duration::from_secs(1);

/// A tick id's time (`<name>@2026-11-28T02:30:00.000Z`), read back
/// exactly: its id from that time is the same.
fn tick_time(id: &str) -> SystemTime {
    let (name, at) = id.split_once('@').expect("a tick id");
    let field = |from: usize, to: usize| -> u64 { at[from..to].parse().expect("a tick time") };
    // Days since 1970-01-01 of a date in the Gregorian calendar
    // (Howard Hinnant's `days_from_civil`, for years from 1970).
    let (month, day) = (field(5, 7), field(8, 10));
    let year = field(0, 4) - u64::from(month <= 2);
    let (era, of_era) = (year / 400, year % 400);
    let of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let of_era = of_era * 365 + of_era / 4 - of_era / 100 + of_year;
    let days = era * 146_097 + of_era - 719_468;
    let secs = days * 86_400 + field(11, 13) * 3600 + field(14, 16) * 60 + field(17, 19);
    let time = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(field(20, 23));
    assert_eq!(qjob::schedule::tick_id(name, time).as_str(), id);
    time
}

/// Waits until the schedule's view passes `check`.
async fn wait_schedule(
    admin: &Admin,
    what: &str,
    check: impl Fn(&ScheduleView) -> bool,
) -> ScheduleView {
    let view = crate::eventually(
        what,
        LIMIT,
        || admin.schedules().into_iter().find(|view| view.name == NAME),
        |view| view.as_ref().is_some_and(&check),
    )
    .await;
    view.expect("checked")
}

/// Whether `ids` are ticks a second apart, each once.
fn a_second_apart(ids: &[String]) -> bool {
    ids.windows(2)
        .all(|w| tick_time(&w[1]).duration_since(tick_time(&w[0])).ok() == Some(SECOND))
}

/// The id of the worker that leads the schedule, as its heartbeats say.
fn leader(admin: &Admin) -> Option<String> {
    admin
        .workers()
        .into_iter()
        .filter(|worker| worker.alive)
        .find(|worker| worker.status.schedules.get(NAME).is_some_and(|s| s.leader))
        .map(|worker| worker.status.worker_id)
}

/// A tick fired now goes out once, from the leader, with the current
/// second's tick id, the payload and headers of a regular tick, and the
/// regular ticks come every second as before (each once: the one of the
/// same second a second time). Paused on both workers, the schedule fires
/// nothing while its leader's next tick moves three seconds on; resumed,
/// it ticks every second again, led by the same worker.
pub async fn a_schedule_is_fired_paused_and_resumed_from_the_console(env: &Env) {
    let lease_queue = format!("{LEASE_QUEUE_PREFIX}{NAME}");
    env.reset::<ConsoleTickJob>().await;
    env.delete_queues(&[&lease_queue]).await;
    let admin = connect(env).await;
    let broker = Recording::new(env.broker());
    let worker = || {
        let every_second = Schedule::cron("* * * * * *").unwrap().named(NAME);
        env.run(
            Worker::builder(broker.clone())
                .schedule::<ConsoleTickJob>(every_second, ())
                .heartbeat_interval(HEARTBEAT)
                .build(),
        )
    };
    let workers = [worker(), worker()];
    let ticks = || -> Vec<String> {
        let prefix = format!("{NAME}@");
        broker
            .ids()
            .into_iter()
            .filter(|id| id.starts_with(&prefix))
            .collect()
    };

    // What the page shows.
    let view = wait_schedule(&admin, "a leader among two workers", |view| {
        view.leader.is_some() && view.workers == 2
    })
    .await;
    let schedule = &view.schedule;
    assert_eq!(schedule.job, ConsoleTickJob::NAME);
    assert_eq!(
        (schedule.expression.as_str(), schedule.zone.as_str()),
        ("* * * * * *", "UTC")
    );
    assert_eq!(schedule.missed, "latest");
    assert!(!schedule.paused && view.paused_on == 0);
    crate::until("two regular ticks", LIMIT, async || ticks().len() >= 2).await;
    let leading = leader(&admin).expect("a leader");

    // Fire now: the leader enqueues it before it replies.
    let reply = admin.fire_schedule(NAME).await.unwrap();
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.worker_id, leading, "the leader fires");
    let (_, rest) = reply.message.split_once("tick ").unwrap();
    let fired = rest.split_whitespace().next().unwrap().to_owned();
    assert!(fired.starts_with(&format!("{NAME}@")) && fired.ends_with(".000Z"));
    let at_fire = ticks();
    assert!(at_fire.contains(&fired), "{at_fire:?}");
    crate::until("three regular ticks after it", LIMIT, async || {
        ticks().len() >= at_fire.len() + 3
    })
    .await;
    let mut regular = ticks();
    let once = regular.iter().position(|id| *id == fired).unwrap();
    regular.remove(once);
    let unique: BTreeSet<&String> = regular.iter().collect();
    assert_eq!(unique.len(), regular.len(), "{regular:?}");
    assert!(a_second_apart(&regular), "every second: {regular:?}");

    // Pause: none fires while the leader passes three ticks.
    let replies = admin.pause_schedule(NAME).await.unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    let paused_at = SystemTime::now();
    wait_schedule(&admin, "the leader three ticks past the pause", |view| {
        view.paused_on == 2
            && view.schedule.paused
            && view.schedule.next >= Some(paused_at + 3 * SECOND)
    })
    .await;
    let late: Vec<String> = ticks()
        .into_iter()
        .filter(|id| tick_time(id) > paused_at)
        .collect();
    assert!(late.is_empty(), "fired while paused: {late:?}");
    assert_eq!(leader(&admin).as_ref(), Some(&leading), "the lease stays");

    // Resume: every second again, from the same leader.
    let replies = admin.resume_schedule(NAME).await.unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    let after_pause = || -> Vec<String> {
        ticks()
            .into_iter()
            .filter(|id| tick_time(id) > paused_at)
            .collect()
    };
    crate::until("three ticks after the resume", LIMIT, async || {
        after_pause().len() >= 3
    })
    .await;
    let resumed = after_pause();
    assert!(a_second_apart(&resumed), "{resumed:?}");
    assert!(
        !wait_schedule(&admin, "resumed", |view| view.paused_on == 0)
            .await
            .schedule
            .paused
    );
    assert_eq!(leader(&admin).as_ref(), Some(&leading));

    // On the broker: every tick enqueued, the one fired now like the
    // regular ones (their payload, their headers).
    for worker in workers {
        worker.stop().await.unwrap();
    }
    let sent = ticks();
    env.wait_ready(ConsoleTickJob::QUEUE, sent.len() as u32)
        .await;
    let got = env.take_all(ConsoleTickJob::QUEUE).await;
    let ids: Vec<String> = got.iter().filter_map(|got| got.id.clone()).collect();
    assert_eq!(ids, sent);
    let shape = |got: &crate::Got| (got.body.clone(), got.headers.keys().cloned().collect());
    let shapes: BTreeSet<(Vec<u8>, Vec<String>)> = got.iter().map(shape).collect();
    assert_eq!(shapes.len(), 1, "{shapes:?}");
    env.delete_queues(&[&lease_queue, ConsoleTickJob::QUEUE])
        .await;
}
