//! The worker's side of the console: heartbeats on the status exchange, and
//! the commands it takes from the control exchange (see [`crate::admin`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Delivery, Subscription};
use crate::policy::backoff;
use crate::protocol::{
    self, ACTIVITY_AT_MOST, BudgetStatus, CONTROL_EXCHANGE, Command, CommandMessage,
    ConcurrencyRange, DeclaredQueue, FORMAT, JobStatus, PermitStatus, Reply, RetryingJob,
    RunningJob, STATUS_EXCHANGE, SharedLimitsStatus, WorkerState, WorkerStatus,
};
use crate::worker::cancellations::{Cancellations, InProgress};
use crate::worker::control::{MAX_CONSOLE_CONCURRENCY, Slots};
use crate::worker::gate::Gate;
use crate::worker::health::{BudgetHealth, Health};
use crate::worker::metrics::{self, Counts};
use crate::worker::quota::{Quota, job_resource};
use crate::worker::schedule_control::{self, ScheduleControl};
use crate::{JobId, JobOptions, topology};

/// How often a worker sends a heartbeat by default.
pub(crate) const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// The longest a heartbeat or a reply may take to send.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait between two attempts to listen for commands again.
const MAX_RELISTEN_DELAY: Duration = Duration::from_secs(5);

/// What the console sees of, and does to, one job type.
pub(crate) struct ConsoleJob {
    pub(crate) name: &'static str,
    /// The job type's Rust name (`ChargeJob`), unless another job type of
    /// this worker has the same (then neither is named by it).
    pub(crate) type_name: Option<String>,
    pub(crate) options: JobOptions,
    pub(crate) consumed: Vec<String>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) paused: watch::Sender<bool>,
    pub(crate) counts: Arc<Counts>,
    pub(crate) leases: Arc<topology::Leases>,
    pub(crate) gate: Option<Arc<Gate>>,
    /// Its limits shared by every process, if it has any.
    pub(crate) quota: Option<Arc<Quota>>,
    /// When the heartbeat last read its starts, and how many there were.
    pub(crate) starts_seen: Mutex<(Instant, u64)>,
    /// Its payload's JSON Schema, if it gives one.
    pub(crate) payload_schema: Option<serde_json::Value>,
    /// Its settled attempts' rate, and where it is measured from.
    pub(crate) rate: Mutex<SettledRate>,
}

/// Takes the type name off job types whose type name another has too
/// (types of one name in two modules): a command by that name would pick
/// one of them at random.
pub(crate) fn unname_shared_types(jobs: &mut [ConsoleJob]) {
    let mut seen = std::collections::HashMap::new();
    for job in jobs.iter() {
        if let Some(name) = &job.type_name {
            *seen.entry(name.clone()).or_insert(0) += 1;
        }
    }
    for job in jobs {
        if job.type_name.as_ref().is_some_and(|name| seen[name] > 1) {
            job.type_name = None;
        }
    }
}

/// Attempts settled per second between heartbeats, measured by the worker
/// so that a console's first look has a rate.
#[derive(Default)]
pub(crate) struct SettledRate {
    /// When the rate is measured from, and the attempts settled then.
    since: Option<(Instant, u64)>,
    /// The last rate measured.
    last: Option<f64>,
}

impl SettledRate {
    /// The shortest span a rate is measured over: a heartbeat a command
    /// asks for comes right after another.
    const SPAN: Duration = Duration::from_secs(1);

    /// The rate with `settled` attempts so far, at `now`.
    fn at(&mut self, now: Instant, settled: u64) -> Option<f64> {
        match self.since {
            Some((at, before)) if now.duration_since(at) >= Self::SPAN => {
                let span = now.duration_since(at).as_secs_f64();
                self.last = Some(settled.saturating_sub(before) as f64 / span);
                self.since = Some((now, settled));
            }
            Some(_) => {}
            None => self.since = Some((now, settled)),
        }
        self.last
    }
}

impl ConsoleJob {
    fn is(&self, job: &str) -> bool {
        self.name == job || self.options.queue() == job || self.type_name.as_deref() == Some(job)
    }

