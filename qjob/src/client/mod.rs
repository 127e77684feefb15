//! [`Client`]: the typed producer.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tracing::Instrument;

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::broker::{Broker, Message, Sent};
use crate::dead_letters::DeadLetters;
use crate::job::{Job, JobId};
use crate::policy::backoff;
use crate::store::Store;
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

/// Gives a unique job's lock back when dropped, unless disarmed (its
/// `store` taken) or its job's message went out: from a task of its own,
/// so that an enqueue dropped before its publish sent anything still
/// frees it, and one dropped after keeps the lock of a job that may exist.
struct Unlock {
    store: Option<Arc<dyn Store>>,
    key: String,
    owner: String,
    /// The publish of the job's message, and its place in it.
    sent: Option<(Arc<Sent>, usize)>,
}

impl Unlock {
    /// Keeps the lock, once dropped, if message `position` of the publish
    /// `sent` tracks went out.
    fn kept_once_sent(&mut self, sent: &Arc<Sent>, position: usize) {
        self.sent = Some((Arc::clone(sent), position));
    }
}

impl Drop for Unlock {
    fn drop(&mut self) {
        if let Some((sent, position)) = &self.sent
            && sent.count() > *position
        {
            return;
        }
        let Some(store) = self.store.take() else {
            return;
        };
        let (key, owner) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // If this fails, the lock expires at the end of its window.
                let _ = store.release(&key, &owner).await;
            });
        }
    }
}

/// Whether a failed publish may have been stored all the same: no confirm
/// came (a timeout), or the connection went after the message was sent.
/// (`Connect` is a publish that found no connection: nothing was sent.)
pub(crate) fn maybe_stored(error: &Error) -> bool {
    matches!(error, Error::Timeout { .. } | Error::Broker { .. })
}

/// Refuses to delay a job whose queue is capped: RabbitMQ would drop it if
/// it came due while the queue is full.
pub(crate) fn delayable<J: Job>() -> Result<(), Error> {
    match J::options().max_length() {
        None => Ok(()),
        Some(max_length) => Err(Error::Config(format!(
            "job {} cannot be delayed: its queue {:?} is capped (max_length = {max_length}), \
             and RabbitMQ drops a delayed job that comes due while the queue is full; \
             enqueue it when it is due, or remove the cap",
            J::NAME,
            J::QUEUE
        ))),
    }
}

/// The store key of a unique job's lock: its queue and its key.
pub(crate) fn unique_lock_key(queue: &str, key: &str) -> String {
    format!("unique:{queue}:{key}")
}

/// Messages of one [`Broker::publish_all`], each with its index in the
/// batch it came from.
type Lane = Vec<(usize, (String, Message))>;

/// Whether `J`'s queues keep its jobs in order: partitioned or
/// single-active (the queues say so, not a worker's settings).
fn keeps_order<J: Job>() -> bool {
    let options = J::options();
    options.partitions().is_some() || options.single_active()
}

/// The error of a job of a batch not sent because an earlier one `reason`
/// ("was not stored", "may not have been stored").
fn not_after<J: Job>(reason: &str) -> Error {
    Error::NotSent {
        operation: format!("enqueue job {}", J::NAME),
        reason: format!("an earlier job of the batch {reason}"),
    }
}

/// Splits a batch of `J`'s messages into lanes published concurrently:
/// one per [`LANE_MIN`] messages, at most [`LANES`]. A job whose queues
/// keep an order ([`keeps_order`]) has each of its queues whole on one
/// lane, in input order. Any other job runs concurrently anyway: its batch
/// is cut into contiguous runs, so one queue fills through several
/// channels.
fn lanes<J: Job>(messages: Vec<(String, Message)>) -> Vec<Lane> {
    let ordered = keeps_order::<J>();
    let count = messages.len();
    let lanes = (count / LANE_MIN).clamp(1, LANES);
    let per_lane = count.div_ceil(lanes);
    let mut by_queue: HashMap<String, usize> = HashMap::new();
    let mut split: Vec<Lane> = (0..lanes).map(|_| Vec::new()).collect();
    for (index, (queue, message)) in messages.into_iter().enumerate() {
        let lane = if ordered {
            let queues = by_queue.len();
            *by_queue.entry(queue.clone()).or_insert(queues % lanes)
        } else {
            index / per_lane
        };
        split[lane].push((index, (queue, message)));
    }
    split.retain(|lane| !lane.is_empty());
    split
}

