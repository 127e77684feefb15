//! Dead-lettering by the broker: a rejected message with its `x-death`
//! record, at most once, dropped without a target; expiry into the target
//! (the delay mechanism) and its counts; a quorum queue's delivery limit.

use std::time::Duration;

use qjob::QueueType;
use qjob::broker::{Broker, Delivery, HeaderValue, Headers, Message, QueueSpec};

use super::support::{consume, fresh_queue, message, next, take_one};
use crate::env::Env;

fn x_death(message: &Message) -> Vec<Headers> {
    message
        .headers
        .get("x-death")
        .and_then(HeaderValue::as_list)
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            entry
                .as_table()
                .expect("x-death entries are tables")
                .clone()
        })
        .collect()
}

fn assert_death(death: &Headers, queue: &str, reason: &str, count: i64) {
    assert_eq!(death["queue"], HeaderValue::from(queue), "{death:?}");
    assert_eq!(death["reason"], HeaderValue::from(reason), "{death:?}");
    assert_eq!(death["count"], HeaderValue::Int(count), "{death:?}");
    assert_eq!(death["exchange"], HeaderValue::from(""), "{death:?}");
    assert_eq!(
        death["routing-keys"],
        HeaderValue::List(vec![queue.into()]),
        "{death:?}"
    );
    assert!(death["time"].as_int().unwrap() > 1_700_000_000, "{death:?}");
}

/// Rejected without requeue, a message goes to the dead-letter target with
/// an `x-death` record naming the queue and the reason.
pub async fn rejected_messages_are_dead_lettered_with_x_death(env: &Env, queue: &str) {
    let target = format!("{queue}.target");
    env.delete_queues(&[queue, &target]).await;
    let broker = env.broker();
    broker
        .declare_queue(&QueueSpec::new(&target))
        .await
        .unwrap();
    let spec = QueueSpec::new(queue).with_dead_letter_to(&target);
    broker.declare_queue(&spec).await.unwrap();
    let mut sent = message("a");
    sent.headers.insert("kept".into(), "yes".into());
    broker.publish(queue, sent).await.unwrap();
    let mut subscription = broker.consume(queue, consume(1)).await.unwrap();
    next(&mut subscription)
        .await
        .acker
        .reject(false)
        .await
        .unwrap();
    env.wait_ready(&target, 1).await;
    subscription.close().await.unwrap();
    assert_eq!(env.ready(queue).await, 0);
    let dead = take_one(env, &target).await;
    assert_eq!(dead.body, b"a");
    assert_eq!(dead.id.as_deref(), Some("a"));
    assert_eq!(dead.headers["kept"], HeaderValue::from("yes"));
    let deaths = x_death(&dead);
    assert_eq!(deaths.len(), 1);
    assert_death(&deaths[0], queue, "rejected", 1);
    assert_eq!(
        dead.headers["x-first-death-reason"],
        HeaderValue::from("rejected")
    );
    assert_eq!(
        dead.headers["x-first-death-queue"],
        HeaderValue::from(queue)
    );
}

/// Dead-lettering is at most once: a message rejected into a target that
/// is full (`reject-publish`) is dropped, not kept in its queue.
pub async fn dead_letters_into_a_full_queue_are_dropped(env: &Env, queue: &str) {
    let target = format!("{queue}.target");
    env.delete_queues(&[queue, &target]).await;
    let broker = env.broker();
    let capped = QueueSpec::new(&target).with_max_length(1);
    broker.declare_queue(&capped).await.unwrap();
    broker.publish(&target, message("full")).await.unwrap();
    let spec = QueueSpec::new(queue).with_dead_letter_to(&target);
    broker.declare_queue(&spec).await.unwrap();
    broker.publish(queue, message("a")).await.unwrap();
    broker.publish(queue, message("b")).await.unwrap();
    let mut subscription = broker.consume(queue, consume(1)).await.unwrap();
    let a = next(&mut subscription).await;
    assert_eq!(a.message.body, b"a");
    a.acker.reject(false).await.unwrap();
    // Settlements on a channel are ordered: once b arrives, a is gone.
    let b = next(&mut subscription).await;
    assert_eq!(b.message.body, b"b");
    b.acker.ack().await.unwrap();
    subscription.close().await.unwrap();
    env.wait_ready(queue, 0).await;
    let kept = take_one(env, &target).await;
    assert_eq!(kept.body, b"full", "only what was there before");
    assert_eq!(env.ready(&target).await, 0, "a was dropped");
}

/// Rejected without requeue from a queue with no dead-letter target, a
/// message is gone.
pub async fn rejected_messages_without_a_target_are_dropped(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &["a", "b"]).await;
    let mut subscription = broker.consume(queue, consume(1)).await.unwrap();
    next(&mut subscription)
        .await
        .acker
        .reject(false)
        .await
        .unwrap();
    let b = next(&mut subscription).await;
    assert_eq!(b.message.body, b"b");
    b.acker.ack().await.unwrap();
    subscription.close().await.unwrap();
    env.wait_ready(queue, 0).await;
}