    async fn status(&self, budget: Option<&BudgetHealth>) -> JobStatus {
        let share = budget.and_then(|budget| budget.jobs.get(self.name));
        let shared_limits = self.shared_limits().await;
        let options = &self.options;
        let counts = &*self.counts;
        let delay_queues = self.leases.recent();
        let mut specs = topology::consumed_queues(options);
        let delay_specs: Vec<_> = delay_queues
            .iter()
            .filter_map(|name| {
                specs.iter().find_map(|consumed| {
                    topology::delay_queue_named(&consumed.name, options.queue_type(), name)
                })
            })
            .collect();
        specs.push(topology::dead_letter_queue(options));
        specs.extend(delay_specs);
        let declared = specs.iter().map(DeclaredQueue::from).collect();
        JobStatus {
            job: self.name.to_owned(),
            type_name: self.type_name.clone(),
            queue: options.queue().to_owned(),
            consumed_queues: self.consumed.clone(),
            dead_letter_queue: options.dead_letter_queue(),
            delay_queues,
            declared,
            queue_type: options.queue_type().as_str().to_owned(),
            partitions: options.partitions(),
            priorities: options.priorities(),
            payload_schema: self.payload_schema.clone(),
            shards: (options.shards() > 1).then_some(options.shards()),
            prefetch: options.prefetch(),
            concurrency: self.slots.size(),
            autoscale: options
                .autoscale()
                .map(|autoscale| ConcurrencyRange::new(autoscale.min, autoscale.max)),
            max_attempts: options.max_attempts(),
            in_flight: Counts::load(&counts.in_flight),
            breaker: self
                .gate
                .as_ref()
                .and_then(|gate| gate.breaker_state())
                .map(Into::into),
            paused: *self.paused.borrow(),
            succeeded: Counts::load(&counts.succeeded),
            failed: Counts::load(&counts.failed),
            retried: Counts::load(&counts.retried),
            dead_lettered: Counts::load(&counts.dead_lettered),
            rate: self.rate.lock().expect("rate poisoned").at(
                Instant::now(),
                Counts::load(&counts.succeeded) + Counts::load(&counts.failed),
            ),
            class: options.class().as_str().to_owned(),
            budget_held: share.map_or(0, |share| share.held),
            budget_waiting: share.map_or(0, |share| share.waiting),
            shared_limits,
            last_error: counts
                .last_error
                .lock()
                .expect("last error poisoned")
                .clone(),
            history: counts.history.minutes(),
        }
    }
}

impl ConsoleJob {
    /// Its shared limits as the store has them now: the limits in force,
    /// who holds its permits, and the starts a second here since the last
    /// heartbeat. A store that does not answer within [`SEND_TIMEOUT`] is
    /// the problem reported.
    async fn shared_limits(&self) -> Option<SharedLimitsStatus> {
        let quota = self.quota.as_ref()?;
        let options = &self.options;
        let mut status = SharedLimitsStatus {
            global_rate: options.global_rate().map(rate_text),
            key_rate: options.key_rate().map(rate_text),
            problem: quota.problem(),
            ..SharedLimitsStatus::default()
        };
        let (now, started) = (Instant::now(), quota.started());
        let (then, before) = std::mem::replace(
            &mut *self.starts_seen.lock().expect("starts seen poisoned"),
            (now, started),
        );
        let secs = now.duration_since(then).as_secs_f64();
        if secs > 0.0 {
            status.started_per_second = started.saturating_sub(before) as f64 / secs;
        }
        for (resource, size) in quota.resources() {
            let read = tokio::time::timeout(SEND_TIMEOUT, quota.store().permits(resource)).await;
            let permits = match read {
                Ok(Ok(permits)) => permits,
                Ok(Err(error)) => {
                    status
                        .problem
                        .get_or_insert(format!("its permits cannot be read: {error}"));
                    continue;
                }
                Err(_) => {
                    status.problem.get_or_insert(format!(
                        "its permits cannot be read: the store did not answer within {SEND_TIMEOUT:?}"
                    ));
                    continue;
                }
            };
            let limit = permits.limit.unwrap_or(*size);
            match resource.strip_prefix("resource:") {
                Some(name) => status.resource = Some((name.to_owned(), limit)),
                None => status.global_concurrency = Some(limit),
            }
            status.holders.extend(
                permits
                    .holders
                    .into_iter()
                    .map(|(holder, left)| PermitStatus {
                        resource: resource.clone(),
                        holder,
                        left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    }),
            );
        }
        Some(status)
    }
}