/// How many locks [`Client::enqueue_all`] claims at once.
const PIPELINE: usize = 512;

/// How many jobs [`Client::enqueue_all`] has in flight at most: the
/// next chunk is sent once every job of this one was confirmed.
const CHUNK: usize = 16_384;

/// How many [`Broker::publish_all`] of one chunk run at once, each on its
/// own channel. One queue's messages are stored by one broker process, so
/// more lanes than this gain nothing (`benches/throughput.rs`).
const LANES: usize = 4;

/// Jobs of a batch per lane: a batch of fewer than twice this goes out on
/// one channel, since another costs more than it brings.
const LANE_MIN: usize = 1_024;

/// Whether a unique job may publish: its lock, taken (`None` if the job is
/// not unique), or the job that holds it.
enum Claim {
    Free(Option<Unlock>),
    Held(JobId),
}

/// A job of [`Client::enqueue_all`] with its lock claimed.
#[expect(
    clippy::large_enum_variant,
    reason = "a chunk of them at a time; boxing would allocate for every job"
)]
enum Claimed {
    Publish {
        id: JobId,
        queue: String,
        message: Message,
        guard: Option<Unlock>,
    },
    Duplicate(JobId),
}

impl Unlock {
    /// Gives the lock back and waits until the store has it, so that the
    /// caller's next enqueue of the key finds it free. Armed until the
    /// store answered: dropped before, it gives the lock back from a task.
    async fn release(mut self) {
        if let Some(store) = self.store.clone() {
            // If this fails, the lock expires at the end of its window.
            let _ = store.release(&self.key, &self.owner).await;
        }
        self.store = None;
    }
}

/// After a unique job's publish: its lock stays if the job was, or may
/// have been, stored (a timeout, a lost connection after the message went
/// out: it expires at the end of its window if the job never comes);
/// otherwise, and when the message never went out (a delay queue's
/// declare that timed out), the guard is returned, to [`Unlock::release`].
fn unless_stored(guard: Option<Unlock>, outcome: &Result<(), Error>) -> Option<Unlock> {
    let mut guard = guard?;
    let went_out = guard
        .sent
        .as_ref()
        .is_none_or(|(sent, position)| sent.count() > *position);
    let stored = match outcome {
        Ok(()) => true,
        Err(error) => maybe_stored(error) && went_out,
    };
    if stored {
        guard.store = None;
        return None;
    }
    // Not stored: the lock goes back even if the enqueue is dropped now,
    // whether or not the message went out.
    guard.sent = None;
    Some(guard)
}

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
    /// Where unique jobs' locks and batches are kept.
    store: Option<Arc<dyn Store>>,
    /// The batch the jobs it enqueues are members of.
    batch: Option<Arc<str>>,
}

/// What [`Client::enqueue_unique`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Enqueued {
    /// Published: the new job's id.
    New(JobId),
    /// Not published: a job with the same unique key holds the lock; its id.
    Duplicate(JobId),
}

impl Enqueued {
    /// The job's id: the new one, or the one that holds the key.
    pub fn id(&self) -> &JobId {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }

