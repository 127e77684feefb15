//! A consumer's end of the memory broker: its stream of deliveries and the
//! ackers that settle them.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use qjob::Error;
use qjob::broker::{Acker, Delivery, Subscription};
use tokio::sync::mpsc;

use super::{MemoryBroker, Shared};

pub(super) struct MemorySubscription {
    pub(super) broker: MemoryBroker,
    pub(super) queue: String,
    pub(super) id: u64,
    /// Consumers this one replaced (prefetch changes): cancelled, holding
    /// deliveries until they are settled or the subscription goes.
    pub(super) retired: Vec<u64>,
    pub(super) prefetch: u16,
    pub(super) receiver: mpsc::UnboundedReceiver<Result<Delivery, Error>>,
    /// A listener's queue, deleted with the subscription.
    pub(super) private: bool,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        self.receiver.recv().await
    }

    async fn cancel(&mut self) -> Result<(), Error> {
        self.broker.cancel_consumer(&self.queue, self.id);
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        Ok(())
    }

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), Error> {
        let prefetch = prefetch.max(1);
        if prefetch == self.prefetch {
            return Ok(());
        }
        self.prefetch = prefetch;
        let replacement = self.broker.replace_consumer(&self.queue, self.id, prefetch);
        self.retired
            .push(std::mem::replace(&mut self.id, replacement));
        Ok(())
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.receiver.close();
        for id in self.retired.drain(..).chain([self.id]) {
            self.broker.remove_consumer(&self.queue, id);
        }
        if self.private {
            self.broker.delete_private(&self.queue);
        }
    }
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy)]
pub(super) enum Settlement {
    Ack,
    Requeue,
    /// Rejected without requeue: dead-lettered if the queue says where.
    Discard,
}

pub(crate) struct MemoryAcker {
    shared: Weak<Shared>,
    queue: String,
    consumer: u64,
    sequence: u64,
    settled: AtomicBool,
}

impl MemoryAcker {
    pub(crate) fn new(shared: Weak<Shared>, queue: &str, consumer: u64, sequence: u64) -> Self {
        Self {
            shared,
            queue: queue.to_owned(),
            consumer,
            sequence,
            settled: AtomicBool::new(false),
        }
    }

    fn settle(&self, settlement: Settlement) -> Result<(), Error> {
        if self.settled.swap(true, Ordering::SeqCst) {
            return Err(Error::broker("settle", "the delivery was already settled"));
        }
        let Some(shared) = self.shared.upgrade() else {
            return Err(Error::broker("settle", "the broker is gone"));
        };
        MemoryBroker { shared }.settle(&self.queue, self.consumer, self.sequence, settlement)
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.settle(Settlement::Ack)
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.settle(if requeue {
            Settlement::Requeue
        } else {
            Settlement::Discard
        })
    }

    fn is_open(&self) -> bool {
        !self.settled.load(Ordering::SeqCst)
            && self.shared.upgrade().is_some_and(|shared| {
                MemoryBroker { shared }.holds(&self.queue, self.consumer, self.sequence)
            })
    }
}
