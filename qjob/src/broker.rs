//! The [`Broker`] trait: the one seam between qjob's runtime and a transport.
//!
//! [`crate::AmqpBroker`] implements it on RabbitMQ; `qjob_testkit::MemoryBroker`
//! implements it in memory. The runtime (client, worker, policies) speaks only
//! to this trait, so both brokers run the same code.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Error, QueueType};

/// A header value. The common types have variants of their own; every
/// other type a transport carries arrives as [`HeaderValue::Exact`], kept
/// as it came, so that a foreign producer's headers survive a retry, a
/// delay and a dead letter byte for byte and type for type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HeaderValue {
    /// Text (an AMQP long string that is valid UTF-8).
    Str(String),
    /// A 64-bit integer.
    Int(i64),
    /// A double-precision number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A list (RabbitMQ's `x-death` is a list of tables).
    List(Vec<HeaderValue>),
    /// A nested table.
    Table(Headers),
    /// Bytes (an AMQP byte array).
    Bytes(Vec<u8>),
    /// A string that is not UTF-8 text (an AMQP long string holds any
    /// bytes), kept as it came.
    RawStr(Vec<u8>),
    /// A value of another type, kept exactly.
    Exact(ExactValue),
}

/// Header values of the AMQP types qjob does not interpret, kept exactly
/// so that they are written back with the type they came with.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ExactValue {
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 32-bit integer.
    I32(i32),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A single-precision number.
    F32(f32),
    /// A decimal: `value × 10^-scale`.
    Decimal {
        /// Digits after the point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// A timestamp, in seconds since the Unix epoch (RabbitMQ's `x-death`
    /// times are these).
    Timestamp(u64),
    /// No value (AMQP void).
    Void,
}

impl HeaderValue {
    /// The value as an integer, if it is an integer of any width or a
    /// timestamp.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(n) => Some(*n),
            HeaderValue::Exact(exact) => match *exact {
                ExactValue::I8(n) => Some(n.into()),
                ExactValue::U8(n) => Some(n.into()),
                ExactValue::I16(n) => Some(n.into()),
                ExactValue::U16(n) => Some(n.into()),
                ExactValue::I32(n) => Some(n.into()),
                ExactValue::U32(n) => Some(n.into()),
                ExactValue::Timestamp(t) => i64::try_from(t).ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The value as text, if it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a list, if it is one.
    pub fn as_list(&self) -> Option<&[HeaderValue]> {
        match self {
            HeaderValue::List(items) => Some(items),
            _ => None,
        }
    }

    /// The value as a table, if it is one.
    pub fn as_table(&self) -> Option<&Headers> {
        match self {
            HeaderValue::Table(table) => Some(table),
            _ => None,
        }
    }
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Str(s) => f.write_str(s),
            HeaderValue::Int(n) => write!(f, "{n}"),
            HeaderValue::Float(x) => write!(f, "{x}"),
            HeaderValue::Bool(b) => write!(f, "{b}"),
            HeaderValue::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            HeaderValue::Table(table) => {
                f.write_str("{")?;
                for (i, (name, value)) in table.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name}: {value}")?;
                }
                f.write_str("}")
            }
            HeaderValue::Bytes(bytes) | HeaderValue::RawStr(bytes) => {
                f.write_str("0x")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            HeaderValue::Exact(exact) => match *exact {
                ExactValue::I8(n) => write!(f, "{n}"),
                ExactValue::U8(n) => write!(f, "{n}"),
                ExactValue::I16(n) => write!(f, "{n}"),
                ExactValue::U16(n) => write!(f, "{n}"),
                ExactValue::I32(n) => write!(f, "{n}"),
                ExactValue::U32(n) => write!(f, "{n}"),
                ExactValue::F32(x) => write!(f, "{x}"),
                ExactValue::Decimal { scale, value } => {
                    write!(f, "{value}e-{scale}")
                }
                ExactValue::Timestamp(t) => write!(f, "{t}"),
                ExactValue::Void => f.write_str("void"),
            },
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}

impl From<i64> for HeaderValue {
    fn from(n: i64) -> Self {
        HeaderValue::Int(n)
    }
}

impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}

