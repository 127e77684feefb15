//! [`MemoryBroker`]: RabbitMQ's semantics for what qjob uses, in memory,
//! on tokio's clock.

mod death;
mod faults;
mod queue;
mod subscription;
mod topic;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use qjob::Error;
use qjob::broker::{
    Broker, ConsumeOptions, Delivery, Message, QueueSpec, QueueStats, Sent, Subscription,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use death::Reason;
use queue::{ConsumerSlot, Queue, Stored, mismatch};
pub(crate) use subscription::MemoryAcker;
use subscription::{MemorySubscription, Settlement};

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

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    next_id: u64,
    /// Publishes to fail with a negative confirm: per queue, or `None` for any.
    failing_publishes: Vec<Option<String>>,
    /// Queues whose next published message is delivered twice.
    duplicating: HashSet<String>,
    /// Queues whose publishes never go out.
    hanging: HashSet<String>,
    /// Queues whose next published message is stored but never confirmed.
    unconfirmed: HashSet<String>,
    /// RabbitMQ's `consumer_timeout`, when modelled.
    consumer_timeout: Option<Duration>,
    /// When the consumer timeout is next checked, if a check is scheduled.
    timeout_check: Option<Instant>,
    /// Why publishing is blocked (a resource alarm), while it is.
    blocked: Option<String>,
    /// The delivery limit of quorum queues declared without one.
    default_delivery_limit: Option<u32>,
    /// Topic exchanges: each binding's queue and pattern.
    exchanges: HashMap<String, Vec<(String, String)>>,
}

/// How many broadcasts a listener holds unsettled (as `AmqpBroker`'s do).
const LISTEN_PREFETCH: u16 = 100;

