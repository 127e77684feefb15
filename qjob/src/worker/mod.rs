//! [`Worker`]: consumes the registered jobs' queues and runs their handlers.

mod bookkeeping;
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
mod metrics;
mod observer;
mod routes;
mod runnable;
mod sampler;
mod scaler;
mod scheduler;
mod settle;

pub(crate) use console::DEFAULT_HEARTBEAT_INTERVAL;
pub(crate) use control::{Cancellations, DEFAULT_CANCEL_MEMORY};
pub use health::{BreakerHealth, Health, HealthReport, ScheduleHealth};
pub use observer::{AttemptEvent, AttemptOutcome, Observer};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, QueueSpec, Subscription};
use crate::protocol::WorkerState;
use crate::store::Store;
use crate::{Error, Job, Schedule};
use console::{Console, ConsoleJob};
use consumer::Consumer;
use control::Slots;
use gate::Gate;
use handler::Handler;
use sampler::Sampled;
use scaler::{Scaled, Work};

use crate::policy::autoscale::{AutoscaleSettings, prefetch_for};
use routes::Routes;

use crate::policy::backoff::BackoffPolicy;
use crate::{JobOptions, topology};
use runnable::{Registered, Runnable};

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
    schedules: Vec<Result<scheduler::Planned, Error>>,
    #[cfg(feature = "postgres")]
    relays: Vec<crate::outbox::Relay>,
}