/// Message headers, by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// A message as published and as delivered: persistent, JSON by convention.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// The message id (qjob puts the job id here); `None` for messages
    /// published by other producers without one.
    pub id: Option<String>,
    /// The message type (AMQP's `type` property). qjob does not write it
    /// (a job's type is its queue's); other producers' is kept.
    pub kind: Option<String>,
    /// When the message was first published, in seconds since the Unix
    /// epoch (AMQP's `timestamp` property). qjob does not write it (its
    /// job ids are UUID v7, which carry the time in milliseconds); other
    /// producers' is read as their enqueue time and kept.
    pub timestamp: Option<u64>,
    /// The headers.
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

/// Settles one delivery. The first settlement takes effect; a later one
/// changes nothing (and may return an error).
#[async_trait]
pub trait Acker: Send + Sync {
    /// Acknowledges: the broker forgets the message.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if its channel closed (the broker then delivers the
    /// message again, and [`Acker::is_open`] turns `false`) or the
    /// transport failed.
    async fn ack(&self) -> Result<(), Error>;

    /// Rejects: with `requeue` the message goes back to its place in the
    /// queue, marked redelivered; without, it is dead-lettered if its queue
    /// says where, and dropped otherwise.
    ///
    /// # Errors
    ///
    /// As [`Acker::ack`].
    async fn reject(&self, requeue: bool) -> Result<(), Error>;

    /// Whether the delivery can still be settled: `false` once its channel
    /// is closed (the broker then delivers the message again) or it was
    /// settled. The worker stops trying to settle a delivery that cannot
    /// be. A transport that cannot tell answers `true`.
    fn is_open(&self) -> bool {
        true
    }
}

/// One message handed to a consumer, with the means to settle it.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// True when the broker delivered it before without a settlement.
    pub redelivered: bool,
    /// Settles this delivery.
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// A consumer's stream of deliveries. Dropping it closes it, as
/// [`Subscription::close`] does.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` once the broker cancelled the consumer
    /// (its queue deleted, its node lost), `Some(Err)` when its channel or
    /// connection failed. After either, the deliveries it held that are not
    /// settled come back to the queue; a delivery already received from a
    /// closed channel reports it through [`Acker::is_open`].
    async fn next(&mut self) -> Option<Result<Delivery, Error>>;

    /// Stops further deliveries (`basic.cancel`). Deliveries already
    /// received stay unsettled until acked, rejected or [`Subscription::close`]d.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if the transport failed.
    async fn cancel(&mut self) -> Result<(), Error>;

    /// Closes the consumer's channel: every delivery not yet settled goes
    /// back to its queue at once, in queue order, marked redelivered.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if the transport failed (the broker returns the
    /// deliveries anyway when the connection goes).
    async fn close(self: Box<Self>) -> Result<(), Error>;

    /// Changes how many unacknowledged deliveries this consumer may hold,
    /// live. RabbitMQ applies a prefetch only to consumers started after
    /// the `basic.qos`, so the subscription starts a consumer with the new
    /// prefetch on the same channel and cancels the old one: deliveries
    /// held before stay valid (and are handed out first if still buffered)
    /// but no longer count against the prefetch, which bounds what comes
    /// from then on. Not for single-active-consumer queues: the new
    /// consumer would queue behind the standbys.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if the transport failed; the worker then replaces
    /// the subscription.
    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), Error>;
}

/// How a queue is declared. Declaring an existing queue with other
/// arguments is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSpec {
    /// The queue's name.
    pub name: String,
    /// Classic or quorum.
    pub queue_type: QueueType,
    /// `x-max-length`, with `x-overflow = reject-publish`.
    pub max_length: Option<u32>,
    /// `x-single-active-consumer`.
    pub single_active: bool,
    /// `x-message-ttl`: messages expire this long after they were enqueued.
    pub message_ttl: Option<Duration>,
    /// `x-dead-letter-exchange = ""` and `x-dead-letter-routing-key`: where
    /// rejected (without requeue) and expired messages go, with an
    /// `x-death` record.
    pub dead_letter_to: Option<String>,
    /// `x-expires`: the queue is deleted after being unused this long (no
    /// consumer, no redeclare).
    pub expires: Option<Duration>,
    /// Quorum queues: `x-delivery-limit`. A message returned to the queue
    /// (requeued, or unsettled when its consumer's channel closed) more
    /// than this many times is dead-lettered to `dead_letter_to` (dropped
    /// without one). Returned messages carry `x-delivery-count`.
    pub delivery_limit: Option<u32>,
    /// The work queue this queue is a shard of (`x-qjob-shard-of`): the
    /// broker marks the queue as one, so that [`Broker::is_shard_of`]
    /// tells it from another application's queue of the same name. Not
    /// compared by a declare (RabbitMQ compares only the arguments it
    /// knows): declaring a queue with it marks an existing queue, and
    /// declaring one without it leaves a mark in place.
    pub shard_of: Option<String>,
}

