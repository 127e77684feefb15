//! Capped queues (`max_length`): a full queue is the producer's error, and
//! a capped job's retries wait in the worker, not in a delay queue.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::{Error, Job};

use super::checks::assert_absent;
use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(capped, "qjob.test.capped", max_length = 5);
test_job!(
    capped_retry,
    "qjob.test.capped-retry",
    max_length = 2,
    prefetch = 1,
    concurrency = 1,
    retry = 1,
    backoff = fixed("1s")
);

/// `max_length = 5`: of 8 enqueues, 5 are confirmed and 3 get
/// `Error::QueueFull`, never a silent drop.
pub async fn a_full_queue_is_an_error_for_the_producer<J: Job<Payload = Task>>(env: &Env, _job: J) {
    let max = J::options()
        .max_length()
        .expect("scenario needs max_length");
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    let mut results = Vec::new();
    for seq in 0..max + 3 {
        results.push(
            client
                .enqueue::<J>(Task::new(&tag, seq, Act::Succeed))
                .await,
        );
    }
    let confirmed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(confirmed, max as usize);
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(error, Error::QueueFull { queue, max_length } if queue == J::QUEUE && *max_length == max),
            "{error:?}"
        );
        assert!(error.to_string().contains("is full"), "{error}");
    }
    assert_eq!(env.ready(J::QUEUE).await, max);
}

/// A capped queue's retries wait in the worker, not in a delay queue:
/// RabbitMQ drops a message that a delay queue moves into a full queue. The
/// queue stays full through the backoff (the producer is told), no delay
/// queue exists, and every job runs to success. Delayed enqueues into a
/// capped queue are refused for the same reason.
pub async fn a_capped_queue_retries_in_place_while_full<J: Job<Payload = Task>>(env: &Env, job: J) {
    let options = J::options();
    assert_eq!(
        options.max_length(),
        Some(2),
        "scenario needs max_length = 2"
    );
    assert_eq!(options.prefetch(), 1, "scenario needs prefetch = 1");
    env.reset::<J>().await;
    let delay_queue = format!("{}.delay.1000ms", J::QUEUE);
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let client = env.client();
    let refused = client
        .enqueue_in::<J>(Task::new(&tag, 9, Act::Succeed), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Config(text) if text.contains("capped")),
        "{refused:?}"
    );
    client
        .enqueue::<J>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::Succeed))
        .await
        .unwrap();
    let running = env.start(job);
    probe
        .wait("the first attempt of task 0", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 1
        })
        .await;
    // Task 0 waits out its backoff holding the only prefetch slot: the
    // queue fills up and stays full.
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let full = client
        .enqueue::<J>(Task::new(&tag, 3, Act::Succeed))
        .await
        .unwrap_err();
    assert!(matches!(full, Error::QueueFull { .. }), "{full:?}");
    probe.wait_succeeded("every job", LIMIT, 3).await;
    running.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [0, 1, 2]);
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 2, 1, 1]);
    assert_eq!(env.ready(J::QUEUE).await, 0);
    assert_absent(
        env,
        &delay_queue,
        "a capped job's retry went through a delay queue",
    )
    .await;
}
