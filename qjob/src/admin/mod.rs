//! The operator's view of qjob, over the broker alone: which workers run
//! and how their job types do (from their heartbeats), the queues with
//! their depth, the dead letters (browsed in place, replayed, discarded),
//! and commands to the workers (pause, resume, concurrency, cancel).
//!
//! [`Admin`] is what the `qjob` command-line tool and the `qjob-web`
//! dashboard are built on; it works the same on `AmqpBroker` and on
//! `qjob_testkit::MemoryBroker`.
//!
//! ```
//! # use qjob::{job, JobContext, JobError, Worker};
//! use qjob::admin::Admin;
//! use qjob_testkit::MemoryBroker;
//! # #[job(queue = "docs.admin.email")]
//! # async fn email(_to: String, _ctx: JobContext) -> Result<(), JobError> { Ok(()) }
//!
//! # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
//! let broker = MemoryBroker::new();
//! let admin = Admin::connect(broker.clone()).await?;
//! let worker = Worker::builder(broker.clone()).register(EmailJob).build();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(worker.run_until(async { let _ = stopped.await; }));
//!
//! let workers = admin.wait_for_workers(1, std::time::Duration::from_secs(5)).await;
//! assert_eq!(workers[0].status.jobs[0].job, "email");
//! admin.pause("email").await?;
//! # stop.send(()).unwrap(); running.await.unwrap()?;
//! # Ok(()) }
//! ```

pub use crate::protocol::{
    CONTROL_EXCHANGE, Command, CommandMessage, ConcurrencyRange, DeclaredQueue, FORMAT, JobStatus,
    Reply, STATUS_EXCHANGE, WorkerState, WorkerStatus,
};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{Broker, Message, QueueStats, Subscription};
use crate::dead_letters::{self, Visit};
use crate::policy::backoff;
use crate::protocol::{self, StatusMessage};
use crate::{DeadLetter, Error, ScheduleHealth, headers, topology};

/// How long a console waits for the workers' replies to a command by
/// default.
pub const DEFAULT_REPLY_WINDOW: Duration = Duration::from_secs(2);

/// Heartbeats a worker may miss before a console counts it gone.
pub const MISSED_HEARTBEATS: u32 = 3;

/// The most letters a browse, or a look-up by job id, reads from a queue
/// (holding them until it puts them back).
pub const BROWSE_AT_MOST: usize = 10_000;

/// How long a gone worker stays in view.
const GONE_KEPT: Duration = Duration::from_secs(600);

/// The console's handle on the broker: see the [module](self).
///
/// It listens to the status exchange from [`Admin::connect`] on (a
/// private queue of its connection), so it knows the workers whose
/// heartbeats came since; [`Admin::refresh`] asks every worker for one at
/// once. Dropping it stops listening.
pub struct Admin {
    broker: Arc<dyn Broker>,
    id: String,
    seen: Arc<Mutex<Seen>>,
    listener: tokio::task::JoinHandle<()>,
    reply_window: Duration,
    commands: AtomicU64,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// What the console heard.
#[derive(Default)]
struct Seen {
    workers: BTreeMap<String, Tracked>,
    /// Replies to the commands awaited now, by command id.
    replies: HashMap<String, Vec<Reply>>,
    /// Woken at each heartbeat and reply.
    heard: Arc<Notify>,
    /// Whether the listener is lost (the connection closed).
    lost: Option<String>,
}

/// One worker as last heard.
struct Tracked {
    status: WorkerStatus,
    heard_at: Instant,
    /// The heartbeat its rates are measured from.
    baseline: WorkerStatus,
    /// Per job: jobs settled per second between the baseline and the one
    /// before it.
    rates: HashMap<String, f64>,
}

impl Seen {
    fn heartbeat(&mut self, status: WorkerStatus) {
        let now = Instant::now();
        let (baseline, rates) = match self.workers.remove(&status.worker_id) {
            // Rates are measured over at least half an interval: a
            // heartbeat a command asked for comes right after another.
            Some(before) if measurable(&before.baseline, &status) => {
                (status.clone(), rates(&before.baseline, &status))
            }
            Some(before) => (before.baseline, before.rates),
            None => (status.clone(), HashMap::new()),
        };
        self.workers.insert(
            status.worker_id.clone(),
            Tracked {
                status,
                heard_at: now,
                baseline,
                rates,
            },
        );
        self.workers
            .retain(|_, tracked| now.duration_since(tracked.heard_at) < GONE_KEPT);
    }
}

/// Whether `now` came at least half an interval after `before`.
fn measurable(before: &WorkerStatus, now: &WorkerStatus) -> bool {
    now.sent_at
        .duration_since(before.sent_at)
        .is_ok_and(|between| between >= now.interval / 2 && !between.is_zero())
}

/// Jobs settled per second, per job, between two heartbeats of a worker.
fn rates(before: &WorkerStatus, now: &WorkerStatus) -> HashMap<String, f64> {
    let Ok(between) = now.sent_at.duration_since(before.sent_at) else {
        return HashMap::new();
    };
    now.jobs
        .iter()
        .filter_map(|job| {
            let earlier = before.jobs.iter().find(|b| b.job == job.job)?;
            let settled = settled(job).saturating_sub(settled(earlier));
            Some((job.job.clone(), settled as f64 / between.as_secs_f64()))
        })
        .collect()
}

/// Attempts that ended: succeeded, or failed (retried or dead-lettered).
fn settled(job: &JobStatus) -> u64 {
    job.succeeded + job.failed
}

/// A worker as the console knows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerView {
    /// Its last heartbeat.
    pub status: WorkerStatus,
    /// Running and heard from within [`MISSED_HEARTBEATS`] intervals; a
    /// worker that stopped, or went silent (killed, cut off), is gone.
    pub alive: bool,
    /// How long ago its last heartbeat came.
    pub silent_for: Duration,
}

