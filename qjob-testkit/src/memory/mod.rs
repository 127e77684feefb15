//! [`MemoryBroker`]: RabbitMQ's semantics for what qjob uses, in memory,
//! on tokio's clock.

mod broker;
mod consumers;
mod death;
mod faults;
mod inspect;
mod queue;
mod ready;
mod state;
mod subscription;
mod timers;
mod topic;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use state::State;
pub(crate) use subscription::MemoryAcker;

/// An in-memory broker. Cheap to clone: clones share the queues.
///
/// What it models of RabbitMQ, checked against it by the conformance suite
/// in `tests/` on every CI run:
///
/// - durable queues declared with arguments; a second declare with other
///   arguments fails with `PRECONDITION_FAILED` (the shard mark,
///   `QueueSpec::shard_of`, is not compared: it marks the queue, and stays
///   until the queue is deleted);
/// - publishes confirmed at once; to a missing queue, returned unroutable;
/// - `x-max-length` with `reject-publish` (a negative confirm; a quorum
///   queue takes one message over the limit first, as RabbitMQ's does);
/// - per-consumer prefetch, round-robin delivery, single-active-consumer
///   queues (the next consumer takes over when the active one leaves);
/// - manual ack and reject; a requeued message goes back to its original
///   position, marked redelivered;
/// - message priority: a classic queue declared with `x-max-priority`
///   delivers higher priorities first (above the maximum counts as it),
///   publish order within one; a quorum queue ignores priorities, as on
///   RabbitMQ 3 (RabbitMQ 4's two levels on request:
///   [`MemoryBroker::set_quorum_priorities`]);
/// - dead-lettering (`x-dead-letter-routing-key`) of rejected and expired
///   messages, with RabbitMQ's `x-death` and `x-first-death-*` headers;
/// - per-queue message TTL (`x-message-ttl`) and idle queue expiry
///   (`x-expires`) on tokio's clock, so `#[tokio::test(start_paused = true)]`
///   fast-forwards them;
/// - consumer cancel, and channel or connection loss: everything unsettled
///   returns to its queue;
/// - at-most-once dead-lettering: a message dead-lettered into a queue
///   that is full (`reject-publish`) is dropped.
///
/// Faults for resilience tests: [`MemoryBroker::fail_next_publish`],
/// [`MemoryBroker::duplicate_next_publish`], [`MemoryBroker::drop_connection`],
/// [`MemoryBroker::publish_raw`], [`MemoryBroker::block_publishes`] (a
/// resource alarm) and [`MemoryBroker::set_consumer_timeout`].
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        let mut queues: Vec<_> = state.queues.keys().collect();
        queues.sort();
        f.debug_struct("MemoryBroker")
            .field("queues", &queues)
            .finish()
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("memory broker state poisoned")
    }

    /// Applies `change` to the state, expires due messages, delivers what can
    /// be delivered and wakes whoever waits on a change.
    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let (result, timers, timeouts, check) = {
            let mut state = self.lock();
            let result = change(&mut state);
            let timers = state.expire_due();
            let timeouts = state.time_out_consumers();
            let shared = Arc::downgrade(&self.shared);
            for queue in state.queues.values_mut() {
                queue.dispatch(&shared);
            }
            let check = state.next_timeout_check();
            (result, timers, timeouts, check)
        };
        for at in timers.into_iter().map(|(_, at)| at).chain(timeouts) {
            self.expire_at(at);
        }
        if let Some(at) = check {
            self.check_consumer_timeout_at(at);
        }
        self.shared.changed.notify_waiters();
        result
    }
}
