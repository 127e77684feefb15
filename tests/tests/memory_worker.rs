//! The worker against MemoryBroker: the same scenarios and job code as on RabbitMQ.

use qjob_tests::scenarios::{self, Env};
use qjob_tests::test_job;

test_job!(memory_retry, "qjob.test.memory.retry", retry = 3);
test_job!(memory_permanent, "qjob.test.memory.permanent", retry = 5);
test_job!(memory_garbage, "qjob.test.memory.garbage", retry = 2);
test_job!(memory_panic, "qjob.test.memory.panic", retry = 2);
test_job!(
    memory_concurrency,
    "qjob.test.memory.concurrency",
    prefetch = 10,
    concurrency = 4
);
test_job!(
    memory_shutdown,
    "qjob.test.memory.shutdown",
    prefetch = 10,
    concurrency = 2
);

#[tokio::test]
async fn retry_3_means_4_attempts_then_one_dead_letter() {
    scenarios::retries_then_dead_letters(&Env::memory().await, MemoryRetryJob).await;
}

#[tokio::test]
async fn permanent_error_dead_letters_after_one_attempt() {
    scenarios::permanent_error_dead_letters_at_once(&Env::memory().await, MemoryPermanentJob).await;
}

#[tokio::test]
async fn garbage_is_dead_lettered_and_the_next_job_runs() {
    scenarios::garbage_dead_letters_and_the_next_job_runs(&Env::memory().await, MemoryGarbageJob)
        .await;
}

#[tokio::test]
async fn a_panic_is_retried() {
    scenarios::panic_is_a_failed_attempt(&Env::memory().await, MemoryPanicJob).await;
}

#[tokio::test]
async fn concurrency_limit_is_reached_and_never_exceeded() {
    scenarios::concurrency_is_reached_and_never_exceeded(
        &Env::memory().await,
        MemoryConcurrencyJob,
    )
    .await;
}

#[tokio::test]
async fn shutdown_finishes_started_handlers_and_leaves_the_rest_ready() {
    scenarios::shutdown_finishes_started_handlers_and_returns_the_rest(
        &Env::memory().await,
        MemoryShutdownJob,
    )
    .await;
}

test_job!(memory_stuck, "qjob.test.memory.stuck");

#[tokio::test]
async fn shutdown_timeout_abandons_stuck_handlers() {
    scenarios::shutdown_timeout_abandons_stuck_handlers(&Env::memory().await, MemoryStuckJob).await;
}
