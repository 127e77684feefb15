//! Cancelling a job through the console: a running one is told and
//! dead-lettered, a queued one when it arrives, and one that ignores the
//! cancel finishes normally.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::admin::Admin;
use qjob::broker::HeaderValue;
use qjob::{DeadReason, Job, headers};

use super::support::{connect, start, wait_job, wait_workers};
use crate::env::{Env, LIMIT, Running};
use crate::{Act, Task, probe, test_job};

test_job!(
    cancel_running,
    "qjob.test.console.cancel-running",
    retry = 3
);
test_job!(cancel_queued, "qjob.test.console.cancel-queued");
test_job!(cancel_ignored, "qjob.test.console.cancel-ignored");

/// The dead letter of `J` in its queue (there must be exactly one).
async fn only_dead_letter<J: Job>(env: &Env) -> crate::Got {
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    let mut letters = env.take_all(&dlq).await;
    assert_eq!(letters.len(), 1);
    letters.remove(0)
}

fn text(got: &crate::Got, name: &str) -> String {
    got.headers
        .get(name)
        .map(HeaderValue::to_string)
        .unwrap_or_default()
}

/// A worker of `job` that a console sees, running task 0 (`act`) of it.
async fn running_one<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
    act: Act,
) -> (Admin, Running, std::sync::Arc<crate::Probe>, qjob::JobId) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, job);
    wait_workers::<J>(&admin, "the worker", |w| w.len() == 1).await;
    let id = env
        .client()
        .enqueue::<J>(Task::new(&tag, 0, act))
        .await
        .unwrap();
    probe
        .wait("the job running", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    (admin, worker, probe, id)
}

pub async fn a_cancelled_running_job_is_told_and_dead_lettered(env: &Env) {
    let (admin, worker, probe, id) = running_one(env, CancelRunningJob, Act::AwaitCancel).await;
    let replies = admin.cancel(id.as_str()).await.unwrap();
    assert!(
        !replies.is_empty() && replies.iter().all(|reply| reply.ok),
        "{replies:?}"
    );
    let letter = only_dead_letter::<CancelRunningJob>(env).await;
    worker.stop().await.unwrap();
    assert_eq!(letter.id.as_deref(), Some(id.as_str()));
    assert_eq!(text(&letter, headers::REASON), "cancelled");
    let error = text(&letter, headers::ERROR);
    assert!(
        error.starts_with("cancelled by an operator while it ran"),
        "{error}"
    );
    assert!(error.contains("task 0 stopped: cancelled"), "{error}");
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 1, "not retried");
}

pub async fn a_cancelled_queued_job_is_dead_lettered_when_it_arrives(env: &Env) {
    env.reset::<CancelQueuedJob>().await;
    let tag = env.tag::<CancelQueuedJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, CancelQueuedJob);
    let ours = wait_workers::<CancelQueuedJob>(&admin, "the worker", |w| w.len() == 1).await;
    let client = env.client();
    let delay = Duration::from_millis(500);
    let cancelled = client
        .enqueue_in::<CancelQueuedJob>(Task::new(&tag, 0, Act::Succeed), delay)
        .await
        .unwrap();
    let kept = client
        .enqueue_in::<CancelQueuedJob>(Task::new(&tag, 1, Act::Succeed), delay)
        .await
        .unwrap();
    let replies = admin.cancel(cancelled.as_str()).await.unwrap();
    // The worker has it in memory before the job comes due.
    assert!(
        replies
            .iter()
            .any(|reply| reply.ok && reply.worker_id == ours[0].status.worker_id),
        "{replies:?}"
    );
    probe.wait_succeeded("the other job", LIMIT, 1).await;
    let dlq = CancelQueuedJob::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    // Counted ready is not always readable at once (RabbitMQ 4 once had
    // the count before a get found the letter): wait until it reads.
    let mut found = None;
    crate::until("the dead letter reads", LIMIT, async || {
        found = admin.dead_letter(&dlq, cancelled.as_str()).await.unwrap();
        found.is_some()
    })
    .await;
    let letter = found.expect("dead-lettered");
    assert_eq!(letter.reason, DeadReason::Cancelled);
    assert_eq!(letter.error, "cancelled by an operator before it ran");
    assert_eq!(
        *probe.done.lock().unwrap(),
        [1],
        "job {kept} ran, the other never"
    );
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 1);

    // Replayed after the cancel, it runs.
    assert!(admin.replay(&dlq, cancelled.as_str()).await.unwrap());
    probe.wait_succeeded("the replayed job", LIMIT, 2).await;
    worker.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [1, 0]);
    assert_eq!(env.ready(&dlq).await, 0);
}

pub async fn a_handler_that_ignores_a_cancel_finishes_normally(env: &Env) {
    let (admin, worker, probe, id) = running_one(env, CancelIgnoredJob, Act::Block).await;
    let replies = admin.cancel(id.as_str()).await.unwrap();
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    probe.release();
    probe.wait_succeeded("the job done", LIMIT, 1).await;
    wait_job::<CancelIgnoredJob>(&admin, "the success counted", |view| view.succeeded == 1).await;
    worker.stop().await.unwrap();
    assert_eq!(
        env.ready(&CancelIgnoredJob::options().dead_letter_queue())
            .await,
        0
    );
    assert_eq!(env.ready(CancelIgnoredJob::QUEUE).await, 0);
}