impl QueueSpec {
    /// A durable classic queue with no further arguments.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            queue_type: QueueType::Classic,
            max_length: None,
            single_active: false,
            message_ttl: None,
            dead_letter_to: None,
            expires: None,
            delivery_limit: None,
            shard_of: None,
        }
    }

    /// Sets `x-delivery-limit` (quorum queues; see the field).
    pub fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = Some(limit);
        self
    }

    /// Sets the queue type.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Caps the queue's ready messages; publishes beyond are rejected.
    pub fn with_max_length(mut self, max_length: u32) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Makes the queue single-active-consumer.
    pub fn with_single_active(mut self, single_active: bool) -> Self {
        self.single_active = single_active;
        self
    }

    /// Sets the message TTL.
    pub fn with_message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// Dead-letters to queue `target` through the default exchange.
    pub fn with_dead_letter_to(mut self, target: impl Into<String>) -> Self {
        self.dead_letter_to = Some(target.into());
        self
    }

    /// Deletes the queue after it was unused for `expires`.
    pub fn with_expires(mut self, expires: Duration) -> Self {
        self.expires = Some(expires);
        self
    }

    /// Marks the queue as a shard of the work queue `work_queue` (see the
    /// field).
    pub fn with_shard_of(mut self, work_queue: impl Into<String>) -> Self {
        self.shard_of = Some(work_queue.into());
        self
    }
}

/// What a passive declare tells about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueStats {
    /// Ready messages (unacked ones not counted).
    pub messages: u32,
    /// Consumers, active or standing by.
    pub consumers: u32,
}

impl QueueStats {
    /// Stats of a queue.
    pub fn new(messages: u32, consumers: u32) -> Self {
        Self {
            messages,
            consumers,
        }
    }
}

/// How many messages of one publish have gone out, from the first: handed
/// to the transport, so that the broker may store them even if the
/// publish is abandoned (its future dropped) before the confirm. Filled by
/// [`Broker::publish_tracked`] and [`Broker::publish_all_tracked`]; the
/// producer reads it when it is dropped mid-publish, to keep the lock (or
/// the batch count) of a job that may exist and give back those of jobs
/// that cannot.
///
/// # Examples
///
/// ```
/// use qjob::broker::Sent;
///
/// let sent = Sent::new();
/// sent.mark(2);
/// sent.mark(1); // never goes back
/// assert_eq!(sent.count(), 2);
/// ```
#[derive(Debug, Default)]
pub struct Sent(AtomicUsize);

impl Sent {
    /// None sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the first `count` messages (in the order given) have
    /// gone out. A lower count than one marked before changes nothing.
    pub fn mark(&self, count: usize) {
        self.0.fetch_max(count, Ordering::SeqCst);
    }

    /// How many messages, from the first, have gone out.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// None went out after all: the broker refused the one publish it
    /// tracks for good (the queue was missing) before it is tried again.
    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// Options of one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Unacked deliveries the broker sends this consumer at most
    /// (per consumer, never per channel).
    pub prefetch: u16,
    /// A tag naming the consumer to operators.
    pub tag: String,
}

/// A message transport with RabbitMQ's semantics: durable queues, confirmed
/// publishes, per-consumer prefetch and manual acknowledgement.
///
/// qjob ships two: `AmqpBroker` (RabbitMQ) and `qjob_testkit::MemoryBroker`.
/// Another implementation (a fake for a test, a transport) must keep the
/// contract each method states; the conformance suite in `tests/src/conformance.rs`
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
