//! Faults to inject in users' resilience tests.

use qjob::Error;
use qjob::broker::{Broker, Message};

use super::MemoryBroker;

impl MemoryBroker {
    /// Fault: the next publish (to any queue) gets a negative confirm and is
    /// not stored, as when RabbitMQ nacks.
    pub fn fail_next_publish(&self) {
        self.lock().failing_publishes.push(None);
    }

    /// Fault: the next publish to `queue` gets a negative confirm.
    pub fn fail_next_publish_to(&self, queue: &str) {
        self.lock().failing_publishes.push(Some(queue.to_owned()));
    }

    /// Fault: the next message published to `queue` is delivered twice (the
    /// second time marked redelivered), as at-least-once delivery allows.
    pub fn duplicate_next_publish(&self, queue: &str) {
        self.lock().duplicating.insert(queue.to_owned());
    }

    /// Fault: the connection drops. Every consumer's stream ends with an
    /// error, everything unsettled returns to its queue marked redelivered,
    /// and acks of earlier deliveries fail. New operations work at once (the
    /// broker reconnects).
    pub fn drop_connection(&self) {
        let expiries = self.update(|state| {
            let mut over_limit = Vec::new();
            for (name, queue) in &mut state.queues {
                for id in queue.consumer_ids() {
                    if let Some((slot, messages)) = queue.remove_consumer(id) {
                        let _ = slot
                            .deliveries
                            .send(Err(Error::broker("consume", "connection closed")));
                        over_limit.push((name.clone(), messages));
                    }
                }
            }
            over_limit
                .into_iter()
                .flat_map(|(queue, messages)| state.dead_letter_all(&queue, messages))
                .collect::<Vec<_>>()
        });
        for at in expiries {
            self.expire_at(at);
        }
    }

    /// Publishes raw bytes with no id and no headers, as a foreign producer
    /// (or a corrupted message) would.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    pub async fn publish_raw(&self, queue: &str, body: impl Into<Vec<u8>>) -> Result<(), Error> {
        let message = Message {
            body: body.into(),
            ..Message::default()
        };
        self.publish(queue, message).await
    }
}
