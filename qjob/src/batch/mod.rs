//! Batches: a set of jobs with a callback job that runs once every member
//! has finished. The guide is [`crate::docs::batches`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::oneshot;

use crate::broker::{Broker, Message, Sent};
use crate::job::{Job, JobId};
use crate::store::{BatchCounts, BatchUpdate, Store};
use crate::{Client, Error, headers};

/// How long a store keeps a batch's counts by default.
pub const DEFAULT_BATCH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The payload of a batch's callback job: the batch and how its members
/// ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchDone {
    /// The batch's id.
    pub batch: String,
    /// Its members.
    pub total: u64,
    /// The members that succeeded.
    pub succeeded: u64,
    /// The members that were dead-lettered.
    pub dead_lettered: u64,
    /// What the batch was given at creation ([`BatchBuilder::data`]).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// A batch's progress ([`Client::batch_progress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchProgress {
    /// Members added.
    pub total: u64,
    /// Members not finished yet.
    pub pending: u64,
    /// Members that succeeded.
    pub succeeded: u64,
    /// Members that were dead-lettered.
    pub failed: u64,
    /// Whether it is closed (no member will be added).
    pub closed: bool,
    /// Whether its callback was enqueued (or, for a callback only on
    /// success, found not due).
    pub callback_enqueued: bool,
}

impl From<BatchCounts> for BatchProgress {
    fn from(counts: BatchCounts) -> Self {
        Self {
            total: counts.total,
            pending: counts.pending(),
            succeeded: counts.succeeded,
            failed: counts.dead_lettered,
            closed: counts.closed,
            callback_enqueued: counts.fired,
        }
    }
}

/// The callback as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Callback {
    job: String,
    queue: String,
    only_on_success: bool,
    #[serde(default)]
    data: serde_json::Value,
}

/// Builds a batch: its callback, the data the callback gets, how long the
/// store keeps it. From [`Client::batch`].
#[derive(Debug)]
pub struct BatchBuilder {
    client: Client,
    callback: Option<Callback>,
    options: Option<crate::JobOptions>,
    ttl: Duration,
}

impl BatchBuilder {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            callback: None,
            options: None,
            ttl: DEFAULT_BATCH_TTL,
        }
    }

    /// Runs job type `C` (its payload a [`BatchDone`]) once every member
    /// has finished, whatever their outcome.
    pub fn on_complete<C: Job<Payload = BatchDone>>(self) -> Self {
        self.callback::<C>(false)
    }

    /// Runs job type `C` once every member has finished, only if all of
    /// them succeeded.
    pub fn on_success<C: Job<Payload = BatchDone>>(self) -> Self {
        self.callback::<C>(true)
    }

    fn callback<C: Job<Payload = BatchDone>>(mut self, only_on_success: bool) -> Self {
        let data = self.callback.take().map(|c| c.data).unwrap_or_default();
        self.callback = Some(Callback {
            job: C::NAME.to_owned(),
            queue: Client::target::<C>(None).into_owned(),
            only_on_success,
            data,
        });
        self.options = Some(C::options());
        self
    }

    /// What the callback's [`BatchDone::data`] carries.
    pub fn data(mut self, data: serde_json::Value) -> Self {
        if let Some(callback) = &mut self.callback {
            callback.data = data;
        } else {
            self.callback = Some(Callback {
                job: String::new(),
                queue: String::new(),
                only_on_success: false,
                data,
            });
        }
        self
    }

    /// How long the store keeps the batch's counts (7 days by default): a
    /// batch not complete by then is forgotten, and its callback never
    /// runs.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Creates the batch, open for members.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without a callback or without a store on the
    /// client; [`Error::Store`] if the store failed; the broker's error if
    /// the callback's queues could not be declared.
    pub async fn open(self) -> Result<Batch, Error> {
        let Some(callback) = self.callback.filter(|c| !c.queue.is_empty()) else {
            return Err(Error::Config(
                "a batch needs a callback: BatchBuilder::on_complete or on_success".into(),
            ));
        };
        let store = self.client.batch_store()?;
        if let Some(options) = &self.options {
            self.client.declare(options).await?;
        }
        let id = JobId::new().to_string();
        let spec = serde_json::to_string(&callback).expect("a callback serializes");
        if !store.batch_create(&id, &spec, self.ttl).await? {
            return Err(Error::Store {
                operation: "create a batch".into(),
                message: format!("batch {id} exists already"),
            });
        }
        Ok(Batch {
            client: self.client.in_batch(&id),
            id,
            store,
        })
    }
}

