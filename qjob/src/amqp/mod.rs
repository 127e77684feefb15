//! [`AmqpBroker`]: the [`Broker`] on RabbitMQ, through lapin.

mod acks;
mod bounded;
mod connection;
mod convert;
mod gather;
mod publisher;
mod subscription;

pub use connection::{AmqpBroker, AmqpOptions};

use bounded::bounded;
use connection::{Channels, Inner, Link, Role, with_heartbeat};
use publisher::Target;
use subscription::{AmqpSubscription, DirectAcker};

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

/// How many broadcasts a listener holds unsettled.
const LISTEN_PREFETCH: u16 = 100;

use crate::Error;
use crate::broker::{
    Broker, ConsumeOptions, Delivery, Message, QueueSpec, QueueStats, Sent, Subscription,
};

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
                publishing: Link::new(),
                consuming: Link::new(),
                closed: Default::default(),
                gathering: Default::default(),
            }),
        };
        broker.connected(Role::Publish).await?;
        broker.connected(Role::Consume).await?;
        Ok(broker)
    }

    /// The name of the broker's connections as RabbitMQ shows them
    /// (`rabbitmqctl list_connections client_properties`, the management
    /// UI): `qjob pid <pid> #<n> publish` and `qjob pid <pid> #<n> consume`,
    /// `n` counting the brokers this process connected; this returns the
    /// common part, `qjob pid <pid> #<n>`.
    pub fn connection_name(&self) -> &str {
        &self.inner.name
    }

    /// Why the broker blocks publishing on this connection right now (a
    /// memory or disk alarm), if it does.
    pub fn blocked(&self) -> Option<String> {
        self.link(Role::Publish).current().and_then(|c| c.blocked())
    }

    /// Closes the connections; unsettled deliveries of its consumers return
    /// to their queues.
    ///
    /// # Errors
    ///
    /// The transport's error if a close handshake fails.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::Relaxed);
        let mut result = Ok(());
        for role in [Role::Consume, Role::Publish] {
            if let Some(connected) = self.link(role).take() {
                // Bounded: a blocked connection cannot send its close.
                let closed = bounded(|| "close the connection".to_owned(), async {
                    connected
                        .connection
                        .close(200, "qjob: closing".into())
                        .await
                        .map_err(|e| Error::broker("close the connection", e))
                })
                .await;
                result = result.and(closed);
            }
        }
        result
    }
}

