//! Broker-level scenarios written once against the `Broker` trait and run on
//! both brokers: what the runtime relies on, checked on RabbitMQ itself and
//! on the in-memory fake, so the fake cannot drift.

use qjob::broker::{ConsumeOptions, Delivery, Message, QueueSpec, Subscription};
use qjob::{Error, QueueType};

use crate::scenarios::{Env, LIMIT};

fn message(text: &str) -> Message {
    Message {
        id: Some(text.to_owned()),
        body: text.as_bytes().to_vec(),
        ..Message::default()
    }
}

async fn next(subscription: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(LIMIT, subscription.next())
        .await
        .expect("a delivery arrives")
        .expect("the subscription is open")
        .expect("the delivery is not an error")
}

fn consume(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        tag: "conformance".into(),
    }
}

/// Publishing to a queue that does not exist is an error, not a silent drop.
pub async fn publish_to_a_missing_queue_is_unroutable(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let error = env.broker().publish(queue, message("a")).await.unwrap_err();
    assert!(matches!(error, Error::Unroutable { .. }), "{error:?}");
    assert!(error.to_string().contains(queue), "{error}");
}

/// A full queue with `reject-publish` answers with a negative confirm.
pub async fn a_full_queue_rejects_publishes(env: &Env, queue: &str) {
    assert_eq!(fill(env, queue, QueueType::Classic).await, ["a", "b"]);
}

/// Quorum queues: declared, capped and delivering. RabbitMQ checks their
/// limit before adding a message, so a quorum queue holds one message over
/// `max_length` before it rejects.
pub async fn a_full_quorum_queue_rejects_publishes(env: &Env, queue: &str) {
    let accepted = fill(env, queue, QueueType::Quorum).await;
    assert_eq!(accepted, ["a", "b", "c"]);
    let mut subscription = env.broker().consume(queue, consume(5)).await.unwrap();
    for expected in accepted {
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.message.body, expected.as_bytes());
        delivery.acker.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    env.wait_ready(queue, 0).await;
}

/// Declares `queue` with `max_length = 2`, publishes until the broker
/// rejects twice in a row, and returns what it accepted.
async fn fill(env: &Env, queue: &str, queue_type: QueueType) -> Vec<&'static str> {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    let spec = QueueSpec {
        max_length: Some(2),
        queue_type,
        ..QueueSpec::new(queue)
    };
    broker.declare_queue(&spec).await.unwrap();
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for text in ["a", "b", "c", "d", "e"] {
        match broker.publish(queue, message(text)).await {
            Ok(()) => {
                assert_eq!(rejected, 0, "{text} accepted after a rejection");
                accepted.push(text);
            }
            Err(error) => {
                assert!(matches!(error, Error::PublishRejected { .. }), "{error:?}");
                rejected += 1;
            }
        }
    }
    assert_eq!(env.ready(queue).await as usize, accepted.len());
    accepted
}

/// Declaring an existing queue with other arguments fails and names the queue.
pub async fn redeclaring_with_other_arguments_fails(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    let other = QueueSpec {
        single_active: true,
        ..QueueSpec::new(queue)
    };
    let error = broker.declare_queue(&other).await.unwrap_err();
    assert!(error.to_string().contains(queue), "{error}");
    assert!(error.to_string().contains("PRECONDITION_FAILED"), "{error}");
    // The broker handle stays usable.
    broker.publish(queue, message("a")).await.unwrap();
}

/// A consumer holds at most `prefetch` unacked deliveries; an ack frees a slot.
pub async fn prefetch_bounds_unacked_deliveries(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    for text in ["a", "b", "c", "d", "e"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
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
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    for text in ["a", "b"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
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

/// A single-active-consumer queue delivers to one consumer only; when it
/// leaves, the next takes over, starting with what the first left unsettled.
pub async fn single_active_consumer_fails_over(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    let spec = QueueSpec {
        single_active: true,
        ..QueueSpec::new(queue)
    };
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
