//! [`Broker`] for [`MemoryBroker`]: declaring, publishing (with the
//! faults armed), broadcasting, consuming and `get`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qjob::Error;
use qjob::broker::{
    Broker, ConsumeOptions, Delivery, Message, QueueSpec, QueueStats, Sent, Subscription,
};
use tokio::time::Instant;

use super::MemoryBroker;
use super::queue::{Queue, mismatch};
use super::topic;

/// How many broadcasts a listener holds unsettled (as `AmqpBroker`'s do).
const LISTEN_PREFETCH: u16 = 100;

/// The consumer id under which `basic.get` holds what it took, as RabbitMQ
/// holds it on the getting channel (consumer ids start at 1).
const GETTER: u64 = 0;

impl MemoryBroker {
    /// Publishes `message` to `queue`, calling `mark` as it is stored (see
    /// [`Sent`]); the faults of `faults.rs` hang it before, or after.
    pub(super) async fn send(
        &self,
        queue: &str,
        message: Message,
        mark: impl FnOnce(),
    ) -> Result<(), Error> {
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
                    Queue::new(
                        spec.clone(),
                        state.default_delivery_limit,
                        state.quorum_priorities,
                    ),
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
                Queue::new(QueueSpec::new(queue.as_str()), None, false),
            );
            let bindings = state.exchanges.entry(exchange.to_owned()).or_default();
            for pattern in patterns {
                bindings.push((queue.clone(), (*pattern).to_owned()));
            }
            queue
        });
        let options = ConsumeOptions::new(LISTEN_PREFETCH, format!("qjob-listen-{exchange}"));
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