impl AmqpBroker {
    /// Publishes each message to its target in order, pipelined on one
    /// session, and returns each one's outcome in order. `sending(index)`
    /// is asked as each is handed to the channel, and may skip it (see
    /// [`publisher::Session::publish`]): never while the publish waits for
    /// a connection or a channel.
    async fn publish_to(
        &self,
        messages: &[(Target<'_>, &Message)],
        sending: impl FnMut(usize) -> bool,
    ) -> Vec<Result<(), Error>> {
        if messages.is_empty() {
            return Vec::new();
        }
        // Nothing is sent before the session: each failure so far leaves
        // every message unsent.
        let unsent = |reason: String| -> Vec<Result<(), Error>> {
            messages
                .iter()
                .map(|(to, _)| {
                    Err(Error::NotSent {
                        operation: to.operation(),
                        reason: reason.clone(),
                    })
                })
                .collect()
        };
        let connected = match self.connected(Role::Publish).await {
            Ok(connected) => connected,
            Err(error) => {
                let mut outcomes = unsent(error.to_string());
                outcomes[0] = Err(error);
                return outcomes;
            }
        };
        // Known blocked: fail at once, nothing sent.
        if let Some(reason) = connected.blocked() {
            return messages
                .iter()
                .map(|_| {
                    Err(Error::Blocked {
                        reason: reason.clone(),
                    })
                })
                .collect();
        }
        let Channels::Publish(channels) = &connected.channels else {
            unreachable!("the publishing connection has publishing channels");
        };
        let timeout = self.inner.options.publish_timeout;
        let session = tokio::time::timeout(timeout, channels.session(&connected.connection));
        let mut session = match session.await {
            Ok(Ok(session)) => session,
            Ok(Err(error)) => return unsent(format!("no publishing channel: {error}")),
            Err(_) => {
                return unsent(format!(
                    "no publishing channel came free within {timeout:?}"
                ));
            }
        };
        // Sent before the broker said it blocks: RabbitMQ takes the message
        // once the alarm clears (lapin holds what it has not written yet),
        // so wait for the confirm rather than report a failure that would
        // be published twice; the publish timeout bounds the wait.
        session
            .publish(messages, timeout, || connected.blocked(), sending)
            .await
    }

    /// [`AmqpBroker::publish_to`], marking `sent` as each message is
    /// handed to the channel.
    async fn publish_marked(
        &self,
        messages: &[(Target<'_>, &Message)],
        sent: &Sent,
    ) -> Vec<Result<(), Error>> {
        self.publish_to(messages, |index| {
            sent.mark(index + 1);
            true
        })
        .await
    }

    /// Publishes `message` to `queue` with the single publishes of other
    /// callers, gathered (see `gather.rs`).
    async fn publish_gathered(&self, queue: &str, message: Message) -> Result<(), Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let waiting = gather::Waiting {
            queue: queue.to_owned(),
            message,
            reply,
        };
        if let Some(leading) = self.inner.gathering.push(waiting) {
            tokio::spawn(self.clone().lead(leading));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::Broker {
                operation: Target::queue(queue).operation(),
                source: "the task publishing it ended before its confirm".into(),
            })
        })
    }

    /// A leader of the gathered publishes: batches until none waits.
    async fn lead(self, mut leading: gather::Leading) {
        loop {
            let batch = leading.next(publisher::WINDOW);
            if batch.is_empty() {
                return;
            }
            let messages: Vec<(Target<'_>, &Message)> = batch
                .iter()
                .map(|waiting| (Target::queue(&waiting.queue), &waiting.message))
                .collect();
            let outcomes = self
                .publish_to(&messages, |index| !batch[index].reply.is_closed())
                .await;
            drop(messages);
            for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                let _ = waiting.reply.send(outcome);
            }
        }
    }

    /// Publishes one message and waits for its confirm.
    async fn publish_one(
        &self,
        to: Target<'_>,
        message: &Message,
        sent: &Sent,
    ) -> Result<(), Error> {
        self.publish_marked(&[(to, message)], sent)
            .await
            .pop()
            .expect("one outcome for one message")
    }
}

impl AmqpBroker {
    /// Declares the topic exchange `exchange` (durable), on a channel of
    /// its own (a conflicting declare closes its channel).
    async fn declare_exchange(&self, exchange: &str) -> Result<(), Error> {
        let operation = || format!("declare exchange {exchange:?}");
        let channel = self.new_channel(&operation).await?;
        let declared = channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        close_quietly(&channel).await;
        declared.map_err(|e| Error::broker(operation(), e))
    }

    async fn listen_unbounded(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        self.declare_exchange(exchange).await?;
        let operation = || format!("listen to exchange {exchange:?}");
        let channel = self.new_channel(&operation).await?;
        let failed = |e| Error::broker(operation(), e);
        // Server-named, this connection's only, gone with its consumer.
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(failed)?
            .name()
            .to_string();
        for pattern in patterns {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    (*pattern).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(failed)?;
        }
        channel
            .basic_qos(LISTEN_PREFETCH, BasicQosOptions { global: false })
            .await
            .map_err(failed)?;
        let tag = format!("qjob-listen-{exchange}");
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed)?;
        Ok(Box::new(AmqpSubscription {
            queue,
            acks: acks::Acks::new(channel.clone()),
            channel,
            consumer,
            retiring: VecDeque::new(),
            tag,
            replacements: 0,
            prefetch: LISTEN_PREFETCH,
        }))
    }

    async fn declare_queue_unbounded(&self, spec: &QueueSpec) -> Result<(), Error> {
        let operation = || format!("declare queue {:?} ({spec:?})", spec.name);
        // A declare that conflicts with an existing queue closes its channel:
        // use a channel of its own.
        let channel = self.new_channel(&operation).await?;
        let declared = channel
            .queue_declare(
                spec.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                convert::queue_arguments(spec),
            )
            .await
            .map(drop);
        let declared = match (declared, &spec.shard_of) {
            (Ok(()), Some(work_queue)) => mark_shard(&channel, &spec.name, work_queue).await,
            (declared, _) => declared,
        };
        close_quietly(&channel).await;
        declared.map_err(|e| {
            queue_mismatch(&spec.name, &e).unwrap_or_else(|| Error::broker(operation(), e))
        })
    }

