//! Batches: a set of jobs with a callback job that runs once every member
//! has finished. The guide is [`crate::docs::batches`].

// This file holds what a user handles (a builder, an open batch, and the
// client's methods for them); `ledger.rs` what the store keeps of a batch
// and the callback's enqueue, which the worker uses too; the client
// counts members as it publishes them (`client/batch.rs`).

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use crate::{Client, Error};
use crate::{Job, JobId};

pub(crate) mod ledger;

use ledger::Callback;
pub(crate) use ledger::fire;
pub use ledger::{BatchDone, BatchProgress, DEFAULT_BATCH_TTL, callback_id};

impl Client {
    /// Starts a batch: jobs enqueued through it are its members, and its
    /// callback job runs once they have all finished (see
    /// [`crate::docs::batches`]). Needs a store ([`Client::with_store`]).
    pub fn batch(&self) -> BatchBuilder {
        BatchBuilder::new(self.clone())
    }

    /// The progress of batch `batch` (by its id), or `None` if the store
    /// knows no such batch (never created, or expired).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without a store; [`Error::Store`] if it failed.
    pub async fn batch_progress(&self, batch: &str) -> Result<Option<BatchProgress>, Error> {
        ledger::progress(&*self.batch_store()?, batch).await
    }

    /// Closes batch `batch` by its id, as [`Batch::close`]
    /// does: from any process, and again to enqueue a callback that a
    /// close which failed (or died) had claimed.
    ///
    /// # Errors
    ///
    /// As [`Batch::close`]; [`Error::Store`] if there is no
    /// such batch.
    pub async fn close_batch(&self, batch: &str) -> Result<BatchProgress, Error> {
        ledger::close(self.broker(), &*self.batch_store()?, batch).await
    }
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
        ledger::close(self.client.broker(), &*self.store, &self.id).await
    }
}
