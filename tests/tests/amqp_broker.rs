//! The broker conformance scenarios on RabbitMQ.

qjob_tests::conformance_tests!(qjob_tests::scenarios::Env::amqp().await);

use qjob::broker::{Broker, Message, QueueSpec};
use qjob_tests::{Rabbit, connection_channels};

/// Single publishes from many callers at once (on a multi-thread runtime)
/// are gathered onto a few sessions: 500 at once open at most 16 channels
/// on the publishing connection (one each, before), and each is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_publishes_share_a_few_channels() {
    let queue = "qjob.test.broker.gathered";
    let rabbit = Rabbit::connect().await;
    rabbit.delete(&[queue]).await;
    let broker = qjob_tests::amqp().await;
    broker.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    let outcomes = futures_util::future::join_all((0..500).map(|n| {
        let broker = broker.clone();
        async move {
            let message =
                Message::new(format!("{n}").into_bytes()).with_id(format!("gathered-{n}"));
            broker.publish(queue, message).await
        }
    }))
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    rabbit
        .wait_ready(queue, 500, std::time::Duration::from_secs(20))
        .await;
    let channels = connection_channels(&format!("{} publish", broker.connection_name()));
    assert!(
        (1..=16).contains(&channels),
        "{channels} publishing channels"
    );
    rabbit.delete(&[queue]).await;
}
