//! Enqueueing one job: now, after a delay, or at a time, with a priority
//! or without.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::Instrument;

use super::message::{delayable, full};
use super::{Client, Enqueued, enqueue_span};
use crate::broker::{Message, Sent};
use crate::policy::backoff;
use crate::topology;
use crate::{EnqueueOptions, Error};
use crate::{Job, JobId};

impl Client {
    /// Publishes one job, unless it is unique and a job with the same key
    /// holds the lock: then nothing is published and that job's id comes
    /// back as [`Enqueued::Duplicate`]. A job that is not unique is always
    /// [`Enqueued::New`].
    ///
    /// The lock is taken before the publish, and given back if the publish
    /// fails before anything was stored: of producers enqueueing the same
    /// key at once, exactly one publishes. Dropped before it returns, this
    /// keeps the lock if the message went out and gives it back if not
    /// ([`crate::docs::unique`] says when a message goes out).
    ///
    /// # Errors
    ///
    /// As [`Client::enqueue`]; [`Error::Store`] if the store failed (nothing
    /// published), [`Error::Config`] for a unique job without a store.
    pub async fn enqueue_unique<J: Job>(&self, payload: J::Payload) -> Result<Enqueued, Error> {
        self.enqueue_now::<J>(payload, None).await
    }

    /// Publishes one job and returns its id once the broker confirmed it.
    /// The job type's queues are declared on first use. A unique job whose
    /// key is taken is not published: the id is the job's already there
    /// ([`Client::enqueue_unique`] says which happened).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the payload does not serialize, or the
    /// broker's error ([`Error::PublishRejected`], [`Error::Broker`], …): the
    /// job was then not confirmed and is the caller's to retry. For a unique
    /// job, as [`Client::enqueue_unique`].
    pub async fn enqueue<J: Job>(&self, payload: J::Payload) -> Result<JobId, Error> {
        let enqueued = self.enqueue_unique::<J>(payload).await?;
        Ok(enqueued.id().clone())
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
        self.enqueue_with::<J>(payload, EnqueueOptions::new().delay(delay))
            .await
    }

    /// Publishes one job as `options` say (its priority, when it runs) and
    /// returns its id once the broker confirmed it: as
    /// [`Client::enqueue`], or [`Client::enqueue_in`] for a job that runs
    /// later. A job with a priority keeps it through its retries, its
    /// delay and a replay from the dead-letter queue.
    ///
    /// # Errors
    ///
    /// As [`Client::enqueue_in`]; [`Error::Config`] for a priority the job
    /// type does not take: one without `priorities`
    /// ([`JobOptions::with_priorities`](crate::JobOptions::with_priorities)),
    /// or above them. Nothing is published then.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Report { id: u64 }
    /// # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
    /// use qjob::{Client, EnqueueOptions};
    /// use qjob_testkit::MemoryBroker;
    ///
    /// #[qjob::job(queue = "docs.client.report", priorities = 3)]
    /// async fn report(job: Report, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    ///     Ok(())
    /// }
    ///
    /// let client = Client::new(MemoryBroker::new());
    /// client.enqueue_with::<ReportJob>(Report { id: 7 }, EnqueueOptions::new().priority(3)).await?;
    /// let refused = client.enqueue_with::<ReportJob>(Report { id: 8 }, EnqueueOptions::new().priority(4)).await;
    /// assert!(matches!(refused, Err(qjob::Error::Config(_))));
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_with<J: Job>(
        &self,
        payload: J::Payload,
        options: EnqueueOptions,
    ) -> Result<JobId, Error> {
        let priority = options.priority_of::<J>()?;
        let delay = backoff::round_up(options.delay_from(SystemTime::now()));
        if delay.is_zero() {
            let enqueued = self.enqueue_now::<J>(payload, priority).await?;
            return Ok(enqueued.id().clone());
        }
        delayable::<J>()?;
        async {
            self.ensure_declared::<J>().await?;
            let (id, mut message, lock) = self.unique_message::<J>(&payload)?;
            message.priority = priority;
            let target = Self::target::<J>(Some(&payload));
            let queue_type = J::options().queue_type();
            let publish = |sent: Arc<Sent>| async move {
                self.publish_delayed(&target, queue_type, delay, message, &sent)
                    .await
            };
            let enqueued = self.locked::<J, _>(lock, id, publish).await?;
            Ok(enqueued.id().clone())
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
        self.enqueue_with::<J>(payload, EnqueueOptions::new().at(at))
            .await
    }

    /// Declares `J`'s queues (once) and publishes one job now, with
    /// `priority` (one `J` takes).
    async fn enqueue_now<J: Job>(
        &self,
        payload: J::Payload,
        priority: Option<u8>,
    ) -> Result<Enqueued, Error> {
        async {
            self.ensure_declared::<J>().await?;
            self.publish::<J>(&payload, priority).await
        }
        .instrument(enqueue_span::<J>(1))
        .await
    }

    async fn publish<J: Job>(
        &self,
        payload: &J::Payload,
        priority: Option<u8>,
    ) -> Result<Enqueued, Error> {
        let (id, mut message, lock) = self.unique_message::<J>(payload)?;
        message.priority = priority;
        let target = Self::target_now::<J>(&J::options(), payload);
        // Only a unique job's lock reads what went out; other jobs are
        // published untracked, which a broker may gather with the single
        // publishes of other callers.
        let tracked = lock.is_some();
        let publish = |sent: Arc<Sent>| async move {
            let published = if tracked {
                self.broker.publish_tracked(&target, message, &sent).await
            } else {
                self.broker.publish(&target, message).await
            };
            published.map_err(full::<J>)
        };
        self.locked::<J, _>(lock, id, publish).await
    }

    /// Publishes `message` to wait `delay` in a delay queue before it goes
    /// into `queue`, marking `sent` when it goes out.
    async fn publish_delayed(
        &self,
        queue: &str,
        queue_type: crate::QueueType,
        delay: Duration,
        message: Message,
        sent: &Sent,
    ) -> Result<(), Error> {
        let delayed = topology::delayed(queue, queue_type, delay, message);
        delayed
            .publish_tracked(&*self.broker, &self.leases, sent)
            .await
    }
}
