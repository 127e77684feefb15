//! [`AmqpBroker`]: the [`Broker`] on RabbitMQ, through lapin.

mod acks;
mod convert;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};

use crate::Error;
use crate::broker::{Acker, Broker, ConsumeOptions, Delivery, Message, QueueSpec, Subscription};

/// The RabbitMQ broker: one connection, a confirm-mode channel for
/// publishing, and one channel per consumer. A cheap handle: clones share
/// the connection.
///
/// A closed connection is reopened on the next operation that needs it.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
/// let broker = qjob::AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let client = qjob::Client::new(broker.clone());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    name: String,
    current: Mutex<Option<Connected>>,
    reconnecting: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Connected {
    connection: Arc<Connection>,
    publisher: Channel,
    /// For `basic.get`: what it takes stays unsettled on this channel.
    getter: Channel,
}

impl Connected {
    fn is_usable(&self) -> bool {
        self.connection.status().connected()
            && self.publisher.status().connected()
            && self.getter.status().connected()
    }
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &redact(&self.inner.url))
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Connects to the broker at `url` (`amqp://user:pass@host:port/vhost`).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the broker cannot be reached or refuses the
    /// credentials.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        static BROKERS: AtomicUsize = AtomicUsize::new(0);
        let number = BROKERS.fetch_add(1, Ordering::Relaxed) + 1;
        let broker = AmqpBroker {
            inner: Arc::new(Inner {
                url: url.into(),
                name: format!("qjob pid {} #{number}", std::process::id()),
                current: Mutex::new(None),
                reconnecting: tokio::sync::Mutex::new(()),
            }),
        };
        broker.connected().await?;
        Ok(broker)
    }

    /// The connection's name as RabbitMQ shows it (`rabbitmqctl
    /// list_connections name`, the management UI): `qjob pid <pid> #<n>`,
    /// `n` counting the brokers this process connected.
    pub fn connection_name(&self) -> &str {
        &self.inner.name
    }

    /// Closes the connection; unsettled deliveries of its consumers return
    /// to their queues.
    ///
    /// # Errors
    ///
    /// The transport's error if the close handshake fails.
    pub async fn close(&self) -> Result<(), Error> {
        let current = self
            .inner
            .current
            .lock()
            .expect("connection lock poisoned")
            .take();
        match current {
            Some(connected) => connected
                .connection
                .close(200, "qjob: closing".into())
                .await
                .map_err(|e| Error::broker("close the connection", e)),
            None => Ok(()),
        }
    }

    fn current(&self) -> Option<Connected> {
        self.inner
            .current
            .lock()
            .expect("connection lock poisoned")
            .clone()
            .filter(Connected::is_usable)
    }

    /// The live connection, reconnecting if it was lost.
    async fn connected(&self) -> Result<Connected, Error> {
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let _one_at_a_time = self.inner.reconnecting.lock().await;
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let url = &self.inner.url;
        let connect_error = |source: lapin::Error| Error::Connect {
            url: redact(url),
            source: source.into(),
        };
        let properties =
            ConnectionProperties::default().with_connection_name(self.inner.name.as_str().into());
        let connection = Connection::connect(url, properties)
            .await
            .map_err(connect_error)?;
        let publisher = connection.create_channel().await.map_err(connect_error)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(connect_error)?;
        let getter = connection.create_channel().await.map_err(connect_error)?;
        let connected = Connected {
            connection: Arc::new(connection),
            publisher,
            getter,
        };
        *self.inner.current.lock().expect("connection lock poisoned") = Some(connected.clone());
        Ok(connected)
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    error.to_string().contains("NOT_FOUND")
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        let connected = self.connected().await?;
        let operation = || format!("declare queue {:?} ({spec:?})", spec.name);
        // A declare that conflicts with an existing queue closes its channel:
        // use a channel of its own.
        let channel = connected
            .connection
            .create_channel()
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        let declared = channel
            .queue_declare(
                spec.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                convert::queue_arguments(spec),
            )
            .await;
        if channel.status().connected() {
            let _ = channel.close(200, "declared".into()).await;
        }
        declared.map(drop).map_err(|e| {
            convert::queue_mismatch(&spec.name, &e.to_string())
                .unwrap_or_else(|| Error::broker(operation(), e))
        })
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error> {
        let connected = self.connected().await?;
        let operation = || format!("publish to queue {queue:?}");
        let confirm = connected
            .publisher
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &message.body,
                convert::properties(&message),
            )
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        match confirm.await.map_err(|e| Error::broker(operation(), e))? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(Error::Unroutable {
                queue: queue.to_owned(),
                reason: returned.reply_text.to_string(),
            }),
            Confirmation::Nack(_) => Err(Error::PublishRejected {
                queue: queue.to_owned(),
            }),
            Confirmation::NotRequested => Err(Error::broker(
                operation(),
                "the publishing channel is not in confirm mode",
            )),
        }
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error> {
        let connected = self.connected().await?;
        let operation = || format!("consume queue {queue:?}");
        let channel = connected
            .connection
            .create_channel()
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        channel
            .basic_qos(options.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                options.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        Ok(Box::new(AmqpSubscription {
            queue: queue.to_owned(),
            channel,
            consumer,
            acks: acks::Acks::default(),
        }))
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u32>, Error> {
        let connected = self.connected().await?;
        let operation = || format!("inspect queue {queue:?}");
        // A passive declare of a missing queue closes its channel.
        let channel = connected
            .connection
            .create_channel()
            .await
            .map_err(|e| Error::broker(operation(), e))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        if channel.status().connected() {
            let _ = channel.close(200, "inspected".into()).await;
        }
        match declared {
            Ok(declared) => Ok(Some(declared.message_count())),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(Error::broker(operation(), error)),
        }
    }

    async fn get(&self, queue: &str) -> Result<Option<Delivery>, Error> {
        let connected = self.connected().await?;
        let got = connected
            .getter
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| Error::broker(format!("get from queue {queue:?}"), e))?;
        Ok(got.map(|got| {
            let delivery = got.delivery;
            Delivery {
                message: convert::message(&delivery.properties, delivery.data),
                redelivered: delivery.redelivered,
                acker: Box::new(DirectAcker(delivery.acker)),
            }
        }))
    }
}

