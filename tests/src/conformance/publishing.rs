//! Publishing: an unroutable publish is an error, a tracked publish marks
//! what it stored, each publisher learns its own returns, and a full queue
//! (classic or quorum, counting ready messages only) refuses.

use qjob::broker::{Broker, QueueSpec, Sent};
use qjob::{Error, QueueType};

use super::support::{consume, fresh_queue, message, next};
use crate::env::Env;

/// Publishing to a queue that does not exist is an error, not a silent drop.
pub async fn publish_to_a_missing_queue_is_unroutable(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let error = env.broker().publish(queue, message("a")).await.unwrap_err();
    assert!(matches!(error, Error::Unroutable { .. }), "{error:?}");
    assert!(error.to_string().contains(queue), "{error}");
}

/// A tracked publish marks every message it stored as gone out: a
/// producer dropped after the confirm keeps what it holds for the job
/// (its unique lock, its batch count).
pub async fn a_tracked_publish_marks_what_it_sent(env: &Env, queue: &str) {
    let broker = fresh_queue(env, queue, &[]).await;
    let sent = Sent::new();
    broker
        .publish_tracked(queue, message("a"), &sent)
        .await
        .unwrap();
    assert_eq!(sent.count(), 1);
    let sent = Sent::new();
    let messages = ["b", "c", "d"].map(|text| (queue.to_owned(), message(text)));
    let outcomes = broker.publish_all_tracked(messages.to_vec(), &sent).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(sent.count(), 3);
    assert_eq!(env.ready(queue).await, 4);
}

/// Publishes to a queue that exists and to one that does not, at once
/// from many publishers sharing the broker and in one `publish_all`: each
/// message's outcome is its own. (lapin gives a return to whichever
/// confirm completes next: shared naively, a job to the missing queue read
/// as stored, and one to the existing queue as unroutable.)
pub async fn each_publisher_learns_its_own_return(env: &Env, queue: &str) {
    let missing = format!("{queue}.missing");
    let broker = fresh_queue(env, queue, &[]).await;
    env.delete_queues(&[&missing]).await;
    let target = |i: usize| {
        if i.is_multiple_of(2) {
            queue
        } else {
            missing.as_str()
        }
    };
    const EACH: usize = 300;
    const ROUNDS: usize = 3;
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let outcomes = futures_util::future::join_all((0..EACH).map(|i| {
            let broker = broker.clone();
            let to = target(i).to_owned();
            async move {
                broker
                    .publish(&to, message(&format!("single-{round}-{i}")))
                    .await
            }
        }))
        .await;
        rounds.push(outcomes);
    }
    let batch = (0..EACH)
        .map(|i| (target(i).to_owned(), message(&format!("batch-{i}"))))
        .collect();
    rounds.push(broker.publish_all(batch).await);
    for outcomes in rounds {
        assert_eq!(outcomes.len(), EACH);
        for (i, outcome) in outcomes.iter().enumerate() {
            match (i % 2, outcome) {
                (0, Ok(())) => {}
                (1, Err(Error::Unroutable { queue, .. })) => assert_eq!(queue, &missing),
                (_, outcome) => panic!("publish {i} to {}: {outcome:?}", target(i)),
            }
        }
    }
    let stored = (ROUNDS + 1) * EACH / 2;
    env.wait_ready(queue, stored as u32).await;
    // The batch arrived in its order.
    let mut subscription = broker.consume(queue, consume(50)).await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..stored {
        let delivery = next(&mut subscription).await;
        let text = String::from_utf8(delivery.message.body.clone()).unwrap();
        if let Some(i) = text.strip_prefix("batch-") {
            batch.push(i.parse::<usize>().unwrap());
        }
        delivery.acker.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    assert_eq!(batch, (0..EACH).step_by(2).collect::<Vec<_>>());
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
    let spec = QueueSpec::new(queue)
        .with_max_length(2)
        .with_queue_type(queue_type);
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

/// `max_length` counts ready messages only: unacked ones leave room.
pub async fn max_length_counts_ready_messages_only(env: &Env, queue: &str) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker
        .declare_queue(&QueueSpec::new(queue).with_max_length(2))
        .await
        .unwrap();
    for text in ["a", "b"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
    let mut subscription = broker.consume(queue, consume(2)).await.unwrap();
    let held = [next(&mut subscription).await, next(&mut subscription).await];
    env.wait_ready(queue, 0).await;
    for text in ["c", "d"] {
        broker.publish(queue, message(text)).await.unwrap();
    }
    let error = broker.publish(queue, message("e")).await.unwrap_err();
    assert!(matches!(error, Error::PublishRejected { .. }), "{error:?}");
    for delivery in held {
        delivery.acker.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    env.wait_ready(queue, 2).await;
}