/// Messages in a queue with a message TTL expire after it, in publish
/// order, into the dead-letter target: the delay mechanism.
pub async fn expired_messages_move_to_the_target_in_order(env: &Env, queue: &str) {
    let target = format!("{queue}.target");
    env.delete_queues(&[queue, &target]).await;
    let broker = env.broker();
    broker
        .declare_queue(&QueueSpec::new(&target))
        .await
        .unwrap();
    let ttl = Duration::from_millis(300);
    let spec = QueueSpec::new(queue)
        .with_message_ttl(ttl)
        .with_dead_letter_to(&target);
    broker.declare_queue(&spec).await.unwrap();
    let published = tokio::time::Instant::now();
    for text in ["a", "b", "c"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
    let mut subscription = broker.consume(&target, consume(10)).await.unwrap();
    for expected in ["a", "b", "c"] {
        let delivery = next(&mut subscription).await;
        assert!(
            published.elapsed() >= ttl,
            "expired after {:?}",
            published.elapsed()
        );
        assert_eq!(delivery.message.body, expected.as_bytes());
        assert!(!delivery.redelivered);
        let deaths = x_death(&delivery.message);
        assert_death(&deaths[0], queue, "expired", 1);
        delivery.acker.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    assert_eq!(env.ready(queue).await, 0);
}

/// A message delayed twice through the same queue, republished by a client
/// in between with the headers it got: RabbitMQ 3 (and `MemoryBroker`,
/// which follows it here) counts 2 in one `x-death` entry; RabbitMQ 4
/// ignores the `x-death` a publisher sets and starts a new count, 1. Either
/// way the first death is kept. qjob reads neither count: its own headers
/// carry the attempts, and only `x-first-death-*` of a message RabbitMQ
/// itself moved (`qjob::dead_letters`).
pub async fn a_second_expiry_counts_up_in_x_death_on_3_and_anew_on_4(env: &Env, queue: &str) {
    let target = format!("{queue}.target");
    env.delete_queues(&[queue, &target]).await;
    let broker = env.broker();
    broker
        .declare_queue(&QueueSpec::new(&target))
        .await
        .unwrap();
    let spec = QueueSpec::new(queue)
        .with_message_ttl(Duration::from_millis(50))
        .with_dead_letter_to(&target);
    broker.declare_queue(&spec).await.unwrap();
    broker.publish(queue, message("a")).await.unwrap();
    env.wait_ready(&target, 1).await;
    let once = take_one(env, &target).await;
    broker.publish(queue, once).await.unwrap();
    env.wait_ready(&target, 1).await;
    let twice = take_one(env, &target).await;
    let deaths = x_death(&twice);
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    let count = match env {
        Env::Amqp(..) if crate::rabbitmq_major() >= 4 => 1,
        _ => 2,
    };
    assert_death(&deaths[0], queue, "expired", count);
    assert_eq!(
        twice.headers["x-first-death-reason"],
        HeaderValue::from("expired")
    );
}

/// A quorum queue with a delivery limit counts every return of a message
/// (a requeue, or a subscription closed while holding it) in
/// `x-delivery-count`, and dead-letters it on the return past the limit.
pub async fn a_quorum_queue_dead_letters_past_its_delivery_limit(env: &Env, queue: &str) {
    let dlq = format!("{queue}.dlq");
    env.delete_queues(&[queue, &dlq]).await;
    let broker = env.broker();
    let quorum = |name: &str| QueueSpec::new(name).with_queue_type(QueueType::Quorum);
    broker.declare_queue(&quorum(&dlq)).await.unwrap();
    let limited = quorum(queue)
        .with_delivery_limit(2)
        .with_dead_letter_to(&dlq);
    broker.declare_queue(&limited).await.unwrap();
    broker.publish(queue, message("a")).await.unwrap();
    let count = |delivery: &Delivery| delivery.message.headers.get("x-delivery-count").cloned();

    let mut first = broker.consume(queue, consume(1)).await.unwrap();
    let delivery = next(&mut first).await;
    assert!(!delivery.redelivered);
    assert_eq!(count(&delivery), None);
    first.close().await.unwrap();

    let mut second = broker.consume(queue, consume(1)).await.unwrap();
    let delivery = next(&mut second).await;
    assert!(delivery.redelivered);
    assert_eq!(count(&delivery), Some(HeaderValue::Int(1)));
    delivery.acker.reject(true).await.unwrap();
    let delivery = next(&mut second).await;
    assert_eq!(count(&delivery), Some(HeaderValue::Int(2)));
    second.close().await.unwrap();

    env.wait_ready(&dlq, 1).await;
    assert_eq!(env.ready(queue).await, 0);
    let dead = broker.get(&dlq).await.unwrap().expect("the dead letter");
    let text = |name: &str| dead.message.headers.get(name).cloned();
    assert_eq!(text("x-first-death-reason"), Some("delivery_limit".into()));
    assert_eq!(text("x-first-death-queue"), Some(queue.into()));
    assert_eq!(dead.message.body, b"a");
    dead.acker.ack().await.unwrap();
}