/// An open batch: enqueue its members, then close it. Cheap to clone.
#[derive(Clone)]
pub struct Batch {
    id: String,
    client: Client,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// The batch's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Enqueues one member, as [`Client::enqueue`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] once the batch is closed; [`Error::Store`] if the
    /// store failed; as [`Client::enqueue`] otherwise (a member that was
    /// not stored is not counted).
    pub async fn enqueue<J: Job>(&self, payload: J::Payload) -> Result<JobId, Error> {
        let mut ids = self.enqueue_all::<J>([payload]).await?;
        ids.pop().expect("one result for one member")
    }

    /// Enqueues members, as [`Client::enqueue_all`]: each chunk is counted
    /// in the batch just before it is published, and its members that
    /// were not stored are taken back; dropped mid-way, this takes back
    /// the members that had not gone out ([`crate::docs::batches`]).
    ///
    /// # Errors
    ///
    /// The outer error: the batch is closed ([`Error::Config`]), the
    /// store failed, or the queues could not be declared; nothing was
    /// published then. Each inner result as [`Client::enqueue_all`]'s; a
    /// chunk after the first that its batch could not count (closed
    /// meanwhile, the store down) and the jobs after it are
    /// [`Error::NotSent`].
    pub async fn enqueue_all<J: Job>(
        &self,
        payloads: impl IntoIterator<Item = J::Payload>,
    ) -> Result<Vec<Result<JobId, Error>>, Error> {
        if J::options().unique().is_some() {
            return Err(Error::Config(format!(
                "job {} is unique: a unique job cannot be a batch member (a duplicate would never finish in the batch)",
                J::NAME
            )));
        }
        self.client.enqueue_all::<J>(payloads).await
    }

    /// Closes the batch: no member can be added any more. If every member
    /// has finished already, the callback is enqueued now. Closing again
    /// changes nothing, except to enqueue a callback that a failed close
    /// did not.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed, or the broker's error while
    /// enqueueing the callback (close again to retry it).
    pub async fn close(&self) -> Result<BatchProgress, Error> {
        close(&self.client, &*self.store, &self.id).await
    }
}

/// Members of a batch counted for one publish ([`count`]). A task of its
/// own keeps the count, so that an enqueue dropped at any point, even
/// while the count is being written, leaves counted only the members that
/// went out.
pub(crate) struct Counted {
    /// To the task: how many of the members were not stored, and where
    /// to say they were taken back. Dropped unsent, the publish was
    /// abandoned.
    settled: oneshot::Sender<(usize, oneshot::Sender<()>)>,
}

impl Counted {
    /// After the publish: takes back the `not_stored` members, and waits
    /// until the store has that, so that a close right after sees it.
    pub(crate) async fn settle(self, not_stored: usize) {
        let (done, taken_back) = oneshot::channel();
        if self.settled.send((not_stored, done)).is_ok() {
            let _ = taken_back.await;
        }
    }
}

/// Counts `members` in batch `batch` just before they are published on
/// lanes that `sent` track. If the returned [`Counted`] is dropped before
/// it is settled, the members that did not go out are taken back (those
/// that did may be stored, and stay counted); if this is dropped while
/// counting, all of them are, once counted.
///
/// # Errors
///
/// [`Error::Config`] if the batch is closed, [`Error::Store`] if the
/// store failed or has no such batch: nothing was counted then.
pub(crate) async fn count(
    client: &Client,
    batch: &str,
    members: usize,
    sent: Vec<Arc<Sent>>,
) -> Result<Counted, Error> {
    let store = client.batch_store()?;
    let broker = client.shared_broker();
    let batch = batch.to_owned();
    let (counted_tx, counted) = oneshot::channel();
    let (settled, settle) = oneshot::channel::<(usize, oneshot::Sender<()>)>();
    tokio::spawn(async move {
        let added = store
            .batch_update(&batch, BatchUpdate::Add(signed(members)), CLOSER)
            .await
            .and_then(|counts| counts.map(drop).ok_or_else(|| gone(&batch)));
        let added_ok = added.is_ok();
        if counted_tx.send(added).is_err() {
            // Dropped while counting: nothing went out.
            if added_ok {
                uncount(&*broker, &*store, &batch, members).await;
            }
            return;
        }
        if !added_ok {
            return;
        }
        match settle.await {
            Ok((not_stored, done)) => {
                uncount(&*broker, &*store, &batch, not_stored).await;
                let _ = done.send(());
            }
            // Dropped mid-publish: what went out may be stored.
            Err(_) => {
                let went_out: usize = sent.iter().map(|lane| lane.count()).sum();
                uncount(&*broker, &*store, &batch, members.saturating_sub(went_out)).await;
            }
        }
    });
    match counted.await {
        Ok(Ok(())) => Ok(Counted { settled }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::Store {
            operation: "count batch members".into(),
            message: "the counting task ended without an answer".into(),
        }),
    }
}

