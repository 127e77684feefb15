//! The [`Broker`] trait: the one seam between qjob's runtime and a transport.
//!
//! [`crate::AmqpBroker`] implements it on RabbitMQ; `qjob_testkit::MemoryBroker`
//! implements it in memory. The runtime (client, worker, policies) speaks only
//! to this trait, so both brokers run the same code.

mod delivery;
mod message;
mod queue;
mod sent;

use std::time::Duration;

use async_trait::async_trait;

pub use delivery::{Acker, ConsumeOptions, Delivery, Subscription};
pub use message::{ExactValue, HeaderValue, Headers, Message};
pub use queue::{QueueSpec, QueueStats};
pub use sent::Sent;

use crate::Error;

/// A message transport with RabbitMQ's semantics: durable queues, confirmed
/// publishes, per-consumer prefetch and manual acknowledgement.
///
/// qjob ships two: `AmqpBroker` (RabbitMQ) and `qjob_testkit::MemoryBroker`.
/// Another implementation (a fake for a test, a transport) must keep the
/// contract each method states; the conformance suite in `tests/src/conformance/`
/// checks it, scenario by scenario, and is the place to start. The worker
/// relies above all on these: a publish that returns `Ok` is stored; a
/// delivery not acked comes back (after `close`, a lost connection, a
/// reject with requeue), marked redelivered; nothing is delivered twice at
/// once to one consumer.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Declares a durable queue; declaring it again with the same
    /// arguments does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::QueueMismatch`] if the queue exists with other arguments
    /// (naming the first that differs, as RabbitMQ's `PRECONDITION_FAILED`
    /// does); [`Error::Broker`] or [`Error::Connect`] if the transport
    /// failed. A failed declare must not break later operations.
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error>;

    /// Publishes a persistent message to `queue` and returns once the
    /// broker confirmed it: `Ok` means stored. The message's id, headers
    /// (of every type, unchanged), kind and timestamp travel with it.
    ///
    /// # Errors
    ///
    /// [`Error::PublishRejected`] on a negative confirm (a full
    /// `reject-publish` queue), [`Error::Unroutable`] if the queue does not
    /// exist, [`Error::Blocked`] if the broker blocks publishing (a resource
    /// alarm; nothing sent), [`Error::Timeout`] if no confirm came in time,
    /// [`Error::Broker`] or [`Error::Connect`] if the transport failed,
    /// [`Error::NotSent`] if it was not sent at all. After `Timeout` and
    /// `Broker` the message may or may not have been stored; after the
    /// others it was not.
    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error>;

    /// Publishes each message to its queue, in order (what one queue
    /// receives arrives in this order), as [`Broker::publish`] would, and
    /// returns each one's outcome in order. A broker may pipeline them;
    /// the default publishes one after the other.
    ///
    /// # Errors
    ///
    /// Each outcome as for [`Broker::publish`].
    async fn publish_all(&self, messages: Vec<(String, Message)>) -> Vec<Result<(), Error>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        for (queue, message) in messages {
            outcomes.push(self.publish(&queue, message).await);
        }
        outcomes
    }

    /// As [`Broker::publish`], marking `sent` (a count of 1) once the
    /// message has gone out: from then on it may be stored even if this
    /// future is dropped. Before, dropping the future stores nothing.
    ///
    /// The default marks it before calling [`Broker::publish`]: a broker
    /// that cannot tell is taken to have sent the message from the start
    /// (a producer abandoning it then keeps the job's unique lock until its
    /// window ends). `AmqpBroker` marks it when it hands the message to its
    /// channel, after waiting for a connection and a channel.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    async fn publish_tracked(
        &self,
        queue: &str,
        message: Message,
        sent: &Sent,
    ) -> Result<(), Error> {
        sent.mark(1);
        self.publish(queue, message).await
    }

    /// As [`Broker::publish_all`], marking in `sent` how many of the
    /// messages, from the first, have gone out (see
    /// [`Broker::publish_tracked`]). The default marks them all before
    /// calling [`Broker::publish_all`].
    ///
    /// # Errors
    ///
    /// Each outcome as for [`Broker::publish`].
    async fn publish_all_tracked(
        &self,
        messages: Vec<(String, Message)>,
        sent: &Sent,
    ) -> Vec<Result<(), Error>> {
        sent.mark(messages.len());
        self.publish_all(messages).await
    }

    /// Starts a consumer on `queue` with manual acknowledgement, holding at
    /// most `options.prefetch` unsettled deliveries. On a
    /// single-active-consumer queue only the first consumer receives; the
    /// next takes over, with what the first left unsettled in queue order,
    /// when the first goes.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if the queue does not exist or the transport
    /// failed; [`Error::Connect`] if no connection could be made.
    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error>;

    /// The ready messages (not the unacked ones) and the consumers (active
    /// or standing by) of `queue`, or `None` if it does not exist (a
    /// passive declare).
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] or [`Error::Connect`] if the transport failed.
    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, Error>;

    /// Whether `queue` exists and was declared as a shard of `work_queue`
    /// ([`QueueSpec::shard_of`]). A worker consumes a queue named like a
    /// shard past its job's `shards` only if it is one. The default,
    /// `false`, is right for a broker that cannot mark queues: such a
    /// worker consumes only the shards its job declares.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] or [`Error::Connect`] if the transport failed.
    async fn is_shard_of(&self, queue: &str, work_queue: &str) -> Result<bool, Error> {
        let _ = (queue, work_queue);
        Ok(false)
    }

    /// Takes the next ready message of `queue` (`basic.get`), unsettled:
    /// the caller acks or rejects it (a reject with requeue puts it back in
    /// its place). `None` if the queue is empty.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if the queue does not exist or the transport
    /// failed.
    async fn get(&self, queue: &str) -> Result<Option<Delivery>, Error>;

    /// Publishes `message` to the topic exchange `exchange` under
    /// `routing_key` (words separated by `.`), for whoever listens
    /// ([`Broker::listen`]): each listener whose patterns match gets one
    /// copy; with none, the message is dropped. It is for live state and
    /// commands between processes (worker heartbeats, console commands), not
    /// for jobs: it is not persistent. The exchange is declared (topic,
    /// durable) if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`], except that no listener is not an error
    /// (never [`Error::Unroutable`]).
    async fn broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), Error>;

    /// Receives what is broadcast to `exchange` under routing keys that
    /// match any of `patterns` (`*` stands for one word, `#` for zero or
    /// more, as in RabbitMQ's topic exchanges), from now on: a private
    /// queue of this connection, bound to the patterns and deleted when the
    /// subscription closes or the connection is lost (the stream then
    /// ends; listen again). Deliveries are settled as a consumer's are. The
    /// exchange is declared if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] or [`Error::Connect`] if the transport failed.
    async fn listen(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<Box<dyn Subscription>, Error>;

    /// Whether the broker is connected now (health reports). A fake that
    /// cannot lose its connection keeps the default, `true`.
    fn is_connected(&self) -> bool {
        true
    }

    /// Why the broker blocks publishing now, if it does: health reports it,
    /// and a settlement waits for it to clear before publishing again.
    /// `None` by default.
    fn blocked_reason(&self) -> Option<String> {
        None
    }

    /// The longest the broker lets a consumer hold a delivery unsettled
    /// before it takes it back (RabbitMQ's `consumer_timeout`), if it has
    /// such a limit. The worker keeps what it holds within it and warns at
    /// start about jobs that could outlast it. A fake without the limit
    /// returns `None` (the default).
    fn consumer_timeout(&self) -> Option<Duration> {
        None
    }
}

