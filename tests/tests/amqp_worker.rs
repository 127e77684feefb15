//! The worker scenarios on RabbitMQ: every settlement path on the real broker.

use qjob::Job;
use qjob_tests::jobs::PrefetchJob;
use qjob_tests::scenarios::{Env, LIMIT};

qjob_tests::worker_tests!(Env::amqp().await);

#[tokio::test]
async fn prefetch_is_set_per_consumer_on_the_broker() {
    let env = Env::amqp().await;
    env.reset::<PrefetchJob>().await;
    let running = env.start(PrefetchJob);
    let prefetch = qjob_tests::eventually(
        "the consumer to appear",
        LIMIT,
        || qjob_tests::consumer_prefetch(PrefetchJob::QUEUE),
        |seen| !seen.is_empty(),
    )
    .await;
    assert_eq!(prefetch, [7]);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn each_partition_queue_has_one_active_consumer_and_fails_over() {
    use qjob_tests::jobs::SacJob;
    let env = Env::amqp().await;
    let queues: Vec<String> = (0..=3).map(|i| format!("{}.p{i}", SacJob::QUEUE)).collect();
    env.delete_queues(&queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let prefix = format!("{}.p", SacJob::QUEUE);
    let first = env.start(SacJob);
    qjob_tests::eventually(
        "the first worker's consumers",
        LIMIT,
        || qjob_tests::consumer_activity(&prefix),
        |seen| seen.len() == 3,
    )
    .await;
    let other = env.another().await;
    let second = other.start(SacJob);
    let both = qjob_tests::eventually(
        "the standby consumers",
        LIMIT,
        || qjob_tests::consumer_activity(&prefix),
        |seen| seen.len() == 6,
    )
    .await;
    for queue in &queues[..3] {
        let active: Vec<bool> = both
            .iter()
            .filter(|(q, _)| q == queue)
            .map(|(_, a)| *a)
            .collect();
        assert_eq!(active.len(), 2, "{queue}: {both:?}");
        assert_eq!(
            active.iter().filter(|a| **a).count(),
            1,
            "{queue}: {both:?}"
        );
    }
    let stopped = std::time::Instant::now();
    first.stop().await.unwrap();
    let after = qjob_tests::eventually(
        "the standby to take over",
        LIMIT,
        || qjob_tests::consumer_activity(&prefix),
        |seen| seen.len() == 3 && seen.iter().all(|(_, active)| *active),
    )
    .await;
    println!(
        "failover after stopping the active worker: {:?} ({after:?})",
        stopped.elapsed()
    );
    // The standby now drains the queues.
    let tag = env.tag::<SacJob>();
    let tasks = (0..30).map(|n| {
        qjob_tests::Task::keyed(&tag, &format!("k{}", n % 5), n, qjob_tests::Act::Succeed)
    });
    env.client().enqueue_all::<SacJob>(tasks).await.unwrap();
    let probe = qjob_tests::probe(&tag);
    probe
        .wait("the standby to drain", LIMIT, |p| {
            p.succeeded.load(std::sync::atomic::Ordering::SeqCst) == 30
        })
        .await;
    second.stop().await.unwrap();
}

#[tokio::test]
async fn fewer_partitions_than_the_queues_in_use_is_a_clear_error() {
    use qjob_tests::jobs::{FewPartitionsJob, MorePartitionsJob};
    let env = Env::amqp().await;
    let queues: Vec<String> = (0..4).map(|i| format!("qjob.test.mismatch.p{i}")).collect();
    env.delete_queues(&queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let task = || qjob_tests::Task::keyed("mismatch", "k", 1, qjob_tests::Act::Succeed);
    env.client()
        .enqueue::<MorePartitionsJob>(task())
        .await
        .unwrap();
    let error = env
        .client()
        .enqueue::<FewPartitionsJob>(task())
        .await
        .unwrap_err();
    assert!(matches!(error, qjob::Error::Config(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("2 partitions") && text.contains("qjob.test.mismatch.p2"),
        "{text}"
    );
    let worker = qjob::Worker::builder_shared(env.broker())
        .register(FewPartitionsJob)
        .build();
    let started = worker.run_until(std::future::pending()).await;
    assert!(
        matches!(started, Err(qjob::Error::Config(_))),
        "{started:?}"
    );
}
