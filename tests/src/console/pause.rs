//! Pausing, resuming and stopping through the console: nothing lost,
//! nothing rejected, and no held delivery started once asked.

use std::sync::atomic::Ordering;

use qjob::Job;

use super::support::{connect, start, wait_job, wait_workers};
use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(
    pause,
    "qjob.test.console.pause",
    prefetch = 5,
    concurrency = 2
);
test_job!(
    pause_held,
    "qjob.test.console.pause-held",
    queue_type = "quorum",
    prefetch = 20,
    concurrency = 1
);
test_job!(
    stop_held,
    "qjob.test.console.stop-held",
    queue_type = "quorum",
    prefetch = 20,
    concurrency = 1
);

test_job!(
    retry_held,
    "qjob.test.console.retry-held",
    retry = 2,
    backoff = fixed("500ms"),
    prefetch = 5,
    concurrency = 1
);

/// A retry that came back while the job's one slot was busy is held, not
/// started, when the job pauses: it goes back to the queue and comes again
/// redelivered after the resume, and runs. The worker settled the job's
/// first attempt (and published this retry), not the retry: it used to
/// take the redelivered retry for a settled job whose ack was lost, and
/// ack it without running it.
pub async fn a_retry_held_at_a_pause_runs_after_the_resume(env: &Env) {
    let qjob::Backoff::Fixed(delay) = RetryHeldJob::options().backoff() else {
        panic!("scenario needs a fixed backoff");
    };
    let delay_queue = format!("{}.delay.{}ms", RetryHeldJob::QUEUE, delay.as_millis());
    env.reset::<RetryHeldJob>().await;
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<RetryHeldJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let client = env.client();
    client
        .enqueue::<RetryHeldJob>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    let worker = start(env, RetryHeldJob);
    env.wait_ready(&delay_queue, 1).await;
    // Job 1 takes the one slot while job 0's retry waits out its backoff;
    // then the retry comes back and is held behind it.
    client
        .enqueue::<RetryHeldJob>(Task::new(&tag, 1, Act::Block))
        .await
        .unwrap();
    probe
        .wait("job 1 running", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1 && p.attempts.load(Ordering::SeqCst) == 2
        })
        .await;
    env.wait_ready(&delay_queue, 0).await;
    env.wait_ready(RetryHeldJob::QUEUE, 0).await;
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 2, "the retry waits");

    let replies = admin.pause(RetryHeldJob::NAME).await.unwrap();
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    probe.release();
    wait_job::<RetryHeldJob>(&admin, "the job paused", |view| {
        view.paused_on == 1
            && view.in_flight == 0
            && view.queues[0].stats.is_some_and(|s| s.consumers == 0)
    })
    .await;
    env.wait_ready(RetryHeldJob::QUEUE, 1).await;

    admin.resume(RetryHeldJob::QUEUE).await.unwrap();
    probe.wait_succeeded("both jobs", LIMIT, 2).await;
    worker.stop().await.unwrap();
    let done = probe.done_sorted();
    assert_eq!(done, [0, 1]);
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 3, "job 0 ran twice");
    assert_eq!(env.ready(RetryHeldJob::QUEUE).await, 0);
}

pub async fn pause_and_resume_lose_nothing_and_reject_nothing(env: &Env) {
    env.reset::<PauseJob>().await;
    let tag = env.tag::<PauseJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let workers = [start(env, PauseJob), start(env, PauseJob)];
    wait_workers::<PauseJob>(&admin, "two workers", |w| {
        w.iter().filter(|w| w.alive).count() == 2
    })
    .await;
    let jobs = 40;
    env.client()
        .enqueue_all::<PauseJob>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Sleep(20))))
        .await
        .unwrap();
    probe
        .wait("some jobs done", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 4
        })
        .await;

    let replies = admin.pause(PauseJob::NAME).await.unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    // Both workers cancelled their consumers and finished what ran; what
    // they held and had not started is back in the queue.
    wait_job::<PauseJob>(&admin, "the job paused on both workers", |view| {
        view.paused_on == 2
            && view.in_flight == 0
            && view.queues[0].stats.is_some_and(|s| s.consumers == 0)
    })
    .await;
    let done = probe.succeeded.load(Ordering::SeqCst);
    assert!(done < jobs, "paused before the end");
    env.wait_ready(PauseJob::QUEUE, jobs - done).await;
    assert_eq!(probe.in_flight.load(Ordering::SeqCst), 0);

    let replies = admin.resume(PauseJob::QUEUE).await.unwrap();
    assert_eq!(
        replies.iter().filter(|reply| reply.ok).count(),
        2,
        "{replies:?}"
    );
    probe.wait_succeeded("every job", LIMIT, jobs).await;
    for worker in workers {
        worker.stop().await.unwrap();
    }
    let done = probe.done_sorted();
    assert_eq!(done, (0..jobs).collect::<Vec<_>>(), "each job once");
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        jobs,
        "none ran twice"
    );
    assert_eq!(env.ready(&PauseJob::options().dead_letter_queue()).await, 0);
    assert_eq!(env.ready(PauseJob::QUEUE).await, 0);
}