/// Where the operator's overrides (`QJOB_<QUEUE>_PREFETCH`, …) are read.
type Overrides = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

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
        if let Some((schedule, payload)) = J::schedule() {
            self = self.schedule::<J>(schedule, payload);
        }
        self
    }

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
            cancellations: Arc::new(Cancellations::new(self.cancel_memory)),
            store: self.store,
            schedules: self.schedules,
            #[cfg(feature = "postgres")]
            relays: self.relays,
        }
    }
}

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
    broker: Arc<dyn Broker>,
    jobs: Vec<Arc<dyn Runnable>>,
    shutdown_timeout: Duration,
    observers: Arc<[Arc<dyn Observer>]>,
    broker_consumer_timeout: Duration,
    sample_interval: Duration,
    autoscale_interval: Duration,
    health: Health,
    overrides: Overrides,
    console: bool,
    heartbeat_interval: Duration,
    cancellations: Arc<Cancellations>,
    store: Option<Arc<dyn Store>>,
    schedules: Vec<Result<scheduler::Planned, Error>>,
    #[cfg(feature = "postgres")]
    relays: Vec<crate::outbox::Relay>,
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
            schedules: Vec::new(),
            #[cfg(feature = "postgres")]
            relays: Vec::new(),
        }
    }

    /// A handle on this worker's health, to serve from a liveness or
    /// readiness endpoint while the worker runs.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Consumes until `shutdown` resolves, then stops taking deliveries,
    /// lets in-flight handlers finish within the shutdown timeout and closes
    /// its consumers, so the broker redelivers everything not settled.
    ///
    /// A consumer whose subscription fails later is resubscribed with
    /// backoff; it does not end the run.
    ///
    /// # Errors
    ///
    /// At start only: no job registered, two jobs on one queue, a malformed
    /// `QJOB_<QUEUE>_…` override ([`Error::Config`]), or the broker refusing
    /// to declare a queue or to start a consumer. Nothing has been consumed
    /// when it returns an error.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let inherited = self.inherited_shards().await?;
        let plans = self.plans(&inherited)?;
        let schedules = self.schedules()?;
        self.prepare(&plans).await?;
        #[cfg(feature = "postgres")]
        let relays = self.relays(&plans).await?;
        let sampled: Vec<Sampled> = plans.iter().map(JobPlan::sampled).collect();
        let mut consumers = Vec::new();
        let mut scaled = Vec::new();
        let mut console_jobs = Vec::new();
        for plan in plans {
            consumers.extend(plan.consumers);
            scaled.extend(plan.scaled);
            console_jobs.push(plan.console);
        }
        let subscriptions = self.subscribe(&consumers).await?;
        let stop = CancellationToken::new();
        let mut running = tokio::task::JoinSet::new();
        for (consumer, subscription) in consumers.into_iter().zip(subscriptions) {
            running.spawn(consumer.run(subscription, stop.clone()));
        }
        for job in scaled {
            running.spawn(scaler::run(
                self.broker.clone(),
                job,
                self.autoscale_interval,
                self.health.clone(),
                stop.clone(),
            ));
        }
        for planned in schedules {
            self.health.add_schedule(&planned.name, planned.health());
            running.spawn(scheduler::run(
                self.broker.clone(),
                planned,
                self.health.clone(),
                self.broker_consumer_timeout,
                stop.clone(),
            ));
        }
        #[cfg(feature = "postgres")]
        for relay in relays {
            running.spawn(relay.relay_until(stop.clone().cancelled_owned()));
        }
        running.spawn(sampler::run(
            self.broker.clone(),
            sampled,
            self.sample_interval,
            stop.clone(),
        ));
        self.health.running(true);
        // The console's tasks outlive the consumers: a stopping worker
        // still reports (as stopping) and takes cancels while its
        // in-flight handlers finish.
        let end_console = CancellationToken::new();
        let mut console_tasks = tokio::task::JoinSet::new();
        let console = if self.console {
            let console = Arc::new(Console {
                broker: self.broker.clone(),
                worker_id: uuid::Uuid::now_v7().simple().to_string(),
                started_at: SystemTime::now(),
                interval: self.heartbeat_interval,
                health: self.health.clone(),
                jobs: console_jobs,
                cancellations: self.cancellations.clone(),
            });
            // Listening before the first heartbeat: a console that sees
            // the worker can command it.
            let listener = console.listen().await;
            console_tasks.spawn(console.clone().commands(listener, end_console.clone()));
            console_tasks.spawn(
                console
                    .clone()
                    .heartbeats(stop.clone(), end_console.clone()),
            );
            Some(console)
        } else {
            None
        };
        shutdown.await;
        tracing::info!("shutting down: no new deliveries, waiting for in-flight handlers");
        stop.cancel();
        if let Some(console) = &console {
            console.heartbeat(WorkerState::Stopping).await;
        }
        while let Some(joined) = running.join_next().await {
            if let Err(error) = joined
                && error.is_panic()
            {
                tracing::error!(%error, "a consumer task panicked");
            }
        }
        self.health.running(false);
        end_console.cancel();
        while console_tasks.join_next().await.is_some() {}
        if let Some(console) = &console {
            console.heartbeat(WorkerState::Stopped).await;
        }
        Ok(())
    }

    /// The relays to run, each told the registered jobs' options, once
    /// each has found its table.
    #[cfg(feature = "postgres")]
    async fn relays(&mut self, plans: &[JobPlan]) -> Result<Vec<crate::outbox::Relay>, Error> {
        let relays = std::mem::take(&mut self.relays);
        for relay in &relays {
            for plan in plans {
                relay.knows(plan.job, &plan.options);
            }
            relay.check().await?;
        }
        Ok(relays)
    }

    /// Declares every job's queues, and warns about jobs that could outlast
    /// the broker's consumer timeout.
    async fn prepare(&self, plans: &[JobPlan]) -> Result<(), Error> {
        for plan in plans {
            topology::declare(&*self.broker, &plan.options).await?;
        }
        for JobPlan {
            job,
            options,
            consumers,
            ..
        } in plans
        {
            let warning =
                checks::consumer_timeout_warning(job, options, self.broker_consumer_timeout);
            let starved = checks::prefetch_warning(job, options, consumers.len());
            for warning in warning.into_iter().chain(starved) {
                tracing::warn!("{warning}");
            }
            let slots = options.autoscale().map_or(options.concurrency(), |a| a.min);
            metrics::concurrency(options.queue(), slots);
            tracing::info!(
                job,
                queue = options.queue(),
                consumers = consumers.len(),
                prefetch = options.prefetch(),
                concurrency = options.concurrency(),
                "consuming"
            );
        }
        Ok(())
    }

    /// Subscribes every consumer; if one fails, closes the others.
    async fn subscribe(&self, consumers: &[Consumer]) -> Result<Vec<Box<dyn Subscription>>, Error> {
        let mut subscriptions = Vec::with_capacity(consumers.len());
        for consumer in consumers {
            match consumer.subscribe().await {
                Ok(subscription) => {
                    self.health.consumer(consumer.queue(), true);
                    subscriptions.push(subscription);
                }
                Err(error) => {
                    self.health.error(&error);
                    for subscription in subscriptions {
                        let _ = subscription.close().await;
                    }
                    return Err(error);
                }
            }
        }
        Ok(subscriptions)
    }

    /// What to run for every registered job, after checking that no two
    /// share a queue.
    /// The schedules to run, each named once.
    fn schedules(&mut self) -> Result<Vec<scheduler::Planned>, Error> {
        let mut names = HashSet::new();
        let mut schedules = Vec::new();
        for planned in std::mem::take(&mut self.schedules) {
            let planned = planned?;
            if !names.insert(planned.name.clone()) {
                return Err(Error::Config(format!(
                    "two schedules are named {:?}: name each with Schedule::named",
                    planned.name
                )));
            }
            schedules.push(planned);
        }
        Ok(schedules)
    }

    /// The shards past each job's `shards` that exist, by work queue: left
    /// by a deploy with more shards, consumed until they are deleted so
    /// that nothing in them waits for a worker that no longer runs. One
    /// passive declare per job, all at once, unless a shard is found: the
    /// search goes on from there, to the first missing one. (The console's
    /// topology check also looks past gaps.) A queue found is consumed only
    /// if its broker marked it as a shard of the job
    /// ([`Broker::is_shard_of`]): another application's queue of that
    /// name, or a shard declared before qjob marked them, stays as it is.
    async fn inherited_shards(&self) -> Result<HashMap<String, Vec<String>>, Error> {
        let searches = self
            .jobs
            .iter()
            .map(|job| (job.name(), job.options()))
            .filter(|(_, options)| options.partitions().is_none())
            .map(|(job, options)| async move {
                let found =
                    topology::shards_past(&*self.broker, options.queue(), options.shards(), 1)
                        .await?;
                let mut shards = Vec::with_capacity(found.len());
                for (shard, stats) in found {
                    if !self.broker.is_shard_of(&shard, options.queue()).await? {
                        tracing::warn!(
                            job,
                            queue = shard,
                            messages = stats.messages,
                            "a queue named like a shard of the job is not marked as one \
                             (another application's, or declared before qjob marked its shards): \
                             not consumed"
                        );
                        continue;
                    }
                    tracing::info!(
                        job,
                        queue = shard,
                        messages = stats.messages,
                        shards = options.shards(),
                        "consuming a shard past the job's shards, left by a deploy with more, \
                         until it is deleted"
                    );
                    shards.push(shard);
                }
                Ok::<_, Error>((options.queue().to_owned(), shards))
            });
        futures_util::future::try_join_all(searches)
            .await
            .map(HashMap::from_iter)
    }

    fn plans(&self, inherited: &HashMap<String, Vec<String>>) -> Result<Vec<JobPlan>, Error> {
        #[cfg(feature = "postgres")]
        let relays = !self.relays.is_empty();
        #[cfg(not(feature = "postgres"))]
        let relays = false;
        if self.jobs.is_empty() && self.schedules.is_empty() && !relays {
            return Err(Error::NoJobRegistered);
        }
        let mut queues: HashMap<String, &'static str> = HashMap::new();
        let mut plans = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            let options = job.options().with_overrides_from(&*self.overrides)?;
            let needs = match (options.unique(), options.inbox()) {
                (Some(_), _) => Some("is unique"),
                (None, Some(_)) => Some("has an inbox"),
                (None, None) => None,
            };
            if let (Some(needs), None) = (needs, &self.store) {
                return Err(Error::Config(format!(
                    "job {} {needs}: the worker needs a store (WorkerBuilder::store)",
                    job.name()
                )));
            }
            if let Some(first) = queues.insert(options.queue().to_owned(), job.name()) {
                return Err(Error::QueueTaken {
                    queue: options.queue().to_owned(),
                    first,
                    second: job.name(),
                });
            }
            let extra = inherited
                .get(options.queue())
                .map_or(&[][..], Vec::as_slice);
            plans.push(self.plan(job, options, extra));
        }
        Ok(plans)
    }

    /// One job's plan: a consumer per consumed queue (a partitioned job has
    /// one per partition, a sharded one per shard, and any job one per
    /// shard it `inherited`) sharing the job's handler slots, gate and
    /// metrics, and its autoscaler if it has one.
    fn plan(&self, job: &Arc<dyn Runnable>, options: JobOptions, inherited: &[String]) -> JobPlan {
        let initial = options.autoscale().map_or(options.concurrency(), |a| a.min);
        let slots = Arc::new(Slots::new(initial));
        let (paused, _) = watch::channel(false);
        self.health.concurrency(options.queue(), initial);
        let work = options.autoscale().map(|_| Arc::new(Work::default()));
        let mut specs = topology::consumed_queues(&options);
        let own = specs.len();
        specs.extend(
            inherited
                .iter()
                .map(|shard| topology::inherited_shard(&options, shard.clone())),
        );
        // Prefetch follows the autoscaled concurrency, except on
        // single-active-consumer queues: replacing their consumer would
        // hand the queue to a standby.
        let prefetch = options
            .autoscale()
            .filter(|_| !specs.iter().any(|spec| spec.single_active))
            .map(|autoscale| {
                watch::channel(prefetch_for(
                    autoscale.min,
                    autoscale.max,
                    options.prefetch(),
                ))
            });
        let gate = Gate::new(job.name(), &options);
        if let Some(gate) = &gate {
            self.health.watch_gate(job.name(), gate.clone());
        }
        let shared = Shared {
            leases: Arc::default(),
            gate,
            work: work.clone(),
            metrics: metrics::JobMetrics::new(options.queue()),
        };
        let pid = std::process::id();
        let consumers = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| Consumer {
                inherited: index >= own,
                broker: self.broker.clone(),
                handler: Arc::new(self.handler(job, &options, spec, &shared)),
                tag: format!("qjob.{}.{pid}.{}", job.name(), spec.name),
                prefetch: prefetch.as_ref().map(|(_, target)| target.clone()),
                options: options.clone(),
                slots: slots.semaphore().clone(),
                paused: paused.subscribe(),
                shutdown_timeout: self.shutdown_timeout,
                health: self.health.clone(),
            })
            .collect();
        let scaled = options
            .autoscale()
            .zip(work)
            .map(|(autoscale, work)| Scaled {
                job_queue: options.queue().to_owned(),
                queues: specs.iter().map(|spec| spec.name.clone()).collect(),
                prefetch: prefetch.map(|(target, _)| (target, options.prefetch())),
                settings: AutoscaleSettings {
                    // Up at most every other decision, down at most every
                    // fourth.
                    cooldown: self.autoscale_interval * 2,
                    ..AutoscaleSettings::new(autoscale.min, autoscale.max, autoscale.target_latency)
                },
                slots: slots.clone(),
                work,
                paused: paused.subscribe(),
            });
        let console = ConsoleJob {
            name: job.name(),
            options: options.clone(),
            consumed: specs.iter().map(|spec| spec.name.clone()).collect(),
            slots,
            paused,
            counts: shared.metrics.counts().clone(),
            leases: shared.leases.clone(),
            gate: shared.gate.clone(),
        };
        JobPlan {
            job: job.name(),
            options,
            consumers,
            scaled,
            console,
        }
    }

    /// The handler of one consumed queue of `job`.
    fn handler(
        &self,
        job: &Arc<dyn Runnable>,
        options: &JobOptions,
        spec: &QueueSpec,
        shared: &Shared,
    ) -> Handler {
        Handler {
            broker: self.broker.clone(),
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
            observers: self.observers.clone(),
            gate: shared.gate.clone(),
            health: self.health.clone(),
            metrics: shared.metrics.clone(),
            work: shared.work.clone(),
            abandoned: Default::default(),
            hold_budget: held::hold_budget(self.broker_consumer_timeout),
            attempts: held::Attempts::new(self.broker_consumer_timeout.saturating_mul(2)),
            remember_plain: held::outlasts(options.timeout(), self.broker_consumer_timeout),
            cancellations: self.cancellations.clone(),
            unique: options
                .unique()
                .zip(self.store.clone())
                .map(|(unique, store)| handler::UniqueLock {
                    store,
                    until: unique.until,
                }),
            inbox: options
                .inbox()
                .zip(self.store.clone())
                .map(|(window, store)| handler::Inbox { store, window }),
            batches: self.store.clone(),
            held: watch::Sender::new(0),
        }
    }
}

/// What the worker runs for one job type.
struct JobPlan {
    job: &'static str,
    options: JobOptions,
    consumers: Vec<Consumer>,
    scaled: Option<Scaled>,
    console: ConsoleJob,
}

impl JobPlan {
    /// What the sampler reads for this job: its queues' depth and consumers.
    fn sampled(&self) -> Sampled {
        Sampled {
            job_queue: self.options.queue().to_owned(),
            queues: self
                .consumers
                .iter()
                .map(|c| c.queue().to_owned())
                .collect(),
        }
    }
}

/// What a job's consumers share.
struct Shared {
    leases: Arc<topology::Leases>,
    gate: Option<Arc<Gate>>,
    work: Option<Arc<Work>>,
    metrics: metrics::JobMetrics,
}
