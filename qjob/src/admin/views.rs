//! What the console shows of what it heard: the workers, the schedules
//! they carry, and the job types they run with their queues on the broker.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Admin;
use crate::broker::QueueStats;
use crate::protocol::{BreakerHealth, JobStatus, SharedLimitsStatus, WorkerState, WorkerStatus};
use crate::{Error, ScheduleHealth};

/// Heartbeats a worker may miss before a console counts it gone.
pub const MISSED_HEARTBEATS: u32 = 3;

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
    /// Of those, the ones an operator paused it on
    /// ([`Admin::pause_schedule`]).
    pub paused_on: usize,
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
    /// Its limits shared by every process: the limits in force and the
    /// permits' holders as the store has them, starts a second summed over
    /// the alive workers, and a worker's problem with the store, if any.
    pub shared_limits: Option<SharedLimitsStatus>,
}

impl JobView {
    /// Its class (unless `default`) and its limits beyond one worker, in a
    /// line: `critical, global 3/5, billing-db 2/8, 100/s (97.5/s), 5/s per
    /// key` (permits held / limit in force; starts a second lately over the
    /// alive workers). `None` if it has none of them.
    pub fn limits_summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.status.class.is_empty() && self.status.class != "default" {
            parts.push(self.status.class.clone());
        }
        if let Some(limits) = &self.shared_limits {
            let held = |resource: &str| {
                limits
                    .holders
                    .iter()
                    .filter(|holder| holder.resource == resource)
                    .count()
            };
            if let Some(limit) = limits.global_concurrency {
                let resource = format!("job:{}", self.status.queue);
                parts.push(format!("global {}/{limit}", held(&resource)));
            }
            if let Some((name, size)) = &limits.resource {
                parts.push(format!(
                    "{name} {}/{size}",
                    held(&format!("resource:{name}"))
                ));
            }
            if let Some(rate) = &limits.global_rate {
                parts.push(format!("{rate} ({:.1}/s)", limits.started_per_second));
            }
            if let Some(rate) = &limits.key_rate {
                parts.push(format!("{rate} per key"));
            }
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

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

impl Admin {
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
                        paused_on: 0,
                    });
                view.workers += 1;
                view.paused_on += usize::from(schedule.paused);
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
                    // Measured between two heartbeats heard, or else as
                    // the worker measured it.
                    let rate = tracked.rates.get(&status.job).copied().or(status.rate);
                    view.add(status, rate);
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

    /// Ready messages and consumers of `queue`, `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn queue(&self, queue: &str) -> Result<Option<QueueStats>, Error> {
        self.broker.queue_stats(queue).await
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
            shared_limits: None,
        }
    }

    /// Adds one worker's status of this job.
    fn add(&mut self, status: &JobStatus, rate: Option<f64>) {
        self.workers += 1;
        self.paused_on += usize::from(status.paused);
        self.breakers_open += usize::from(
            status
                .breaker
                .is_some_and(|breaker| breaker != BreakerHealth::Closed),
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
        if let Some(limits) = &status.shared_limits {
            match &mut self.shared_limits {
                None => self.shared_limits = Some(limits.clone()),
                Some(seen) => {
                    seen.started_per_second += limits.started_per_second;
                    if seen.problem.is_none() {
                        seen.problem.clone_from(&limits.problem);
                    }
                }
            }
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
