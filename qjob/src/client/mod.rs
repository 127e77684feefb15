//! [`Client`]: the typed producer.
//!
//! This file holds the client and what every way of enqueueing shares
//! (its broker, the queues it declared); each concern has a file:
//! [`single`] enqueues one job, [`bulk`] many, [`unique`] takes and frees
//! unique jobs' locks around a publish, [`message`] makes a job's message
//! and picks its queue, [`options`] says how one job is enqueued (its
//! priority, when it runs), and [`batch`] and [`dead_letters`] are the client
//! side of batches and of dead letters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::broker::Broker;
use crate::store::Store;
use crate::{Error, topology};
use crate::{Job, JobId};

pub(crate) mod batch;
mod bulk;
pub(crate) mod dead_letters;
pub(crate) mod message;
mod options;
mod single;
mod unique;

pub use options::EnqueueOptions;

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
    declared: Arc<Mutex<HashMap<String, Declared>>>,
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

    /// Keeps unique jobs' locks in `store` (needed to enqueue a job with
    /// [`JobOptions::with_unique`](crate::JobOptions::with_unique); a shared
    /// store, such as [`RedisStore`](crate::store), across processes).
    pub fn with_store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
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

    /// Declares the queues of a job type with `options`, once: callers
    /// that come while one declares wait for it (a failure leaves the next
    /// caller to try again), so a burst of first enqueues declares once.
    pub(crate) async fn declare(&self, options: &crate::JobOptions) -> Result<(), Error> {
        let declared = {
            let mut declared = self.declared.lock().expect("declared-queue map poisoned");
            match declared.get(options.queue()) {
                Some(once) => once.clone(),
                None => declared
                    .entry(options.queue().to_owned())
                    .or_default()
                    .clone(),
            }
        };
        if declared.initialized() {
            return Ok(());
        }
        declared
            .get_or_try_init(|| topology::declare(&*self.broker, options))
            .await?;
        Ok(())
    }
}

/// Whether a queue's topology was declared, or is being declared.
type Declared = Arc<tokio::sync::OnceCell<()>>;

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
