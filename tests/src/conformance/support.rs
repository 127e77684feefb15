//! What the conformance scenarios share: messages named by their text, a
//! fresh queue, a consumer's options and its next delivery.

use std::sync::Arc;

use qjob::broker::{Broker, ConsumeOptions, Delivery, Message, QueueSpec, Subscription};

use crate::env::{Env, LIMIT};

pub(super) fn message(text: &str) -> Message {
    Message::new(text).with_id(text)
}

pub(super) async fn next(subscription: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(LIMIT, subscription.next())
        .await
        .expect("a delivery arrives")
        .expect("the subscription is open")
        .expect("the delivery is not an error")
}

/// A new plain `queue` holding `texts`, in order.
pub(super) async fn fresh_queue(env: &Env, queue: &str, texts: &[&str]) -> Arc<dyn Broker> {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    for text in texts {
        broker.publish(queue, message(text)).await.unwrap();
    }
    broker
}

pub(super) fn consume(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions::new(prefetch, "conformance")
}

/// Takes the one message of `queue` with a fresh consumer and acks it.
pub(super) async fn take_one(env: &Env, queue: &str) -> Message {
    let mut subscription = env.broker().consume(queue, consume(1)).await.unwrap();
    let delivery = next(&mut subscription).await;
    let message = delivery.message.clone();
    delivery.acker.ack().await.unwrap();
    subscription.close().await.unwrap();
    message
}
