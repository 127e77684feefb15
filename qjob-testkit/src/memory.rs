//! [`MemoryBroker`]: queues, confirmed publishes, per-consumer prefetch and
//! manual acknowledgement, in memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use qjob::broker::{Acker, Broker, ConsumeOptions, Delivery, Message, QueueSpec, Subscription};
use qjob::{Error, QueueType};
use tokio::sync::{Notify, mpsc};

/// An in-memory broker. Cheap to clone: clones share the queues.
///
/// What it models of RabbitMQ: durable queues declared with arguments (a
/// second declare with other arguments fails), publishes confirmed at once,
/// `x-max-length` with `reject-publish` (a negative confirm; a quorum queue,
/// like RabbitMQ's, takes one message over the limit first), per-consumer
/// prefetch, round-robin delivery, single-active-consumer queues, manual
/// ack and reject, requeue at the message's original position with
/// `redelivered` set, and redelivery of everything unsettled when a
/// consumer closes or is dropped.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    next_id: u64,
}

struct Queue {
    spec: QueueSpec,
    /// Ready messages by publish sequence, so a requeued message goes back
    /// to its original position.
    ready: BTreeMap<u64, Stored>,
    consumers: VecDeque<ConsumerSlot>,
    /// Cancelled consumers that still hold unsettled deliveries.
    cancelled: Vec<ConsumerSlot>,
}

struct Stored {
    message: Message,
    redelivered: bool,
}

struct ConsumerSlot {
    id: u64,
    prefetch: usize,
    unacked: BTreeMap<u64, Stored>,
    deliveries: mpsc::UnboundedSender<Delivery>,
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

    /// Applies `change` to the state, delivers what can be delivered and
    /// wakes whoever waits on a change.
    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let result = {
            let mut state = self.lock();
            let result = change(&mut state);
            let shared = Arc::downgrade(&self.shared);
            for queue in state.queues.values_mut() {
                queue.dispatch(&shared);
            }
            result
        };
        self.shared.changed.notify_waiters();
        result
    }

    /// The messages ready in `queue` (not delivered to a consumer), oldest first.
    pub fn messages(&self, queue: &str) -> Vec<Message> {
        self.lock()
            .queues
            .get(queue)
            .map(|q| q.ready.values().map(|s| s.message.clone()).collect())
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

    /// The number of consumers of `queue`.
    pub fn consumer_count(&self, queue: &str) -> usize {
        self.lock()
            .queues
            .get(queue)
            .map_or(0, |q| q.consumers.len())
    }

    /// Whether `queue` was declared.
    pub fn has_queue(&self, queue: &str) -> bool {
        self.lock().queues.contains_key(queue)
    }

    /// Resolves once `queue` exists and holds no message, ready or unacked:
    /// a shutdown signal for a worker in tests.
    pub fn wait_until_empty(&self, queue: &str) -> impl Future<Output = ()> + Send + 'static {
        let broker = self.clone();
        let queue = queue.to_owned();
        async move {
            broker
                .wait_for(|state| {
                    state
                        .queues
                        .get(&queue)
                        .is_some_and(|q| q.ready.is_empty() && q.unacked() == 0)
                })
                .await
        }
    }

    /// Resolves once `condition` holds on this broker.
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

    async fn wait_for(&self, condition: impl Fn(&State) -> bool) {
        self.wait_until(|broker| condition(&broker.lock())).await
    }

    fn settle(&self, queue: &str, consumer: u64, sequence: u64, requeue: bool) {
        self.update(|state| {
            let Some(queue) = state.queues.get_mut(queue) else {
                return;
            };
            let Some(slot) = queue.slot_mut(consumer) else {
                return;
            };
            if let Some(mut stored) = slot.unacked.remove(&sequence)
                && requeue
            {
                stored.redelivered = true;
                queue.ready.insert(sequence, stored);
            }
        });
    }

    fn cancel_consumer(&self, queue: &str, consumer: u64) {
        self.update(|state| {
            if let Some(queue) = state.queues.get_mut(queue) {
                queue.cancel_consumer(consumer);
            }
        });
    }

    fn remove_consumer(&self, queue: &str, consumer: u64) {
        self.update(|state| {
            if let Some(queue) = state.queues.get_mut(queue) {
                queue.remove_consumer(consumer);
            }
        });
    }
}

impl Queue {
    /// Whether a publish is rejected (`x-overflow = reject-publish`). Only
    /// ready messages count. Quorum queues check before adding, so they hold
    /// one message over the limit; classic queues never exceed it.
    fn is_full(&self) -> bool {
        let Some(max) = self.spec.max_length else {
            return false;
        };
        let ready = self.ready.len();
        match self.spec.queue_type {
            QueueType::Quorum => ready > max as usize,
            _ => ready >= max as usize,
        }
    }

    fn unacked(&self) -> usize {
        self.slots().map(|c| c.unacked.len()).sum()
    }

    fn slots(&self) -> impl Iterator<Item = &ConsumerSlot> {
        self.consumers.iter().chain(&self.cancelled)
    }

    fn slot_mut(&mut self, consumer: u64) -> Option<&mut ConsumerSlot> {
        self.consumers
            .iter_mut()
            .chain(&mut self.cancelled)
            .find(|c| c.id == consumer)
    }

