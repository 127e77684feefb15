//! Building a [`Worker`]: the jobs it runs, its schedules, relays and
//! observers, and its settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use crate::worker::cancellations::{Cancellations, DEFAULT_CANCEL_MEMORY};
use crate::worker::console::DEFAULT_HEARTBEAT_INTERVAL;
use crate::worker::health::Health;
use crate::worker::observer::Observer;
use crate::worker::quota::DEFAULT_PERMIT_LEASE;
use crate::worker::runnable::{Registered, Runnable};
#[cfg(feature = "periodic")]
use crate::worker::scheduler;
use crate::worker::{Overrides, Worker};
use crate::{Broker, Job};
#[cfg(feature = "periodic")]
use crate::{Error, Schedule};

/// How long in-flight handlers may run on after shutdown by default.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    broker: Arc<dyn Broker>,
    jobs: Vec<Arc<dyn Runnable>>,
    shutdown_timeout: Duration,
    observers: Vec<Arc<dyn Observer>>,
    broker_consumer_timeout: Option<Duration>,
    sample_interval: Duration,
    autoscale_interval: Duration,
    overrides: Overrides,
    console: bool,
    heartbeat_interval: Duration,
    cancel_memory: Duration,
    store: Option<Arc<dyn Store>>,
    max_handlers: Option<usize>,
    resources: HashMap<String, u32>,
    permit_lease: Duration,
    #[cfg(feature = "periodic")]
    schedules: Vec<Result<scheduler::Planned, Error>>,
    #[cfg(feature = "postgres")]
    relays: Vec<crate::outbox::Relay>,
}

/// How often adaptive concurrency decides, by default.
pub(crate) const DEFAULT_AUTOSCALE_INTERVAL: Duration = Duration::from_secs(5);

