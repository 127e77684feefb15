//! The broker conformance scenarios on RabbitMQ.

use qjob_tests::conformance;
use qjob_tests::scenarios::Env;

async fn env() -> Env {
    Env::amqp().await
}

#[tokio::test]
async fn publish_to_a_missing_queue_is_unroutable() {
    conformance::publish_to_a_missing_queue_is_unroutable(&env().await, "qjob.test.amqp.missing")
        .await;
}

#[tokio::test]
async fn a_full_queue_rejects_publishes() {
    conformance::a_full_queue_rejects_publishes(&env().await, "qjob.test.amqp.full").await;
}

#[tokio::test]
async fn redeclaring_with_other_arguments_fails() {
    conformance::redeclaring_with_other_arguments_fails(&env().await, "qjob.test.amqp.redeclare")
        .await;
}

#[tokio::test]
async fn prefetch_bounds_unacked_deliveries() {
    conformance::prefetch_bounds_unacked_deliveries(&env().await, "qjob.test.amqp.prefetch-bound")
        .await;
}

#[tokio::test]
async fn requeued_messages_come_back_redelivered() {
    conformance::requeued_messages_come_back_redelivered(&env().await, "qjob.test.amqp.requeue")
        .await;
}

#[tokio::test]
async fn closing_a_subscription_returns_what_it_held() {
    conformance::closing_a_subscription_returns_what_it_held(&env().await, "qjob.test.amqp.close")
        .await;
}

#[tokio::test]
async fn messages_arrive_as_published() {
    conformance::messages_arrive_as_published(&env().await, "qjob.test.amqp.roundtrip").await;
}
