//! [`Env`]: the broker under test (RabbitMQ or in memory) with the means
//! to inspect it and to run workers on it, so that each scenario is
//! written once for both.

use std::sync::Arc;
use std::time::Duration;

use qjob::broker::Broker;
use qjob::{Client, Error, Job, Worker};
use qjob_testkit::MemoryBroker;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Got, Rabbit};

/// How long any single wait in a scenario may take before the test fails.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A broker under test plus the means to inspect it.
pub enum Env {
    /// In memory.
    Memory(MemoryBroker),
    /// RabbitMQ, with a raw connection for inspection.
    Amqp(qjob::AmqpBroker, Box<Rabbit>),
}

impl Env {
    /// A fresh in-memory broker.
    pub async fn memory() -> Self {
        Env::Memory(MemoryBroker::new())
    }

    /// RabbitMQ.
    pub async fn amqp() -> Self {
        Env::Amqp(crate::amqp().await, Box::new(Rabbit::connect().await))
    }

    /// The broker, shared.
    pub fn broker(&self) -> Arc<dyn Broker> {
        match self {
            Env::Memory(broker) => Arc::new(broker.clone()),
            Env::Amqp(broker, _) => Arc::new(broker.clone()),
        }
    }

    /// A client on the broker.
    pub fn client(&self) -> Client {
        Client::new(self.broker())
    }

    /// A probe name unique to this job type on this broker.
    pub fn tag<J: Job>(&self) -> String {
        let kind = match self {
            Env::Memory(_) => "memory",
            Env::Amqp(..) => "amqp",
        };
        format!("{kind}:{}", J::QUEUE)
    }

    /// Starts from nothing: deletes the job's queues left by earlier runs.
    /// A partitioned or sharded job's queues go too, and the one past them
    /// (which a worker with more partitions or shards would have left).
    pub async fn reset<J: Job>(&self) {
        let options = J::options();
        let mut queues = vec![options.queue().to_owned(), options.dead_letter_queue()];
        queues.extend(options.consumed_queues());
        queues.push(match options.partitions() {
            Some(partitions) => format!("{}.p{partitions}", options.queue()),
            None => format!("{}.s{}", options.queue(), options.shards()),
        });
        self.delete_queues(&queues.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
    }

    /// Deletes queues (those left by earlier runs: RabbitMQ keeps durable
    /// queues).
    pub async fn delete_queues(&self, queues: &[&str]) {
        match self {
            Env::Memory(broker) => queues.iter().for_each(|q| broker.delete_queue(q)),
            Env::Amqp(_, rabbit) => rabbit.delete(queues).await,
        }
    }

    /// Ready messages in `queue`.
    pub async fn ready(&self, queue: &str) -> u32 {
        match self {
            Env::Memory(broker) => broker.ready_count(queue) as u32,
            Env::Amqp(_, rabbit) => rabbit.ready(queue).await,
        }
    }

    /// Waits until `queue` holds `count` ready messages.
    pub async fn wait_ready(&self, queue: &str, count: u32) {
        match self {
            Env::Memory(broker) => {
                let waited = tokio::time::timeout(
                    LIMIT,
                    broker.wait_until(|b| b.ready_count(queue) == count as usize),
                )
                .await;
                assert!(
                    waited.is_ok(),
                    "queue {queue} never held {count} ready messages"
                );
            }
            Env::Amqp(_, rabbit) => rabbit.wait_ready(queue, count, LIMIT).await,
        }
    }

    /// The ready messages of `queue` (taken out of RabbitMQ, copied from memory).
    pub async fn take_all(&self, queue: &str) -> Vec<Got> {
        match self {
            Env::Memory(broker) => broker
                .messages(queue)
                .into_iter()
                .map(|m| Got {
                    headers: m.headers,
                    body: m.body,
                    id: m.id,
                    table: Default::default(),
                })
                .collect(),
            Env::Amqp(_, rabbit) => rabbit.take_all(queue).await,
        }
    }

    /// Publishes raw bytes, as a foreign producer would.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        match self {
            Env::Memory(broker) => broker
                .publish(queue, qjob::broker::Message::new(body))
                .await
                .unwrap(),
            Env::Amqp(_, rabbit) => rabbit.publish_raw(queue, body).await,
        }
    }

    /// The consumers of `queue`.
    pub async fn consumers(&self, queue: &str) -> u32 {
        match self {
            Env::Memory(broker) => broker.consumer_count(queue) as u32,
            Env::Amqp(_, rabbit) => rabbit.consumers(queue).await,
        }
    }

    /// Drops the connection of the broker under test: RabbitMQ closes it
    /// (`rabbitmqctl close_connection`), the memory broker drops it.
    pub async fn drop_connection(&self) {
        match self {
            Env::Memory(broker) => broker.drop_connection(),
            Env::Amqp(broker, _) => crate::close_connection(broker.connection_name()),
        }
    }

    /// Another handle on the same broker: a second connection to RabbitMQ,
    /// the same memory broker.
    pub async fn another(&self) -> Env {
        match self {
            Env::Memory(broker) => Env::Memory(broker.clone()),
            Env::Amqp(..) => Env::amqp().await,
        }
    }

    /// Starts a worker for `job` (with the builder's default shutdown
    /// timeout, 30 s).
    pub fn start<J: Job>(&self, job: J) -> Running {
        self.start_with(job, Duration::from_secs(30))
    }

    /// Starts a worker for `job` with this shutdown timeout.
    pub fn start_with<J: Job>(&self, job: J, shutdown_timeout: Duration) -> Running {
        self.run(
            Worker::builder(self.broker())
                .register(job)
                .shutdown_timeout(shutdown_timeout)
                .build(),
        )
    }

    /// Runs `worker` until [`Running::stop`].
    pub fn run(&self, worker: Worker) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
        }));
        Running { stop, handle }
    }
}

/// A worker running in a task.
pub struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Signals shutdown without waiting.
    pub fn signal(self) -> JoinHandle<Result<(), Error>> {
        let _ = self.stop.send(());
        self.handle
    }

    /// Shuts down and waits for the worker to return.
    pub async fn stop(self) -> Result<(), Error> {
        let handle = self.signal();
        tokio::time::timeout(LIMIT, handle)
            .await
            .expect("worker stops in time")
            .expect("worker task does not panic")
    }
}

/// Waits until `queue` has `count` consumers, active or standing by
/// (RabbitMQ's passive declare counts only the active one of a quorum
/// single-active-consumer queue: ask `rabbitmqctl` there).
pub async fn wait_consumers(env: &Env, queue: &str, count: u32) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let consumers = || async {
        match env {
            Env::Memory(_) => env.consumers(queue).await,
            Env::Amqp(..) => crate::consumer_activity(queue)
                .iter()
                .filter(|(name, _)| name == queue)
                .count() as u32,
        }
    };
    while consumers().await != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never had {count} consumers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
