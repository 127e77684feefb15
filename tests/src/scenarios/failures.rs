//! A failing attempt: retried up to `retry`, then dead-lettered with what
//! happened; a permanent error, a malformed payload, a panic and a timeout;
//! and the circuit breaker that stops calling a job that keeps failing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::broker::HeaderValue;
use qjob::{Job, headers};

use super::checks::header;
use crate::env::{Env, LIMIT};
use crate::{Act, Got, Task, probe, test_job};

test_job!(retry, "qjob.test.retry", retry = 3);
test_job!(permanent, "qjob.test.permanent", retry = 5);
test_job!(garbage, "qjob.test.garbage", retry = 2);
test_job!(panic, "qjob.test.panic", retry = 2);
test_job!(panic_always, "qjob.test.panic-always", retry = 1);
test_job!(timeout, "qjob.test.timeout", retry = 0, timeout = "150ms");
test_job!(
    breaker,
    "qjob.test.breaker",
    retry = 100,
    backoff = fixed("100ms"),
    concurrency = 2,
    prefetch = 4,
    circuit_breaker(
        failure_rate = 0.5,
        min_attempts = 10,
        window = "60s",
        open_for = "3s"
    )
);

/// Runs one task doing `act` until it is in the dead-letter queue; returns
/// the probe's tag and the dead letter.
async fn run_one_to_the_dlq<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
    act: Act,
) -> (String, qjob::JobId, Got) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let id = env
        .client()
        .enqueue::<J>(Task::new(&tag, 1, act))
        .await
        .unwrap();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    let mut dead = env.take_all(&dlq).await;
    assert_eq!(dead.len(), 1);
    (tag, id, dead.remove(0))
}

/// `retry = 3`: exactly 4 attempts, then one dead letter that keeps the
/// payload and says what happened.
pub async fn retries_then_dead_letters<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert_eq!(J::options().retry(), 3, "scenario needs retry = 3");
    let (tag, id, dead) = run_one_to_the_dlq(env, job, Act::Fail).await;
    let probe = probe(&tag);
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 4);
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(env.ready(J::QUEUE).await, 0);
    assert_eq!(dead.id.as_deref(), Some(id.as_str()));
    let task: Task = serde_json::from_slice(&dead.body).unwrap();
    assert_eq!((task.tag.as_str(), task.seq), (tag.as_str(), 1));
    assert_eq!(header(&dead, headers::ATTEMPTS), &HeaderValue::Int(4));
    let reason = header(&dead, headers::REASON);
    assert_eq!(reason, &HeaderValue::from("retries-exhausted"));
    let error = header(&dead, headers::ERROR);
    assert_eq!(error, &HeaderValue::from("task 1 failed"));
    assert_eq!(header(&dead, headers::QUEUE), &HeaderValue::from(J::QUEUE));
    assert!(header(&dead, headers::FAILED_AT).as_int().unwrap() > 1_700_000_000_000);
}

/// A permanent error dead-letters after one attempt, whatever `retry` says.
pub async fn permanent_error_dead_letters_at_once<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert!(J::options().retry() > 0, "scenario needs retries to skip");
    let (tag, _, dead) = run_one_to_the_dlq(env, job, Act::FailPermanently).await;
    assert_eq!(probe(&tag).attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        header(&dead, headers::REASON),
        &HeaderValue::from("permanent")
    );
    assert_eq!(header(&dead, headers::ATTEMPTS), &HeaderValue::Int(1));
    let error = header(&dead, headers::ERROR);
    assert_eq!(error, &HeaderValue::from("permanently broken"));
}

/// Raw garbage goes to the DLQ with the reason; the next good job runs.
pub async fn garbage_dead_letters_and_the_next_job_runs<J: Job<Payload = Task>>(env: &Env, job: J) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    // Declares the queues, so the raw publish is routable.
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::Succeed))
        .await
        .unwrap();
    env.publish_raw(J::QUEUE, b"\x00 this is not json").await;
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    let probe = probe(&tag);
    probe.wait_succeeded("both good jobs", LIMIT, 2).await;
    running.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [1, 2]);
    let dead = env.take_all(&dlq).await;
    assert_eq!(dead[0].body, b"\x00 this is not json");
    assert_eq!(
        header(&dead[0], headers::REASON),
        &HeaderValue::from("malformed")
    );
    let error = header(&dead[0], headers::ERROR).to_string();
    assert!(error.contains("does not deserialize"), "{error}");
    assert_eq!(header(&dead[0], headers::ATTEMPTS), &HeaderValue::Int(1));
}

