//! Wiring a handler: what a worker gives each of its handlers, and what
//! the consumers of one job type share.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{Broker, QueueSpec};
use crate::policy::backoff::BackoffPolicy;
use crate::store::Store;
use crate::worker::budget::{Budget, InBudget};
use crate::worker::cancellations::Cancellations;
use crate::worker::gate::Gate;
use crate::worker::handler::{Handler, Inbox, UniqueLock};
use crate::worker::health::Health;
use crate::worker::held;
use crate::worker::metrics::JobMetrics;
use crate::worker::observer::Observer;
use crate::worker::quota::Quota;
use crate::worker::routes::Routes;
use crate::worker::runnable::Runnable;
use crate::worker::scaler::Work;
use crate::{JobOptions, topology};

/// What a worker wires every handler to.
pub(crate) struct Wiring {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) observers: Arc<[Arc<dyn Observer>]>,
    pub(crate) health: Health,
    /// The broker's consumer timeout, as the worker was told it.
    pub(crate) broker_consumer_timeout: Duration,
    pub(crate) cancellations: Arc<Cancellations>,
    pub(crate) store: Option<Arc<dyn Store>>,
    /// The worker's handler budget, if it has one.
    pub(crate) budget: Option<Arc<Budget>>,
}

/// What a job's consumers share.
pub(crate) struct Shared {
    pub(crate) leases: Arc<topology::Leases>,
    pub(crate) gate: Option<Arc<Gate>>,
    pub(crate) work: Option<Arc<Work>>,
    pub(crate) metrics: JobMetrics,
    /// The job type's limits shared by every process.
    pub(crate) quota: Option<Arc<Quota>>,
    /// The job type's place in the worker's budget.
    pub(crate) member: usize,
}

impl Handler {
    /// The handler of the queue `spec` that `job` consumes.
    pub(crate) fn new(
        wiring: &Wiring,
        job: &Arc<dyn Runnable>,
        options: &JobOptions,
        spec: &QueueSpec,
        shared: &Shared,
    ) -> Self {
        let consumer_timeout = wiring.broker_consumer_timeout;
        let store = &wiring.store;
        Handler {
            broker: wiring.broker.clone(),
            job: job.clone(),
            routes: Routes {
                queue: spec.clone(),
                retry: topology::retry_queue(options, spec),
                dead_letter: topology::dead_letter_queue(options),
                leases: shared.leases.clone(),
            },
            backoff: BackoffPolicy::new(options.backoff()),
            max_attempts: options.max_attempts(),
            timeout: options.timeout(),
            observers: wiring.observers.clone(),
            gate: shared.gate.clone(),
            health: wiring.health.clone(),
            metrics: shared.metrics.clone(),
            work: shared.work.clone(),
            abandoned: Default::default(),
            hold_budget: held::hold_budget(consumer_timeout),
            attempts: held::Attempts::new(consumer_timeout.saturating_mul(2)),
            remember_plain: held::outlasts(options.timeout(), consumer_timeout),
            cancellations: wiring.cancellations.clone(),
            unique: options
                .unique()
                .zip(store.clone())
                .map(|(unique, store)| UniqueLock {
                    store,
                    until: unique.until,
                }),
            inbox: options
                .inbox()
                .zip(store.clone())
                .map(|(window, store)| Inbox { store, window }),
            budget: wiring.budget.clone().map(|budget| InBudget {
                budget,
                member: shared.member,
            }),
            quota: shared.quota.clone(),
            batches: store.clone(),
            held: watch::Sender::new(0),
        }
    }
}
