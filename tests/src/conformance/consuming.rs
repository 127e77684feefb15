//! Consuming: prefetch, requeues and their position, closing or losing a
//! subscription, a cancelled consumer, consumers taking turns, and a
//! prefetch change on a live subscription.

use qjob::QueueType;
use qjob::broker::{Broker, QueueSpec};

use super::support::{consume, fresh_queue, message, next};
use crate::env::{Env, LIMIT};

/// A consumer holds at most `prefetch` unacked deliveries; an ack frees a slot.
pub async fn prefetch_bounds_unacked_deliveries(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &["a", "b", "c", "d", "e"]).await;
    let mut subscription = broker.consume(queue, consume(3)).await.unwrap();
    let mut held = Vec::new();
    for expected in ["a", "b", "c"] {
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.message.body, expected.as_bytes());
        assert!(!delivery.redelivered);
        held.push(delivery);
    }
    env.wait_ready(queue, 2).await;
    held.remove(0).acker.ack().await.unwrap();
    assert_eq!(next(&mut subscription).await.message.body, b"d");
    env.wait_ready(queue, 1).await;
    subscription.close().await.unwrap();
    env.wait_ready(queue, 4).await;
}

/// A rejected-with-requeue message comes back first, marked redelivered.
pub async fn requeued_messages_come_back_redelivered(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &["a", "b"]).await;
    let mut subscription = broker.consume(queue, consume(1)).await.unwrap();
    let first = next(&mut subscription).await;
    assert_eq!(first.message.body, b"a");
    first.acker.reject(true).await.unwrap();
    let again = next(&mut subscription).await;
    assert_eq!(again.message.body, b"a");
    assert_eq!(again.message.id.as_deref(), Some("a"));
    assert!(again.redelivered);
    again.acker.ack().await.unwrap();
    let second = next(&mut subscription).await;
    assert_eq!(second.message.body, b"b");
    assert!(!second.redelivered);
    second.acker.reject(false).await.unwrap();
    subscription.close().await.unwrap();
    env.wait_ready(queue, 0).await;
}

/// Closing a subscription returns its unsettled deliveries; settled ones stay gone.
pub async fn closing_a_subscription_returns_what_it_held(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    for n in 0..6 {
        broker
            .publish(queue, message(&n.to_string()))
            .await
            .unwrap();
    }
    let mut subscription = broker.consume(queue, consume(4)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next(&mut subscription).await);
    }
    held.remove(0).acker.ack().await.unwrap();
    subscription.cancel().await.unwrap();
    assert_eq!(env.consumers(queue).await, 0);
    subscription.close().await.unwrap();
    env.wait_ready(queue, 5).await;
    drop(held);
}

/// Messages keep their id, headers and body through the broker.
pub async fn messages_arrive_as_published(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    let mut sent = message("payload");
    sent.kind = Some("charge".into());
    sent.timestamp = Some(1_700_000_000);
    sent.priority = Some(3);
    sent.headers.insert("text".into(), "value".into());
    sent.headers
        .insert("number".into(), qjob::broker::HeaderValue::Int(-42));
    sent.headers
        .insert("flag".into(), qjob::broker::HeaderValue::Bool(true));
    broker.publish(queue, sent.clone()).await.unwrap();
    let mut subscription = broker.consume(queue, consume(1)).await.unwrap();
    let got = next(&mut subscription).await;
    assert_eq!(got.message, sent);
    got.acker.ack().await.unwrap();
    subscription.close().await.unwrap();
}

/// A requeued message goes back to its position, before the messages
/// published after it. (While a consumer has free prefetch, RabbitMQ may
/// hand it a later message before the requeue lands; so the consumer is
/// cancelled first.)
pub async fn a_requeued_message_keeps_its_position(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &["a", "b", "c", "d"]).await;
    let mut subscription = broker.consume(queue, consume(3)).await.unwrap();
    let a = next(&mut subscription).await;
    let b = next(&mut subscription).await;
    let c = next(&mut subscription).await;
    subscription.cancel().await.unwrap();
    b.acker.reject(true).await.unwrap();
    a.acker.ack().await.unwrap();
    c.acker.ack().await.unwrap();
    env.wait_ready(queue, 2).await;
    let mut after = broker.consume(queue, consume(2)).await.unwrap();
    let again = next(&mut after).await;
    assert_eq!(again.message.body, b"b");
    assert!(again.redelivered);
    let d = next(&mut after).await;
    assert_eq!(d.message.body, b"d");
    again.acker.ack().await.unwrap();
    d.acker.ack().await.unwrap();
    after.close().await.unwrap();
    subscription.close().await.unwrap();
    env.wait_ready(queue, 0).await;
}

