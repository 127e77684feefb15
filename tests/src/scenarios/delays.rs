//! Waiting on the broker: a retry's backoff in a delay queue (holding no
//! prefetch slot, surviving a worker restart), a delayed enqueue, a delay
//! queue left by the job's other queue type, and a quorum job's retry that
//! waits in its worker instead.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::broker::{Broker, HeaderValue};
use qjob::{Job, headers};

use super::checks::{assert_absent, header};
use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(
    backoff,
    "qjob.test.backoff",
    retry = 2,
    backoff = fixed("300ms")
);
test_job!(
    single_slot,
    "qjob.test.single-slot",
    prefetch = 1,
    concurrency = 1,
    backoff = fixed("1s")
);
test_job!(noop, "qjob.test.noop", retry = 0);
test_job!(
    restart,
    "qjob.test.restart",
    retry = 2,
    backoff = fixed("1s")
);
test_job!(
    switched_delay,
    "qjob.test.switched-delay",
    queue_type = "quorum"
);
test_job!(
    quorum_retry,
    "qjob.test.quorum-retry",
    queue_type = "quorum",
    concurrency = 2,
    retry = 1,
    backoff = fixed("1s")
);

/// A retry waits its backoff in the job's delay queue on the broker, then
/// comes back: attempts are spaced by the backoff, and the dead letter
/// comes after the last.
pub async fn retries_wait_their_backoff_in_a_delay_queue<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
) {
    let qjob::Backoff::Fixed(delay) = J::options().backoff() else {
        panic!("scenario needs a fixed backoff");
    };
    let delay_queue = format!("{}.delay.{}ms", J::QUEUE, delay.as_millis());
    env.reset::<J>().await;
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    env.client()
        .enqueue::<J>(Task::new(&tag, 1, Act::Fail))
        .await
        .unwrap();
    let running = env.start(job);
    env.wait_ready(&delay_queue, 1).await;
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    let probe = probe(&tag);
    let times = probe.attempt_times.lock().unwrap().clone();
    assert_eq!(times.len(), 3);
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= delay, "attempts {gap:?} apart, backoff {delay:?}");
        assert!(gap < Duration::from_secs(4), "attempts {gap:?} apart");
    }
    let dead = env.take_all(&dlq).await;
    assert_eq!(header(&dead[0], headers::ATTEMPTS), &HeaderValue::Int(3));
    assert_eq!(env.ready(&delay_queue).await, 0);
}

/// While a retry waits out its backoff, it holds no prefetch slot: with
/// prefetch 1, the jobs behind it all run before it comes back.
pub async fn a_retry_in_backoff_holds_no_prefetch_slot<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert_eq!(J::options().prefetch(), 1, "scenario needs prefetch = 1");
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    let others = 20;
    client
        .enqueue_all::<J>((1..=others).map(|seq| Task::new(&tag, seq, Act::Succeed)))
        .await
        .unwrap();
    let running = env.start(job);
    let probe = probe(&tag);
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == others + 1
        })
        .await;
    running.stop().await.unwrap();
    let done = probe.done.lock().unwrap().clone();
    assert_eq!(
        done.last(),
        Some(&0),
        "the retried job came back last: {done:?}"
    );
    assert_eq!(done.len() as u32, others + 1);
}

/// `enqueue_in` holds the job on the broker for its delay, then it runs.
pub async fn a_delayed_job_runs_after_its_delay<J: Job<Payload = Task>>(env: &Env, job: J) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let running = env.start(job);
    let delay = Duration::from_secs(3);
    let enqueued = tokio::time::Instant::now();
    env.client()
        .enqueue_in::<J>(Task::new(&tag, 1, Act::Succeed), delay)
        .await
        .unwrap();
    env.client()
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let probe = probe(&tag);
    probe.wait_succeeded("both jobs", LIMIT, 2).await;
    running.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [2, 1]);
    let times = probe.attempt_times.lock().unwrap().clone();
    let waited = times[1] - enqueued;
    assert!(waited >= delay, "ran after {waited:?}");
    assert!(waited < Duration::from_secs(5), "ran after {waited:?}");
}

