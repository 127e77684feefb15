//! The worker scenarios on MemoryBroker: the same scenarios and job code as
//! on RabbitMQ (`amqp_worker.rs`).

qjob_tests::worker_tests!(qjob_tests::scenarios::Env::memory().await);

use std::sync::atomic::Ordering;

use qjob_tests::scenarios::{Env, LIMIT};
use qjob_tests::{Act, Task, probe, test_job};

test_job!(
    dead_letter_nacked,
    "qjob.test.dead-letter-nacked",
    partition_by = key,
    partitions = 1,
    retry = 0
);

/// A partitioned job whose dead-letter publish is refused once keeps its
/// lane: the dead letter is published again (the job is not run again) and
/// only then does the key's next job run. Before, the original was requeued
/// and the lane released: effects in order [2, 1], job 1 run twice.
#[tokio::test]
async fn a_refused_dead_letter_keeps_the_key_waiting_and_the_job_dead() {
    let env = Env::memory().await;
    let Env::Memory(broker) = &env else {
        unreachable!()
    };
    let tag = env.tag::<DeadLetterNackedJob>();
    let probe = probe(&tag);
    broker.fail_next_publish_to("qjob.test.dead-letter-nacked.dlq");
    let client = env.client();
    for (seq, act) in [(1, Act::FailPermanently), (2, Act::Succeed)] {
        client
            .enqueue::<DeadLetterNackedJob>(Task::keyed(&tag, "one-key", seq, act))
            .await
            .unwrap();
    }
    let running = env.start(DeadLetterNackedJob);
    probe
        .wait("the key's second job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 2, "job 1 ran once");
    assert_eq!(*probe.done.lock().unwrap(), [2]);
    let dead = env.take_all("qjob.test.dead-letter-nacked.dlq").await;
    assert_eq!(dead.len(), 1, "job 1 is dead-lettered once");
    // Job 1 settled before job 2 started: its dead letter was confirmed
    // first (one attempt each, in publish order).
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 1]);
}

test_job!(
    server_cancel,
    "qjob.test.server-cancel",
    partition_by = key,
    partitions = 1,
    prefetch = 4
);

/// The broker cancels the consumer of a partition queue (a node holding it
/// went away) while the key's job 1 runs and job 2 waits in its lane: the
/// channel stays open until job 1 is settled, so job 1 runs once, and job 2
/// comes back and runs after it. Before, the channel was closed at once:
/// job 1 was delivered again and ran a second time. On the paused clock:
/// the wait after the cancel outlasts the worker's resubscribe backoff
/// (100 ms) deterministically.
#[tokio::test(start_paused = true)]
async fn a_broker_cancel_lets_running_jobs_settle_before_the_channel_closes() {
    let env = Env::memory().await;
    let Env::Memory(broker) = &env else {
        unreachable!()
    };
    let tag = env.tag::<ServerCancelJob>();
    let probe = probe(&tag);
    let client = env.client();
    for (seq, act) in [(1, Act::Block), (2, Act::Succeed)] {
        client
            .enqueue::<ServerCancelJob>(Task::keyed(&tag, "one-key", seq, act))
            .await
            .unwrap();
    }
    let running = env.start(ServerCancelJob);
    let queue = "qjob.test.server-cancel.p0";
    broker
        .wait_until(|b| b.unacked_count(queue) == 2 && probe.attempts.load(Ordering::SeqCst) == 1)
        .await;
    broker.cancel_consumers(queue);
    // While job 1 runs, the worker keeps the cancelled channel open and does
    // not subscribe again (its resubscribe backoff is 100 ms).
    let resubscribed = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        broker.wait_until(|b| b.consumer_count(queue) == 1),
    )
    .await;
    assert!(resubscribed.is_err(), "resubscribed while job 1 still ran");
    assert_eq!(broker.unacked_count(queue), 2, "jobs 1 and 2 still held");
    probe.release();
    probe
        .wait("both jobs", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 2
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [1, 2]);
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        2,
        "each job ran once"
    );
}
