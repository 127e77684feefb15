//! A broker wrapper that records what goes through it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qjob::Error;
use qjob::broker::{
    Broker, ConsumeOptions, Delivery, Message, QueueSpec, QueueStats, Sent, Subscription,
};

/// A broker that records the ids of the messages published through it, in
/// the order they were handed to it, and forwards everything to `inner`.
#[derive(Clone)]
pub struct Recording<B> {
    inner: B,
    /// The message ids, in publish order.
    pub published: Arc<Mutex<Vec<String>>>,
    /// The queue each message id was published to.
    pub queues: Arc<Mutex<std::collections::HashMap<String, String>>>,
    /// The ids of each `publish_all`, in the order the calls began.
    pub calls: Arc<Mutex<Vec<Vec<String>>>>,
    /// `publish_all` calls running now, and the most that ran at once.
    at_once: Arc<(AtomicUsize, AtomicUsize)>,
}

impl<B> Recording<B> {
    /// Records what goes through `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            published: Arc::default(),
            queues: Arc::default(),
            calls: Arc::default(),
            at_once: Arc::default(),
        }
    }

    /// The ids recorded so far.
    pub fn ids(&self) -> Vec<String> {
        self.published.lock().unwrap().clone()
    }

    /// The most `publish_all` calls that ran at once.
    pub fn most_at_once(&self) -> usize {
        self.at_once.1.load(Ordering::SeqCst)
    }

    fn record<'a>(&self, messages: impl IntoIterator<Item = (&'a str, &'a Message)>) {
        let mut published = self.published.lock().unwrap();
        let mut queues = self.queues.lock().unwrap();
        for (queue, message) in messages {
            if let Some(id) = &message.id {
                published.push(id.clone());
                queues.insert(id.clone(), queue.to_owned());
            }
        }
    }
}

#[async_trait]
impl<B: Broker> Broker for Recording<B> {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        self.inner.declare_queue(spec).await
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error> {
        self.publish_tracked(queue, message, &Sent::new()).await
    }

    async fn publish_all(&self, messages: Vec<(String, Message)>) -> Vec<Result<(), Error>> {
        self.publish_all_tracked(messages, &Sent::new()).await
    }

    async fn publish_tracked(
        &self,
        queue: &str,
        message: Message,
        sent: &Sent,
    ) -> Result<(), Error> {
        self.record([(queue, &message)]);
        self.inner.publish_tracked(queue, message, sent).await
    }

    async fn publish_all_tracked(
        &self,
        messages: Vec<(String, Message)>,
        sent: &Sent,
    ) -> Vec<Result<(), Error>> {
        self.record(
            messages
                .iter()
                .map(|(queue, message)| (queue.as_str(), message)),
        );
        self.calls.lock().unwrap().push(
            messages
                .iter()
                .filter_map(|(_, message)| message.id.clone())
                .collect(),
        );
        let (now, most) = &*self.at_once;
        most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        let outcomes = self.inner.publish_all_tracked(messages, sent).await;
        now.fetch_sub(1, Ordering::SeqCst);
        outcomes
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error> {
        self.inner.consume(queue, options).await
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, Error> {
        self.inner.queue_stats(queue).await
    }

    async fn is_shard_of(&self, queue: &str, work_queue: &str) -> Result<bool, Error> {
        self.inner.is_shard_of(queue, work_queue).await
    }

    async fn get(&self, queue: &str) -> Result<Option<Delivery>, Error> {
        self.inner.get(queue).await
    }

    async fn broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), Error> {
        self.inner.broadcast(exchange, routing_key, message).await
    }

    async fn listen(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        self.inner.listen(exchange, patterns).await
    }
}
