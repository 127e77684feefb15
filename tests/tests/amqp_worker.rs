//! The worker against RabbitMQ: every settlement path on the real broker.

use qjob_tests::scenarios::{self, Env};
use qjob_tests::test_job;

test_job!(amqp_retry, "qjob.test.amqp.retry", retry = 3);
test_job!(amqp_permanent, "qjob.test.amqp.permanent", retry = 5);
test_job!(amqp_garbage, "qjob.test.amqp.garbage", retry = 2);
test_job!(amqp_panic, "qjob.test.amqp.panic", retry = 2);
test_job!(
    amqp_concurrency,
    "qjob.test.amqp.concurrency",
    prefetch = 10,
    concurrency = 4
);
test_job!(
    amqp_shutdown,
    "qjob.test.amqp.shutdown",
    prefetch = 10,
    concurrency = 2
);

#[tokio::test]
async fn retry_3_means_4_attempts_then_one_dead_letter() {
    scenarios::retries_then_dead_letters(&Env::amqp().await, AmqpRetryJob).await;
}

#[tokio::test]
async fn permanent_error_dead_letters_after_one_attempt() {
    scenarios::permanent_error_dead_letters_at_once(&Env::amqp().await, AmqpPermanentJob).await;
}

#[tokio::test]
async fn garbage_is_dead_lettered_and_the_next_job_runs() {
    scenarios::garbage_dead_letters_and_the_next_job_runs(&Env::amqp().await, AmqpGarbageJob).await;
}

#[tokio::test]
async fn a_panic_is_retried() {
    scenarios::panic_is_a_failed_attempt(&Env::amqp().await, AmqpPanicJob).await;
}

#[tokio::test]
async fn concurrency_limit_is_reached_and_never_exceeded() {
    scenarios::concurrency_is_reached_and_never_exceeded(&Env::amqp().await, AmqpConcurrencyJob)
        .await;
}

#[tokio::test]
async fn shutdown_finishes_started_handlers_and_leaves_the_rest_ready() {
    scenarios::shutdown_finishes_started_handlers_and_returns_the_rest(
        &Env::amqp().await,
        AmqpShutdownJob,
    )
    .await;
}

test_job!(amqp_prefetch, "qjob.test.amqp.prefetch", prefetch = 7);

#[tokio::test]
async fn prefetch_is_set_per_consumer_on_the_broker() {
    use qjob::Job;
    let env = Env::amqp().await;
    env.reset::<AmqpPrefetchJob>().await;
    let running = env.start(AmqpPrefetchJob);
    let prefetch = qjob_tests::eventually(
        "the consumer to appear",
        scenarios::LIMIT,
        || qjob_tests::consumer_prefetch(AmqpPrefetchJob::QUEUE),
        |seen| !seen.is_empty(),
    )
    .await;
    assert_eq!(prefetch, [7]);
    running.stop().await.unwrap();
}

test_job!(amqp_stuck, "qjob.test.amqp.stuck");

#[tokio::test]
async fn shutdown_timeout_abandons_stuck_handlers() {
    scenarios::shutdown_timeout_abandons_stuck_handlers(&Env::amqp().await, AmqpStuckJob).await;
}
