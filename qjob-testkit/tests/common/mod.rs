//! A broker for the harness's tests that forwards everything to a
//! [`MemoryBroker`], but for the faults a test arms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use qjob::broker::{
    Broker, ConsumeOptions, Delivery, Message, QueueSpec, QueueStats, Sent, Subscription,
};
use qjob::schedule::LEASE_QUEUE_PREFIX;
use qjob_testkit::MemoryBroker;

/// [`MemoryBroker`] with faults the memory broker has no switch for.
#[derive(Clone)]
pub(crate) struct Faulty {
    pub inner: MemoryBroker,
    /// Lease records are taken as published and dropped, as if another
    /// consumer were the lease queue's active one and received them.
    pub leases_elsewhere: Arc<AtomicBool>,
    /// How long a lease's publish takes, in milliseconds.
    pub lease_latency: Arc<AtomicU64>,
    /// Declares of queues whose name contains this time out (a slow
    /// broker), declaring nothing.
    pub declares_time_out: Option<&'static str>,
}

impl Faulty {
    pub(crate) fn new(inner: MemoryBroker) -> Self {
        Self {
            inner,
            leases_elsewhere: Arc::default(),
            lease_latency: Arc::default(),
            declares_time_out: None,
        }
    }
}

#[async_trait::async_trait]
impl Broker for Faulty {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), qjob::Error> {
        if let Some(part) = self.declares_time_out
            && spec.name.contains(part)
        {
            return Err(qjob::Error::Timeout {
                operation: format!("declare queue {:?}", spec.name),
                after: Duration::from_secs(10),
            });
        }
        self.inner.declare_queue(spec).await
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), qjob::Error> {
        if queue.starts_with(LEASE_QUEUE_PREFIX) {
            let latency = self.lease_latency.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(latency)).await;
            if self.leases_elsewhere.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
        self.inner.publish(queue, message).await
    }

    async fn publish_tracked(
        &self,
        queue: &str,
        message: Message,
        sent: &Sent,
    ) -> Result<(), qjob::Error> {
        if queue.starts_with(LEASE_QUEUE_PREFIX) {
            sent.mark(1);
            return self.publish(queue, message).await;
        }
        self.inner.publish_tracked(queue, message, sent).await
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, qjob::Error> {
        self.inner.consume(queue, options).await
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, qjob::Error> {
        self.inner.queue_stats(queue).await
    }

    async fn get(&self, queue: &str) -> Result<Option<Delivery>, qjob::Error> {
        self.inner.get(queue).await
    }

    async fn broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), qjob::Error> {
        self.inner.broadcast(exchange, routing_key, message).await
    }

    async fn listen(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<Box<dyn Subscription>, qjob::Error> {
        self.inner.listen(exchange, patterns).await
    }
}