/// A rate as `#[job]` writes it: `100/s`, `6/min`, `2/h`, else the period
/// in full.
fn rate_text(rate: crate::RateLimit) -> String {
    match rate.per.as_secs() {
        1 if rate.per.subsec_nanos() == 0 => format!("{}/s", rate.count),
        60 if rate.per.subsec_nanos() == 0 => format!("{}/min", rate.count),
        3600 if rate.per.subsec_nanos() == 0 => format!("{}/h", rate.count),
        _ => format!("{} per {:?}", rate.count, rate.per),
    }
}

/// An attempt in progress as a heartbeat lists it.
fn running_job(running: InProgress) -> RunningJob {
    RunningJob {
        job: running.doing.job.to_owned(),
        job_id: running.job_id.to_string(),
        attempt: running.doing.attempt,
        started_at: running.began,
        key: running.doing.key,
    }
}

/// A wait before a retry in place as a heartbeat lists it.
fn retrying_job(waiting: InProgress) -> Option<RetryingJob> {
    let (next_attempt_at, error) = waiting.doing.retry?;
    Some(RetryingJob {
        job: waiting.doing.job.to_owned(),
        job_id: waiting.job_id.to_string(),
        attempt: waiting.doing.attempt,
        failed_at: waiting.began,
        next_attempt_at,
        error,
        key: waiting.doing.key,
    })
}

/// A running worker as the console sees it.
pub(crate) struct Console {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) worker_id: String,
    pub(crate) started_at: SystemTime,
    pub(crate) interval: Duration,
    pub(crate) health: Health,
    pub(crate) jobs: Vec<ConsoleJob>,
    /// The schedules it carries.
    pub(crate) schedules: Vec<Arc<ScheduleControl>>,
    pub(crate) cancellations: Arc<Cancellations>,
}

impl Console {
    async fn status(&self, state: WorkerState) -> WorkerStatus {
        let report = self.health.report();
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            jobs.push(job.status(report.budget.as_ref()).await);
        }
        let activity = self.cancellations.activity(ACTIVITY_AT_MOST);
        WorkerStatus {
            format: FORMAT,
            worker_id: self.worker_id.clone(),
            host: crate::headers::host().to_owned(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            sent_at: SystemTime::now(),
            interval: self.interval,
            state,
            connected: self.broker.is_connected(),
            blocked: report.blocked,
            jobs,
            schedules: report.schedules,
            budget: report.budget.as_ref().map(|budget| BudgetStatus {
                max: budget.max,
                in_use: budget.in_use,
            }),
            running: activity.running.into_iter().map(running_job).collect(),
            running_total: activity.running_total,
            retrying: activity
                .waiting
                .into_iter()
                .filter_map(retrying_job)
                .collect(),
            retrying_total: activity.waiting_total,
        }
    }

    /// Broadcasts a heartbeat. A failure (the broker blocked, the
    /// connection down) is logged: the next one may pass.
    pub(crate) async fn heartbeat(&self, state: WorkerState) {
        let key = format!("worker.{}", self.worker_id);
        let status = protocol::message(&self.status(state).await);
        if let Err(error) = self.broadcast(&key, status).await {
            tracing::debug!(%error, "could not send a heartbeat");
        }
    }

