//! The broker's side of a subscription: subscribing, settling a delivery,
//! and cancelling, replacing or removing a consumer.

use qjob::Error;
use qjob::broker::ConsumeOptions;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::MemoryBroker;
use super::death::Reason;
use super::queue::ConsumerSlot;
use super::subscription::{MemorySubscription, Settlement};

impl MemoryBroker {
    pub(super) fn settle(
        &self,
        queue: &str,
        consumer: u64,
        sequence: u64,
        settlement: Settlement,
    ) -> Result<(), Error> {
        self.update(|state| {
            let closed = || Error::broker("settle", "the delivery's channel is closed");
            let target = state.queues.get_mut(queue).ok_or_else(closed)?;
            let slot = target.slot_mut(consumer).ok_or_else(closed)?;
            let stored = slot.unacked.remove(&sequence).ok_or_else(closed)?;
            match settlement {
                Settlement::Ack => Ok(None),
                Settlement::Requeue => Ok(target
                    .give_back(sequence, stored)
                    .and_then(|message| state.dead_letter(queue, message, Reason::DeliveryLimit))
                    .map(|(_, at)| at)),
                Settlement::Discard => Ok(state
                    .dead_letter(queue, stored.message, Reason::Rejected)
                    .map(|(_, at)| at)),
            }
        })
        .map(|expiry| {
            if let Some(at) = expiry {
                self.expire_at(at);
            }
        })
    }

    /// Whether `consumer` of `queue` still holds delivery `sequence`
    /// unsettled (it does not once its connection dropped).
    pub(super) fn holds(&self, queue: &str, consumer: u64, sequence: u64) -> bool {
        self.lock()
            .queues
            .get_mut(queue)
            .and_then(|queue| queue.slot_mut(consumer))
            .is_some_and(|slot| slot.unacked.contains_key(&sequence))
    }

    pub(super) fn cancel_consumer(&self, queue: &str, consumer: u64) {
        self.update(|state| {
            if let Some(queue) = state.queues.get_mut(queue) {
                queue.cancel_consumer(consumer);
            }
        });
    }

    /// Replaces `consumer` by a new one with `prefetch`; returns its id.
    pub(super) fn replace_consumer(&self, queue: &str, consumer: u64, prefetch: u16) -> u64 {
        self.update(|state| {
            let replacement = state.next_id();
            if let Some(queue) = state.queues.get_mut(queue) {
                queue.replace_consumer(consumer, replacement, usize::from(prefetch.max(1)));
            }
            replacement
        })
    }

    pub(super) fn remove_consumer(&self, queue: &str, consumer: u64) {
        let expiries = self.update(|state| {
            let (_, over_limit) = state.queues.get_mut(queue)?.remove_consumer(consumer)?;
            Some(state.dead_letter_all(queue, over_limit))
        });
        for at in expiries.into_iter().flatten() {
            self.expire_at(at);
        }
    }

    /// A consumer of `queue`.
    pub(super) fn subscribe(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<MemorySubscription, Error> {
        let (deliveries, receiver) = mpsc::unbounded_channel();
        let id = self.update(|state| {
            let id = state.next_id();
            let Some(target) = state.queues.get_mut(queue) else {
                return Err(Error::broker(
                    format!("consume queue {queue:?}"),
                    format!("NOT_FOUND - no queue {queue:?}"),
                ));
            };
            target.last_used = Instant::now();
            target.consumers.push_back(ConsumerSlot {
                id,
                prefetch: usize::from(options.prefetch.max(1)),
                unacked: Default::default(),
                deliveries,
            });
            Ok(id)
        })?;
        Ok(MemorySubscription {
            broker: self.clone(),
            queue: queue.to_owned(),
            id,
            retired: Vec::new(),
            prefetch: options.prefetch.max(1),
            receiver,
            private: false,
        })
    }

    /// Deletes a listener's private queue and its bindings.
    pub(super) fn delete_private(&self, queue: &str) {
        self.update(|state| {
            state.queues.remove(queue);
            for bindings in state.exchanges.values_mut() {
                bindings.retain(|(bound, _)| bound != queue);
            }
        });
    }
}