    async fn is_shard_of_unbounded(&self, queue: &str) -> Result<bool, Error> {
        let Some(mark) = shard_mark(queue) else {
            return Ok(false);
        };
        let operation = || format!("inspect exchange {mark:?}");
        // A passive declare of a missing exchange closes its channel.
        let channel = self.new_channel(&operation).await?;
        let declared = channel
            .exchange_declare(
                mark.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        close_quietly(&channel).await;
        match declared {
            Ok(()) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(Error::broker(operation(), error)),
        }
    }

    async fn consume_unbounded(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Subscription>, Error> {
        let operation = || format!("consume queue {queue:?}");
        let channel = self.new_channel(&operation).await?;
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
            acks: acks::Acks::new(channel.clone()),
            channel,
            consumer,
            retiring: VecDeque::new(),
            tag: options.tag,
            replacements: 0,
            prefetch: options.prefetch,
        }))
    }

    async fn queue_stats_unbounded(&self, queue: &str) -> Result<Option<QueueStats>, Error> {
        let operation = || format!("inspect queue {queue:?}");
        // A passive declare of a missing queue closes its channel.
        let channel = self.new_channel(&operation).await?;
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
        close_quietly(&channel).await;
        match declared {
            Ok(declared) => Ok(Some(QueueStats::new(
                declared.message_count(),
                declared.consumer_count(),
            ))),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(Error::broker(operation(), error)),
        }
    }

    async fn get_unbounded(&self, queue: &str) -> Result<Option<Delivery>, Error> {
        let connected = self.connected(Role::Consume).await?;
        let Channels::Get(channel) = &connected.channels else {
            unreachable!("the consuming connection has a basic.get channel");
        };
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| Error::broker(format!("get from queue {queue:?}"), e))?;
        Ok(got.map(|got| {
            let delivery = got.delivery;
            Delivery::new(
                convert::message(&delivery.properties, delivery.data),
                Box::new(DirectAcker(delivery.acker)),
            )
            .with_redelivered(delivery.redelivered)
        }))
    }
}

impl AmqpBroker {
    /// A fresh channel on the consuming connection, for one operation
    /// (a consumer, a declare, an inspection): never on the publishing
    /// one, which a resource alarm stops.
    async fn new_channel(&self, operation: &impl Fn() -> String) -> Result<Channel, Error> {
        let connected = self.connected(Role::Consume).await?;
        connected
            .connection
            .create_channel()
            .await
            .map_err(|e| Error::broker(operation(), e))
    }
}

/// Closes a one-operation channel, unless the operation's error closed it.
async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
}

/// The broker's channel-level error code of `error`, with its reply text,
/// if it is one.
fn soft_error(error: &lapin::Error) -> Option<(&AMQPSoftError, &str)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some((soft, amqp.get_message().as_str())),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// The exchange that marks queue `queue` as a shard (`qjob.shard:<queue>`),
/// if the name fits in AMQP's 255 bytes.
fn shard_mark(queue: &str) -> Option<String> {
    Some(format!("qjob.shard:{queue}")).filter(|mark| mark.len() <= 255)
}