/// Acks and rejects a `basic.get` message directly, without batching.
struct DirectAcker(lapin::Acker);

#[async_trait]
impl Acker for DirectAcker {
    async fn ack(&self) -> Result<(), Error> {
        settled(self.0.ack(BasicAckOptions::default()).await, "ack")
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        settled(
            self.0.reject(BasicRejectOptions { requeue }).await,
            "reject",
        )
    }
}

struct AmqpSubscription {
    queue: String,
    channel: Channel,
    consumer: lapin::Consumer,
    acks: acks::Acks,
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        let delivery = match self.consumer.next().await? {
            Ok(delivery) => delivery,
            Err(e) => {
                return Some(Err(Error::broker(
                    format!("consume queue {:?}", self.queue),
                    e,
                )));
            }
        };
        self.acks.delivered(delivery.delivery_tag);
        Some(Ok(Delivery {
            message: convert::message(&delivery.properties, delivery.data),
            redelivered: delivery.redelivered,
            acker: Box::new(AmqpAcker {
                tag: delivery.delivery_tag,
                acker: delivery.acker,
                acks: self.acks.clone(),
            }),
        }))
    }

    async fn cancel(&mut self) -> Result<(), Error> {
        if !self.channel.status().connected() {
            return Ok(());
        }
        self.channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await
            .map_err(|e| Error::broker(format!("cancel the consumer of queue {:?}", self.queue), e))
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        if !self.channel.status().connected() {
            return Ok(());
        }
        self.channel
            .close(200, "qjob: consumer stopped".into())
            .await
            .map_err(|e| Error::broker(format!("close the consumer of queue {:?}", self.queue), e))
    }
}

struct AmqpAcker {
    tag: u64,
    acker: lapin::Acker,
    acks: acks::Acks,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.acks.ack(self.tag, self.acker.clone()).await
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.acks.reject(self.tag, &self.acker, requeue).await
    }
}

/// lapin answers `false` when the delivery's channel is gone (the broker
/// requeues the message then) or it was settled before.
fn settled(sent: Result<bool, lapin::Error>, operation: &str) -> Result<(), Error> {
    if sent.map_err(|e| Error::broker(operation, e))? {
        Ok(())
    } else {
        Err(Error::broker(
            operation,
            "the delivery's channel is closed or the delivery was already settled",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://u:secret@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
    }
}