/// A broker behind an `Arc` is a broker: share one between a `Client`, a
/// `Worker` and your own code with `Arc<AmqpBroker>` or `Arc<dyn Broker>`.
#[async_trait]
impl<B: Broker + ?Sized> Broker for std::sync::Arc<B> {
    async fn broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), Error> {
        (**self).broadcast(exchange, routing_key, message).await
    }

    async fn listen(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        (**self).listen(exchange, patterns).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        (**self).declare_queue(spec).await
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error> {
        (**self).publish(queue, message).await
    }

    async fn publish_all(&self, messages: Vec<(String, Message)>) -> Vec<Result<(), Error>> {
        (**self).publish_all(messages).await
    }

    async fn publish_tracked(
        &self,
        queue: &str,
        message: Message,
        sent: &Sent,
    ) -> Result<(), Error> {
        (**self).publish_tracked(queue, message, sent).await
    }

    async fn publish_all_tracked(
        &self,
        messages: Vec<(String, Message)>,
        sent: &Sent,
    ) -> Vec<Result<(), Error>> {
        (**self).publish_all_tracked(messages, sent).await
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error> {
        (**self).consume(queue, options).await
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, Error> {
        (**self).queue_stats(queue).await
    }

    async fn is_shard_of(&self, queue: &str, work_queue: &str) -> Result<bool, Error> {
        (**self).is_shard_of(queue, work_queue).await
    }

    async fn get(&self, queue: &str) -> Result<Option<Delivery>, Error> {
        (**self).get(queue).await
    }

    fn is_connected(&self) -> bool {
        (**self).is_connected()
    }

    fn blocked_reason(&self) -> Option<String> {
        (**self).blocked_reason()
    }

    fn consumer_timeout(&self) -> Option<Duration> {
        (**self).consumer_timeout()
    }
}

/// The number of ready messages in `queue`, or `None` if it does not exist.
pub(crate) async fn queue_depth(broker: &dyn Broker, queue: &str) -> Result<Option<u32>, Error> {
    Ok(broker.queue_stats(queue).await?.map(|stats| stats.messages))
}
