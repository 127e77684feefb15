//! Consuming from RabbitMQ: subscriptions, ackers, and the time bound on
//! every operation but publishing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;

use super::bounded::{bounded, settled};
use super::{acks, convert};
use crate::Error;
use crate::broker::{Acker, Delivery, Subscription};

/// Acks and rejects a `basic.get` message directly, without batching.
pub(super) struct DirectAcker(pub(super) lapin::Acker);

#[async_trait]
impl Acker for DirectAcker {
    async fn ack(&self) -> Result<(), Error> {
        bounded(|| "ack".into(), async {
            settled(self.0.ack(BasicAckOptions::default()).await, "ack")
        })
        .await
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        bounded(|| "reject".into(), async {
            settled(
                self.0.reject(BasicRejectOptions { requeue }).await,
                "reject",
            )
        })
        .await
    }
}

pub(super) struct AmqpSubscription {
    pub(super) queue: String,
    pub(super) channel: Channel,
    pub(super) consumer: lapin::Consumer,
    /// Consumers replaced by a prefetch change, cancelled, still handing
    /// out what RabbitMQ sent them before the cancel; oldest first.
    pub(super) retiring: VecDeque<lapin::Consumer>,
    /// The consumer tag as asked for; replacements append `~<n>`.
    pub(super) tag: String,
    pub(super) replacements: u32,
    pub(super) prefetch: u16,
    pub(super) acks: acks::Acks,
}

impl AmqpSubscription {
    /// The next delivery of the oldest consumer still holding one.
    async fn next_delivery(&mut self) -> Option<lapin::Result<lapin::message::Delivery>> {
        while let Some(retiring) = self.retiring.front_mut() {
            match retiring.next().await {
                Some(delivery) => return Some(delivery),
                None => {
                    self.retiring.pop_front();
                }
            }
        }
        self.consumer.next().await
    }

    async fn replace_consumer(&mut self, prefetch: u16) -> Result<(), Error> {
        let operation = || {
            format!(
                "change the prefetch of the consumer of queue {:?}",
                self.queue
            )
        };
        self.channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        self.replacements += 1;
        let tag = format!("{}~{}", self.tag, self.replacements);
        let consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        let old = std::mem::replace(&mut self.consumer, consumer);
        self.prefetch = prefetch;
        // Whatever RabbitMQ sent the old consumer before the cancel stays
        // valid on this channel and is handed out before the new one's.
        let cancelled = self
            .channel
            .basic_cancel(old.tag(), BasicCancelOptions::default())
            .await;
        self.retiring.push_back(old);
        cancelled.map_err(|e| Error::broker(operation(), e))
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        let delivery = match self.next_delivery().await? {
            Ok(delivery) => delivery,
            Err(e) => {
                return Some(Err(Error::broker(
                    format!("consume queue {:?}", self.queue),
                    e,
                )));
            }
        };
        self.acks.delivered(delivery.delivery_tag);
        let message = convert::message(&delivery.properties, delivery.data);
        let acker = Box::new(AmqpAcker {
            tag: delivery.delivery_tag,
            acker: delivery.acker,
            acks: self.acks.clone(),
            spent: AtomicBool::new(false),
        });
        Some(Ok(
            Delivery::new(message, acker).with_redelivered(delivery.redelivered)
        ))
    }

    async fn cancel(&mut self) -> Result<(), Error> {
        if !self.channel.status().connected() {
            return Ok(());
        }
        let operation = format!("cancel the consumer of queue {:?}", self.queue);
        let cancelled = self
            .channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default());
        bounded(|| operation.clone(), async {
            cancelled
                .await
                .map_err(|e| Error::broker(operation.clone(), e))
        })
        .await
    }

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), Error> {
        let prefetch = prefetch.max(1);
        if prefetch == self.prefetch {
            return Ok(());
        }
        let operation = format!(
            "change the prefetch of the consumer of queue {:?}",
            self.queue
        );
        bounded(|| operation, self.replace_consumer(prefetch)).await
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        if !self.channel.status().connected() {
            return Ok(());
        }
        let operation = format!("close the consumer of queue {:?}", self.queue);
        // Acks handlers made are sent before the close, which would
        // otherwise return their jobs to the queue to run again.
        // Bounded tighter than an operation: they take microseconds unless
        // the connection hangs, and then the close would hang too.
        let sent = tokio::time::timeout(FINISH_TIMEOUT, self.acks.finish())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    operation: "ack before the close".into(),
                    after: FINISH_TIMEOUT,
                })
            });
        if let Err(error) = sent {
            tracing::debug!(queue = self.queue.as_str(), %error, "acks before the close failed");
        }
        let closed = self.channel.close(200, "qjob: consumer stopped".into());
        bounded(|| operation.clone(), async {
            closed
                .await
                .map_err(|e| Error::broker(operation.clone(), e))
        })
        .await
    }
}

struct AmqpAcker {
    tag: u64,
    /// Rejects, and tells whether the channel is open.
    acker: lapin::Acker,
    /// Acks, with the channel's other acks.
    acks: acks::Acks,
    /// Whether an ack or a reject was tried.
    spent: AtomicBool,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.spent.store(true, Ordering::Relaxed);
        bounded(|| "ack".into(), self.acks.ack(self.tag)).await
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.spent.store(true, Ordering::Relaxed);
        bounded(
            || "reject".into(),
            self.acks.reject(self.tag, &self.acker, requeue),
        )
        .await
    }

    /// lapin marks the acker once its channel closed (RabbitMQ delivers
    /// the message again then); an ack or a reject spends it.
    fn is_open(&self) -> bool {
        !self.spent.load(Ordering::Relaxed) && self.acker.usable()
    }
}

/// How long a close waits for the acks handlers made to be sent.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);
