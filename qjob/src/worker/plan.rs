//! What a worker runs, planned from what was registered: for each job type
//! its consumers (one per consumed queue), their handlers, its autoscaler
//! and its console entry; and the schedules.

use std::collections::HashMap;
#[cfg(feature = "periodic")]
use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;

use crate::policy::autoscale::{AutoscaleSettings, prefetch_for};
use crate::worker::budget::{Budget, Member};
use crate::worker::console::ConsoleJob;
use crate::worker::consumer::Consumer;
use crate::worker::control::Slots;
use crate::worker::gate::Gate;
use crate::worker::handler::Handler;
use crate::worker::quota::Quota;
use crate::worker::runnable::Runnable;
use crate::worker::sampler::Sampled;
use crate::worker::scaler::{Scaled, Work};
#[cfg(feature = "periodic")]
use crate::worker::scheduler;
use crate::worker::wiring::{Shared, Wiring};
use crate::worker::{Worker, metrics};
use crate::{Autoscale, Error, JobOptions, topology};

impl Worker {
    /// What every handler of this worker is wired to.
    fn wiring(&self, budget: Option<Arc<Budget>>) -> Wiring {
        Wiring {
            broker: self.broker.clone(),
            observers: self.observers.clone(),
            health: self.health.clone(),
            broker_consumer_timeout: self.broker_consumer_timeout,
            cancellations: self.cancellations.clone(),
            store: self.store.clone(),
            budget,
        }
    }

    /// What to run for every registered job, after checking that no two
    /// share a queue.
    /// The schedules to run, each named once.
    #[cfg(feature = "periodic")]
    pub(super) fn schedules(&mut self) -> Result<Vec<scheduler::Planned>, Error> {
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
    pub(super) async fn inherited_shards(&self) -> Result<HashMap<String, Vec<String>>, Error> {
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

    pub(super) fn plans(
        &self,
        inherited: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<JobPlan>, Error> {
        #[cfg(feature = "postgres")]
        let relays = !self.relays.is_empty();
        #[cfg(not(feature = "postgres"))]
        let relays = false;
        #[cfg(feature = "periodic")]
        let schedules = !self.schedules.is_empty();
        #[cfg(not(feature = "periodic"))]
        let schedules = false;
        if self.jobs.is_empty() && !schedules && !relays {
            return Err(Error::NoJobRegistered);
        }
        let mut queues: HashMap<String, &'static str> = HashMap::new();
        let mut resolved = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            let options = job.options().with_overrides_from(&*self.overrides)?;
            self.check_limits(job.name(), &options)?;
            resolved.push((job, options));
        }
        let budget = self.budget(&resolved)?;
        let wiring = self.wiring(budget.clone());
        let mut plans = Vec::with_capacity(self.jobs.len());
        for (member, (job, options)) in resolved.into_iter().enumerate() {
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
            plans.push(self.plan(job, options, extra, &wiring, member));
        }
        Ok(plans)
    }

    /// A job type's shared limits need a store, and its resource a size.
    fn check_limits(&self, job: &str, options: &JobOptions) -> Result<(), Error> {
        if options.limits.shared() && self.store.is_none() {
            return Err(Error::Config(format!(
                "job {job} has limits shared by every process (global concurrency, a resource, \
                 a global rate or a rate per key): the worker needs a store (WorkerBuilder::store)"
            )));
        }
        if let Some(resource) = options.resource() {
            match self.resources.get(resource) {
                None => {
                    return Err(Error::Config(format!(
                        "job {job} uses resource {resource:?}, which this worker does not size: \
                         add WorkerBuilder::resource({resource:?}, permits)"
                    )));
                }
                Some(0) => {
                    return Err(Error::Config(format!(
                        "resource {resource:?} is sized 0: no job using it could ever run"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The handler budget over these job types, if the worker has one.
    fn budget(
        &self,
        jobs: &[(&Arc<dyn Runnable>, JobOptions)],
    ) -> Result<Option<Arc<Budget>>, Error> {
        let Some(size) = self.max_handlers else {
            return Ok(None);
        };
        if size == 0 {
            return Err(Error::Config(
                "max_handlers is 0: no handler could ever run".to_owned(),
            ));
        }
        let members = jobs
            .iter()
            .map(|(job, options)| Member {
                job: job.name(),
                class: options.class(),
                weight: options.weight(),
            })
            .collect();
        let budget = Budget::new(size, members);
        self.health.budget(budget.clone());
        Ok(Some(budget))
    }

    /// One job's plan: a consumer per consumed queue (a partitioned job has
    /// one per partition, a sharded one per shard, and any job one per
    /// shard it `inherited`) sharing the job's handler slots, gate and
    /// metrics, and its autoscaler if it has one.
    fn plan(
        &self,
        job: &Arc<dyn Runnable>,
        options: JobOptions,
        inherited: &[String],
        wiring: &Wiring,
        member: usize,
    ) -> JobPlan {
        // Adaptive concurrency scales within the budget.
        let options = match (options.autoscale(), &wiring.budget) {
            (Some(autoscale), Some(budget)) if autoscale.max > budget.size() => {
                let max = budget.size().max(autoscale.min);
                let within = Autoscale::new(autoscale.min, max, autoscale.target_latency);
                options.with_autoscale(within)
            }
            _ => options,
        };
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
        let quota = self.store.clone().and_then(|store| {
            Quota::new(
                job.name(),
                &options,
                store,
                &self.resources,
                &self.id,
                self.permit_lease,
            )
        });
        if let Some(quota) = &quota {
            self.health.watch_quota(job.name(), quota.clone());
        }
        let shared = Shared {
            leases: Arc::default(),
            gate,
            work: work.clone(),
            metrics: metrics::JobMetrics::new(options.queue(), self.console),
            quota,
            member,
        };
        let pid = std::process::id();
        let consumers = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| Consumer {
                inherited: index >= own,
                broker: self.broker.clone(),
                handler: Arc::new(Handler::new(wiring, job, &options, spec, &shared)),
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
            type_name: Some(job.type_name()),
            options: options.clone(),
            consumed: specs.iter().map(|spec| spec.name.clone()).collect(),
            slots,
            paused,
            counts: shared.metrics.counts().clone(),
            leases: shared.leases.clone(),
            gate: shared.gate.clone(),
            quota: shared.quota.clone(),
            starts_seen: std::sync::Mutex::new((tokio::time::Instant::now(), 0)),
            payload_schema: job.payload_schema(),
            rate: Default::default(),
        };
        JobPlan {
            job: job.name(),
            options,
            consumers,
            scaled,
            console,
        }
    }
}

/// What the worker runs for one job type.
pub(super) struct JobPlan {
    pub(super) job: &'static str,
    pub(super) options: JobOptions,
    pub(super) consumers: Vec<Consumer>,
    pub(super) scaled: Option<Scaled>,
    pub(super) console: ConsoleJob,
}

impl JobPlan {
    /// What the sampler reads for this job: its queues' depth and consumers.
    pub(super) fn sampled(&self) -> Sampled {
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
