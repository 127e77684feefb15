//! Settlements reach RabbitMQ whatever happens to the futures that make
//! them: acks, and the dead letters a browse puts back.

use std::task::Poll;
use std::time::Duration;

use qjob::broker::{ConsumeOptions, Delivery, Message, QueueSpec, Subscription};
use qjob_tests::scenarios::{Env, LIMIT};
use qjob_tests::{eventually, queue_messages};

/// `count` messages published into a fresh `queue` and delivered to one
/// subscription (prefetch `count`): the subscription and the deliveries,
/// unsettled.
async fn delivered(env: &Env, queue: &str, count: u8) -> (Box<dyn Subscription>, Vec<Delivery>) {
    env.delete_queues(&[queue]).await;
    let broker = env.broker();
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    for n in 0..count {
        let message = Message::new(vec![b'0' + n]);
        broker.publish(queue, message).await.unwrap();
    }
    let options = ConsumeOptions::new(u16::from(count), queue);
    let mut subscription = broker.consume(queue, options).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..count {
        let next = tokio::time::timeout(LIMIT, subscription.next()).await;
        deliveries.push(next.unwrap().unwrap().unwrap());
    }
    (subscription, deliveries)
}

/// Acks every delivery. The first ack becomes the flusher and is dropped
/// after one poll (its handler timed out or was aborted); the others join
/// its flush.
async fn ack_with_the_flusher_dropped(deliveries: &[Delivery]) {
    {
        let mut ack = deliveries[0].acker.ack();
        let polled = std::future::poll_fn(|cx| Poll::Ready(ack.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "the flush has not run yet");
    }
    for delivery in &deliveries[1..] {
        delivery.acker.ack().await.unwrap();
    }
}

/// Waits until every message of `queue` is gone, ready or unacked.
async fn all_acked(queue: &str) {
    eventually(
        "every ack to reach the broker",
        Duration::from_secs(15),
        || queue_messages(queue),
        |left| *left == 0,
    )
    .await;
}

/// A handler's ack future dropped mid-flush (a timeout, an aborted task)
/// must not leave the channel's later acks parked forever.
#[tokio::test]
async fn a_dropped_ack_flush_does_not_stall_later_acks() {
    let queue = "qjob.test.acks.dropped-flush";
    let env = Env::amqp().await;
    let (subscription, deliveries) = delivered(&env, queue, 4).await;
    ack_with_the_flusher_dropped(&deliveries).await;
    all_acked(queue).await;
    subscription.close().await.unwrap();
    assert_eq!(env.ready(queue).await, 0, "nothing came back at close");
}

/// Acks made before a subscription closes reach the broker first, even when
/// the handler whose ack was flushing them was aborted (a stop at the
/// shutdown timeout): closing does not send their jobs back to run again.
#[tokio::test]
async fn acks_made_before_a_close_are_sent_before_it() {
    let queue = "qjob.test.acks.close";
    let env = Env::amqp().await;
    let (subscription, deliveries) = delivered(&env, queue, 8).await;
    ack_with_the_flusher_dropped(&deliveries).await;
    // Closed at once, before the flush had a turn. Lost acks would leave
    // the jobs in the queue (unacked, then ready again) for good.
    subscription.close().await.unwrap();
    all_acked(queue).await;
}

qjob_tests::test_job!(browsed, "qjob.test.acks.browsed", retry = 0);

/// A dead-letter browse dropped mid-way (a timeout, an aborted request)
/// puts back what it had taken: the dead letters reappear in the DLQ at
/// once, not when the connection closes.
#[tokio::test]
async fn a_dropped_browse_puts_its_dead_letters_back() {
    use qjob::Job;
    let env = Env::amqp().await;
    env.reset::<BrowsedJob>().await;
    let dlq = BrowsedJob::options().dead_letter_queue();
    let broker = env.broker();
    broker
        .declare_queue(&QueueSpec::new(dlq.as_str()))
        .await
        .unwrap();
    let letters = 300;
    for n in 0..letters {
        let message = Message::new(format!(
            "{{\"tag\":\"browsed\",\"seq\":{n},\"act\":\"Succeed\"}}"
        ));
        broker.publish(&dlq, message).await.unwrap();
    }
    let client = env.client();
    let dead_letters = client.dead_letters::<BrowsedJob>();
    let mut peek = Box::pin(dead_letters.peek(letters as usize));
    // Let the browse take some, then drop it while it holds them.
    let mut taken = 0;
    for _ in 0..500 {
        let slice = tokio::time::timeout(Duration::from_millis(5), peek.as_mut()).await;
        assert!(
            slice.is_err(),
            "the browse finished before it could be dropped"
        );
        taken = letters - env.ready(&dlq).await;
        if taken > 0 {
            break;
        }
    }
    assert!(taken > 0, "the browse took nothing");
    drop(peek);
    // Ready again (not merely unacked on the browse's channel).
    println!("{taken} taken by the browse");
    env.wait_ready(&dlq, letters).await;
}
