//! Broker-level scenarios written once against the `Broker` trait and run on
//! both brokers: what the runtime relies on, checked on RabbitMQ itself and
//! on the in-memory fake, so the fake cannot drift.

use std::time::Duration;

use std::sync::Arc;

use qjob::broker::{
    Broker, ConsumeOptions, Delivery, HeaderValue, Headers, Message, QueueSpec, Sent, Subscription,
};
use qjob::{Error, QueueType};

use crate::env::{Env, LIMIT};

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

/// A new plain `queue` holding `texts`, in order.
async fn fresh_queue(env: &Env, queue: &str, texts: &[&str]) -> Arc<dyn Broker> {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    for text in texts {
        broker.publish(queue, message(text)).await.unwrap();
    }
    broker
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

/// Takes the one message of `queue` with a fresh consumer and acks it.
async fn take_one(env: &Env, queue: &str) -> Message {
    let mut subscription = env.broker().consume(queue, consume(1)).await.unwrap();
    let delivery = next(&mut subscription).await;
    let message = delivery.message.clone();
    delivery.acker.ack().await.unwrap();
    subscription.close().await.unwrap();
    message
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

/// The bodies of the next `count` deliveries of `subscription`, acked.
async fn bodies(subscription: &mut Box<dyn Subscription>, count: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..count {
        let delivery = next(subscription).await;
        delivery.acker.ack().await.unwrap();
        bodies.push(String::from_utf8(delivery.message.body).unwrap());
    }
    bodies
}

/// A broadcast reaches every listener whose patterns match its routing key,
/// once, and nobody else; what was broadcast before a listener existed, or
/// after it closed, does not reach it; with no listener it goes nowhere
/// without an error. (Each listener receives in broadcast order, so the
/// next body it receives proves what it did not.)
pub async fn broadcasts_reach_the_matching_listeners(env: &Env, exchange: &str) {
    let broker = env.broker();
    broker
        .broadcast(exchange, "all", message("0"))
        .await
        .unwrap();
    let mut one = broker.listen(exchange, &["worker.a", "all"]).await.unwrap();
    let mut workers = broker.listen(exchange, &["worker.*"]).await.unwrap();
    let mut everything = broker.listen(exchange, &["#", "all"]).await.unwrap();
    for (key, body) in [("worker.a", "1"), ("worker.b", "2"), ("all", "3")] {
        broker
            .broadcast(exchange, key, message(body))
            .await
            .unwrap();
    }
    assert_eq!(bodies(&mut one, 2).await, ["1", "3"]);
    assert_eq!(bodies(&mut everything, 3).await, ["1", "2", "3"]);
    one.close().await.unwrap();
    for (key, body) in [("worker.a", "4"), ("worker.c.d", "5"), ("worker.c", "6")] {
        broker
            .broadcast(exchange, key, message(body))
            .await
            .unwrap();
    }
    assert_eq!(bodies(&mut workers, 3).await, ["1", "2", "4"]);
    assert_eq!(bodies(&mut workers, 1).await, ["6"]);
    assert_eq!(bodies(&mut everything, 3).await, ["4", "5", "6"]);
    workers.close().await.unwrap();
    everything.close().await.unwrap();
    broker
        .broadcast(exchange, "all", message("7"))
        .await
        .unwrap();
}
