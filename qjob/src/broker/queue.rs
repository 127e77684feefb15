//! How a queue is declared and what a passive declare tells about it:
//! [`QueueSpec`], [`QueueStats`].

use std::time::Duration;

use crate::QueueType;

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
    /// Classic queues: `x-max-priority`. Ready messages are delivered
    /// highest [`Message::priority`](super::Message::priority) first, in
    /// publish order within one; a priority above it counts as it, none
    /// as 0. (A quorum queue takes no such argument: RabbitMQ 4 orders
    /// its messages by priority whatever its arguments, RabbitMQ 3 never.)
    pub max_priority: Option<u8>,
    /// The work queue this queue is a shard of (`x-qjob-shard-of`): the
    /// broker marks the queue as one, so that [`Broker::is_shard_of`]
    /// tells it from another application's queue of the same name. Not
    /// compared by a declare (RabbitMQ compares only the arguments it
    /// knows): declaring a queue with it marks an existing queue, and
    /// declaring one without it leaves a mark in place.
    ///
    /// [`Broker::is_shard_of`]: super::Broker::is_shard_of
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
            max_priority: None,
            shard_of: None,
        }
    }

    /// Sets `x-max-priority` (classic queues; see the field).
    pub fn with_max_priority(mut self, max_priority: u8) -> Self {
        self.max_priority = Some(max_priority);
        self
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