/// A quorum job holds its deliveries in place (it retries in the worker),
/// up to its prefetch of 20, with one handler slot. 40 jobs of 100 ms.
async fn held_in_place<J: Job<Payload = Task>>(env: &Env, tag: &str) -> u32 {
    assert!(J::options().queue_type() == qjob::QueueType::Quorum);
    let jobs = 40;
    env.client()
        .enqueue_all::<J>((0..jobs).map(|seq| Task::new(tag, seq, Act::Sleep(100))))
        .await
        .unwrap();
    jobs
}

/// After a pause or a stop, the rest of a held-in-place job's 40 run, each
/// once, on a fresh worker.
async fn the_rest_run_once<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
    tag: &str,
    jobs: u32,
) {
    let probe = probe(tag);
    let running = env.start(job);
    probe.wait_succeeded("every job", LIMIT, jobs).await;
    running.stop().await.unwrap();
    let done = probe.done_sorted();
    assert_eq!(done, (0..jobs).collect::<Vec<_>>(), "each job once");
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        jobs,
        "none ran twice"
    );
}

/// A pause of a job that holds its deliveries in place (quorum, capped,
/// partitioned) starts none of them once asked: the handler running
/// finishes, the rest go back to the queue. It used to run every delivery
/// it held (22 of 40, the pause taking 2 s) before it completed.
pub async fn a_pause_starts_no_job_held_in_place(env: &Env) {
    env.reset::<PauseHeldJob>().await;
    let tag = env.tag::<PauseHeldJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, PauseHeldJob);
    wait_workers::<PauseHeldJob>(&admin, "the worker", |w| w.iter().any(|w| w.alive)).await;
    let jobs = held_in_place::<PauseHeldJob>(env, &tag).await;
    probe
        .wait("two jobs done", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 2
        })
        .await;
    let asked_at = probe.succeeded.load(Ordering::SeqCst);
    let replies = admin.pause(PauseHeldJob::NAME).await.unwrap();
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    wait_job::<PauseHeldJob>(&admin, "the job paused", |view| {
        view.paused_on == 1
            && view.in_flight == 0
            && view.queues[0].stats.is_some_and(|s| s.consumers == 0)
    })
    .await;
    let done = probe.succeeded.load(Ordering::SeqCst);
    assert!(
        done <= asked_at + 1,
        "{done} done once paused, {asked_at} when asked"
    );
    env.wait_ready(PauseHeldJob::QUEUE, jobs - done).await;
    worker.stop().await.unwrap();
    the_rest_run_once(env, PauseHeldJob, &tag, jobs).await;
}

/// A stop likewise: the handler running finishes, the held deliveries go
/// back unstarted, and none runs twice. It used to run them all within
/// the shutdown timeout (and abort and run again what did not fit).
pub async fn a_stop_starts_no_job_held_in_place(env: &Env) {
    env.reset::<StopHeldJob>().await;
    let tag = env.tag::<StopHeldJob>();
    let probe = probe(&tag);
    let worker = env.start(StopHeldJob);
    let jobs = held_in_place::<StopHeldJob>(env, &tag).await;
    probe
        .wait("two jobs done", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 2
        })
        .await;
    let asked_at = probe.succeeded.load(Ordering::SeqCst);
    worker.stop().await.unwrap();
    let done = probe.succeeded.load(Ordering::SeqCst);
    assert!(
        done <= asked_at + 1,
        "{done} done once stopped, {asked_at} when asked"
    );
    env.wait_ready(StopHeldJob::QUEUE, jobs - done).await;
    the_rest_run_once(env, StopHeldJob, &tag, jobs).await;
}
