//! Single-active-consumer queues: one consumer at a time, and a standby
//! that takes over with what the active one left unsettled, in order.

use qjob::QueueType;
use qjob::broker::{Broker, QueueSpec};

use super::support::{consume, message, next};
use crate::env::Env;

/// A single-active-consumer queue delivers to one consumer only; when it
/// leaves, the next takes over, starting with what the first left unsettled.
pub async fn single_active_consumer_fails_over(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    let spec = QueueSpec::new(queue).with_single_active(true);
    broker.declare_queue(&spec).await.unwrap();
    for text in ["a", "b", "c"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
    let mut first = broker.consume(queue, consume(1)).await.unwrap();
    let mut standby = broker.consume(queue, consume(1)).await.unwrap();
    assert_eq!(env.consumers(queue).await, 2);
    let a = next(&mut first).await;
    assert_eq!(a.message.body, b"a");
    a.acker.ack().await.unwrap();
    // Round robin would have handed "b" to the standby already.
    let b = next(&mut first).await;
    assert_eq!(b.message.body, b"b");
    first.close().await.unwrap();
    drop(b);
    let again = next(&mut standby).await;
    assert_eq!(again.message.body, b"b");
    assert!(again.redelivered);
    again.acker.ack().await.unwrap();
    let c = next(&mut standby).await;
    assert_eq!(c.message.body, b"c");
    c.acker.ack().await.unwrap();
    standby.close().await.unwrap();
    env.wait_ready(queue, 0).await;
}

/// When the active consumer of a single-active-consumer queue goes away
/// holding unsettled messages, the standby receives them first, in their
/// order, then the rest: what keeps partitioned jobs in order through a
/// crash. Holds for classic and (on RabbitMQ 3.10) quorum queues.
async fn standby_gets_unsettled_messages_in_order(env: &Env, queue: &str, queue_type: QueueType) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    let spec = QueueSpec::new(queue)
        .with_queue_type(queue_type)
        .with_single_active(true);
    broker.declare_queue(&spec).await.unwrap();
    for text in ["a", "b", "c", "d"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
    let mut active = broker.consume(queue, consume(2)).await.unwrap();
    let mut standby = broker.consume(queue, consume(4)).await.unwrap();
    let held = [next(&mut active).await, next(&mut active).await];
    drop(held);
    active.close().await.unwrap();
    for (expected, redelivered) in [("a", true), ("b", true), ("c", false), ("d", false)] {
        let delivery = next(&mut standby).await;
        assert_eq!(delivery.message.body, expected.as_bytes());
        assert_eq!(delivery.redelivered, redelivered, "{expected}");
        delivery.acker.ack().await.unwrap();
    }
    standby.close().await.unwrap();
}

/// A standby gets unsettled messages in order: on a classic queue.
pub async fn a_classic_standby_gets_unsettled_messages_in_order(env: &Env, queue: &str) {
    standby_gets_unsettled_messages_in_order(env, queue, QueueType::Classic).await;
}

/// A standby gets unsettled messages in order: on a quorum queue.
pub async fn a_quorum_standby_gets_unsettled_messages_in_order(env: &Env, queue: &str) {
    standby_gets_unsettled_messages_in_order(env, queue, QueueType::Quorum).await;
}
