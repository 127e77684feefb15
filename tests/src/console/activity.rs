//! What runs and waits, from the console: the attempts running now, the
//! jobs held for a retry in place, the jobs in delay queues (scheduled and
//! retrying), each acted on where it is, and any of them found by id.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::Job;
use qjob::admin::{Admin, DelayedJob, Waiting, Whereabouts};

use super::support::{connect, start, wait_workers};
use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(
    running_now,
    "qjob.test.console.running-now",
    concurrency = 3,
    retry = 0
);
test_job!(
    delayed_now,
    "qjob.test.console.delayed-now",
    retry = 3,
    backoff = fixed("20m")
);
test_job!(
    held_now,
    "qjob.test.console.held-now",
    queue_type = "quorum",
    retry = 3,
    backoff = fixed("10m")
);

/// Deletes `J`'s queues, and its delay queues for `delays` with their index.
async fn reset_with_delays<J: Job>(env: &Env, delays: &[Duration], kind: &str) {
    env.reset::<J>().await;
    let queue = J::options().queue().to_owned();
    let mut queues: Vec<String> = delays
        .iter()
        .map(|delay| format!("{queue}.delay.{}ms{kind}", delay.as_millis()))
        .collect();
    queues.push(format!("{queue}.delay-index"));
    env.delete_queues(&queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
}

/// Waits until `DelayedNowJob`'s delayed jobs pass `check`; returns them.
async fn delayed_until(
    admin: &Admin,
    what: &str,
    check: impl Fn(&[DelayedJob]) -> bool,
) -> Vec<DelayedJob> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let delayed = admin
            .delayed(Some(DelayedNowJob::NAME), Waiting::All, 0, 100)
            .await
            .unwrap();
        if check(&delayed) {
            return delayed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last seen {delayed:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn running_jobs_are_listed_longest_first_found_and_cancelled(env: &Env) {
    env.reset::<RunningNowJob>().await;
    let tag = env.tag::<RunningNowJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, RunningNowJob);
    wait_workers::<RunningNowJob>(&admin, "the worker", |w| w.len() == 1).await;
    let client = env.client();
    let mut ids = Vec::new();
    // One at a time, so that they start in this order.
    for seq in 0..3 {
        let task = Task::new(&tag, seq, Act::AwaitCancel);
        ids.push(client.enqueue::<RunningNowJob>(task).await.unwrap());
        probe
            .wait("the job running", LIMIT, |p| {
                p.in_flight.load(Ordering::SeqCst) == seq as usize + 1
            })
            .await;
    }
    let listed = crate::eventually(
        "the three attempts in a heartbeat",
        LIMIT,
        || admin.running(Some(RunningNowJob::NAME)),
        |listed| listed.items.len() == 3,
    )
    .await;
    let order: Vec<&str> = listed
        .items
        .iter()
        .map(|view| view.running.job_id.as_str())
        .collect();
    let expected: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    assert_eq!(order, expected, "the longest-running first");
    assert!(listed.complete && listed.total >= 3);
    let first = &listed.items[0];
    assert_eq!(
        (first.running.job.as_str(), first.running.attempt),
        (RunningNowJob::NAME, 1)
    );
    assert!(first.running_for >= listed.items[2].running_for);
    // By its queue too; another job type's are not listed.
    let by_queue = admin.running(Some(RunningNowJob::options().queue()));
    assert_eq!(by_queue.items.len(), 3);
    assert!(admin.running(Some("no.such.job")).items.is_empty());

    let found = admin.find(ids[1].as_str()).await.unwrap();
    assert!(
        matches!(found.as_slice(), [Whereabouts::Running(view)] if view.running.job_id == ids[1].as_str()),
        "{found:?}"
    );
    // Cancelled from where it runs.
    let replies = admin.cancel(ids[1].as_str()).await.unwrap();
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    let dlq = RunningNowJob::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    let left = crate::eventually(
        "two attempts left",
        LIMIT,
        || admin.running(Some(RunningNowJob::NAME)),
        |listed| listed.items.len() == 2,
    )
    .await;
    assert!(
        left.items
            .iter()
            .all(|view| view.running.job_id != ids[1].as_str())
    );
    let found = admin.find(ids[1].as_str()).await.unwrap();
    assert!(
        matches!(found.as_slice(), [Whereabouts::Dead { queue, .. }] if *queue == dlq),
        "{found:?}"
    );
    for id in [&ids[0], &ids[2]] {
        admin.cancel(id.as_str()).await.unwrap();
    }
    env.wait_ready(&dlq, 3).await;
    worker.stop().await.unwrap();
}

pub async fn delayed_jobs_are_browsed_in_due_order_run_now_and_discarded(env: &Env) {
    let (soon, later, backoff) = (
        Duration::from_secs(600),
        Duration::from_secs(1800),
        Duration::from_secs(1200),
    );
    reset_with_delays::<DelayedNowJob>(env, &[soon, later, backoff], "").await;
    let tag = env.tag::<DelayedNowJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, DelayedNowJob);
    wait_workers::<DelayedNowJob>(&admin, "the worker", |w| w.len() == 1).await;
    let client = env.client();
    // Scheduled by a client (the worker never used their delay queues: the
    // console finds them through the delay index), and a retry.
    let later_id = client
        .enqueue_in::<DelayedNowJob>(Task::new(&tag, 0, Act::Succeed), later)
        .await
        .unwrap();
    let soon_id = client
        .enqueue_in::<DelayedNowJob>(Task::new(&tag, 1, Act::Succeed), soon)
        .await
        .unwrap();
    let retry_id = client
        .enqueue::<DelayedNowJob>(Task::new(&tag, 2, Act::FailFirst))
        .await
        .unwrap();
    let all = delayed_until(&admin, "the three jobs in delay queues", |all| {
        all.len() == 3
    })
    .await;
    let ids = |jobs: &[DelayedJob]| -> Vec<String> {
        jobs.iter().map(|job| job.job_id.clone().unwrap()).collect()
    };
    assert_eq!(
        ids(&all),
        [soon_id.as_str(), retry_id.as_str(), later_id.as_str()],
        "in due order"
    );
    let retry = &all[1];
    assert!(retry.is_retry());
    assert_eq!(retry.attempt, 2);
    assert!(
        retry
            .error
            .as_deref()
            .is_some_and(|error| error.contains("task 2")),
        "{retry:?}"
    );
    let due_in = retry
        .due_at
        .unwrap()
        .duration_since(std::time::SystemTime::now());
    assert!(
        due_in.is_ok_and(|left| left > backoff - Duration::from_secs(60)),
        "{retry:?}"
    );
    let scheduled = admin
        .delayed(Some(DelayedNowJob::NAME), Waiting::Scheduled, 0, 100)
        .await
        .unwrap();
    assert_eq!(ids(&scheduled), [soon_id.as_str(), later_id.as_str()]);
    let retrying = admin
        .delayed(Some(DelayedNowJob::NAME), Waiting::Retrying, 0, 100)
        .await
        .unwrap();
    assert_eq!(ids(&retrying), [retry_id.as_str()]);
    let page = admin
        .delayed(Some(DelayedNowJob::NAME), Waiting::All, 1, 1)
        .await
        .unwrap();
    assert_eq!(ids(&page), [retry_id.as_str()], "a page");
    // Browsing left them in place.
    assert_eq!(
        admin
            .delayed(Some(DelayedNowJob::NAME), Waiting::All, 0, 100)
            .await
            .unwrap(),
        all
    );
    let found = admin.find(later_id.as_str()).await.unwrap();
    assert!(
        matches!(found.as_slice(), [Whereabouts::Delayed(job)] if job.job_id.as_deref() == Some(later_id.as_str())),
        "{found:?}"
    );

    // Run now: the scheduled one runs, the retry makes its second attempt.
    let moved = admin.run_delayed_now(soon_id.as_str()).await.unwrap();
    assert_eq!(moved.map(|job| job.job_id), Some(Some(soon_id.to_string())));
    let moved = admin.run_delayed_now(retry_id.as_str()).await.unwrap();
    assert_eq!(moved.map(|job| job.attempt), Some(2));
    probe
        .wait("both ran", LIMIT, |p| {
            let done = p.done.lock().unwrap();
            done.contains(&1) && done.contains(&2)
        })
        .await;
    assert_eq!(
        probe.attempt_numbers.lock().unwrap().iter().max(),
        Some(&2),
        "the retry kept its attempt"
    );

    // Discard: dead-lettered as cancelled, without running.
    let discarded = admin.discard_delayed(later_id.as_str()).await.unwrap();
    assert!(discarded.is_some());
    let dlq = DelayedNowJob::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    let found = admin.find(later_id.as_str()).await.unwrap();
    let [Whereabouts::Dead { letter, .. }] = found.as_slice() else {
        panic!("the discarded job is dead: {found:?}");
    };
    assert_eq!(letter.reason.as_str(), "cancelled");
    assert!(
        letter.error.starts_with("discarded by an operator"),
        "{letter:?}"
    );
    assert!(!probe.done.lock().unwrap().contains(&0), "it never ran");
    assert!(
        admin
            .delayed(Some(DelayedNowJob::NAME), Waiting::All, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        admin.run_delayed_now(later_id.as_str()).await.unwrap(),
        None
    );
    assert!(admin.find("no-such-job").await.unwrap().is_empty());
    assert!(admin.run_delayed_now(" ").await.is_err(), "an empty id");
    worker.stop().await.unwrap();
}

pub async fn a_job_held_for_a_retry_in_place_is_listed_and_runs_now(env: &Env) {
    let hour = Duration::from_secs(3600);
    reset_with_delays::<HeldNowJob>(env, &[hour], ".quorum").await;
    let tag = env.tag::<HeldNowJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, HeldNowJob);
    wait_workers::<HeldNowJob>(&admin, "the worker", |w| w.len() == 1).await;
    let id = env
        .client()
        .enqueue::<HeldNowJob>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    let held = crate::eventually(
        "the job held for its retry",
        LIMIT,
        || admin.held(Some(HeldNowJob::NAME)),
        |held| held.items.len() == 1,
    )
    .await;
    let view = &held.items[0];
    assert_eq!(view.retrying.job_id, id.as_str());
    assert_eq!(view.retrying.attempt, 2);
    assert!(view.retrying.error.contains("task 0"), "{view:?}");
    assert!(view.due_in > Duration::from_secs(60), "{view:?}");
    assert!(view.retrying.next_attempt_at > view.retrying.failed_at);
    let found = admin.find(id.as_str()).await.unwrap();
    assert!(
        matches!(found.as_slice(), [Whereabouts::Held(_)]),
        "{found:?}"
    );
    let replies = admin.run_held_now(id.as_str()).await.unwrap();
    assert!(
        replies
            .iter()
            .any(|reply| reply.ok && reply.worker_id == view.worker.0),
        "{replies:?}"
    );
    probe
        .wait_succeeded("its second attempt succeeded", LIMIT, 1)
        .await;
    crate::eventually(
        "nothing held",
        LIMIT,
        || admin.held(Some(HeldNowJob::NAME)),
        |held| held.items.is_empty(),
    )
    .await;
    let replies = admin.run_held_now(id.as_str()).await.unwrap();
    assert!(
        replies
            .iter()
            .filter(|reply| reply.worker_id == view.worker.0)
            .all(|reply| !reply.ok),
        "nothing left to run now: {replies:?}"
    );

    // A quorum job type's delay queues are counted, never read: a look
    // would count as a delivery, and RabbitMQ 4 would release the job early
    // past its delivery limit.
    let later = env
        .client()
        .enqueue_in::<HeldNowJob>(Task::new(&tag, 1, Act::Succeed), hour)
        .await
        .unwrap();
    let delay_queue = format!("{}.delay.3600000ms.quorum", HeldNowJob::options().queue());
    env.wait_ready(&delay_queue, 1).await;
    let view = super::wait_job::<HeldNowJob>(&admin, "the job", |_| true).await;
    assert!(!qjob::admin::browsable(&view));
    for _ in 0..3 {
        assert!(admin.find(later.as_str()).await.unwrap().is_empty());
        let delayed = admin.delayed(Some(HeldNowJob::NAME), Waiting::All, 0, 100);
        assert!(delayed.await.unwrap().is_empty());
        assert_eq!(admin.run_delayed_now(later.as_str()).await.unwrap(), None);
    }
    let left = env.take_all(&delay_queue).await;
    assert_eq!(left.len(), 1);
    assert!(
        !left[0].headers.contains_key("x-delivery-count"),
        "never taken and put back: {:?}",
        left[0].headers
    );
    worker.stop().await.unwrap();
}
