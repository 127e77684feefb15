//! Message priority: a classic queue declared with `x-max-priority`, and a
//! quorum queue, which orders by priority without an argument on RabbitMQ
//! 4 and not at all on RabbitMQ 3.

use qjob::broker::{Broker, Message, QueueSpec};
use qjob::{Error, QueueType};

use super::support::{consume, message, next};
use crate::env::Env;

/// Publishes `(text, priority)` in order into `spec`'s queue (declared
/// fresh), then takes them one at a time: their texts, as delivered, and
/// the priority each arrived with.
async fn delivered(
    env: &Env,
    spec: &QueueSpec,
    published: &[(&str, Option<u8>)],
) -> Vec<(String, Option<u8>)> {
    env.delete_queues(&[&spec.name]).await;
    let broker = env.broker();
    broker.declare_queue(spec).await.unwrap();
    for (text, priority) in published {
        let mut sent: Message = message(text);
        sent.priority = *priority;
        broker.publish(&spec.name, sent).await.unwrap();
    }
    env.wait_ready(&spec.name, published.len() as u32).await;
    let mut subscription = broker.consume(&spec.name, consume(1)).await.unwrap();
    let mut order = Vec::new();
    for _ in published {
        let delivery = next(&mut subscription).await;
        let text = String::from_utf8(delivery.message.body.clone()).unwrap();
        order.push((text, delivery.message.priority));
        delivery.acker.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    order
}

fn texts(order: &[(String, Option<u8>)]) -> Vec<&str> {
    order.iter().map(|(text, _)| text.as_str()).collect()
}

/// A classic queue with `x-max-priority = 5` delivers the highest priority
/// first and each priority in publish order; a priority above 5 counts as
/// 5, none as 0, and every message keeps the priority it was published
/// with. Declared again without the argument, it is a mismatch.
pub async fn a_priority_queue_delivers_higher_priorities_first(env: &Env, queue: &str) {
    let spec = QueueSpec::new(queue).with_max_priority(5);
    let order = delivered(
        env,
        &spec,
        &[
            ("a", None),
            ("b", Some(2)),
            ("c", Some(9)),
            ("d", Some(0)),
            ("e", Some(5)),
            ("f", Some(2)),
        ],
    )
    .await;
    assert_eq!(texts(&order), ["c", "e", "b", "f", "a", "d"]);
    assert_eq!(order[0].1, Some(9), "kept as published, not capped");
    assert_eq!(order[4].1, None);
    let error = env
        .broker()
        .declare_queue(&QueueSpec::new(queue))
        .await
        .unwrap_err();
    let Error::QueueMismatch {
        argument,
        existing,
        requested,
        ..
    } = &error
    else {
        panic!("expected a queue mismatch, got {error:?}");
    };
    assert_eq!(
        (argument.as_str(), existing.as_str(), requested.as_str()),
        ("x-max-priority", "5", "none")
    );
}

/// A quorum queue takes no `x-max-priority` and orders by priority all the
/// same on RabbitMQ 4: RabbitMQ 4.0 to 4.2 know two levels, 5 and above
/// high, and deliver two high messages for each older normal one; 4.3 has
/// strict levels (no priority counts as 4). RabbitMQ 3 delivers in publish
/// order. `MemoryBroker` follows RabbitMQ 3, and 4.0 when asked (both
/// checked here).
pub async fn a_quorum_queue_orders_by_priority_on_4_and_not_on_3(env: &Env, queue: &str) {
    let spec = QueueSpec::new(queue).with_queue_type(QueueType::Quorum);
    let published = [
        ("n1", None),
        ("n2", Some(4)),
        ("n3", None),
        ("h1", Some(5)),
        ("h2", Some(9)),
        ("h3", Some(200)),
        ("h4", Some(5)),
    ];
    let publish_order = ["n1", "n2", "n3", "h1", "h2", "h3", "h4"];
    let two_levels = ["h1", "h2", "n1", "h3", "h4", "n2", "n3"];
    if let Env::Memory(memory) = env {
        let order = delivered(env, &spec, &published).await;
        assert_eq!(texts(&order), publish_order, "as RabbitMQ 3");
        memory.set_quorum_priorities(true);
    }
    let order = delivered(env, &spec, &published).await;
    let order = texts(&order);
    // Untested here (CI runs 4.0); as RabbitMQ 4.3's guide describes it.
    let strict = ["h3", "h2", "h1", "h4", "n1", "n2", "n3"];
    match env {
        Env::Amqp(..) if crate::rabbitmq_major() < 4 => assert_eq!(order, publish_order),
        Env::Amqp(..) => assert!(order == two_levels || order == strict, "{order:?}"),
        Env::Memory(_) => assert_eq!(order, two_levels),
    }
}