impl WorkerView {
    /// What is wrong with an alive worker, if anything: the broker blocks
    /// it (a resource alarm), or it lost its connection.
    pub fn alarm(&self) -> Option<String> {
        if !self.alive {
            return None;
        }
        let status = &self.status;
        let what = match (&status.blocked, status.connected) {
            (Some(blocked), _) => format!("blocked: {blocked}"),
            (None, false) => "disconnected".to_owned(),
            (None, true) => return None,
        };
        Some(format!("{} (pid {}): {what}", status.host, status.pid))
    }
}

/// A periodic job's schedule across the alive workers that carry it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScheduleView {
    /// The schedule's name.
    pub name: String,
    /// As its leader reports it (its next tick, the last it fired), or as
    /// another worker does while none leads.
    pub schedule: ScheduleHealth,
    /// The leader's host and pid, if a worker leads it now.
    pub leader: Option<(String, u32)>,
    /// The alive workers that carry it.
    pub workers: usize,
}

/// A job type across the workers that run it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobView {
    /// The job type's name.
    pub job: String,
    /// How one worker runs it (the settings, and that worker's counts).
    pub status: JobStatus,
    /// The alive workers that run it.
    pub workers: usize,
    /// Of those, the ones that have it paused.
    pub paused_on: usize,
    /// Of those, the ones whose circuit breaker for it is not closed.
    pub breakers_open: usize,
    /// Handler slots over the alive workers.
    pub concurrency: usize,
    /// Handlers running now over the alive workers.
    pub in_flight: u64,
    /// Counts over the alive workers since each started.
    pub succeeded: u64,
    /// Failed attempts (retried or dead-lettered).
    pub failed: u64,
    /// Failed attempts scheduled again.
    pub retried: u64,
    /// Jobs dead-lettered.
    pub dead_lettered: u64,
    /// Attempts settled per second over the alive workers, between their
    /// last two heartbeats; `None` before a second heartbeat came.
    pub rate: Option<f64>,
    /// The most recent last error among the workers.
    pub last_error: Option<String>,
    /// Its queues on the broker: work (or partition, or shard) queues, the
    /// dead-letter queue, and the delay queues its retries used lately.
    pub queues: Vec<QueueView>,
}

impl JobView {
    /// Ready messages over its work (or partition, or shard) queues.
    pub fn depth(&self) -> u64 {
        self.queues_of(QueueRole::Work)
            .map(|queue| u64::from(queue.stats.map_or(0, |stats| stats.messages)))
            .sum()
    }

    /// Its dead letters.
    pub fn dead_letters(&self) -> u64 {
        self.queues_of(QueueRole::DeadLetter)
            .map(|queue| u64::from(queue.stats.map_or(0, |stats| stats.messages)))
            .sum()
    }

    /// Messages waiting in its delay queues.
    pub fn delayed(&self) -> u64 {
        self.queues_of(QueueRole::Delay)
            .map(|queue| u64::from(queue.stats.map_or(0, |stats| stats.messages)))
            .sum()
    }

    fn queues_of(&self, role: QueueRole) -> impl Iterator<Item = &QueueView> {
        self.queues.iter().filter(move |queue| queue.role == role)
    }
}

/// One of a job type's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// What it is to the job.
    pub role: QueueRole,
    /// Its ready messages and consumers; `None` if it does not exist.
    pub stats: Option<QueueStats>,
}

