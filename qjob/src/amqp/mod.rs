//! [`AmqpBroker`]: the [`Broker`] on RabbitMQ, through lapin.

mod acks;
mod convert;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// The broker's addresses (several for a cluster), tried in turn.
    urls: Vec<String>,
    /// The address that worked last, tried first.
    preferred: AtomicUsize,
    options: AmqpOptions,
    name: String,
    current: Mutex<Option<Connected>>,
    reconnecting: tokio::sync::Mutex<()>,
}

/// How [`AmqpBroker`] connects and publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// The longest a publish waits for the broker's confirm before it is an
    /// [`Error::Timeout`] (30 s by default).
    pub publish_timeout: Duration,
    /// The heartbeat asked of the broker when the URL does not set one
    /// (`?heartbeat=`): a dead peer is noticed after about twice this
    /// (15 s by default).
    pub heartbeat: Duration,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            publish_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
        }
    }
}

impl AmqpOptions {
    /// Sets the publish timeout.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets the default heartbeat.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }
}

#[derive(Clone)]
struct Connected {
    connection: Arc<Connection>,
    publisher: Channel,
    /// For `basic.get`: what it takes stays unsettled on this channel.
    getter: Channel,
    /// Why the broker blocks this connection's publishes (a resource alarm).
    blocked: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl Connected {
    fn is_usable(&self) -> bool {
        self.connection.status().connected()
            && self.publisher.status().connected()
            && self.getter.status().connected()
    }

    fn blocked(&self) -> Option<String> {
        self.blocked.borrow().clone()
    }
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.inner.urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("AmqpBroker")
            .field("urls", &urls)
            .field("options", &self.inner.options)
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
        Self::connect_with([url.into()], AmqpOptions::default()).await
    }

    /// Connects to the first of `urls` that answers (the nodes of a
    /// cluster); after a loss, reconnects the same way, starting with the
    /// address that worked last.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] naming every address when none answers, or
    /// [`Error::Config`] when `urls` is empty.
    pub async fn connect_with(
        urls: impl IntoIterator<Item = String>,
        options: AmqpOptions,
    ) -> Result<Self, Error> {
        static BROKERS: AtomicUsize = AtomicUsize::new(0);
        let number = BROKERS.fetch_add(1, Ordering::Relaxed) + 1;
        let urls: Vec<String> = urls
            .into_iter()
            .map(|url| with_heartbeat(&url, options.heartbeat))
            .collect();
        if urls.is_empty() {
            return Err(Error::Config("no broker address given".into()));
        }
        let broker = AmqpBroker {
            inner: Arc::new(Inner {
                urls,
                preferred: AtomicUsize::new(0),
                options,
                name: format!("qjob pid {} #{number}", std::process::id()),
                current: Mutex::new(None),
                reconnecting: tokio::sync::Mutex::new(()),
            }),
        };
        broker.connected().await?;
        Ok(broker)
    }

    /// The connection's name as RabbitMQ shows it (`rabbitmqctl
    /// list_connections client_properties`, the management UI):
    /// `qjob pid <pid> #<n>`, `n` counting the brokers this process connected.
    pub fn connection_name(&self) -> &str {
        &self.inner.name
    }

    /// Why the broker blocks publishing on this connection right now (a
    /// memory or disk alarm), if it does.
    pub fn blocked(&self) -> Option<String> {
        self.current().and_then(|c| c.blocked())
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
        let urls = &self.inner.urls;
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for index in (0..urls.len()).map(|i| (first + i) % urls.len()) {
            match self.open(&urls[index]).await {
                Ok(connected) => {
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    *self.inner.current.lock().expect("connection lock poisoned") =
                        Some(connected.clone());
                    return Ok(connected);
                }
                Err(error) => {
                    tracing::warn!(url = %redact(&urls[index]), %error, "could not connect to the broker");
                    last_error = Some(error);
                }
            }
        }
        let tried: Vec<String> = urls.iter().map(|u| redact(u)).collect();
        Err(Error::Connect {
            url: tried.join(", "),
            source: last_error.expect("at least one address").into(),
        })
    }

    /// Opens a connection to `url` with its channels, and follows its
    /// blocked/unblocked notifications.
    async fn open(&self, url: &str) -> Result<Connected, lapin::Error> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.inner.name.as_str().into());
        let connection = Connection::connect(url, properties).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let getter = connection.create_channel().await?;
        let blocked = Arc::new(tokio::sync::watch::Sender::new(None));
        let mut events = connection.events_listener();
        let flag = Arc::downgrade(&blocked);
        let name = self.inner.name.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(flag) = flag.upgrade() else { return };
                match event {
                    lapin::Event::ConnectionBlocked(reason) => {
                        tracing::warn!(connection = %name, %reason, "the broker blocks publishing");
                        flag.send_replace(Some(reason));
                    }
                    lapin::Event::ConnectionUnblocked => {
                        tracing::info!(connection = %name, "the broker unblocked publishing");
                        flag.send_replace(None);
                    }
                    _ => {}
                }
            }
        });
        Ok(Connected {
            connection: Arc::new(connection),
            publisher,
            getter,
            blocked,
        })
    }
}