/// Marks the shard `queue` of `work_queue`: AMQP cannot read a queue's
/// arguments back, and RabbitMQ does not compare ones it does not know, so
/// the mark is an exchange of its own (fanout, durable, auto-delete)
/// bound to the queue. Deleting the queue removes the binding, and with
/// it the exchange: a queue declared again under that name is unmarked.
async fn mark_shard(channel: &Channel, queue: &str, work_queue: &str) -> Result<(), lapin::Error> {
    let Some(mark) = shard_mark(queue) else {
        return Ok(());
    };
    channel
        .exchange_declare(
            mark.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            mark.as_str().into(),
            work_queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(soft_error(error), Some((AMQPSoftError::NOTFOUND, _)))
}

/// A `PRECONDITION_FAILED` on a declare: which argument differs.
fn queue_mismatch(queue: &str, error: &lapin::Error) -> Option<Error> {
    match soft_error(error)? {
        (AMQPSoftError::PRECONDITIONFAILED, text) => convert::queue_mismatch(queue, text),
        _ => None,
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    /// Both connections are open. The consuming one is reopened by the
    /// consumers; the publishing one by the next publish, or here, in the
    /// background, so that a worker that publishes nothing for a while
    /// does not report itself down for good after a connection loss.
    fn is_connected(&self) -> bool {
        let consuming = self.link(Role::Consume).current().is_some();
        let publishing = self.link(Role::Publish).current().is_some();
        if !publishing
            && !self.inner.closed.load(Ordering::Relaxed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let broker = self.clone();
            runtime.spawn(async move {
                if let Ok(_reopening) = broker.link(Role::Publish).reconnecting.try_lock() {
                    drop(_reopening);
                    let _ = broker.connected(Role::Publish).await;
                }
            });
        }
        consuming && publishing
    }

    fn blocked_reason(&self) -> Option<String> {
        self.blocked()
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        bounded(
            || format!("declare queue {:?}", spec.name),
            self.declare_queue_unbounded(spec),
        )
        .await
    }

    async fn broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), Error> {
        // Declared each time: a publish to a missing exchange would close
        // its publishing channel. Broadcasts are few (heartbeats,
        // commands), so the round trip is cheap.
        bounded(
            || format!("declare exchange {exchange:?}"),
            self.declare_exchange(exchange),
        )
        .await?;
        let to = Target {
            exchange,
            routing_key,
            persistent: false,
        };
        self.publish_one(to, &message, &Sent::new()).await
    }

    async fn listen(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        bounded(
            || format!("listen to exchange {exchange:?}"),
            self.listen_unbounded(exchange, patterns),
        )
        .await
    }

    /// Gathered with the single publishes of other callers onto shared
    /// sessions, unless large or on a current-thread runtime (see
    /// `gather.rs`); dropped before its message was handed to a channel,
    /// it sends nothing.
    async fn publish(&self, queue: &str, message: Message) -> Result<(), Error> {
        if gather::gatherable(&message) {
            return self.publish_gathered(queue, message).await;
        }
        self.publish_tracked(queue, message, &Sent::new()).await
    }

    /// One session: the messages are pipelined on one channel, in order.
    async fn publish_all(&self, messages: Vec<(String, Message)>) -> Vec<Result<(), Error>> {
        self.publish_all_tracked(messages, &Sent::new()).await
    }

    /// Marked as the message is handed to its channel.
    async fn publish_tracked(
        &self,
        queue: &str,
        message: Message,
        sent: &Sent,
    ) -> Result<(), Error> {
        self.publish_one(Target::queue(queue), &message, sent).await
    }

    /// Marked as each message is handed to the channel.
    async fn publish_all_tracked(
        &self,
        messages: Vec<(String, Message)>,
        sent: &Sent,
    ) -> Vec<Result<(), Error>> {
        let messages: Vec<(Target<'_>, &Message)> = messages
            .iter()
            .map(|(queue, message)| (Target::queue(queue), message))
            .collect();
        self.publish_marked(&messages, sent).await
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

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, Error> {
        bounded(
            || format!("inspect queue {queue:?}"),
            self.queue_stats_unbounded(queue),
        )
        .await
    }

    /// Whether the exchange that marks `queue` as a shard exists (see
    /// `mark_shard`); the queue's name says of which work queue.
    async fn is_shard_of(&self, queue: &str, _work_queue: &str) -> Result<bool, Error> {
        bounded(
            || format!("inspect shard {queue:?}"),
            self.is_shard_of_unbounded(queue),
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

    /// RabbitMQ's default `consumer_timeout`, 30 minutes: a delivery
    /// unacked for longer makes the broker close the channel and redeliver.
    /// Tell the worker another value with
    /// `WorkerBuilder::broker_consumer_timeout`.
    fn consumer_timeout(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(30 * 60))
    }
}
