//! [`Client`]: the typed producer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tracing::Instrument;

use std::time::{Duration, SystemTime};

use crate::broker::{Broker, Message};
use crate::dead_letters::DeadLetters;
use crate::job::{Job, JobId};
use crate::policy::backoff;
use crate::{Error, headers, topology, trace};

/// A negative confirm from a capped queue means it is full.
fn full<J: Job>(error: Error) -> Error {
    match (error, J::options().max_length()) {
        (Error::PublishRejected { queue }, Some(max_length)) => {
            Error::QueueFull { queue, max_length }
        }
        (error, _) => error,
    }
}

/// How many publishes [`Client::enqueue_all`] keeps awaiting confirms at once.
const PIPELINE: usize = 512;

/// Enqueues jobs. Cheap to clone; clones share the broker and what was declared.
///
/// # Examples
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Email { to: String }
/// # #[qjob::job(queue = "docs.client.email")]
/// # async fn email(job: Email, ctx: qjob::JobContext) -> Result<(), qjob::JobError> { Ok(()) }
/// # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
/// use qjob::Client;
/// use qjob_testkit::MemoryBroker;
///
/// let client = Client::new(MemoryBroker::new());
/// let id = client.enqueue::<EmailJob>(Email { to: "a@example.com".into() }).await?;
/// println!("enqueued {id}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
    declared: Arc<Mutex<HashSet<String>>>,
    /// The delay queues' leases (see `topology::Leases`).
    leases: Arc<topology::Leases>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client publishing through `broker` (a broker shared with a
    /// worker is an `Arc<…>`, itself a [`Broker`]).
    pub fn new(broker: impl Broker) -> Self {
        Self {
            broker: Arc::new(broker),
            declared: Arc::default(),
            leases: Arc::default(),
        }
    }

    /// Publishes one job and returns its id once the broker confirmed it.
    /// The job type's queues are declared on first use.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the payload does not serialize, or the
    /// broker's error ([`Error::PublishRejected`], [`Error::Broker`], …): the
    /// job was then not confirmed and is the caller's to retry.
    pub async fn enqueue<J: Job>(&self, payload: J::Payload) -> Result<JobId, Error> {
        async {
            self.ensure_declared::<J>().await?;
            self.publish::<J>(&payload).await
        }
        .instrument(enqueue_span::<J>(1))
        .await
    }

    /// Publishes one job to run after `delay`, and returns its id once the
    /// broker confirmed it. The job waits in a delay queue on the broker
    /// (`<queue>.delay.<ms>ms`, a message TTL that dead-letters into the work
    /// queue), so it survives restarts and needs no broker plugin. The delay
    /// is rounded up to 10 ms (to whole seconds from 10 s). Delays longer
    /// than a day wait in day-long hops.
    ///
    /// # Errors
    ///
    /// As [`Client::enqueue`]; [`Error::Config`] for a job with
    /// `max_length` (a capped queue), whose delayed jobs RabbitMQ would drop
    /// if they came due while the queue is full.
    pub async fn enqueue_in<J: Job>(
        &self,
        payload: J::Payload,
        delay: Duration,
    ) -> Result<JobId, Error> {
        let delay = backoff::round_up(delay);
        if delay.is_zero() {
            return self.enqueue::<J>(payload).await;
        }
        if let Some(max_length) = J::options().max_length() {
            return Err(Error::Config(format!(
                "job {} cannot be delayed: its queue {:?} is capped (max_length = {max_length}), \
                 and RabbitMQ drops a delayed job that comes due while the queue is full; \
                 enqueue it when it is due, or remove the cap",
                J::NAME,
                J::QUEUE
            )));
        }
        async {
            self.ensure_declared::<J>().await?;
            let (id, message) = Self::message::<J>(&payload)?;
            let target = Self::target::<J>(Some(&payload));
            topology::delayed(&target, J::options().queue_type(), delay, message)
                .publish(&*self.broker, &self.leases)
                .await?;
            Ok(id)
        }
        .instrument(enqueue_span::<J>(1))
        .await
    }

    /// Publishes one job to run at `at` (at once if that is past); see
    /// [`Client::enqueue_in`].
    ///
    /// # Errors
    ///
    /// As [`Client::enqueue_in`].
    pub async fn enqueue_at<J: Job>(
        &self,
        payload: J::Payload,
        at: SystemTime,
    ) -> Result<JobId, Error> {
        let delay = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.enqueue_in::<J>(payload, delay).await
    }

    /// Publishes many jobs with their confirms pipelined, and returns each
    /// one's outcome in input order.
    ///
    /// # Errors
    ///
    /// The outer error is a failure to declare the queues (nothing was
    /// published); each inner result is as for [`Client::enqueue`].
    pub async fn enqueue_all<J: Job>(
        &self,
        payloads: impl IntoIterator<Item = J::Payload>,
    ) -> Result<Vec<Result<JobId, Error>>, Error> {
        let payloads: Vec<_> = payloads.into_iter().collect();
        let span = enqueue_span::<J>(payloads.len());
        async {
            self.ensure_declared::<J>().await?;
            let results = futures_util::stream::iter(payloads)
                .map(|payload| async move { self.publish::<J>(&payload).await })
                .buffered(PIPELINE)
                .collect()
                .await;
            Ok(results)
        }
        .instrument(span)
        .await
    }

    async fn publish<J: Job>(&self, payload: &J::Payload) -> Result<JobId, Error> {
        let (id, message) = Self::message::<J>(payload)?;
        let target = Self::target::<J>(Some(payload));
        self.broker
            .publish(&target, message)
            .await
            .map_err(full::<J>)?;
        Ok(id)
    }

    /// The queue a job goes to: the work queue, or for a partitioned job the
    /// partition queue of its key (partition 0 when there is no payload to
    /// take a key from).
    pub(crate) fn target<J: Job>(payload: Option<&J::Payload>) -> Cow<'static, str> {
        // Only partitioned jobs have keys: the common case needs no options.
        let key = match payload.map(J::partition_key) {
            Some(None) => return Cow::Borrowed(J::QUEUE),
            Some(Some(key)) => key,
            None => String::new(),
        };
        Cow::Owned(topology::route(&J::options(), Some(&key)).into_owned())
    }

    fn message<J: Job>(payload: &J::Payload) -> Result<(JobId, Message), Error> {
        let body = serde_json::to_vec(payload).map_err(|source| Error::Serialize {
            job: J::NAME,
            source,
        })?;
        let id = JobId::new();
        let mut message = headers::new_job(&id, body);
        trace::inject(&mut message.headers);
        Ok((id, message))
    }

    /// The dead-letter queue of job type `J`: peek at it, replay its jobs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize, Debug)] struct Charge { account: String }
    /// # #[qjob::job(queue = "docs.dlq.charge")]
    /// # async fn charge(job: Charge, ctx: qjob::JobContext) -> Result<(), qjob::JobError> { Ok(()) }
    /// # async fn run(client: qjob::Client) -> Result<(), qjob::Error> {
    /// for letter in client.dead_letters::<ChargeJob>().peek(10).await? {
    ///     println!("{:?} failed {} times: {}", letter.payload, letter.attempts, letter.error);
    /// }
    /// let replayed = client
    ///     .dead_letters::<ChargeJob>()
    ///     .replay_where(|letter| letter.reason == "retries-exhausted")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn dead_letters<J: Job>(&self) -> DeadLetters<'_, J> {
        DeadLetters::new(self)
    }

    pub(crate) fn broker(&self) -> &dyn Broker {
        &*self.broker
    }

    pub(crate) fn shared_broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }

    pub(crate) async fn ensure_declared<J: Job>(&self) -> Result<(), Error> {
        if self.is_declared(J::QUEUE) {
            return Ok(());
        }
        topology::declare(&*self.broker, &J::options()).await?;
        self.declared
            .lock()
            .expect("declared-queue set poisoned")
            .insert(J::QUEUE.to_owned());
        Ok(())
    }

    fn is_declared(&self, queue: &str) -> bool {
        self.declared
            .lock()
            .expect("declared-queue set poisoned")
            .contains(queue)
    }
}

/// The producer span of one enqueue call: its trace context is what the
/// jobs carry.
fn enqueue_span<J: Job>(jobs: usize) -> tracing::Span {
    tracing::info_span!(
        "qjob.enqueue",
        otel.kind = "producer",
        job = J::NAME,
        queue = J::QUEUE,
        jobs,
    )
}
