//! The last hour as the console shows it: the workers' minutes added up,
//! and run-time percentiles within the histogram's precision.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::Job;
use qjob::admin::{JobHistory, MinuteView};

use super::support::{connect, start, wait_workers, workers_of};
use crate::env::{Env, LIMIT};
use crate::{Act, Task, eventually, probe, test_job};

test_job!(
    history,
    "qjob.test.console.history",
    prefetch = 5,
    concurrency = 5
);

/// How long each job that succeeds runs.
const RUN: Duration = Duration::from_millis(200);

/// What a run can take beyond [`RUN`] on a busy machine (a late timer).
const LATE: Duration = Duration::from_millis(60);

/// How far a percentile may be from the run time it stands for: a bin
/// stands for its geometric middle, each bin a quarter wider than the last.
const PRECISION: f64 = 1.118_04;

pub async fn the_last_hour_adds_up_the_workers_minutes(env: &Env) {
    env.reset::<HistoryJob>().await;
    let tag = env.tag::<HistoryJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let workers = [start(env, HistoryJob), start(env, HistoryJob)];
    wait_workers::<HistoryJob>(&admin, "two workers", |w| {
        w.iter().filter(|w| w.alive).count() == 2
    })
    .await;
    let quiet = admin.history(Some(HistoryJob::NAME));
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!((quiet[0].workers, quiet[0].minutes.len()), (2, 60));
    assert_eq!(quiet[0].active().count(), 0, "nothing ran yet");
    assert!(admin.history(Some("qjob.test.console.nobody")).is_empty());

    // 20 jobs that run 200 ms and succeed, 5 that fail at once for good.
    let ms = RUN.as_millis() as u64;
    let tasks = (0..25).map(|seq| {
        let act = if seq < 20 {
            Act::Sleep(ms)
        } else {
            Act::FailPermanently
        };
        Task::new(&tag, seq, act)
    });
    env.client().enqueue_all::<HistoryJob>(tasks).await.unwrap();
    let history = eventually(
        "the hour to count every job",
        LIMIT,
        || admin.history(Some(HistoryJob::QUEUE)),
        |h| h.len() == 1 && h[0].succeeded() + h[0].dead_lettered() == 25,
    )
    .await;
    let history = &history[0];
    assert_eq!(history.job, HistoryJob::NAME);
    assert_eq!(
        (
            history.succeeded(),
            history.failed(),
            history.dead_lettered()
        ),
        (20, 5, 5)
    );
    assert_eq!(probe.succeeded.load(Ordering::SeqCst), 20);
    env.wait_ready(&HistoryJob::options().dead_letter_queue(), 5)
        .await;
    // Within a minute or two (the run may cross a minute).
    let active: Vec<&MinuteView> = history.active().collect();
    assert!(matches!(active.len(), 1 | 2), "{active:?}");
    for minute in active {
        percentiles_match(minute);
    }
    summed_over_workers(&admin, history);

    for worker in workers {
        worker.stop().await.unwrap();
    }
    // A stopped worker's minutes leave the view with it.
    eventually(
        "the stopped workers' hour to leave the view",
        LIMIT,
        || admin.history(Some(HistoryJob::NAME)),
        Vec::is_empty,
    )
    .await;
}

/// In `minute`, the failed jobs ran next to nothing and the others [`RUN`]
/// (plus a late timer): its p50 and p95 stand for the runs of their rank,
/// within [`PRECISION`].
fn percentiles_match(minute: &MinuteView) {
    let (fast, slow) = (minute.failed, minute.succeeded);
    assert_eq!(minute.runs, fast + slow, "every attempt ran: {minute:?}");
    for (quantile, value) in [(0.5, minute.p50), (0.95, minute.p95)] {
        let value = value.expect("a minute with runs has percentiles");
        let rank = (quantile * minute.runs as f64).ceil() as u64;
        let (low, high) = if rank <= fast {
            (Duration::ZERO, Duration::from_millis(20))
        } else {
            (RUN, RUN + LATE)
        };
        assert!(
            value.as_secs_f64() >= low.as_secs_f64() / PRECISION
                && value.as_secs_f64() <= high.as_secs_f64() * PRECISION,
            "p{quantile} {value:?} is not within {PRECISION} of {low:?}..{high:?}: {minute:?}"
        );
    }
}

/// The hour is the sum of what each worker reported, and both took part.
fn summed_over_workers(admin: &qjob::admin::Admin, history: &JobHistory) {
    let mut total = (0, 0, 0);
    for worker in workers_of::<HistoryJob>(admin) {
        let status = &worker.status.jobs[0];
        let own: (u64, u64, u64) = status.history.iter().fold((0, 0, 0), |sum, m| {
            (
                sum.0 + m.succeeded,
                sum.1 + m.failed,
                sum.2 + m.dead_lettered,
            )
        });
        assert!(own.0 + own.1 > 0, "both workers ran jobs: {own:?}");
        total = (total.0 + own.0, total.1 + own.1, total.2 + own.2);
    }
    assert_eq!(
        total,
        (
            history.succeeded(),
            history.failed(),
            history.dead_lettered()
        )
    );
}
