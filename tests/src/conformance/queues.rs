//! Queues themselves: a redeclare with other arguments fails, an unused
//! queue expires, and `get` takes one message at a time.

use std::time::Duration;

use qjob::Error;
use qjob::broker::{Broker, QueueSpec};

use super::support::{fresh_queue, message};
use crate::env::{Env, LIMIT};

/// Declaring an existing queue with other arguments fails and names the queue.
pub async fn redeclaring_with_other_arguments_fails(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    let other = QueueSpec::new(queue).with_single_active(true);
    let error = broker.declare_queue(&other).await.unwrap_err();
    let Error::QueueMismatch {
        queue: named,
        argument,
        existing,
        requested,
    } = &error
    else {
        panic!("expected a queue mismatch, got {error:?}");
    };
    assert_eq!(named, queue);
    assert_eq!(argument, "x-single-active-consumer");
    assert_eq!((existing.as_str(), requested.as_str()), ("none", "true"));
    let capped = QueueSpec::new(queue).with_max_length(5);
    let error = broker.declare_queue(&capped).await.unwrap_err().to_string();
    assert!(
        error.contains("x-max-length = none") && error.contains("x-max-length = 5"),
        "{error}"
    );
    // The broker handle stays usable.
    broker.publish(queue, message("a")).await.unwrap();
}

/// A queue with `x-expires` is deleted once unused for that long.
pub async fn an_unused_queue_expires(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    let spec = QueueSpec::new(queue).with_expires(Duration::from_millis(300));
    broker.declare_queue(&spec).await.unwrap();
    broker.publish(queue, message("a")).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match broker.publish(queue, message("probe")).await {
            Err(Error::Unroutable { .. }) => break,
            Ok(()) => {}
            Err(error) => panic!("unexpected {error:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Declared again, it is a new, empty queue.
    broker.declare_queue(&spec).await.unwrap();
    assert_eq!(env.ready(queue).await, 0);
}

/// `get` takes the next message unsettled; `queue_depth` counts ready
/// messages and tells a missing queue.
pub async fn get_takes_messages_one_at_a_time(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &["a", "b"]).await;
    assert_eq!(
        broker.queue_stats(queue).await.unwrap().map(|s| s.messages),
        Some(2)
    );
    let a = broker.get(queue).await.unwrap().expect("a message");
    assert_eq!(a.message.body, b"a");
    assert_eq!(
        broker.queue_stats(queue).await.unwrap().map(|s| s.messages),
        Some(1)
    );
    a.acker.reject(true).await.unwrap();
    assert_eq!(
        broker.queue_stats(queue).await.unwrap().map(|s| s.messages),
        Some(2)
    );
    let again = broker.get(queue).await.unwrap().expect("a message");
    assert_eq!(again.message.body, b"a");
    assert!(again.redelivered);
    again.acker.ack().await.unwrap();
    let b = broker.get(queue).await.unwrap().expect("a message");
    b.acker.ack().await.unwrap();
    assert!(broker.get(queue).await.unwrap().is_none());
    assert_eq!(
        broker.queue_stats(queue).await.unwrap().map(|s| s.messages),
        Some(0)
    );
    env.delete_queues(&[queue]).await;
    assert_eq!(
        broker.queue_stats(queue).await.unwrap().map(|s| s.messages),
        None
    );
}
