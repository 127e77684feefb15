//! [`Health`]: what a liveness or readiness endpoint needs to know about a
//! worker, readable while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broker::Broker;
use crate::policy::breaker::BreakerState;
use crate::worker::budget::Budget;
use crate::worker::gate::Gate;
use crate::worker::quota::Quota;

pub use crate::protocol::{BreakerHealth, ScheduleHealth};

impl From<BreakerState> for BreakerHealth {
    fn from(state: BreakerState) -> Self {
        match state {
            BreakerState::Closed => BreakerHealth::Closed,
            BreakerState::Open { .. } => BreakerHealth::Open,
            BreakerState::HalfOpen { .. } => BreakerHealth::HalfOpen,
        }
    }
}

/// A snapshot of a worker's health.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Whether the worker is consuming (between start and shutdown).
    pub running: bool,
    /// Whether the broker connection is up.
    pub connected: bool,
    /// Why the broker blocks publishing (a resource alarm), if it does:
    /// retries and dead letters cannot be published meanwhile.
    pub blocked: Option<String>,
    /// Per consumed queue: whether its consumer is subscribed now.
    pub consumers: BTreeMap<String, bool>,
    /// The consumed queues an operator paused (their consumers are
    /// cancelled on purpose; see [`crate::admin`]).
    pub paused: BTreeSet<String>,
    /// Per job queue: the handler slots in force (adaptive concurrency
    /// moves it).
    pub concurrency: BTreeMap<String, usize>,
    /// Per job type with a circuit breaker: its state.
    pub breakers: BTreeMap<&'static str, BreakerHealth>,
    /// The last error the worker met (a failed subscription or settlement).
    pub last_error: Option<String>,
    /// When a delivery was last acked.
    pub last_ack: Option<SystemTime>,
    /// Per schedule this worker carries (by name): its expression, next
    /// tick and whether this worker leads it.
    pub schedules: BTreeMap<String, ScheduleHealth>,
    /// The handler budget ([`crate::WorkerBuilder::max_handlers`]), if the
    /// worker has one.
    pub budget: Option<BudgetHealth>,
    /// Per job type with limits shared by every process: how they stand.
    pub shared_limits: BTreeMap<&'static str, SharedLimitHealth>,
}

/// A worker's handler budget now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetHealth {
    /// The most handlers.
    pub max: usize,
    /// Handlers holding a slot of it now.
    pub in_use: usize,
    /// Per job type: its class, the slots it holds and its attempts
    /// waiting for one.
    pub jobs: BTreeMap<&'static str, BudgetShare>,
}

/// One job type's share of a worker's handler budget.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetShare {
    /// Its class.
    pub class: crate::JobClass,
    /// Slots it holds now.
    pub held: usize,
    /// Its attempts waiting for a slot.
    pub waiting: usize,
}

/// How a job type's limits shared by every process stand in this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedLimitHealth {
    /// Why its starts wait on the store, if they do (the store could not
    /// be reached): they never run past the limits meanwhile.
    pub problem: Option<String>,
    /// Starts that passed the limits in this worker so far.
    pub started: u64,
}

impl HealthReport {
    /// Ready: running, connected and every consumer subscribed, or
    /// paused by an operator.
    pub fn is_ready(&self) -> bool {
        self.running
            && self.connected
            && !self.consumers.is_empty()
            && self
                .consumers
                .iter()
                .all(|(queue, up)| *up || self.paused.contains(queue))
    }
}

#[derive(Default)]
struct State {
    running: bool,
    concurrency: BTreeMap<String, usize>,
    consumers: BTreeMap<String, bool>,
    paused: BTreeSet<String>,
    last_error: Option<String>,
    schedules: BTreeMap<String, ScheduleHealth>,
}

/// A handle on a worker's health, from [`crate::Worker::health`]; cheap to
/// clone, usable from any task (an HTTP handler, say).
#[derive(Clone)]
pub struct Health {
    broker: Arc<dyn Broker>,
    state: Arc<Mutex<State>>,
    gates: Arc<Mutex<Vec<WatchedGate>>>,
    quotas: Arc<Mutex<Vec<WatchedQuota>>>,
    budget: Arc<Mutex<Option<Arc<Budget>>>>,
    /// The last ack, in milliseconds since the Unix epoch (0: none yet);
    /// an atomic, since every settlement sets it.
    last_ack: Arc<AtomicU64>,
}