fn signed(members: usize) -> i64 {
    i64::try_from(members).unwrap_or(i64::MAX)
}

/// Takes back `members` of batch `batch` counted but not stored; if that
/// completes a closed batch (the others all finished), the callback goes
/// now. A failure is logged, not returned: the members that were stored
/// are, and the caller must not enqueue them again.
async fn uncount(broker: &dyn Broker, store: &dyn Store, batch: &str, members: usize) {
    if members == 0 {
        return;
    }
    let uncounted = async {
        let counts = store
            .batch_update(batch, BatchUpdate::Add(-signed(members)), CLOSER)
            .await?
            .ok_or_else(|| gone(batch))?;
        fire(broker, store, batch, counts, CLOSER).await
    };
    if let Err(error) = uncounted.await {
        tracing::error!(batch, members, %error, "could not take back batch members that were not stored: the batch waits for them (close it again to retry its callback)");
    }
}

/// Who claims a callback when the batch completes as it closes (or as a
/// member whose enqueue failed is uncounted).
const CLOSER: &str = "client";

fn gone(batch: &str) -> Error {
    Error::Store {
        operation: "update a batch".into(),
        message: format!("no batch {batch} (never created, or expired)"),
    }
}

/// Closes batch `batch` and enqueues its callback if that completed it.
pub(crate) async fn close(
    client: &Client,
    store: &dyn Store,
    batch: &str,
) -> Result<BatchProgress, Error> {
    let counts = store
        .batch_update(batch, BatchUpdate::Close, CLOSER)
        .await?
        .ok_or_else(|| gone(batch))?;
    let counts = fire(client.broker(), store, batch, counts, CLOSER).await?;
    Ok(counts.into())
}

/// The job id of batch `batch`'s callback.
pub fn callback_id(batch: &str) -> JobId {
    JobId::from(format!("{batch}:done"))
}

/// Enqueues the callback of batch `batch` if `claimant` claimed it and it
/// is not enqueued yet, then records it enqueued; returns the counts after.
pub(crate) async fn fire(
    broker: &dyn Broker,
    store: &dyn Store,
    batch: &str,
    counts: BatchCounts,
    claimant: &str,
) -> Result<BatchCounts, Error> {
    if counts.fired || counts.claimed_by.as_deref() != Some(claimant) {
        return Ok(counts);
    }
    let callback: Callback = serde_json::from_str(&counts.callback).map_err(|e| Error::Store {
        operation: "read a batch's callback".into(),
        message: e.to_string(),
    })?;
    if !(callback.only_on_success && counts.dead_lettered > 0) {
        let done = BatchDone {
            batch: batch.to_owned(),
            total: counts.total,
            succeeded: counts.succeeded,
            dead_lettered: counts.dead_lettered,
            data: callback.data,
        };
        let body = serde_json::to_vec(&done).expect("a batch's outcome serializes");
        let mut message: Message = headers::new_job(&callback_id(batch), body);
        crate::trace::inject(&mut message.headers);
        broker.publish(&callback.queue, message).await?;
        tracing::info!(batch, job = %callback.job, "batch complete: callback enqueued");
    }
    Ok(store
        .batch_update(batch, BatchUpdate::Fired, claimant)
        .await?
        .unwrap_or(counts))
}

/// The progress of batch `batch` in `store`.
pub(crate) async fn progress(
    store: &dyn Store,
    batch: &str,
) -> Result<Option<BatchProgress>, Error> {
    Ok(store
        .batch_update(batch, BatchUpdate::Read, "")
        .await?
        .map(BatchProgress::from))
}