/// What a queue is to its job type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueRole {
    /// The work queue, or one of its partition queues or shards.
    Work,
    /// The dead-letter queue.
    DeadLetter,
    /// A delay queue, where retries wait out their backoff.
    Delay,
}

impl QueueRole {
    /// The role's name: `work`, `dead-letter` or `delay`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueRole::Work => "work",
            QueueRole::DeadLetter => "dead-letter",
            QueueRole::Delay => "delay",
        }
    }
}

/// Which dead letters to act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LetterFilter {
    /// Only those dead-lettered for this reason (`permanent`, …).
    pub reason: Option<String>,
    /// Only those whose error contains this text.
    pub error_contains: Option<String>,
}

impl LetterFilter {
    /// Every letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only letters dead-lettered for `reason`.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Only letters whose error contains `text`.
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// Whether `letter` passes.
    pub fn matches<P>(&self, letter: &DeadLetter<P>) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|reason| letter.reason == reason)
            && self
                .error_contains
                .as_deref()
                .is_none_or(|text| letter.error.contains(text))
    }
}

/// Where the broker's queues differ from what the running workers declare
/// ([`Admin::check_topology`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyProblem {
    /// A queue a job needs does not exist (its worker declares it when it
    /// subscribes again; until then, publishes to it fail).
    Missing {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
    },
    /// A queue exists with other arguments than its job declares: the
    /// worker cannot subscribe to it, and producers cannot declare it.
    Differs {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
        /// The argument that differs, e.g. `x-max-length`.
        argument: String,
        /// Its value on the broker.
        existing: String,
        /// The value the job declares.
        requested: String,
    },
    /// A delay queue holding messages that expire into a work queue that
    /// does not exist (they would be dropped), or whose job no running
    /// worker runs.
    OrphanDelayQueue {
        /// The delay queue.
        queue: String,
        /// Messages waiting in it.
        messages: u32,
        /// The work queue its messages go to.
        target: String,
        /// Whether that work queue exists.
        target_exists: bool,
    },
    /// A partition queue past the job's partitions, left by a worker or
    /// producer with more: what is in it is never consumed.
    ExtraPartition {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
        /// Messages in it.
        messages: u32,
    },
    /// A shard past the job's shards, left by a worker or producer with
    /// more. A worker that finds it at its start consumes it until it is
    /// deleted; one that starts before it exists does not.
    ExtraShard {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
        /// Messages in it.
        messages: u32,
        /// Whether an alive worker consumes it.
        consumed: bool,
    },
}

impl std::fmt::Display for TopologyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyProblem::Missing { job, queue } => {
                write!(f, "{queue}: missing (job {job})")
            }
            TopologyProblem::Differs {
                job,
                queue,
                argument,
                existing,
                requested,
            } => write!(
                f,
                "{queue}: {argument} is {existing} on the broker, job {job} declares {requested}"
            ),
            TopologyProblem::OrphanDelayQueue {
                queue,
                messages,
                target,
                target_exists,
            } => {
                let target_state = if *target_exists {
                    "no running worker consumes it"
                } else {
                    "it does not exist: they would be dropped"
                };
                write!(
                    f,
                    "{queue}: orphan delay queue, {messages} messages expire into {target} ({target_state})"
                )
            }
            TopologyProblem::ExtraPartition {
                job,
                queue,
                messages,
            } => write!(
                f,
                "{queue}: a partition past job {job}'s partitions, {messages} messages never consumed"
            ),
            TopologyProblem::ExtraShard {
                job,
                queue,
                messages,
                consumed: false,
            } => write!(
                f,
                "{queue}: a shard past job {job}'s shards, {messages} messages never consumed"
            ),
            TopologyProblem::ExtraShard {
                job,
                queue,
                messages,
                consumed: true,
            } => write!(
                f,
                "{queue}: a shard past job {job}'s shards, {messages} messages, consumed \
                 until it is deleted (delete it once it holds no message, ready or unacked)"
            ),
        }
    }
}

/// A dead letter as the console shows it: its payload as JSON.
pub type Letter = DeadLetter<serde_json::Value>;

impl Admin {
    /// Starts listening to the workers' heartbeats on `broker` (a shared
    /// broker is an `Arc<…>`, itself a [`Broker`]) and asks every worker
    /// for one.
    ///
    /// # Errors
    ///
    /// The broker's error, if it cannot listen or send.
    pub async fn connect(broker: impl Broker) -> Result<Self, Error> {
        let broker: Arc<dyn Broker> = Arc::new(broker);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let patterns = ["worker.*".to_owned(), format!("reply.{id}")];
        let listener = broker
            .listen(STATUS_EXCHANGE, &[&patterns[0], &patterns[1]])
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let admin = Self {
            listener: tokio::spawn(listen(broker.clone(), patterns, listener, seen.clone())),
            broker,
            id,
            seen,
            reply_window: DEFAULT_REPLY_WINDOW,
            commands: AtomicU64::new(0),
        };
        admin.send(Command::Ping).await?;
        Ok(admin)
    }

