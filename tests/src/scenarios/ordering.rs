//! Partitioned jobs keep each key's order: across two workers, through a
//! graceful stop that hands a partition over, and through a rolling
//! restart.

use std::sync::atomic::Ordering;

use qjob::Job;

use crate::env::{Env, LIMIT, wait_consumers};
use crate::{Act, Task, probe, test_job};

test_job!(
    ordered,
    "qjob.test.ordered",
    partition_by = key,
    partitions = 4,
    prefetch = 20,
    concurrency = 6,
    retry = 2,
    backoff = fixed("50ms")
);
test_job!(
    handover,
    "qjob.test.handover",
    partition_by = key,
    partitions = 1,
    prefetch = 2
);
test_job!(
    handover_quorum,
    "qjob.test.handover-quorum",
    queue_type = "quorum",
    partition_by = key,
    partitions = 1,
    prefetch = 2
);
test_job!(
    rolling,
    "qjob.test.rolling",
    partition_by = key,
    partitions = 6,
    prefetch = 10,
    concurrency = 6,
    retry = 2,
    backoff = fixed("50ms")
);

/// Partitioned ordering across two workers on their own connections: 12
/// keys × 40 jobs with varied handler times, some failing once, complete
/// each key's jobs in publish order, none lost, none dead-lettered.
pub async fn partitioned_keys_complete_in_publish_order_across_two_workers<
    J: Job<Payload = Task> + Clone,
>(
    env: &Env,
    job: J,
) {
    assert!(
        J::options().partitions().is_some(),
        "scenario needs partitions"
    );
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let (keys, per_key) = (12u32, 40u32);
    let tasks = (0..per_key).flat_map(|n| {
        let tag = tag.clone();
        (0..keys).map(move |k| {
            let work = Act::Work {
                sleep_ms: u64::from((n * 7 + k * 3) % 6),
                fail_first: (n + k) % 9 == 4,
            };
            Task::keyed(&tag, &format!("customer-{k}"), k * 1000 + n, work)
        })
    });
    let results = env.client().enqueue_all::<J>(tasks).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let other = env.another().await;
    let first = env.start(job.clone());
    let second = other.start(job);
    let probe = probe(&tag);
    let total = keys * per_key;
    probe.wait_succeeded("every job", LIMIT, total).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    let done = probe.done.lock().unwrap().clone();
    assert_eq!(done.len() as u32, total, "each job succeeded once");
    for k in 0..keys {
        let order: Vec<u32> = done
            .iter()
            .filter(|s| *s / 1000 == k)
            .map(|s| s % 1000)
            .collect();
        assert_eq!(
            order,
            (0..per_key).collect::<Vec<_>>(),
            "key {k} out of order"
        );
    }
    assert!(
        probe.attempts.load(Ordering::SeqCst) > total,
        "some jobs were retried"
    );
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}

/// A graceful stop of the active worker of a partition hands the partition
/// over only once nothing of it runs there: the standby takes the key's
/// next jobs after the running one finished, in publish order, and the
/// key's jobs never overlap in time (a rolling deploy keeps per-key order).
pub async fn a_graceful_stop_hands_a_partition_over_in_order<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
) {
    let options = J::options();
    assert_eq!(
        options.partitions(),
        Some(1),
        "scenario needs one partition"
    );
    assert_eq!(options.prefetch(), 2, "scenario needs prefetch = 2");
    let partition = format!("{}.p0", J::QUEUE);
    let beyond = format!("{}.p1", J::QUEUE);
    let dlq = options.dead_letter_queue();
    env.delete_queues(&[&partition, &beyond, &dlq]).await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let active = env.start(job.clone());
    wait_consumers(env, &partition, 1).await;
    let other = env.another().await;
    let standby = other.start(job);
    wait_consumers(env, &partition, 2).await;
    let client = env.client();
    let acts = [(1, Act::Sleep(1500)), (2, Act::Succeed), (3, Act::Succeed)];
    for (seq, act) in acts {
        client
            .enqueue::<J>(Task::keyed(&tag, "one-key", seq, act))
            .await
            .unwrap();
    }
    probe
        .wait("job 1 to run", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    let stopping = active.signal();
    client
        .enqueue::<J>(Task::keyed(&tag, "one-key", 4, Act::Succeed))
        .await
        .unwrap();
    stopping.await.unwrap().unwrap();
    probe.wait_succeeded("every job", LIMIT, 4).await;
    standby.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(
        probe.max_in_flight.load(Ordering::SeqCst),
        1,
        "a key's jobs overlapped"
    );
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 4, "none ran twice");
}

/// The same on a quorum partition queue.
pub async fn a_graceful_stop_hands_a_quorum_partition_over_in_order<
    J: Job<Payload = Task> + Clone,
>(
    env: &Env,
    job: J,
) {
    assert_eq!(J::options().queue_type(), qjob::QueueType::Quorum);
    a_graceful_stop_hands_a_partition_over_in_order(env, job).await;
}

/// A rolling restart of three workers under load: each in turn stops
/// gracefully and a new one starts, while 30 keys' jobs flow. Every key
/// completes in publish order, no two jobs of a key ever run at once, and
/// nothing runs twice (a graceful stop settles what it started).
pub async fn a_rolling_restart_keeps_every_key_in_order<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
) {
    assert!(
        J::options().partitions().is_some(),
        "scenario needs partitions"
    );
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let (keys, per_key) = (30u32, 20u32);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let other = env.another().await;
        workers.push(other.start(job.clone()));
    }
    let tasks = (0..per_key).flat_map(|n| {
        let tag = tag.clone();
        (0..keys).map(move |k| {
            let work = Act::Work {
                sleep_ms: u64::from(2 + (n * 7 + k * 3) % 5),
                fail_first: (n + k) % 11 == 3,
            };
            Task::keyed(&tag, &format!("key-{k}"), k * 1000 + n, work)
        })
    });
    let results = env.client().enqueue_all::<J>(tasks).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let total = keys * per_key;
    for round in 1..=3u32 {
        probe
            .wait("jobs before the next restart", LIMIT, |p| {
                p.succeeded.load(Ordering::SeqCst) >= round * total / 5
            })
            .await;
        // The oldest worker stops gracefully; a new one takes its place.
        workers.remove(0).stop().await.unwrap();
        let other = env.another().await;
        workers.push(other.start(job.clone()));
    }
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= total
        })
        .await;
    for worker in workers {
        worker.stop().await.unwrap();
    }
    let done = probe.done.lock().unwrap().clone();
    for k in 0..keys {
        let order: Vec<u32> = done
            .iter()
            .filter(|s| *s / 1000 == k)
            .map(|s| s % 1000)
            .collect();
        assert_eq!(
            order,
            (0..per_key).collect::<Vec<_>>(),
            "key {k} out of order or run twice"
        );
    }
    assert_eq!(
        probe.key_overlaps.load(Ordering::SeqCst),
        0,
        "a key's jobs overlapped"
    );
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}
