//! Deliveries and their settlement: [`Delivery`], [`Acker`],
//! [`Subscription`], [`ConsumeOptions`].

use std::fmt;

use async_trait::async_trait;

use super::Message;
use crate::Error;

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
///
/// A broker builds it with [`Delivery::new`] (and
/// [`Delivery::with_redelivered`]), so that a field added later breaks no
/// broker implementation; the fields are read directly.
#[non_exhaustive]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// True when the broker delivered it before without a settlement.
    pub redelivered: bool,
    /// Settles this delivery.
    pub acker: Box<dyn Acker>,
}

impl Delivery {
    /// A first delivery of `message` (not redelivered), settled by `acker`.
    pub fn new(message: Message, acker: Box<dyn Acker>) -> Self {
        Self {
            message,
            redelivered: false,
            acker,
        }
    }

    /// Sets whether the broker delivered the message before without a
    /// settlement.
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }
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

/// Options of one consumer.
///
/// Built with [`ConsumeOptions::new`], so that a field added later breaks
/// no broker implementation; the fields are read directly.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Unacked deliveries the broker sends this consumer at most
    /// (per consumer, never per channel).
    pub prefetch: u16,
    /// A tag naming the consumer to operators.
    pub tag: String,
}

impl ConsumeOptions {
    /// A consumer holding at most `prefetch` unacked deliveries, named
    /// `tag` to operators.
    pub fn new(prefetch: u16, tag: impl Into<String>) -> Self {
        Self {
            prefetch,
            tag: tag.into(),
        }
    }
}