/// The consumer id under which `basic.get` holds what it took, as RabbitMQ
/// holds it on the getting channel (consumer ids start at 1).
const GETTER: u64 = 0;

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

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Stores `message` in `queue` at the back.
    fn enqueue(&mut self, queue: &str, message: Message, redelivered: bool) -> Option<Instant> {
        let sequence = self.next_id();
        let target = self.queues.get_mut(queue)?;
        let expires_at = target.spec.message_ttl.map(|ttl| Instant::now() + ttl);
        target.ready.insert(
            sequence,
            Stored {
                message,
                redelivered,
                returns: 0,
                expires_at,
                delivered_at: None,
            },
        );
        expires_at
    }

    /// Dead-letters a message that left `queue` for `reason`: to the queue's
    /// dead-letter target with an `x-death` record, or nowhere (as RabbitMQ
    /// drops it) when there is none or the target does not exist.
    fn dead_letter(
        &mut self,
        queue: &str,
        mut message: Message,
        reason: Reason,
    ) -> Option<(String, Instant)> {
        let target = self.queues.get(queue)?.spec.dead_letter_to.clone()?;
        if self.queues.get(&target)?.is_full() {
            // RabbitMQ dead-letters at most once: a target that rejects
            // publishes drops the message.
            return None;
        }
        death::record(&mut message.headers, queue, reason, unix_seconds());
        let expires_at = self.enqueue(&target, message, false)?;
        Some((target, expires_at))
    }

    /// Dead-letters messages past their queue's delivery limit; returns
    /// the expiries that scheduled.
    fn dead_letter_all(&mut self, queue: &str, messages: Vec<Message>) -> Vec<Instant> {
        messages
            .into_iter()
            .filter_map(|message| self.dead_letter(queue, message, Reason::DeliveryLimit))
            .map(|(_, at)| at)
            .collect()
    }

    /// Closes every consumer holding a delivery unsettled for longer than
    /// the consumer timeout, as RabbitMQ closes its channel: the stream
    /// ends with an error and what the consumer held returns to its queue.
    /// Returns the expiries that dead-lettering (past a delivery limit)
    /// scheduled.
    fn time_out_consumers(&mut self) -> Vec<Instant> {
        let Some(timeout) = self.consumer_timeout else {
            return Vec::new();
        };
        let Some(before) = Instant::now().checked_sub(timeout) else {
            return Vec::new();
        };
        let mut over_limit = Vec::new();
        for (name, queue) in &mut self.queues {
            for id in queue.holding_since(before) {
                if let Some((slot, messages)) = queue.remove_consumer(id) {
                    let _ = slot.deliveries.send(Err(Error::broker(
                        format!("consume queue {name:?}"),
                        format!(
                            "PRECONDITION_FAILED - delivery acknowledgement timed out. Timeout value used: {} ms",
                            timeout.as_millis()
                        ),
                    )));
                    over_limit.push((name.clone(), messages));
                }
            }
        }
        over_limit
            .into_iter()
            .flat_map(|(queue, messages)| self.dead_letter_all(&queue, messages))
            .collect()
    }

    /// When the consumer timeout must be checked next, if that is sooner
    /// than the check already scheduled (which it then replaces).
    fn next_timeout_check(&mut self) -> Option<Instant> {
        let timeout = self.consumer_timeout?;
        let due = self
            .queues
            .values()
            .filter_map(Queue::oldest_delivery)
            .min()?
            + timeout;
        if self.timeout_check.is_some_and(|scheduled| scheduled <= due) {
            return None;
        }
        self.timeout_check = Some(due);
        Some(due)
    }

    /// Expires due messages of every queue with a TTL; returns the expiries
    /// that dead-lettering scheduled.
    fn expire_due(&mut self) -> Vec<(String, Instant)> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (name, queue) in &mut self.queues {
            if queue.spec.message_ttl.is_some() {
                for message in queue.take_expired(now) {
                    expired.push((name.clone(), message));
                }
            }
        }
        expired
            .into_iter()
            .filter_map(|(queue, message)| self.dead_letter(&queue, message, Reason::Expired))
            .collect()
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

    /// Publishes `message` to `queue`, calling `mark` as it is stored (see
    /// [`Sent`]); the faults of `faults.rs` hang it before, or after.
    async fn send(&self, queue: &str, message: Message, mark: impl FnOnce()) -> Result<(), Error> {
        if self.lock().hanging.contains(queue) {
            return std::future::pending().await;
        }
        let (expiry, unconfirmed) = self.update(|state| {
            if let Some(reason) = &state.blocked {
                return Err(Error::Blocked {
                    reason: reason.clone(),
                });
            }
            if !state.queues.contains_key(queue) {
                return Err(Error::Unroutable {
                    queue: queue.to_owned(),
                    reason: "NO_ROUTE".into(),
                });
            }
            let failing = state
                .failing_publishes
                .iter()
                .position(|target| target.as_deref().is_none_or(|t| t == queue));
            if let Some(index) = failing {
                state.failing_publishes.remove(index);
                return Err(Error::PublishRejected {
                    queue: queue.to_owned(),
                });
            }
            if state.queues[queue].is_full() {
                return Err(Error::PublishRejected {
                    queue: queue.to_owned(),
                });
            }
            mark();
            if state.duplicating.remove(queue) {
                state.enqueue(queue, message.clone(), true);
            }
            let unconfirmed = state.unconfirmed.remove(queue);
            Ok((state.enqueue(queue, message, false), unconfirmed))
        })?;
        if let Some(at) = expiry {
            self.expire_at(at);
        }
        if unconfirmed {
            return std::future::pending().await;
        }
        Ok(())
    }

    /// Checks the consumer timeout at `at`.
    fn check_consumer_timeout_at(&self, at: Instant) {
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
    fn expire_at(&self, at: Instant) {
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
    fn expire_queue_when_unused(&self, queue: String, expires: Duration) {
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
        let leases = qjob::schedule::LEASE_QUEUE_PREFIX;
        state
            .queues
            .iter()
            .filter(|(name, _)| !name.starts_with(leases))
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

    fn settle(
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
    fn holds(&self, queue: &str, consumer: u64, sequence: u64) -> bool {
        self.lock()
            .queues
            .get_mut(queue)
            .and_then(|queue| queue.slot_mut(consumer))
            .is_some_and(|slot| slot.unacked.contains_key(&sequence))
    }

    fn cancel_consumer(&self, queue: &str, consumer: u64) {
        self.update(|state| {
            if let Some(queue) = state.queues.get_mut(queue) {
                queue.cancel_consumer(consumer);
            }
        });
    }

    /// Replaces `consumer` by a new one with `prefetch`; returns its id.
    fn replace_consumer(&self, queue: &str, consumer: u64, prefetch: u16) -> u64 {
        self.update(|state| {
            let replacement = state.next_id();
            if let Some(queue) = state.queues.get_mut(queue) {
                queue.replace_consumer(consumer, replacement, usize::from(prefetch.max(1)));
            }
            replacement
        })
    }

    fn remove_consumer(&self, queue: &str, consumer: u64) {
        let expiries = self.update(|state| {
            let (_, over_limit) = state.queues.get_mut(queue)?.remove_consumer(consumer)?;
            Some(state.dead_letter_all(queue, over_limit))
        });
        for at in expiries.into_iter().flatten() {
            self.expire_at(at);
        }
    }

    /// A consumer of `queue`.
    fn subscribe(&self, queue: &str, options: ConsumeOptions) -> Result<MemorySubscription, Error> {
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
    fn delete_private(&self, queue: &str) {
        self.update(|state| {
            state.queues.remove(queue);
            for bindings in state.exchanges.values_mut() {
                bindings.retain(|(bound, _)| bound != queue);
            }
        });
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        // As RabbitMQ, a declare does not compare the shard mark: it marks
        // an existing queue, and a declare without it keeps the mark.
        let unmarked = |spec: &QueueSpec| {
            let mut spec = spec.clone();
            spec.shard_of = None;
            spec
        };
        let created = self.update(|state| match state.queues.get_mut(&spec.name) {
            Some(existing) if unmarked(&existing.spec) != unmarked(spec) => {
                Err(mismatch(&existing.spec, spec))
            }
            Some(existing) => {
                existing.last_used = Instant::now();
                if spec.shard_of.is_some() {
                    existing.spec.shard_of.clone_from(&spec.shard_of);
                }
                Ok(false)
            }
            None => {
                state.queues.insert(
                    spec.name.clone(),
                    Queue::new(spec.clone(), state.default_delivery_limit),
                );
                Ok(true)
            }
        })?;
        if let (true, Some(expires)) = (created, spec.expires) {
            self.expire_queue_when_unused(spec.name.clone(), expires);
        }
        Ok(())
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error> {
        self.send(queue, message, || ()).await
    }

    /// Marked as the message is stored.
    async fn publish_tracked(
        &self,
        queue: &str,
        message: Message,
        sent: &Sent,
    ) -> Result<(), Error> {
        self.send(queue, message, || sent.mark(1)).await
    }

    /// Marked as each message is stored.
    async fn publish_all_tracked(
        &self,
        messages: Vec<(String, Message)>,
        sent: &Sent,
    ) -> Vec<Result<(), Error>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        for (index, (queue, message)) in messages.into_iter().enumerate() {
            outcomes.push(self.send(&queue, message, || sent.mark(index + 1)).await);
        }
        outcomes
    }

    async fn broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), Error> {
        let expiries = self.update(|state| {
            if let Some(reason) = &state.blocked {
                return Err(Error::Blocked {
                    reason: reason.clone(),
                });
            }
            let bindings = state.exchanges.entry(exchange.to_owned()).or_default();
            let mut targets: Vec<String> = bindings
                .iter()
                .filter(|(_, pattern)| topic::matches(pattern, routing_key))
                .map(|(queue, _)| queue.clone())
                .collect();
            targets.sort();
            targets.dedup();
            Ok(targets
                .iter()
                .filter_map(|queue| state.enqueue(queue, message.clone(), false))
                .collect::<Vec<_>>())
        })?;
        for at in expiries {
            self.expire_at(at);
        }
        Ok(())
    }

    async fn listen(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        let queue = self.update(|state| {
            let queue = format!("amq.gen-{}", state.next_id());
            state.queues.insert(
                queue.clone(),
                Queue::new(QueueSpec::new(queue.as_str()), None),
            );
            let bindings = state.exchanges.entry(exchange.to_owned()).or_default();
            for pattern in patterns {
                bindings.push((queue.clone(), (*pattern).to_owned()));
            }
            queue
        });
        let options = ConsumeOptions {
            prefetch: LISTEN_PREFETCH,
            tag: format!("qjob-listen-{exchange}"),
        };
        let mut subscription = self.subscribe(&queue, options)?;
        subscription.private = true;
        Ok(Box::new(subscription))
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error> {
        Ok(Box::new(self.subscribe(queue, options)?))
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, Error> {
        Ok(self.lock().queues.get(queue).map(|q| {
            let messages = u32::try_from(q.ready.len()).unwrap_or(u32::MAX);
            let consumers = u32::try_from(q.consumers.len()).unwrap_or(u32::MAX);
            QueueStats::new(messages, consumers)
        }))
    }

    async fn is_shard_of(&self, queue: &str, work_queue: &str) -> Result<bool, Error> {
        let state = self.lock();
        let marked = state
            .queues
            .get(queue)
            .and_then(|q| q.spec.shard_of.as_deref());
        Ok(marked == Some(work_queue))
    }

    fn blocked_reason(&self) -> Option<String> {
        self.lock().blocked.clone()
    }

    fn consumer_timeout(&self) -> Option<Duration> {
        self.lock().consumer_timeout
    }

    async fn get(&self, queue: &str) -> Result<Option<Delivery>, Error> {
        let shared = Arc::downgrade(&self.shared);
        self.update(|state| {
            let Some(target) = state.queues.get_mut(queue) else {
                return Err(Error::broker(
                    format!("get from queue {queue:?}"),
                    format!("NOT_FOUND - no queue {queue:?}"),
                ));
            };
            Ok(target.get(GETTER, &shared))
        })
    }
}