/// How often the worker samples its queues' depth and consumers by default.
pub(crate) const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field(
                "jobs",
                &self.jobs.iter().map(|j| j.name()).collect::<Vec<_>>(),
            )
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Adds a job type; the worker consumes its queue.
    pub fn register<J: Job>(mut self, job: J) -> Self {
        self.jobs.push(Arc::new(Registered(job)));
        #[cfg(feature = "periodic")]
        if let Some((schedule, payload)) = J::schedule() {
            self = self.schedule::<J>(schedule, payload);
        }
        self
    }

    #[cfg(feature = "periodic")]
    /// Fires job type `J` with `payload` on `schedule`: at each tick, one
    /// job, however many workers carry the same schedule (they elect a
    /// leader through RabbitMQ; see [`crate::docs::periodic`]). The job
    /// type need not be registered on this worker. Its id is the tick's
    /// ([`crate::schedule::tick_id`]).
    ///
    /// A schedule is known by its name ([`Schedule::named`]; the job
    /// type's name by default): every worker that carries it must give it
    /// the same expression and payload.
    pub fn schedule<J: Job>(mut self, schedule: Schedule, payload: J::Payload) -> Self {
        self.schedules
            .push(scheduler::Planned::new::<J>(schedule, &payload));
        self
    }

    /// How long in-flight handlers may run on after shutdown starts
    /// (30 s by default); those still running then are abandoned and their
    /// messages redelivered.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The broker's `consumer_timeout`, when it is not the one the broker
    /// reports ([`Broker::consumer_timeout`]: RabbitMQ's default of 30 min
    /// for `AmqpBroker`; set this if `rabbitmq.conf` changes it; zero for
    /// none). The worker keeps held deliveries within it and warns at start
    /// about jobs whose deliveries can stay unacked longer.
    pub fn broker_consumer_timeout(mut self, timeout: Duration) -> Self {
        self.broker_consumer_timeout = Some(timeout);
        self
    }

    /// Reads the operator's overrides (`QJOB_<QUEUE>_PREFETCH`,
    /// `…_CONCURRENCY`, `…_RETRY`) through `lookup` instead of the process
    /// environment: a test or a bench sets them without touching the
    /// environment, an application can read them from its own
    /// configuration. `lookup` gets the variable's name.
    pub fn overrides(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.overrides = Arc::new(lookup);
        self
    }

    /// How often the `qjob_queue_depth` and `qjob_queue_consumers` gauges
    /// are sampled (a passive declare per queue; 15 s by default).
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.sample_interval = interval;
        self
    }

    /// How often jobs with `autoscale(...)` re-decide their concurrency
    /// (5 s by default).
    pub fn autoscale_interval(mut self, interval: Duration) -> Self {
        self.autoscale_interval = interval;
        self
    }

    /// Whether the worker takes part in the console (on by default): it
    /// broadcasts heartbeats to [`crate::admin::STATUS_EXCHANGE`] and takes
    /// commands (pause, resume, concurrency, cancel) from
    /// [`crate::admin::CONTROL_EXCHANGE`]. Off, it does neither, and
    /// consoles do not see it.
    pub fn console(mut self, on: bool) -> Self {
        self.console = on;
        self
    }

    /// How often the worker sends a heartbeat (5 s by default); a console
    /// counts a worker gone after three missed ones.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a cancelled job id is remembered (24 h by default, and at
    /// most 100 000 ids): a job cancelled before it was delivered is
    /// dead-lettered if it arrives within this time.
    pub fn cancel_memory(mut self, memory: Duration) -> Self {
        self.cancel_memory = memory;
        self
    }

    /// Where unique jobs' locks are kept (the producers' store): the worker
    /// frees a lock when its job starts or finishes, as the job says
    /// ([`crate::UniqueUntil`]). Needed to run a unique job.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The most handlers this worker runs at once over all its job types
    /// (each job type's `concurrency` still bounds its own). When job
    /// types compete for them, a free handler goes to a higher
    /// [`crate::JobClass`] first, by weight within a class, and every job
    /// type with work waiting keeps one (the rule:
    /// [`crate::docs::limits`]). Adaptive concurrency scales each job type
    /// within it. 0 is refused when the worker runs.
    pub fn max_handlers(mut self, handlers: usize) -> Self {
        self.max_handlers = Some(handlers);
        self
    }

    /// Sizes the shared resource `name` (`#[job(resource = "…")]`): at
    /// most `permits` handlers of the job types that use it run at once,
    /// across every process that sizes it alike. Its permits are kept in
    /// the worker's store ([`WorkerBuilder::store`]).
    pub fn resource(mut self, name: impl Into<String>, permits: u32) -> Self {
        self.resources.insert(name.into(), permits);
        self
    }

    /// How long a permit of a shared limit lasts unless renewed (15 s by
    /// default): a running handler renews its permits every third of it,
    /// and a process that crashed gives its permits back within it.
    pub fn permit_lease(mut self, lease: Duration) -> Self {
        self.permit_lease = lease.max(Duration::from_millis(30));
        self
    }

    /// Runs an outbox relay in the worker ([`crate::outbox`]), stopped with
    /// it. The relay declares the queues of the worker's registered job
    /// types before it publishes their rows. A worker may run relays and
    /// no job.
    #[cfg(feature = "postgres")]
    pub fn relay(mut self, relay: crate::outbox::Relay) -> Self {
        self.relays.push(relay);
        self
    }

    /// Adds an observer, told about every settled attempt.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        // Zero: the broker takes nothing back.
        let broker_consumer_timeout = self
            .broker_consumer_timeout
            .or_else(|| self.broker.consumer_timeout())
            .unwrap_or_default();
        Worker {
            health: Health::new(self.broker.clone()),
            broker: self.broker,
            jobs: self.jobs,
            shutdown_timeout: self.shutdown_timeout,
            observers: self.observers.into(),
            broker_consumer_timeout,
            sample_interval: self.sample_interval,
            autoscale_interval: self.autoscale_interval,
            overrides: self.overrides,
            console: self.console,
            heartbeat_interval: self.heartbeat_interval,
            cancellations: Arc::new(Cancellations::new(self.cancel_memory, self.console)),
            store: self.store,
            id: uuid::Uuid::now_v7().simple().to_string(),
            max_handlers: self.max_handlers,
            resources: self.resources,
            permit_lease: self.permit_lease,
            #[cfg(feature = "periodic")]
            schedules: self.schedules,
            #[cfg(feature = "postgres")]
            relays: self.relays,
        }
    }
}

impl Worker {
    /// Starts building a worker on `broker` (a broker shared with a client
    /// is an `Arc<…>`, itself a [`Broker`]).
    pub fn builder(broker: impl Broker) -> WorkerBuilder {
        WorkerBuilder {
            broker: Arc::new(broker),
            jobs: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            observers: Vec::new(),
            broker_consumer_timeout: None,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            autoscale_interval: DEFAULT_AUTOSCALE_INTERVAL,
            overrides: Arc::new(|name| std::env::var(name).ok()),
            console: true,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            cancel_memory: DEFAULT_CANCEL_MEMORY,
            store: None,
            max_handlers: None,
            resources: HashMap::new(),
            permit_lease: DEFAULT_PERMIT_LEASE,
            #[cfg(feature = "periodic")]
            schedules: Vec::new(),
            #[cfg(feature = "postgres")]
            relays: Vec::new(),
        }
    }
}