/// A panicking handler is a failed attempt: retried, and the worker lives on.
pub async fn panic_is_a_failed_attempt<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert!(J::options().retry() >= 1);
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::PanicBefore(2)))
        .await
        .unwrap();
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let running = env.start(job);
    let probe = probe(&tag);
    probe.wait_succeeded("both jobs to succeed", LIMIT, 2).await;
    running.stop().await.unwrap();
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
    assert_eq!(env.ready(J::QUEUE).await, 0);
}

/// A handler that panics on every attempt ends in the DLQ like any failure,
/// with the panic's message; the worker keeps running.
pub async fn panicking_to_the_end_dead_letters<J: Job<Payload = Task>>(env: &Env, job: J) {
    let attempts = J::options().max_attempts();
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::PanicBefore(u32::MAX)))
        .await
        .unwrap();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let probe = probe(&tag);
    probe.wait_succeeded("the next job to run", LIMIT, 1).await;
    running.stop().await.unwrap();
    assert_eq!(probe.attempts.load(Ordering::SeqCst), attempts + 1);
    let dead = env.take_all(&dlq).await;
    assert_eq!(
        header(&dead[0], headers::ATTEMPTS),
        &HeaderValue::Int(attempts.into())
    );
    let error = header(&dead[0], headers::ERROR).to_string();
    assert_eq!(error, "handler panicked: task 1 panics on attempt 2");
}

/// A handler over its `timeout` is cancelled and counts as a failed attempt.
pub async fn a_timeout_is_a_failed_attempt<J: Job<Payload = Task>>(env: &Env, job: J) {
    let timeout = J::options().timeout().expect("scenario needs a timeout");
    assert_eq!(J::options().retry(), 0, "scenario needs retry = 0");
    let (tag, _, dead) = run_one_to_the_dlq(env, job, Act::Block).await;
    let probe = probe(&tag);
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 1);
    let in_flight = probe.in_flight.load(Ordering::SeqCst);
    assert_eq!(in_flight, 0, "the handler was cancelled");
    let error = header(&dead, headers::ERROR).to_string();
    assert_eq!(error, format!("handler timed out after {timeout:?}"));
}

/// A job failing every time trips its breaker after `min_attempts`: it
/// stops being called (in-flight attempts finish), at most a probe runs
/// while open, nothing is dead-lettered because of it, and once the
/// downstream recovers a probe succeeds and the queue drains.
pub async fn an_open_breaker_stops_calls_until_a_probe_succeeds<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
) {
    let breaker = J::options()
        .circuit_breaker()
        .expect("scenario needs a breaker");
    let concurrency = J::options().concurrency() as u32;
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let jobs = 20;
    env.client()
        .enqueue_all::<J>((0..jobs).map(|seq| Task::new(&tag, seq, Act::FailUntilReleased)))
        .await
        .unwrap();
    let running = env.start(job);
    let probe = probe(&tag);
    probe
        .wait("the minimum attempts", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) >= breaker.min_attempts
        })
        .await;
    // Attempts already admitted finish; then the breaker is open.
    probe
        .wait("admitted attempts to finish", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
    let tripped = probe.attempts.load(Ordering::SeqCst);
    assert!(
        tripped <= breaker.min_attempts + 2 * concurrency,
        "{tripped} attempts before the breaker held"
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let while_open = probe.attempts.load(Ordering::SeqCst) - tripped;
    assert!(while_open <= 2, "{while_open} calls while open");
    probe.release();
    probe
        .wait_succeeded("the queue to drain after recovery", LIMIT, jobs)
        .await;
    running.stop().await.unwrap();
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}