/// A lost connection returns every unsettled delivery, marked redelivered;
/// the subscription ends, acks on it fail, and a new one receives them.
pub async fn connection_loss_returns_unsettled_deliveries(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &["a", "b", "c"]).await;
    let mut subscription = broker.consume(queue, consume(2)).await.unwrap();
    let a = next(&mut subscription).await;
    let b = next(&mut subscription).await;
    env.drop_connection().await;
    // The stream may still yield what it had received; it then ends.
    loop {
        let item = tokio::time::timeout(LIMIT, subscription.next())
            .await
            .expect("the subscription ends");
        match item {
            Some(Ok(late)) => assert!(late.acker.ack().await.is_err()),
            Some(Err(_)) | None => break,
        }
    }
    assert!(
        a.acker.ack().await.is_err(),
        "an ack on a lost channel fails"
    );
    assert!(b.acker.reject(true).await.is_err());
    env.wait_ready(queue, 3).await;
    let mut again = broker.consume(queue, consume(3)).await.unwrap();
    for (expected, redelivered) in [("a", true), ("b", true), ("c", false)] {
        let delivery = next(&mut again).await;
        assert_eq!(delivery.message.body, expected.as_bytes());
        assert_eq!(delivery.redelivered, redelivered, "{expected}");
        delivery.acker.ack().await.unwrap();
    }
    again.close().await.unwrap();
    env.wait_ready(queue, 0).await;
}

/// A cancelled consumer gets nothing more; what it holds it can still ack.
pub async fn a_cancelled_consumer_still_settles_what_it_holds(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &["a", "b", "c"]).await;
    let mut subscription = broker.consume(queue, consume(1)).await.unwrap();
    let a = next(&mut subscription).await;
    subscription.cancel().await.unwrap();
    assert_eq!(env.consumers(queue).await, 0);
    a.acker.ack().await.unwrap();
    env.wait_ready(queue, 2).await;
    let mut other = broker.consume(queue, consume(1)).await.unwrap();
    assert_eq!(next(&mut other).await.message.body, b"b");
    other.close().await.unwrap();
    subscription.close().await.unwrap();
    env.wait_ready(queue, 2).await;
}

/// Two consumers of a normal queue take turns.
pub async fn consumers_take_turns(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    let mut first = broker.consume(queue, consume(1)).await.unwrap();
    let mut second = broker.consume(queue, consume(1)).await.unwrap();
    assert_eq!(env.consumers(queue).await, 2);
    for text in ["a", "b", "c"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
    let a = next(&mut first).await;
    let b = next(&mut second).await;
    assert_eq!(
        (a.message.body.as_slice(), b.message.body.as_slice()),
        (&b"a"[..], &b"b"[..])
    );
    env.wait_ready(queue, 1).await;
    first.close().await.unwrap();
    second.close().await.unwrap();
    env.wait_ready(queue, 3).await;
}

/// A prefetch change applies to the live subscription: the new prefetch
/// bounds the deliveries from then on (what was held before does not count
/// against it, as RabbitMQ's replacement consumer behaves), the held
/// deliveries still settle, and closing returns every unsettled one.
pub async fn a_prefetch_change_applies_to_the_live_subscription(env: &Env, queue: &str) {
    prefetch_change(env, QueueSpec::new(queue)).await;
}

/// The same on a quorum queue (which counts a cancelled consumer among its
/// consumers until it settles what it holds, so the scenario does not
/// count consumers in between).
pub async fn a_prefetch_change_applies_to_a_live_quorum_subscription(env: &Env, queue: &str) {
    prefetch_change(
        env,
        QueueSpec::new(queue).with_queue_type(QueueType::Quorum),
    )
    .await;
}

async fn prefetch_change(env: &Env, spec: QueueSpec) {
    let queue = spec.name.as_str();
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&spec).await.unwrap();
    for text in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
    let mut subscription = broker.consume(queue, consume(2)).await.unwrap();
    let a = next(&mut subscription).await;
    let b = next(&mut subscription).await;
    env.wait_ready(queue, 8).await;

    subscription.set_prefetch(4).await.unwrap();
    env.wait_ready(queue, 4).await;
    let mut held = Vec::new();
    for expected in ["c", "d", "e", "f"] {
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.message.body, expected.as_bytes());
        held.push(delivery);
    }
    // A delivery of the replaced consumer settles; it frees no prefetch of
    // the new one. One of the new one's does.
    a.acker.ack().await.unwrap();
    held.remove(0).acker.ack().await.unwrap();
    env.wait_ready(queue, 3).await;
    held.push(next(&mut subscription).await);
    assert_eq!(held.last().unwrap().message.body, b"g");

    subscription.set_prefetch(1).await.unwrap();
    env.wait_ready(queue, 2).await;
    let h = next(&mut subscription).await;
    assert_eq!(h.message.body, b"h");
    h.acker.ack().await.unwrap();
    env.wait_ready(queue, 1).await;
    held.push(next(&mut subscription).await);
    assert_eq!(held.last().unwrap().message.body, b"i");

    b.acker.ack().await.unwrap();
    subscription.close().await.unwrap();
    // d, e, f, g, i come back beside j; a, b, c, h are gone.
    env.wait_ready(queue, 6).await;
    assert_eq!(env.consumers(queue).await, 0);
}