    /// How long a command waits for the workers' replies (2 s by default):
    /// it returns sooner once every alive worker concerned replied.
    pub fn with_reply_window(mut self, window: Duration) -> Self {
        self.reply_window = window;
        self
    }

    /// The broker the console acts on.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("console state poisoned")
    }

    /// Asks every worker for a heartbeat now and waits the reply window
    /// for them.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.send(Command::Ping).await?;
        tokio::time::sleep(self.reply_window).await;
        Ok(())
    }

    /// The workers heard from (alive ones first, then gone ones, each by
    /// host and id).
    pub fn workers(&self) -> Vec<WorkerView> {
        let now = Instant::now();
        let mut workers: Vec<WorkerView> = self
            .seen()
            .workers
            .values()
            .map(|tracked| {
                let silent_for = now.duration_since(tracked.heard_at);
                let alive = tracked.status.state != WorkerState::Stopped
                    && silent_for <= tracked.status.interval * MISSED_HEARTBEATS;
                WorkerView {
                    status: tracked.status.clone(),
                    alive,
                    silent_for,
                }
            })
            .collect();
        workers.sort_by(|a, b| {
            (!a.alive, &a.status.host, &a.status.worker_id).cmp(&(
                !b.alive,
                &b.status.host,
                &b.status.worker_id,
            ))
        });
        workers
    }

    /// Waits until at least `count` alive workers were heard from, or
    /// `limit` passed; returns the workers then.
    pub async fn wait_for_workers(&self, count: usize, limit: Duration) -> Vec<WorkerView> {
        let deadline = Instant::now() + limit;
        loop {
            let heard = self.seen().heard.clone();
            let notified = heard.notified();
            let workers = self.workers();
            if workers.iter().filter(|w| w.alive).count() >= count || Instant::now() >= deadline {
                return workers;
            }
            // Wake at the next heartbeat, or in a while: a worker that went
            // silent turns gone without one.
            let _ = tokio::time::timeout_at(
                deadline.min(Instant::now() + Duration::from_millis(250)),
                notified,
            )
            .await;
        }
    }

    /// The schedules the alive workers carry, by name, with their leaders.
    pub fn schedules(&self) -> Vec<ScheduleView> {
        let mut schedules: BTreeMap<String, ScheduleView> = BTreeMap::new();
        for worker in self.workers().into_iter().filter(|w| w.alive) {
            for (name, schedule) in worker.status.schedules {
                let view = schedules
                    .entry(name.clone())
                    .or_insert_with(|| ScheduleView {
                        name,
                        schedule: schedule.clone(),
                        leader: None,
                        workers: 0,
                    });
                view.workers += 1;
                // A problem any worker reports stays in view.
                let problem = view.schedule.problem.take().or(schedule.problem.clone());
                if schedule.leader {
                    view.leader = Some((worker.status.host.clone(), worker.status.pid));
                    view.schedule = schedule;
                }
                view.schedule.problem = view.schedule.problem.take().or(problem);
            }
        }
        schedules.into_values().collect()
    }

    /// The job types the alive workers run, by name, with their queues as
    /// the broker has them now.
    ///
    /// # Errors
    ///
    /// The broker's error while reading a queue's stats.
    pub async fn jobs(&self) -> Result<Vec<JobView>, Error> {
        let mut jobs: BTreeMap<String, JobView> = BTreeMap::new();
        let alive: Vec<String> = self
            .workers()
            .into_iter()
            .filter(|w| w.alive)
            .map(|w| w.status.worker_id)
            .collect();
        {
            let seen = self.seen();
            for tracked in alive.iter().filter_map(|id| seen.workers.get(id)) {
                for status in &tracked.status.jobs {
                    let view = jobs
                        .entry(status.job.clone())
                        .or_insert_with(|| JobView::of(status));
                    view.add(status, tracked.rates.get(&status.job).copied());
                }
            }
        }
        let mut views: Vec<JobView> = jobs.into_values().collect();
        for view in &mut views {
            for queue in &mut view.queues {
                queue.stats = self.broker.queue_stats(&queue.name).await?;
            }
        }
        Ok(views)
    }

    /// Compares the queues the alive workers declare with the broker's:
    /// missing queues, arguments that differ, partition queues or shards
    /// past a job's partitions or shards, and delay queues the workers used lately that hold
    /// messages for a job no running worker runs or a work queue that is
    /// gone. AMQP cannot list a broker's queues, so a delay queue no worker
    /// reported within the last ten minutes is not seen.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn check_topology(&self) -> Result<Vec<TopologyProblem>, Error> {
        let mut problems = Vec::new();
        let workers = self.workers();
        let alive: Vec<&JobStatus> = workers
            .iter()
            .filter(|worker| worker.alive)
            .flat_map(|worker| &worker.status.jobs)
            .collect();
        let mut checked = std::collections::HashSet::new();
        for job in &alive {
            for declared in &job.declared {
                let delay = job.delay_queues.contains(&declared.name);
                if delay || !checked.insert(declared.name.clone()) {
                    continue;
                }
                problems.extend(self.check_queue(&job.job, declared).await?);
            }
            if let Some(partitions) = job.partitions {
                let extra = format!("{}.p{partitions}", job.queue);
                if checked.insert(extra.clone())
                    && let Some(stats) = self.broker.queue_stats(&extra).await?
                {
                    problems.push(TopologyProblem::ExtraPartition {
                        job: job.job.clone(),
                        queue: extra,
                        messages: stats.messages,
                    });
                }
            }
        }
        problems.extend(self.extra_shards(&alive).await?);
        let run: Vec<&str> = alive
            .iter()
            .flat_map(|job| &job.consumed_queues)
            .map(String::as_str)
            .collect();
        let delay_queues: BTreeMap<&str, &DeclaredQueue> = workers
            .iter()
            .flat_map(|worker| &worker.status.jobs)
            .flat_map(|job| {
                job.declared
                    .iter()
                    .filter(|d| job.delay_queues.contains(&d.name))
            })
            .map(|declared| (declared.name.as_str(), declared))
            .collect();
        for (name, declared) in delay_queues {
            let Some(target) = declared.dead_letter_to.clone() else {
                continue;
            };
            let Some(stats) = self.broker.queue_stats(name).await? else {
                continue;
            };
            let target_exists = self.broker.queue_stats(&target).await?.is_some();
            if stats.messages > 0 && (!target_exists || !run.contains(&target.as_str())) {
                problems.push(TopologyProblem::OrphanDelayQueue {
                    queue: name.to_owned(),
                    messages: stats.messages,
                    target,
                    target_exists,
                });
            }
        }
        Ok(problems)
    }

    /// The shards past the most any alive worker of a job runs with:
    /// while a deploy changes `shards`, a shard the new workers drop is
    /// still consumed by the old ones, and by the new ones that found it at
    /// their start.
    async fn extra_shards(&self, alive: &[&JobStatus]) -> Result<Vec<TopologyProblem>, Error> {
        let mut most: BTreeMap<(&str, &str), u16> = BTreeMap::new();
        for job in alive.iter().filter(|job| job.partitions.is_none()) {
            let shards = most.entry((&job.job, &job.queue)).or_default();
            *shards = (*shards).max(job.shards.unwrap_or(1));
        }
        let consumed: std::collections::HashSet<&str> = alive
            .iter()
            .flat_map(|job| &job.consumed_queues)
            .map(String::as_str)
            .collect();
        let mut problems = Vec::new();
        for ((job, queue), shards) in most {
            let found = topology::shards_past(&*self.broker, queue, shards, topology::SHARD_GAP);
            for (extra, stats) in found.await? {
                let consumed = consumed.contains(extra.as_str());
                // Another application's queue that only looks like a shard
                // (qjob did not mark it, and no worker consumes it) is not
                // one of this job's.
                if !consumed && !self.broker.is_shard_of(&extra, queue).await? {
                    continue;
                }
                problems.push(TopologyProblem::ExtraShard {
                    job: job.to_owned(),
                    consumed,
                    queue: extra,
                    messages: stats.messages,
                });
            }
        }
        Ok(problems)
    }

    /// Whether `declared` exists on the broker as its job declares it.
    async fn check_queue(
        &self,
        job: &str,
        declared: &DeclaredQueue,
    ) -> Result<Option<TopologyProblem>, Error> {
        if self.broker.queue_stats(&declared.name).await?.is_none() {
            return Ok(Some(TopologyProblem::Missing {
                job: job.to_owned(),
                queue: declared.name.clone(),
            }));
        }
        let Some(spec) = declared.spec() else {
            return Ok(None);
        };
        // Declaring an existing queue with its own arguments changes
        // nothing; with others, the broker names the first that differs.
        match self.broker.declare_queue(&spec).await {
            Ok(()) => Ok(None),
            Err(Error::QueueMismatch {
                queue,
                argument,
                existing,
                requested,
            }) => Ok(Some(TopologyProblem::Differs {
                job: job.to_owned(),
                queue,
                argument,
                existing,
                requested,
            })),
            Err(error) => Err(error),
        }
    }

    /// Ready messages and consumers of `queue`, `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn queue(&self, queue: &str) -> Result<Option<QueueStats>, Error> {
        self.broker.queue_stats(queue).await
    }

    /// The dead letters of dead-letter queue `queue` that `filter` passes,
    /// from the `offset`-th of those on, at most `limit`, oldest first.
    /// They stay in the queue, in their order: each is taken
    /// (`basic.get`) and held until the page is read, then all are put back
    /// in place. A page deep in a long queue holds every letter before it
    /// meanwhile, and another browse at the same time sees the queue
    /// without them; no browse reads more than the first
    /// [`BROWSE_AT_MOST`] letters (replay the rest by filter).
    ///
    /// # Errors
    ///
    /// The broker's error; every letter taken is put back.
    pub async fn dead_letters(
        &self,
        queue: &str,
        filter: &LetterFilter,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Letter>, Error> {
        let bounds = (offset, limit, BROWSE_AT_MOST);
        dead_letters::peek(&self.broker, queue, bounds, |letter| filter.matches(letter)).await
    }

    /// The dead letter of job `job_id` in `queue`, if it is among the first
    /// [`BROWSE_AT_MOST`] (left in place; the walk holds the letters before
    /// it).
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn dead_letter(&self, queue: &str, job_id: &str) -> Result<Option<Letter>, Error> {
        let mut found = None;
        dead_letters::walk(
            &self.broker,
            queue,
            false,
            within(job_id, |message| {
                found = Some(DeadLetter::from_message(message));
                Visit::Stop
            }),
        )
        .await?;
        Ok(found)
    }

    /// Replays the dead letter of job `job_id` from `queue` into the queue
    /// it failed on, its attempts counted afresh; the others stay in place
    /// (the walk holds the letters before it until it is found, among the
    /// first [`BROWSE_AT_MOST`]). Returns whether it was found.
    ///
    /// # Errors
    ///
    /// The broker's error (the queue it failed on no longer exists:
    /// [`Error::Unroutable`]); the letter then stays.
    pub async fn replay(&self, queue: &str, job_id: &str) -> Result<bool, Error> {
        let visit = within(job_id, |message| {
            Visit::Replay(replay_target(queue, message))
        });
        Ok(dead_letters::walk(&self.broker, queue, false, visit).await? > 0)
    }

    /// Replays every dead letter of `queue` that `filter` passes, oldest
    /// first; the others stay in place and in order. Returns how many.
    ///
    /// # Errors
    ///
    /// As [`crate::DeadLetters::replay_where`].
    pub async fn replay_matching(
        &self,
        queue: &str,
        filter: &LetterFilter,
    ) -> Result<usize, Error> {
        dead_letters::walk(&self.broker, queue, true, |message| {
            let letter: DeadLetter<serde_json::Value> = DeadLetter::from_message(message);
            if filter.matches(&letter) {
                Visit::Replay(replay_target(queue, message))
            } else {
                Visit::Keep
            }
        })
        .await
    }

    /// Removes the dead letter of job `job_id` from `queue`; the others stay
    /// in place (the walk holds the letters before it until it is found,
    /// among the first [`BROWSE_AT_MOST`]). Returns whether it was found.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn discard(&self, queue: &str, job_id: &str) -> Result<bool, Error> {
        let visit = within(job_id, |_| Visit::Discard);
        Ok(dead_letters::walk(&self.broker, queue, false, visit).await? > 0)
    }

    /// Removes every letter `queue` held when the purge started (those
    /// dead-lettered meanwhile stay); returns how many.
    ///
    /// # Errors
    ///
    /// The broker's error; what was removed before it stays removed.
    pub async fn purge(&self, queue: &str) -> Result<usize, Error> {
        dead_letters::walk(&self.broker, queue, true, |_| Visit::Discard).await
    }

    /// Pauses job type `job` (its name or queue) on every worker that runs
    /// it: their consumers are cancelled, running handlers finish, nothing
    /// is rejected. A worker started later consumes it (the pause belongs
    /// to the running workers). Returns the workers' replies.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn pause(&self, job: &str) -> Result<Vec<Reply>, Error> {
        self.send(Command::Pause {
            job: job.to_owned(),
        })
        .await
    }

    /// Resumes job type `job` on every worker that runs it.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn resume(&self, job: &str) -> Result<Vec<Reply>, Error> {
        self.send(Command::Resume {
            job: job.to_owned(),
        })
        .await
    }

    /// Sets job type `job`'s handler slots on every worker that runs it
    /// (refused, in the replies, for an autoscaled job or 0).
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn set_concurrency(
        &self,
        job: &str,
        concurrency: usize,
    ) -> Result<Vec<Reply>, Error> {
        self.send(Command::SetConcurrency {
            job: job.to_owned(),
            concurrency,
        })
        .await
    }

    /// Cancels job `job_id` on every worker: a running handler is told
    /// ([`crate::JobContext::cancelled`]) and the job is dead-lettered as
    /// cancelled unless its handler succeeds; a delivery of it still to
    /// come is dead-lettered as cancelled when it arrives (within the
    /// workers' cancel memory, 24 h by default). A replay of its dead
    /// letter after the cancel runs normally.
    ///
    /// The workers running now remember it: one started later, or one that
    /// was reconnecting when the command went out (it has not replied),
    /// does not.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty id; the broker's error.
    pub async fn cancel(&self, job_id: &str) -> Result<Vec<Reply>, Error> {
        if job_id.trim().is_empty() {
            return Err(Error::Config("an empty job id cancels nothing".to_owned()));
        }
        self.send(Command::Cancel {
            job_id: job_id.to_owned(),
        })
        .await
    }

    /// Sends `command` to every worker and collects the replies of those
    /// concerned, until each alive one concerned replied or the reply
    /// window passed (a ping is not replied to: it returns at once).
    ///
    /// # Errors
    ///
    /// The broker's error, or the console's listener was lost.
    pub async fn send(&self, command: Command) -> Result<Vec<Reply>, Error> {
        if let Some(lost) = self.seen().lost.clone() {
            return Err(Error::broker("listen to the workers", lost));
        }
        let id = format!(
            "{}-{}",
            self.id,
            self.commands.fetch_add(1, Ordering::Relaxed)
        );
        let expected = self.concerned(&command);
        let ping = matches!(command, Command::Ping);
        // Replies are collected from here on; the entry goes however this
        // ends (dropped too).
        let _collecting = (!ping).then(|| {
            self.seen().replies.insert(id.clone(), Vec::new());
            Collecting(&self.seen, &id)
        });
        let message = protocol::message(&CommandMessage {
            format: FORMAT,
            id: id.clone(),
            reply_to: self.id.clone(),
            command: command.clone(),
        });
        let key = format!("command.{}", command.name());
        self.broker
            .broadcast(CONTROL_EXCHANGE, &key, message)
            .await?;
        if ping {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.reply_window;
        loop {
            let heard = self.seen().heard.clone();
            let notified = heard.notified();
            {
                let seen = self.seen();
                let replies = &seen.replies[&id];
                let all = !expected.is_empty()
                    && expected
                        .iter()
                        .all(|worker| replies.iter().any(|r| &r.worker_id == worker));
                if all || Instant::now() >= deadline {
                    return Ok(replies.clone());
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// The alive workers a command concerns: those running (a stopping
    /// worker takes no command) that run its job, or all for a cancel.
    fn concerned(&self, command: &Command) -> Vec<String> {
        self.workers()
            .into_iter()
            .filter(|worker| worker.alive && worker.status.state == WorkerState::Running)
            .filter(|worker| match command.job() {
                Some(job) => worker
                    .status
                    .jobs
                    .iter()
                    .any(|status| status.job == job || status.queue == job),
                None => true,
            })
            .map(|worker| worker.status.worker_id)
            .collect()
    }
}

/// Removes a command's reply entry when its `send` ends.
struct Collecting<'a>(&'a Mutex<Seen>, &'a str);

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.replies.remove(self.1);
    }
}

impl JobView {
    fn of(status: &JobStatus) -> Self {
        let role = |role| {
            move |name: &String| QueueView {
                name: name.clone(),
                role,
                stats: None,
            }
        };
        let mut queues: Vec<QueueView> = status
            .consumed_queues
            .iter()
            .map(role(QueueRole::Work))
            .collect();
        queues.push(role(QueueRole::DeadLetter)(&status.dead_letter_queue));
        Self {
            job: status.job.clone(),
            status: status.clone(),
            workers: 0,
            paused_on: 0,
            breakers_open: 0,
            concurrency: 0,
            in_flight: 0,
            succeeded: 0,
            failed: 0,
            retried: 0,
            dead_lettered: 0,
            rate: None,
            last_error: None,
            queues,
        }
    }

    /// Adds one worker's status of this job.
    fn add(&mut self, status: &JobStatus, rate: Option<f64>) {
        self.workers += 1;
        self.paused_on += usize::from(status.paused);
        self.breakers_open += usize::from(
            status
                .breaker
                .is_some_and(|breaker| breaker != crate::BreakerHealth::Closed),
        );
        self.concurrency += status.concurrency;
        self.in_flight += status.in_flight;
        self.succeeded += status.succeeded;
        self.failed += status.failed;
        self.retried += status.retried;
        self.dead_lettered += status.dead_lettered;
        if let Some(rate) = rate {
            self.rate = Some(self.rate.unwrap_or(0.0) + rate);
        }
        if status.last_error.is_some() {
            self.last_error.clone_from(&status.last_error);
        }
        for delay in &status.delay_queues {
            if !self.queues.iter().any(|queue| &queue.name == delay) {
                self.queues.push(QueueView {
                    name: delay.clone(),
                    role: QueueRole::Delay,
                    stats: None,
                });
            }
        }
    }
}

/// A walk's visit for the letter of `job_id` among the first
/// [`BROWSE_AT_MOST`]: `found` says what to do with it; the letters before
/// it are kept, and the walk stops after it (or at the bound).
fn within(job_id: &str, mut found: impl FnMut(&Message) -> Visit) -> impl FnMut(&Message) -> Visit {
    let (mut read, mut done) = (0, false);
    move |message| {
        read += 1;
        if done || read > BROWSE_AT_MOST {
            Visit::Stop
        } else if message.id.as_deref() == Some(job_id) {
            done = true;
            found(message)
        } else {
            Visit::Keep
        }
    }
}

/// Where a dead letter of `queue` is replayed: the queue it failed on
/// (`qjob-queue`; RabbitMQ's `x-first-death-queue` for one RabbitMQ moved),
/// or else the work queue the dead-letter queue is named after.
/// A sharded job's dead letter goes to the work queue, which every worker
/// consumes whatever its `shards`.
fn replay_target(queue: &str, message: &Message) -> String {
    let work = queue.strip_suffix(".dlq").unwrap_or(queue);
    [headers::QUEUE, "x-first-death-queue"]
        .iter()
        .find_map(|name| message.headers.get(*name)?.as_str())
        .filter(|failed| topology::shard_index(work, failed).is_none())
        .unwrap_or(work)
        .to_owned()
}

/// Reads the status exchange into `seen`; when the listener is lost (the
/// connection closed), says so in `seen` and listens again, with backoff.
async fn listen(
    broker: Arc<dyn Broker>,
    patterns: [String; 2],
    mut listener: Box<dyn Subscription>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut failures = 0u32;
    loop {
        let lost = read(&mut listener, &seen).await;
        mark_lost(&seen, Some(lost));
        listener = loop {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff::retry_delay(failures, Duration::from_secs(5))).await;
            let patterns = [patterns[0].as_str(), patterns[1].as_str()];
            match broker.listen(STATUS_EXCHANGE, &patterns).await {
                Ok(listener) => break listener,
                Err(error) => mark_lost(&seen, Some(error.to_string())),
            }
        };
        failures = 0;
        mark_lost(&seen, None);
    }
}

fn mark_lost(seen: &Mutex<Seen>, lost: Option<String>) {
    let mut seen = seen.lock().expect("console state poisoned");
    seen.lost = lost;
    seen.heard.notify_waiters();
}

/// Reads heartbeats and replies into `seen` until the listener ends; why.
async fn read(listener: &mut Box<dyn Subscription>, seen: &Mutex<Seen>) -> String {
    loop {
        match listener.next().await {
            Some(Ok(delivery)) => {
                let _ = delivery.acker.ack().await;
                let Some(message) = StatusMessage::read(&delivery.message) else {
                    continue;
                };
                let mut seen = seen.lock().expect("console state poisoned");
                match message {
                    StatusMessage::Heartbeat(status) => seen.heartbeat(status),
                    StatusMessage::Reply(reply) => {
                        if let Some(replies) = seen.replies.get_mut(&reply.command_id) {
                            replies.push(reply);
                        }
                    }
                }
                seen.heard.notify_waiters();
            }
            Some(Err(error)) => return error.to_string(),
            None => return "the broker cancelled the listener".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_on(queue: &str) -> Message {
        let mut message = Message::default();
        message
            .headers
            .insert(headers::QUEUE.into(), queue.to_owned().into());
        message
    }

    #[test]
    fn a_dead_letter_goes_back_where_it_failed_except_to_a_shard() {
        let dlq = "mail.dlq";
        assert_eq!(replay_target(dlq, &failed_on("mail")), "mail");
        assert_eq!(replay_target(dlq, &failed_on("mail.p3")), "mail.p3");
        // A shard a later deploy may have dropped: the work queue, which
        // every worker consumes.
        assert_eq!(replay_target(dlq, &failed_on("mail.s3")), "mail");
        assert_eq!(replay_target(dlq, &failed_on("mail.sx")), "mail.sx");
        assert_eq!(replay_target(dlq, &Message::default()), "mail");
    }
}
