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