    /// Sends a heartbeat at start and every interval until `end`: running,
    /// then stopping once `stopping` (while in-flight handlers finish).
    pub(crate) async fn heartbeats(
        self: Arc<Self>,
        stopping: CancellationToken,
        end: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = end.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let state = if stopping.is_cancelled() {
                WorkerState::Stopping
            } else {
                WorkerState::Running
            };
            self.heartbeat(state).await;
        }
    }

    /// Starts listening for commands: the worker does before its first
    /// heartbeat, so that a console that sees it can command it. A failure
    /// is logged; [`Console::commands`] listens again.
    pub(crate) async fn listen(&self) -> Option<Box<dyn Subscription>> {
        match self.broker.listen(CONTROL_EXCHANGE, &["command.#"]).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "could not listen for console commands; trying again");
                None
            }
        }
    }

    /// Takes commands from `listener` until `stop`, listening again (with
    /// backoff) when it is lost or missing.
    pub(crate) async fn commands(
        self: Arc<Self>,
        mut listener: Option<Box<dyn Subscription>>,
        stop: CancellationToken,
    ) {
        let mut failures = 0u32;
        loop {
            if let Some(listener) = listener.take() {
                if self.obey_until_lost(listener, &stop).await {
                    return;
                }
            } else {
                failures = failures.saturating_add(1);
            }
            let delay = backoff::retry_delay(failures, MAX_RELISTEN_DELAY);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            listener = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                listener = self.listen() => listener,
            };
            if listener.is_some() {
                failures = 0;
            }
        }
    }

    /// Obeys what `listener` brings; true when the worker stops, false when
    /// the listener is lost.
    async fn obey_until_lost(
        &self,
        mut listener: Box<dyn Subscription>,
        stop: &CancellationToken,
    ) -> bool {
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                next = listener.next() => Some(next),
            };
            let Some(next) = next else {
                let _ = listener.close().await;
                return true;
            };
            match next {
                Some(Ok(delivery)) => self.take(delivery).await,
                Some(Err(error)) => {
                    tracing::debug!(%error, "the console listener failed; listening again");
                    return false;
                }
                None => return false,
            }
        }
    }

    async fn take(&self, delivery: Delivery) {
        // A command is live state: acked at once, whatever it says.
        let _ = delivery.acker.ack().await;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&delivery.message.body) else {
            tracing::debug!("ignored a console message that is not JSON");
            return;
        };
        if value.get("format").and_then(serde_json::Value::as_u64) != Some(u64::from(FORMAT)) {
            return;
        }
        let command = match serde_json::from_value::<CommandMessage>(value.clone()) {
            Ok(command) => command,
            Err(error) => {
                // Say so to the console that sent it, if it can be told.
                let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
                if let (Some(id), Some(reply_to)) = (field("id"), field("reply_to")) {
                    let message = format!("not a command this worker knows: {error}");
                    self.reply(id, reply_to, false, message).await;
                }
                return;
            }
        };
        if matches!(command.command, Command::Ping) {
            return self.heartbeat(WorkerState::Running).await;
        }
        tracing::info!(
            command = command.command.name(),
            id = command.id.as_str(),
            "console command"
        );
        let obeyed = match &command.command {
            Command::SetGlobalConcurrency { job, limit } => {
                self.set_global_concurrency(job, *limit).await
            }
            schedule if schedule.schedule().is_some() => {
                schedule_control::obey(&self.schedules, &self.health, schedule).await
            }
            other => self.obey(other),
        };
        let Some((ok, message)) = obeyed else {
            return;
        };
        self.reply(&command.id, &command.reply_to, ok, message)
            .await;
        // The change shows at once, not at the next heartbeat.
        self.heartbeat(WorkerState::Running).await;
    }

    async fn reply(&self, command_id: &str, reply_to: &str, ok: bool, message: String) {
        let reply = Reply {
            format: FORMAT,
            command_id: command_id.to_owned(),
            worker_id: self.worker_id.clone(),
            ok,
            message,
        };
        let key = format!("reply.{reply_to}");
        let sent = self.broadcast(&key, protocol::message(&reply)).await;
        if let Err(error) = sent {
            tracing::debug!(%error, "could not reply to a console command");
        }
    }

    /// Broadcasts on the status exchange, within [`SEND_TIMEOUT`]: live
    /// state is not worth waiting for (a stop must not wait on it).
    async fn broadcast(
        &self,
        key: &str,
        message: crate::broker::Message,
    ) -> Result<(), crate::Error> {
        tokio::time::timeout(
            SEND_TIMEOUT,
            self.broker.broadcast(STATUS_EXCHANGE, key, message),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::Error::Timeout {
                operation: format!("broadcast to {STATUS_EXCHANGE}"),
                after: SEND_TIMEOUT,
            })
        })
    }

    /// Carries out a command: whether it did, and what it says about it;
    /// `None` when the command is for job types this worker does not run.
    fn obey(&self, command: &Command) -> Option<(bool, String)> {
        if let Command::RunNow { job_id } = command {
            return Some(
                match self.cancellations.run_now(&JobId::from(job_id.as_str())) {
                    0 => (false, format!("job {job_id} is not held here for a retry")),
                    _ => (true, format!("job {job_id}'s next attempt starts now")),
                },
            );
        }
        if let Command::Cancel { job_id } = command {
            if job_id.trim().is_empty() {
                return Some((false, "an empty job id cancels nothing".to_owned()));
            }
            self.cancellations.cancel(JobId::from(job_id.as_str()));
            return Some((
                true,
                format!(
                    "job {job_id} cancelled: its handler here, if running, is told; a delivery of it here is dead-lettered"
                ),
            ));
        }
        let job = self
            .jobs
            .iter()
            .find(|job| command.job().is_some_and(|name| job.is(name)))?;
        Some(match command {
            Command::Pause { .. } => {
                job.paused.send_replace(true);
                (
                    true,
                    format!(
                        "{} paused: its consumers are cancelled, running handlers finish",
                        job.name
                    ),
                )
            }
            Command::Resume { .. } => {
                job.paused.send_replace(false);
                (true, format!("{} resumed", job.name))
            }
            Command::SetConcurrency { concurrency, .. } => self.set_concurrency(job, *concurrency),
            Command::Ping
            | Command::Cancel { .. }
            | Command::RunNow { .. }
            | Command::SetGlobalConcurrency { .. }
            | Command::FireSchedule { .. }
            | Command::PauseSchedule { .. }
            | Command::ResumeSchedule { .. } => {
                return None;
            }
        })
    }

    /// Sets `job`'s global concurrency in the store, for every process
    /// (every worker running it does the same); `None` when it does not run
    /// here.
    async fn set_global_concurrency(
        &self,
        job: &str,
        limit: Option<u32>,
    ) -> Option<(bool, String)> {
        let job = self.jobs.iter().find(|console_job| console_job.is(job))?;
        let (Some(quota), Some(_)) = (&job.quota, job.options.global_concurrency()) else {
            return Some((
                false,
                format!(
                    "{} has no global concurrency: give it #[job(global_concurrency = N)] first",
                    job.name
                ),
            ));
        };
        if limit == Some(0) {
            return Some((
                false,
                "a global concurrency of 0 would stall the job; pause it instead".to_owned(),
            ));
        }
        let resource = job_resource(job.options.queue());
        let set = tokio::time::timeout(
            SEND_TIMEOUT,
            quota.store().set_permit_limit(&resource, limit),
        )
        .await;
        Some(match set {
            Ok(Ok(())) => match limit {
                Some(limit) => (
                    true,
                    format!(
                        "{} global concurrency {limit}, across every process",
                        job.name
                    ),
                ),
                None => (
                    true,
                    format!(
                        "{} global concurrency back to the one it was built with",
                        job.name
                    ),
                ),
            },
            Ok(Err(error)) => (false, format!("the store refused: {error}")),
            Err(_) => (
                false,
                format!("the store did not answer within {SEND_TIMEOUT:?}"),
            ),
        })
    }

    fn set_concurrency(&self, job: &ConsoleJob, concurrency: usize) -> (bool, String) {
        if let Some(autoscale) = job.options.autoscale() {
            return (
                false,
                format!(
                    "{} is autoscaled between {} and {} handlers; its concurrency is not set by hand",
                    job.name, autoscale.min, autoscale.max
                ),
            );
        }
        if concurrency == 0 {
            return (
                false,
                "a concurrency of 0 would stall the job; pause it instead".to_owned(),
            );
        }
        if concurrency > MAX_CONSOLE_CONCURRENCY {
            return (
                false,
                format!("a concurrency above {MAX_CONSOLE_CONCURRENCY} is refused"),
            );
        }
        let was = job.slots.size();
        job.slots.resize(concurrency);
        self.health.concurrency(job.options.queue(), concurrency);
        metrics::concurrency(job.options.queue(), concurrency);
        (
            true,
            format!("{} concurrency {was} → {concurrency}", job.name),
        )
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn a_rate_is_measured_over_a_second_at_least() {
        let mut rate = SettledRate::default();
        let start = Instant::now();
        assert_eq!(rate.at(start, 10), None, "the first heartbeat has none");
        assert_eq!(
            rate.at(start + Duration::from_millis(200), 50),
            None,
            "too soon after"
        );
        assert_eq!(rate.at(start + Duration::from_secs(2), 30), Some(10.0));
        // Kept until the next second's measure.
        assert_eq!(rate.at(start + Duration::from_millis(2500), 99), Some(10.0));
        assert_eq!(rate.at(start + Duration::from_secs(4), 30), Some(0.0));
    }
}