/// A job type's name and its gate.
type WatchedGate = (&'static str, Arc<Gate>);

/// A job type's name and its shared limits.
type WatchedQuota = (&'static str, Arc<Quota>);

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Health").field(&self.report()).finish()
    }
}

impl Health {
    pub(crate) fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            state: Arc::default(),
            gates: Arc::default(),
            quotas: Arc::default(),
            budget: Arc::default(),
            last_ack: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("health state poisoned")
    }

    /// The worker's health now.
    pub fn report(&self) -> HealthReport {
        let breakers = self
            .gates
            .lock()
            .expect("health gates poisoned")
            .iter()
            .filter_map(|(job, gate)| Some((*job, gate.breaker_state()?.into())))
            .collect();
        let shared_limits = self
            .quotas
            .lock()
            .expect("health quotas poisoned")
            .iter()
            .map(|(job, quota)| {
                let health = SharedLimitHealth {
                    problem: quota.problem(),
                    started: quota.started(),
                };
                (*job, health)
            })
            .collect();
        let budget = self
            .budget
            .lock()
            .expect("health budget poisoned")
            .as_ref()
            .map(|budget| BudgetHealth {
                max: budget.size(),
                in_use: budget.in_use(),
                jobs: budget
                    .shares()
                    .into_iter()
                    .map(|share| {
                        let (held, waiting) = (share.held, share.waiting);
                        let class = share.class;
                        (
                            share.job,
                            BudgetShare {
                                class,
                                held,
                                waiting,
                            },
                        )
                    })
                    .collect(),
            });
        let state = self.state();
        let last_ack = match self.last_ack.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(UNIX_EPOCH + Duration::from_millis(millis)),
        };
        HealthReport {
            running: state.running,
            // A stopped worker holds no connection of its own, whatever a
            // shared broker's client does.
            connected: state.running && self.broker.is_connected(),
            blocked: self.broker.blocked_reason(),
            consumers: state.consumers.clone(),
            paused: state.paused.clone(),
            concurrency: state.concurrency.clone(),
            breakers,
            last_error: state.last_error.clone(),
            last_ack,
            schedules: state.schedules.clone(),
            budget,
            shared_limits,
        }
    }

    pub(crate) fn watch_quota(&self, job: &'static str, quota: Arc<Quota>) {
        self.quotas
            .lock()
            .expect("health quotas poisoned")
            .push((job, quota));
    }

    pub(crate) fn budget(&self, budget: Arc<Budget>) {
        *self.budget.lock().expect("health budget poisoned") = Some(budget);
    }

    pub(crate) fn watch_gate(&self, job: &'static str, gate: Arc<Gate>) {
        self.gates
            .lock()
            .expect("health gates poisoned")
            .push((job, gate));
    }

    pub(crate) fn running(&self, running: bool) {
        let mut state = self.state();
        state.running = running;
        if !running {
            // Its consumers are closed.
            state.consumers.values_mut().for_each(|up| *up = false);
        }
    }

    pub(crate) fn consumer(&self, queue: &str, up: bool) {
        self.state().consumers.insert(queue.to_owned(), up);
    }

    /// Forgets the consumer of a queue that is gone for good (a shard past
    /// the job's `shards`, deleted).
    pub(crate) fn forget_consumer(&self, queue: &str) {
        let mut state = self.state();
        state.consumers.remove(queue);
        state.paused.remove(queue);
    }

    pub(crate) fn paused(&self, queue: &str, paused: bool) {
        let mut state = self.state();
        if paused {
            state.paused.insert(queue.to_owned());
        } else {
            state.paused.remove(queue);
        }
    }

    pub(crate) fn concurrency(&self, queue: &str, slots: usize) {
        self.state().concurrency.insert(queue.to_owned(), slots);
    }

    /// Changes what the report says of schedule `name`.
    #[cfg(feature = "periodic")]
    pub(crate) fn schedule(&self, name: &str, change: impl FnOnce(&mut ScheduleHealth)) {
        if let Some(schedule) = self.state().schedules.get_mut(name) {
            change(schedule);
        }
    }

    #[cfg(feature = "periodic")]
    pub(crate) fn add_schedule(&self, name: &str, schedule: ScheduleHealth) {
        self.state().schedules.insert(name.to_owned(), schedule);
    }

    pub(crate) fn error(&self, error: impl std::fmt::Display) {
        self.state().last_error = Some(error.to_string());
    }

    pub(crate) fn acked(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        self.last_ack.store(now.max(1), Ordering::Relaxed);
    }
}
