//! What tests read of the broker (messages, counts, queues, pending work),
//! the waits on it, and deleting a queue.

use std::time::Duration;

use qjob::broker::Message;
use tokio::time::Instant;

use super::MemoryBroker;
use super::queue::Queue;

impl MemoryBroker {
    /// The messages ready in `queue` (not delivered to a consumer), oldest
    /// first; in a queue that orders by priority, highest priority first
    /// (each in publish order).
    pub fn messages(&self, queue: &str) -> Vec<Message> {
        self.lock()
            .queues
            .get(queue)
            .map(|q| q.ready.iter().map(|s| s.message.clone()).collect())
            .unwrap_or_default()
    }

    /// The number of messages ready in `queue`.
    pub fn ready_count(&self, queue: &str) -> usize {
        self.lock().queues.get(queue).map_or(0, |q| q.ready.len())
    }

    /// The number of messages delivered from `queue` and not yet settled.
    pub fn unacked_count(&self, queue: &str) -> usize {
        self.lock().queues.get(queue).map_or(0, Queue::unacked)
    }

    /// The number of consumers of `queue` (cancelled ones not counted).
    pub fn consumer_count(&self, queue: &str) -> usize {
        self.lock()
            .queues
            .get(queue)
            .map_or(0, |q| q.consumers.len())
    }

    /// Whether `queue` exists.
    pub fn has_queue(&self, queue: &str) -> bool {
        self.lock().queues.contains_key(queue)
    }

    /// The names of every queue, sorted.
    pub fn queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().queues.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether there is work that will happen without anyone publishing: a
    /// delivery unsettled, a message ready in a consumed queue, or a message
    /// due back from a delay within `horizon` (a qjob delay longer than one
    /// delay-queue hop counts with all its hops). A schedule's lease,
    /// which its leader holds for as long as it leads, is not work.
    pub fn has_pending_work(&self, horizon: Duration) -> bool {
        let state = self.lock();
        let until = Instant::now() + horizon;
        state
            .queues
            .iter()
            .filter(|(name, _)| !is_lease_queue(name))
            .any(|(_, q)| {
                q.unacked() > 0
                    || (!q.consumers.is_empty() && !q.ready.is_empty())
                    || (q.spec.dead_letter_to.is_some()
                        && q.next_due().is_some_and(|at| at <= until))
            })
    }

    /// Resolves once `queue` exists and holds no message, ready or unacked:
    /// a shutdown signal for a worker in tests.
    pub fn wait_until_empty(&self, queue: &str) -> impl Future<Output = ()> + Send + 'static {
        let broker = self.clone();
        let queue = queue.to_owned();
        async move {
            broker
                .wait_until(|broker| {
                    broker
                        .lock()
                        .queues
                        .get(&queue)
                        .is_some_and(|q| q.ready.is_empty() && q.unacked() == 0)
                })
                .await
        }
    }

    /// Resolves once `condition` holds on this broker; it is checked after
    /// every change.
    pub async fn wait_until(&self, condition: impl Fn(&MemoryBroker) -> bool) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if condition(self) {
                return;
            }
            changed.await;
        }
    }

    /// Deletes `queue` and its messages, as `queue.delete` does; its
    /// consumers' streams end (the broker cancels them).
    pub fn delete_queue(&self, queue: &str) {
        self.update(|state| {
            state.queues.remove(queue);
        });
    }
}

/// Whether `name` is a schedule's lease queue.
#[cfg(feature = "periodic")]
fn is_lease_queue(name: &str) -> bool {
    name.starts_with(qjob::schedule::LEASE_QUEUE_PREFIX)
}

/// Whether `name` is a schedule's lease queue: none without periodic jobs.
#[cfg(not(feature = "periodic"))]
fn is_lease_queue(_name: &str) -> bool {
    false
}
