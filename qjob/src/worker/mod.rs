//! [`Worker`]: consumes the registered jobs' queues and runs their handlers.

mod bookkeeping;
mod budget;
mod builder;
mod cancellations;
mod checks;
mod console;
mod consumer;
mod control;
mod decide;
mod gate;
mod halt;
mod handler;
mod health;
mod held;
mod history;
mod metrics;
mod observer;
mod plan;
mod quota;
mod routes;
mod run;
mod runnable;
mod sampler;
mod scaler;
mod schedule_control;
#[cfg(feature = "periodic")]
mod scheduler;
mod seat;
mod settle;
mod wiring;

pub use builder::WorkerBuilder;
pub(crate) use cancellations::Cancellations;
pub use health::{
    BreakerHealth, BudgetHealth, BudgetShare, Health, HealthReport, ScheduleHealth,
    SharedLimitHealth,
};
pub use observer::{AttemptEvent, AttemptOutcome, Observer};

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "periodic")]
use crate::Error;
use crate::broker::Broker;
use crate::store::Store;
use runnable::Runnable;

/// Where the operator's overrides (`QJOB_<QUEUE>_PREFETCH`, …) are read.
pub(super) type Overrides = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Consumes the queues of the registered jobs.
///
/// # Examples
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Email { to: String }
/// use qjob::{job, Client, JobContext, JobError, Worker};
/// use qjob_testkit::MemoryBroker;
///
/// #[job(queue = "docs.worker.email", concurrency = 4)]
/// async fn email(job: Email, _ctx: JobContext) -> Result<(), JobError> {
///     println!("to {}", job.to);
///     Ok(())
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
/// let broker = MemoryBroker::new();
/// Client::new(broker.clone()).enqueue::<EmailJob>(Email { to: "a@example.com".into() }).await?;
/// let worker = Worker::builder(broker.clone()).register(EmailJob).build();
/// worker.run_until(broker.wait_until_empty("docs.worker.email")).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    pub(super) broker: Arc<dyn Broker>,
    pub(super) jobs: Vec<Arc<dyn Runnable>>,
    pub(super) shutdown_timeout: Duration,
    pub(super) observers: Arc<[Arc<dyn Observer>]>,
    pub(super) broker_consumer_timeout: Duration,
    pub(super) sample_interval: Duration,
    pub(super) autoscale_interval: Duration,
    pub(super) health: Health,
    pub(super) overrides: Overrides,
    pub(super) console: bool,
    pub(super) heartbeat_interval: Duration,
    pub(super) cancellations: Arc<Cancellations>,
    pub(super) store: Option<Arc<dyn Store>>,
    /// The worker's id, unique per worker (a UUID): its heartbeats' and
    /// the holder of its permits.
    pub(super) id: String,
    /// The most handlers over all job types, if bounded.
    pub(super) max_handlers: Option<usize>,
    /// The size of each named resource.
    pub(super) resources: std::collections::HashMap<String, u32>,
    /// How long a permit lasts unless renewed.
    pub(super) permit_lease: Duration,
    #[cfg(feature = "periodic")]
    pub(super) schedules: Vec<Result<scheduler::Planned, Error>>,
    #[cfg(feature = "postgres")]
    pub(super) relays: Vec<crate::outbox::Relay>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field(
                "jobs",
                &self.jobs.iter().map(|j| j.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A handle on this worker's health, to serve from a liveness or
    /// readiness endpoint while the worker runs.
    pub fn health(&self) -> Health {
        self.health.clone()
    }
}
