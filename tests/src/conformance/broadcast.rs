//! Broadcasts: each reaches the listeners whose patterns match, once.

use qjob::broker::{Broker, Subscription};

use super::support::{message, next};
use crate::env::Env;

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