    /// Moves a consumer out of the dispatch rotation; its unsettled
    /// deliveries stay with it until settled or it is removed.
    fn cancel_consumer(&mut self, consumer: u64) {
        if let Some(index) = self.consumers.iter().position(|c| c.id == consumer) {
            let slot = self.consumers.remove(index).expect("index is in range");
            self.cancelled.push(slot);
        }
    }

    fn remove_consumer(&mut self, consumer: u64) {
        let slot = if let Some(index) = self.consumers.iter().position(|c| c.id == consumer) {
            self.consumers.remove(index).expect("index is in range")
        } else if let Some(index) = self.cancelled.iter().position(|c| c.id == consumer) {
            self.cancelled.swap_remove(index)
        } else {
            return;
        };
        for (sequence, mut stored) in slot.unacked {
            stored.redelivered = true;
            self.ready.insert(sequence, stored);
        }
    }

    /// Hands ready messages to consumers with free prefetch, round robin
    /// (only the first consumer of a single-active-consumer queue).
    fn dispatch(&mut self, shared: &std::sync::Weak<Shared>) {
        let active = if self.spec.single_active {
            self.consumers.len().min(1)
        } else {
            self.consumers.len()
        };
        let mut idle_turns = 0;
        while !self.ready.is_empty() && idle_turns < active {
            let slot = self.consumers.front_mut().expect("active consumers exist");
            if slot.unacked.len() >= slot.prefetch || slot.deliveries.is_closed() {
                idle_turns += 1;
            } else {
                idle_turns = 0;
                let (sequence, stored) = self.ready.pop_first().expect("not empty");
                let delivery = Delivery {
                    message: stored.message.clone(),
                    redelivered: stored.redelivered,
                    acker: Box::new(MemoryAcker {
                        shared: shared.clone(),
                        queue: self.spec.name.clone(),
                        consumer: slot.id,
                        sequence,
                        settled: AtomicBool::new(false),
                    }),
                };
                slot.unacked.insert(sequence, stored);
                // A closed receiver is a dropped subscription, whose Drop
                // removes the consumer and requeues this message.
                let _ = slot.deliveries.send(delivery);
            }
            if !self.spec.single_active {
                self.consumers.rotate_left(1);
            }
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        self.update(|state| match state.queues.get(&spec.name) {
            Some(existing) if existing.spec != *spec => Err(Error::broker(
                format!("declare queue {:?}", spec.name),
                format!(
                    "PRECONDITION_FAILED - inequivalent arguments: declared {:?}, requested {:?}",
                    existing.spec, spec
                ),
            )),
            Some(_) => Ok(()),
            None => {
                state.queues.insert(
                    spec.name.clone(),
                    Queue {
                        spec: spec.clone(),
                        ready: BTreeMap::new(),
                        consumers: VecDeque::new(),
                        cancelled: Vec::new(),
                    },
                );
                Ok(())
            }
        })
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error> {
        self.update(|state| {
            state.next_id += 1;
            let sequence = state.next_id;
            let Some(target) = state.queues.get_mut(queue) else {
                return Err(Error::Unroutable {
                    queue: queue.to_owned(),
                    reason: "NO_ROUTE".into(),
                });
            };
            if target.is_full() {
                return Err(Error::PublishRejected {
                    queue: queue.to_owned(),
                });
            }
            target.ready.insert(
                sequence,
                Stored {
                    message,
                    redelivered: false,
                },
            );
            Ok(())
        })
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error> {
        let (deliveries, receiver) = mpsc::unbounded_channel();
        let id = self.update(|state| {
            state.next_id += 1;
            let id = state.next_id;
            let Some(target) = state.queues.get_mut(queue) else {
                return Err(Error::broker(
                    format!("consume queue {queue:?}"),
                    format!("NOT_FOUND - no queue {queue:?}"),
                ));
            };
            target.consumers.push_back(ConsumerSlot {
                id,
                prefetch: usize::from(options.prefetch.max(1)),
                unacked: BTreeMap::new(),
                deliveries,
            });
            Ok(id)
        })?;
        Ok(Box::new(MemorySubscription {
            broker: self.clone(),
            queue: queue.to_owned(),
            id,
            receiver,
        }))
    }
}

struct MemorySubscription {
    broker: MemoryBroker,
    queue: String,
    id: u64,
    receiver: mpsc::UnboundedReceiver<Delivery>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        self.receiver.recv().await.map(Ok)
    }

    async fn cancel(&mut self) -> Result<(), Error> {
        self.broker.cancel_consumer(&self.queue, self.id);
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        Ok(())
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.receiver.close();
        self.broker.remove_consumer(&self.queue, self.id);
    }
}

struct MemoryAcker {
    shared: std::sync::Weak<Shared>,
    queue: String,
    consumer: u64,
    sequence: u64,
    settled: AtomicBool,
}

impl MemoryAcker {
    fn settle(&self, requeue: bool) -> Result<(), Error> {
        if self.settled.swap(true, Ordering::SeqCst) {
            return Err(Error::broker("settle", "the delivery was already settled"));
        }
        let Some(shared) = self.shared.upgrade() else {
            return Err(Error::broker("settle", "the broker is gone"));
        };
        MemoryBroker { shared }.settle(&self.queue, self.consumer, self.sequence, requeue);
        Ok(())
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.settle(false)
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.settle(requeue)
    }
}