impl AmqpBroker {
    /// Publishes on the confirm channel and waits for the confirm.
    async fn confirmed_publish(
        &self,
        connected: &Connected,
        queue: &str,
        message: &Message,
    ) -> Result<(), Error> {
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
                convert::properties(message),
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
}

impl AmqpBroker {
    async fn declare_queue_unbounded(&self, spec: &QueueSpec) -> Result<(), Error> {
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

    async fn consume_unbounded(
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

    async fn queue_depth_unbounded(&self, queue: &str) -> Result<Option<u32>, Error> {
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

    async fn get_unbounded(&self, queue: &str) -> Result<Option<Delivery>, Error> {
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

/// `url` with `heartbeat=<secs>` added when it sets none.
fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={}", heartbeat.as_secs().max(1))
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
        bounded(
            || format!("declare queue {:?}", spec.name),
            self.declare_queue_unbounded(spec),
        )
        .await
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error> {
        let connected = self.connected().await?;
        if let Some(reason) = connected.blocked() {
            return Err(Error::Blocked { reason });
        }
        let after = self.inner.options.publish_timeout;
        let mut blocked = connected.blocked.subscribe();
        tokio::select! {
            published = tokio::time::timeout(after, self.confirmed_publish(&connected, queue, &message)) => {
                published.unwrap_or_else(|_| {
                    Err(Error::Timeout {
                        operation: format!("publish to queue {queue:?}"),
                        after,
                    })
                })
            }
            // Blocked while waiting: the broker holds the message; whether
            // it will be stored is unknown, as with any failed publish.
            reason = blocked.wait_for(Option::is_some) => Err(Error::Blocked {
                reason: reason
                    .ok()
                    .and_then(|reason| reason.clone())
                    .unwrap_or_default(),
            }),
        }
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error> {
        bounded(
            || format!("consume queue {queue:?}"),
            self.consume_unbounded(queue, options),
        )
        .await
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u32>, Error> {
        bounded(
            || format!("inspect queue {queue:?}"),
            self.queue_depth_unbounded(queue),
        )
        .await
    }

    async fn get(&self, queue: &str) -> Result<Option<Delivery>, Error> {
        bounded(
            || format!("get from queue {queue:?}"),
            self.get_unbounded(queue),
        )
        .await
    }
}

/// Acks and rejects a `basic.get` message directly, without batching.
struct DirectAcker(lapin::Acker);

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

    async fn close(self: Box<Self>) -> Result<(), Error> {
        if !self.channel.status().connected() {
            return Ok(());
        }
        let operation = format!("close the consumer of queue {:?}", self.queue);
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
    acker: lapin::Acker,
    acks: acks::Acks,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), Error> {
        bounded(|| "ack".into(), self.acks.ack(self.tag, self.acker.clone())).await
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        bounded(
            || "reject".into(),
            self.acks.reject(self.tag, &self.acker, requeue),
        )
        .await
    }
}

/// How long an operation other than a publish (ack, reject, declare,
/// consume, cancel, close) may take: lapin does not always fail the
/// operations of a channel whose connection died, and a hung ack would hold
/// a handler slot forever.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// `operation`, failing with [`Error::Timeout`] after [`OPERATION_TIMEOUT`].
async fn bounded<T>(
    operation: impl FnOnce() -> String,
    future: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(OPERATION_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                operation: operation(),
                after: OPERATION_TIMEOUT,
            })
        })
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
    use super::{redact, with_heartbeat};
    use std::time::Duration;

    #[test]
    fn a_heartbeat_is_asked_for_unless_the_url_sets_one() {
        let s15 = Duration::from_secs(15);
        assert_eq!(
            with_heartbeat("amqp://h/%2f", s15),
            "amqp://h/%2f?heartbeat=15"
        );
        assert_eq!(
            with_heartbeat("amqp://h/v?frame_max=8192", s15),
            "amqp://h/v?frame_max=8192&heartbeat=15"
        );
        assert_eq!(
            with_heartbeat("amqp://h/v?heartbeat=5", s15),
            "amqp://h/v?heartbeat=5"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://u:secret@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
    }
}
