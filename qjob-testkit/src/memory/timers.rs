//! Timers on tokio's clock: message expiry, idle-queue expiry
//! (`x-expires`) and the consumer timeout check, each a task that holds the
//! broker weakly.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::MemoryBroker;

impl MemoryBroker {
    /// Checks the consumer timeout at `at`.
    pub(super) fn check_consumer_timeout_at(&self, at: Instant) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = shared.upgrade() {
                MemoryBroker { shared }.update(|state| {
                    if state.timeout_check == Some(at) {
                        state.timeout_check = None;
                    }
                });
            }
        });
    }

    /// Checks for expired messages at `at`.
    pub(super) fn expire_at(&self, at: Instant) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = shared.upgrade() {
                MemoryBroker { shared }.update(|_| ());
            }
        });
    }

    /// Deletes `queue` once it has been unused (no consumer, no redeclare)
    /// for its `x-expires`.
    pub(super) fn expire_queue_when_unused(&self, queue: String, expires: Duration) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut at = Instant::now() + expires;
            loop {
                tokio::time::sleep_until(at).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let broker = MemoryBroker { shared };
                let next = broker.update(|state| {
                    let q = state.queues.get(&queue)?;
                    let unused_until = q.last_used + expires;
                    if q.consumer_ids().is_empty() && unused_until <= Instant::now() {
                        state.queues.remove(&queue);
                        None
                    } else {
                        Some(unused_until.max(Instant::now() + Duration::from_millis(1)))
                    }
                });
                match next {
                    Some(next) => at = next,
                    None => return,
                }
            }
        });
    }
}