/// A retry waiting in its delay queue when the worker stops still happens,
/// on the next worker: nothing about it was in the first worker's memory.
pub async fn a_retry_survives_a_worker_restart<J: Job<Payload = Task> + Clone>(env: &Env, job: J) {
    let qjob::Backoff::Fixed(delay) = J::options().backoff() else {
        panic!("scenario needs a fixed backoff");
    };
    let delay_queue = format!("{}.delay.{}ms", J::QUEUE, delay.as_millis());
    env.reset::<J>().await;
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    env.client()
        .enqueue::<J>(Task::new(&tag, 1, Act::FailFirst))
        .await
        .unwrap();
    let first = env.start(job.clone());
    env.wait_ready(&delay_queue, 1).await;
    first.stop().await.unwrap();
    let second = env.start(job);
    let probe = probe(&tag);
    probe
        .wait_succeeded("the retry on the new worker", LIMIT, 1)
        .await;
    second.stop().await.unwrap();
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 2]);
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}

/// A job that switched from classic to quorum while its classic delay
/// queue still exists: its delayed jobs use a quorum delay queue of their
/// own. Before, both types shared the name and RabbitMQ refused the
/// redeclare (`PRECONDITION_FAILED`), so the delayed enqueue failed (and a
/// worker's deferral was retried without end).
pub async fn a_delay_queue_of_the_other_type_is_not_in_the_way<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
) {
    assert_eq!(J::options().queue_type(), qjob::QueueType::Quorum);
    env.reset::<J>().await;
    let classic = format!("{}.delay.1000ms", J::QUEUE);
    let quorum = format!("{classic}.quorum");
    env.delete_queues(&[&classic, &quorum]).await;
    let broker = env.broker();
    // What the job's classic version declared.
    let left = qjob::broker::QueueSpec::new(&classic)
        .with_message_ttl(Duration::from_secs(1))
        .with_dead_letter_to(J::QUEUE)
        .with_expires(Duration::from_secs(601));
    broker.declare_queue(&left).await.unwrap();
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let running = env.start(job);
    env.client()
        .enqueue_in::<J>(Task::new(&tag, 1, Act::Succeed), Duration::from_secs(1))
        .await
        .unwrap();
    probe.wait_succeeded("the delayed job", LIMIT, 1).await;
    running.stop().await.unwrap();
    env.delete_queues(&[&classic, &quorum]).await;
}

/// A quorum job's retry waits in its worker, holding the delivery, never in
/// a delay queue: RabbitMQ's dead-lettering back into a quorum queue is at
/// most once. The held delivery stays unacked on the broker through the
/// backoff, and a job behind it still runs meanwhile.
pub async fn a_quorum_job_retries_in_place<J: Job<Payload = Task>>(env: &Env, job: J) {
    let options = J::options();
    assert_eq!(options.queue_type(), qjob::QueueType::Quorum);
    assert_eq!(
        options.backoff(),
        qjob::Backoff::Fixed(Duration::from_secs(1))
    );
    env.reset::<J>().await;
    let delay_queue = format!("{}.delay.1000ms.quorum", J::QUEUE);
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    let running = env.start(job);
    probe
        .wait("the first attempt", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 1
        })
        .await;
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::Succeed))
        .await
        .unwrap();
    probe
        .wait_succeeded("the job behind the retry", LIMIT, 1)
        .await;
    assert_eq!(*probe.done.lock().unwrap(), [1], "task 0 is still waiting");
    probe.wait_succeeded("the retry", LIMIT, 2).await;
    running.stop().await.unwrap();
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 1, 2]);
    assert_eq!(env.ready(J::QUEUE).await, 0);
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
    assert_absent(
        env,
        &delay_queue,
        "a quorum job's retry went through a delay queue",
    )
    .await;
}