    /// Whether a job with the same key was already there.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Enqueued::Duplicate(_))
    }
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
            store: None,
            batch: None,
        }
    }

    /// Starts a batch: jobs enqueued through it are its members, and its
    /// callback job runs once they have all finished (see
    /// [`crate::docs::batches`]). Needs a store ([`Client::with_store`]).
    pub fn batch(&self) -> crate::batch::BatchBuilder {
        crate::batch::BatchBuilder::new(self.clone())
    }

    /// The progress of batch `batch` (by its id), or `None` if the store
    /// knows no such batch (never created, or expired).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without a store; [`Error::Store`] if it failed.
    pub async fn batch_progress(
        &self,
        batch: &str,
    ) -> Result<Option<crate::batch::BatchProgress>, Error> {
        crate::batch::progress(&*self.batch_store()?, batch).await
    }

    /// Closes batch `batch` by its id, as [`crate::batch::Batch::close`]
    /// does: from any process, and again to enqueue a callback that a
    /// close which failed (or died) had claimed.
    ///
    /// # Errors
    ///
    /// As [`crate::batch::Batch::close`]; [`Error::Store`] if there is no
    /// such batch.
    pub async fn close_batch(&self, batch: &str) -> Result<crate::batch::BatchProgress, Error> {
        crate::batch::close(self, &*self.batch_store()?, batch).await
    }

    /// The store, which batches need.
    pub(crate) fn batch_store(&self) -> Result<Arc<dyn Store>, Error> {
        self.store
            .clone()
            .ok_or_else(|| Error::Config("batches need a store: Client::with_store".into()))
    }

    /// This client, enqueueing members of batch `batch`.
    pub(crate) fn in_batch(&self, batch: &str) -> Self {
        Self {
            batch: Some(batch.into()),
            ..self.clone()
        }
    }

    /// Keeps unique jobs' locks in `store` (needed to enqueue a job with
    /// [`JobOptions::with_unique`](crate::JobOptions::with_unique); a shared
    /// store, such as [`RedisStore`](crate::store), across processes).
    pub fn with_store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

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
        async {
            self.ensure_declared::<J>().await?;
            self.publish::<J>(&payload).await
        }
        .instrument(enqueue_span::<J>(1))
        .await
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
        let delay = backoff::round_up(delay);
        if delay.is_zero() {
            return self.enqueue::<J>(payload).await;
        }
        delayable::<J>()?;
        async {
            self.ensure_declared::<J>().await?;
            let (id, message, lock) = self.unique_message::<J>(&payload)?;
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
        let delay = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.enqueue_in::<J>(payload, delay).await
    }

    /// Publishes many jobs with their confirms pipelined, and returns each
    /// one's outcome in input order.
    ///
    /// A job whose queues keep an order (partitioned or `single_active`)
    /// is published to each of its queues in input order, its partition
    /// queues side by side: a key keeps its order. Any other job's
    /// handlers run in no set order: a batch of 2 048 jobs or more is
    /// spread over up to four channels at once, so its jobs may reach the
    /// queue in another order than given (and on a full `reject-publish`
    /// queue, the refused ones are not only the last).
    ///
    /// A job that may have been stored (a timeout, a lost connection) stops
    /// the batch: the jobs after its chunk of 16 384 are
    /// [`Error::NotSent`]. For a job whose queues keep an order, so does
    /// any job that was not stored, and one that could not be made or
    /// claimed (serialization, the unique store) also stops the jobs after
    /// it in its chunk. The broker's refusals (a full queue) come back
    /// while the chunk is being sent, so its later jobs still go out: on a
    /// capped queue that a worker drains meanwhile, a key's later job may
    /// be stored after its refused one. The `Ok` results were stored;
    /// enqueue the `Err` ones again, in order. A unique job that was not
    /// stored has its lock free again when this returns; dropped before,
    /// this keeps the locks of the jobs whose messages went out, as
    /// [`Client::enqueue_unique`] does.
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
            let mut results = Vec::with_capacity(payloads.len());
            let mut payloads = payloads.into_iter().peekable();
            // A chunk at a time, each confirmed before the next is sent:
            // order holds where it is kept, and memory is bounded by the
            // chunk.
            while payloads.peek().is_some() {
                let chunk: Vec<_> = payloads.by_ref().take(CHUNK).collect();
                let size = chunk.len();
                let claimed = self.claim_chunk::<J>(chunk).await;
                let chunk = match self.publish_chunk::<J>(claimed).await {
                    Ok(chunk) => chunk,
                    // Nothing published yet: the batch is closed, or the
                    // store failed.
                    Err(error) if results.is_empty() => return Err(error),
                    Err(error) => {
                        let reason = format!("its batch could not count it ({error})");
                        let unsent = size + payloads.by_ref().count();
                        results.extend((0..unsent).map(|_| {
                            Err(Error::NotSent {
                                operation: format!("enqueue job {}", J::NAME),
                                reason: reason.clone(),
                            })
                        }));
                        break;
                    }
                };
                let failed = chunk.iter().filter_map(|result| result.as_ref().err());
                // A job of the chunk may yet be stored late, on its own
                // channel, and the next ones could overtake it; and one of
                // an ordered job type that was not stored must not be
                // overtaken either.
                let stop =
                    match failed.fold(None, |worst, error| worst.max(Some(maybe_stored(error)))) {
                        Some(true) => Some("may not have been stored"),
                        Some(false) if keeps_order::<J>() => Some("was not stored"),
                        _ => None,
                    };
                results.extend(chunk);
                if let Some(reason) = stop {
                    results.extend(payloads.by_ref().map(|_| Err(not_after::<J>(reason))));
                }
            }
            Ok(results)
        }
        .instrument(span)
        .await
    }

    /// Makes the messages of `payloads` and claims the locks of the unique
    /// ones.
    async fn claim_chunk<J: Job>(&self, payloads: Vec<J::Payload>) -> Vec<Result<Claimed, Error>> {
        let options = &J::options();
        futures_util::stream::iter(payloads)
            .map(|payload| async move {
                let (id, message, lock) = self.unique_message::<J>(&payload)?;
                let queue = Self::target_now::<J>(options, &payload).into_owned();
                Ok(match self.claim::<J>(lock, &id).await? {
                    Claim::Held(holder) => Claimed::Duplicate(holder),
                    Claim::Free(guard) => Claimed::Publish {
                        id,
                        queue,
                        message,
                        guard,
                    },
                })
            })
            .buffered(PIPELINE)
            .collect()
            .await
    }

    /// Publishes the messages of a claimed chunk over [`lanes`], and
    /// returns each job's outcome in input order. The members of a batch
    /// are counted in it just before they are published (see
    /// [`crate::batch::count`]); the outer error is that count's, and
    /// nothing was published then.
    async fn publish_chunk<J: Job>(
        &self,
        claimed: Vec<Result<Claimed, Error>>,
    ) -> Result<Vec<Result<JobId, Error>>, Error> {
        let mut outgoing = Vec::new();
        let mut results: Vec<Option<Result<JobId, Error>>> = Vec::with_capacity(claimed.len());
        let mut waiting = Vec::new();
        let mut duplicates = Vec::new();
        // The jobs of this chunk that were not stored, and whose locks go
        // back: a duplicate of one of them is not stored either.
        let mut lost: HashMap<JobId, String> = HashMap::new();
        let mut releases = Vec::new();
        // A job of an ordered job type that cannot go out stops the ones
        // after it, which would overtake it.
        let mut stopped = false;
        for claimed in claimed {
            match claimed {
                Ok(Claimed::Publish { id, guard, .. }) if stopped => {
                    let error = not_after::<J>("was not stored");
                    lost.insert(id, error.to_string());
                    releases.extend(guard);
                    results.push(Some(Err(error)));
                }
                Ok(Claimed::Duplicate(_)) if stopped => {
                    results.push(Some(Err(not_after::<J>("was not stored"))));
                }
                Ok(Claimed::Publish {
                    id,
                    queue,
                    message,
                    guard,
                }) => {
                    outgoing.push((queue, message));
                    waiting.push((results.len(), id, guard));
                    results.push(None);
                }
                Ok(Claimed::Duplicate(holder)) => {
                    duplicates.push(results.len());
                    results.push(Some(Ok(holder)));
                }
                Err(error) => {
                    stopped = keeps_order::<J>();
                    results.push(Some(Err(error)));
                }
            }
        }
        let count = outgoing.len();
        let lanes: Vec<(Arc<Sent>, Lane)> = lanes::<J>(outgoing)
            .into_iter()
            .map(|lane| (Arc::default(), lane))
            .collect();
        // Dropped mid-publish, this keeps the locks of the jobs that went
        // out, confirmed or not, and gives back the others'.
        for (sent, lane) in &lanes {
            for (position, (index, _)) in lane.iter().enumerate() {
                if let Some(guard) = &mut waiting[*index].2 {
                    guard.kept_once_sent(sent, position);
                }
            }
        }
        let counted = match &self.batch {
            Some(batch) if count > 0 => {
                let sent = lanes.iter().map(|(sent, _)| Arc::clone(sent)).collect();
                Some(crate::batch::count(self, batch, count, sent).await?)
            }
            _ => None,
        };
        let outcomes = self.publish_lanes(count, lanes).await;
        let mut not_stored = 0;
        for ((index, id, guard), outcome) in waiting.into_iter().zip(outcomes) {
            let outcome = outcome.map_err(full::<J>);
            releases.extend(unless_stored(guard, &outcome));
            if let Err(error) = &outcome
                && !maybe_stored(error)
            {
                not_stored += 1;
                lost.insert(id.clone(), error.to_string());
            }
            results[index] = Some(outcome.map(|()| id));
        }
        // A member not stored will not finish: it is taken back.
        if let Some(counted) = counted {
            counted.settle(not_stored).await;
        }
        for index in duplicates {
            if let Some(Ok(holder)) = &results[index]
                && let Some(error) = lost.get(holder)
            {
                results[index] = Some(Err(Error::NotSent {
                    operation: format!("enqueue job {}", J::NAME),
                    reason: format!(
                        "the job {holder} holding its key in the same batch was not stored ({error})"
                    ),
                }));
            }
        }
        // Given back before the results, so that enqueueing a key again
        // (the next chunk, or the caller's retry) finds it free.
        futures_util::stream::iter(releases)
            .for_each_concurrent(PIPELINE, Unlock::release)
            .await;
        // A broker that answered for fewer messages than it was given:
        // the others' fate is unknown.
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(Error::broker(
                        format!("enqueue job {}", J::NAME),
                        "the broker gave no outcome for it",
                    ))
                })
            })
            .collect())
    }

    /// Publishes each lane with its own [`Broker::publish_all_tracked`],
    /// marking what went out in the lane's [`Sent`], up to [`LANES`] at
    /// once, and returns the outcome of each of the `count` messages at
    /// the index [`lanes`] gave it.
    async fn publish_lanes(
        &self,
        count: usize,
        lanes: Vec<(Arc<Sent>, Lane)>,
    ) -> Vec<Result<(), Error>> {
        let mut outcomes: Vec<Option<Result<(), Error>>> = Vec::new();
        outcomes.resize_with(count, || None);
        let mut published = futures_util::stream::iter(lanes)
            .map(|(sent, lane)| async move {
                let (indices, messages): (Vec<usize>, Vec<_>) = lane.into_iter().unzip();
                let lane = self.broker.publish_all_tracked(messages, &sent).await;
                indices.into_iter().zip(lane)
            })
            .buffer_unordered(LANES);
        while let Some(lane) = published.next().await {
            for (index, outcome) in lane {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    Err(Error::broker(
                        "publish",
                        "the broker gave no outcome for it",
                    ))
                })
            })
            .collect()
    }

    async fn publish<J: Job>(&self, payload: &J::Payload) -> Result<Enqueued, Error> {
        let (id, message, lock) = self.unique_message::<J>(payload)?;
        let target = Self::target_now::<J>(&J::options(), payload);
        let publish = |sent: Arc<Sent>| async move {
            let published = self.broker.publish_tracked(&target, message, &sent).await;
            published.map_err(full::<J>)
        };
        self.locked::<J, _>(lock, id, publish).await
    }

    /// The message of a job and, for a unique job, its lock's key, which
    /// travels in the `qjob-unique-key` header: the worker frees the lock
    /// by it, never by a key computed again from the payload.
    fn unique_message<J: Job>(
        &self,
        payload: &J::Payload,
    ) -> Result<(JobId, Message, Option<String>), Error> {
        let (id, mut message) = Self::message::<J>(payload)?;
        if let Some(batch) = &self.batch {
            message
                .headers
                .insert(headers::BATCH.into(), batch.to_string().into());
        }
        let lock = J::options()
            .unique()
            .and_then(|_| J::unique_key(payload))
            .map(|key| unique_lock_key(J::QUEUE, &key));
        if let Some(lock) = &lock {
            message
                .headers
                .insert(headers::UNIQUE_KEY.into(), lock.clone().into());
        }
        Ok((id, message, lock))
    }

    /// Runs `publish` for job `id`, under lock `lock` if the job is unique:
    /// not at all if another job holds the lock. `publish` marks the
    /// [`Sent`] it is given when the message goes out: dropped from then
    /// on, this keeps the lock (the job may exist); dropped before, it
    /// gives it back.
    async fn locked<J: Job, F>(
        &self,
        lock: Option<String>,
        id: JobId,
        publish: impl FnOnce(Arc<Sent>) -> F,
    ) -> Result<Enqueued, Error>
    where
        F: Future<Output = Result<(), Error>>,
    {
        let mut guard = match self.claim::<J>(lock, &id).await? {
            Claim::Held(holder) => return Ok(Enqueued::Duplicate(holder)),
            Claim::Free(guard) => guard,
        };
        let sent = Arc::new(Sent::new());
        if let Some(guard) = &mut guard {
            guard.kept_once_sent(&sent, 0);
        }
        let outcome = publish(sent).await;
        if let Some(guard) = unless_stored(guard, &outcome) {
            guard.release().await;
        }
        outcome.map(|()| Enqueued::New(id))
    }

    /// Takes lock `lock` for job `id` if the job is unique. A publish that
    /// failed before anything was stored gives the lock back through the
    /// guard (see [`unless_stored`]), as does one abandoned (its future
    /// dropped) before its message went out (see [`Unlock`]).
    async fn claim<J: Job>(&self, lock: Option<String>, id: &JobId) -> Result<Claim, Error> {
        let (Some(key), Some(unique)) = (lock, J::options().unique()) else {
            return Ok(Claim::Free(None));
        };
        let Some(store) = self.store.clone() else {
            return Err(Error::Config(format!(
                "job {} is unique: the client needs a store (Client::with_store)",
                J::NAME
            )));
        };
        // Given back if this is dropped before the publish was sent (or
        // if the store failed after taking it).
        let mut guard = Unlock {
            store: Some(store.clone()),
            key: key.clone(),
            owner: id.to_string(),
            sent: None,
        };
        if let Some(holder) = store.acquire(&key, id.as_str(), unique.within).await? {
            guard.store = None;
            return Ok(Claim::Held(JobId::from(holder)));
        }
        Ok(Claim::Free(Some(guard)))
    }

    /// The queue a job goes to: the work queue, or for a partitioned job the
    /// partition queue of its key (partition 0 when there is no payload to
    /// take a key from). A sharded job's jobs that go out at once spread
    /// over its shards ([`Client::target_now`]); what waits goes here.
    pub(crate) fn target<J: Job>(payload: Option<&J::Payload>) -> Cow<'static, str> {
        // Only partitioned jobs have keys: the common case needs no options.
        let key = match payload.map(J::partition_key) {
            Some(None) => return Cow::Borrowed(J::QUEUE),
            Some(Some(key)) => key,
            None => String::new(),
        };
        Cow::Owned(topology::route(&J::options(), Some(&key)).into_owned())
    }

    /// The queue a job that goes out now goes to: [`Client::target`], or
    /// for a sharded job (`options` are `J`'s) any of its shards.
    fn target_now<J: Job>(options: &crate::JobOptions, payload: &J::Payload) -> Cow<'static, str> {
        match topology::any_shard(options) {
            Some(shard) => Cow::Owned(shard),
            None => Self::target::<J>(Some(payload)),
        }
    }

    pub(crate) fn message<J: Job>(payload: &J::Payload) -> Result<(JobId, Message), Error> {
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

    /// The delay queues' leases (see `topology::Leases`).
    #[cfg(feature = "postgres")]
    pub(crate) fn leases(&self) -> &topology::Leases {
        &self.leases
    }

    pub(crate) fn broker(&self) -> &dyn Broker {
        &*self.broker
    }

    pub(crate) fn shared_broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }

    pub(crate) async fn ensure_declared<J: Job>(&self) -> Result<(), Error> {
        self.declare(&J::options()).await
    }

    /// Declares the queues of a job type with `options`, once.
    pub(crate) async fn declare(&self, options: &crate::JobOptions) -> Result<(), Error> {
        if self.is_declared(options.queue()) {
            return Ok(());
        }
        topology::declare(&*self.broker, options).await?;
        self.declared
            .lock()
            .expect("declared-queue set poisoned")
            .insert(options.queue().to_owned());
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
