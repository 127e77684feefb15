//! RabbitMQ as the tests reach it: qjob's broker on `QJOB_AMQP_URL`, and a
//! plain lapin connection ([`Rabbit`]) to set up and inspect queues.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qjob::AmqpBroker;
use qjob::broker::{HeaderValue, Headers};

/// The broker the tests use: `QJOB_AMQP_URL`, or RabbitMQ on 127.0.0.1:5672.
pub fn amqp_url() -> String {
    std::env::var("QJOB_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Connects qjob's broker; an unreachable RabbitMQ fails the test, never skips it.
pub async fn amqp() -> AmqpBroker {
    AmqpBroker::connect(amqp_url())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "these tests need RabbitMQ ({}; see README.md): {error}",
                amqp_url()
            )
        })
}

/// A message read back from a queue.
#[derive(Debug)]
pub struct Got {
    /// Its headers.
    pub headers: Headers,
    /// Its body.
    pub body: Vec<u8>,
    /// Its message id.
    pub id: Option<String>,
    /// Its headers as RabbitMQ delivered them (empty on MemoryBroker).
    pub table: lapin::types::FieldTable,
}

/// A plain lapin connection for setting up and inspecting queues.
pub struct Rabbit {
    channel: lapin::Channel,
    _connection: Connection,
}

impl Rabbit {
    /// Connects.
    pub async fn connect() -> Self {
        Self::connect_to(&amqp_url()).await
    }

    /// Connects to the broker at `url`.
    pub async fn connect_to(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("these tests need RabbitMQ at {url}: {e}"));
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            channel,
            _connection: connection,
        }
    }

    /// Deletes the queues (if they exist), so a test starts from nothing.
    pub async fn delete(&self, queues: &[&str]) {
        for queue in queues {
            self.channel
                .queue_delete((*queue).into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    }

    /// The number of ready messages in `queue` (0 if it does not exist).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.passive(queue).await.map_or(0, |q| q.message_count())
    }

    /// The number of consumers of `queue` (0 if it does not exist).
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.passive(queue).await.map_or(0, |q| q.consumer_count())
    }

    /// A passive declare, on a channel of its own: a missing queue closes it.
    async fn passive(&self, queue: &str) -> Option<lapin::Queue> {
        let channel = self._connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok();
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        declared
    }

    /// Waits until `queue` holds `count` ready messages, failing after `limit`.
    pub async fn wait_ready(&self, queue: &str, count: u32, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ready = self.ready(queue).await;
            if ready == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue} has {ready} ready messages, expected {count} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Publishes raw bytes to `queue`, confirmed.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        self.publish_with(
            queue,
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
    }

    /// Publishes `body` with `properties` to `queue`, as a foreign producer
    /// would, confirmed.
    pub async fn publish_with(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Takes every ready message out of `queue`: their message ids, in
    /// order (those without one left out).
    pub async fn take_ids(&self, queue: &str) -> Vec<String> {
        self.take_all(queue)
            .await
            .into_iter()
            .filter_map(|got| got.id)
            .collect()
    }

    /// Takes every ready message out of `queue`.
    pub async fn take_all(&self, queue: &str) -> Vec<Got> {
        let count = self.ready(queue).await;
        let channel = self._connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < count as usize {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a ready message is delivered")
                .expect("consumer open")
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            got.push(Got {
                headers: headers(&delivery.properties),
                table: delivery.properties.headers().clone().unwrap_or_default(),
                id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string()),
                body: delivery.data,
            });
        }
        channel.close(200, "done".into()).await.unwrap();
        got
    }
}

fn headers(properties: &BasicProperties) -> Headers {
    use lapin::types::AMQPValue;
    let mut headers = Headers::new();
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            let value = match value {
                AMQPValue::LongString(s) => HeaderValue::Str(s.to_string()),
                AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
                AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
                other => HeaderValue::Str(format!("{other:?}")),
            };
            headers.insert(name.to_string(), value);
        }
    }
    headers
}
