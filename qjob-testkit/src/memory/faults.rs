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

    /// Fault: publishes to `queue` never go out, as when the publishing
    /// connection hangs: nothing is stored, nothing is marked
    /// [`Sent`](qjob::broker::Sent), and each publish waits until its
    /// caller gives up on it (a timeout, a dropped future).
    pub fn hang_publishes_to(&self, queue: &str) {
        self.lock().hanging.insert(queue.to_owned());
    }

    /// Fault: the next message published to `queue` is stored, but its
    /// confirm never comes, as when the connection goes after the message
    /// was sent: the publish waits until its caller gives up on it.
    pub fn lose_next_confirm_to(&self, queue: &str) {
        self.lock().unconfirmed.insert(queue.to_owned());
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

    /// Fault: a resource alarm. Until [`MemoryBroker::unblock_publishes`]
    /// every publish fails with [`Error::Blocked`] and nothing is stored, and
    /// [`Broker::blocked_reason`] reports `reason`; consumers, acks and
    /// `basic.get` go on, as RabbitMQ keeps reading connections that do not
    /// publish.
    pub fn block_publishes(&self, reason: &str) {
        self.update(|state| state.blocked = Some(reason.to_owned()));
    }

    /// The resource alarm clears: publishes are stored again.
    pub fn unblock_publishes(&self) {
        self.update(|state| state.blocked = None);
    }

    /// RabbitMQ's `consumer_timeout` (30 minutes by default there; off
    /// here unless set): a consumer holding a delivery unsettled for longer
    /// has its channel closed. Its stream ends with an error and everything
    /// it held returns to its queue, redelivered. Runs on tokio's clock.
    pub fn set_consumer_timeout(&self, timeout: Option<std::time::Duration>) {
        self.update(|state| {
            state.consumer_timeout = timeout;
            state.timeout_check = None;
        });
    }

    /// RabbitMQ 4's default delivery limit for quorum queues (20 there;
    /// none on RabbitMQ 3 and here unless set): a message returned to a
    /// quorum queue declared without a limit more often than `limit` is
    /// dead-lettered, or dropped if the queue has no target. Applies to
    /// queues declared from now on.
    pub fn set_default_delivery_limit(&self, limit: Option<u32>) {
        self.update(|state| state.default_delivery_limit = limit);
    }

    /// RabbitMQ 4's quorum queue priorities (off, as on RabbitMQ 3, unless
    /// set): a quorum queue declared from now on delivers its messages of
    /// priority 5 and above first, two for each older one of a lower
    /// priority (or none) while both wait, as RabbitMQ 4.0 to 4.2 do.
    /// (RabbitMQ 4.3 has 32 strict levels instead.)
    pub fn set_quorum_priorities(&self, on: bool) {
        self.update(|state| state.quorum_priorities = on);
    }

    /// Fault: the broker cancels every consumer of `queue` (`basic.cancel`
    /// from the server, as when a node holding the queue goes away). Their
    /// streams end; what they hold stays theirs, settleable, until their
    /// subscription is closed; a single-active-consumer queue passes to the
    /// next consumer at once.
    pub fn cancel_consumers(&self, queue: &str) {
        self.update(|state| {
            if let Some(queue) = state.queues.get_mut(queue) {
                queue.cancel_all();
            }
        });
    }

    /// Publishes raw bytes with no id and no headers, as a foreign producer
    /// (or a corrupted message) would.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    pub async fn publish_raw(&self, queue: &str, body: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.publish(queue, Message::new(body)).await
    }
}
