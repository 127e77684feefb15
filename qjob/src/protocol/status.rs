//! A worker's heartbeat: who it is, and how each of its job types is doing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{BreakerHealth, MinuteStatus, ScheduleHealth};
use crate::QueueType;
use crate::broker::QueueSpec;

/// A worker's heartbeat: who it is and how each of its job types is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The format version ([`FORMAT`](super::FORMAT)).
    pub format: u32,
    /// The worker's id, unique per run (a UUID).
    pub worker_id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The qjob version it runs.
    pub version: String,
    /// When it started consuming.
    #[serde(with = "super::time::millis")]
    pub started_at: SystemTime,
    /// When this heartbeat was sent.
    #[serde(with = "super::time::millis")]
    pub sent_at: SystemTime,
    /// How often it sends heartbeats: a console counts it gone after a few
    /// missed ones.
    #[serde(with = "super::time::duration_millis")]
    pub interval: Duration,
    /// Running, stopping or stopped (its last heartbeat).
    pub state: WorkerState,
    /// Whether its broker connection is up.
    pub connected: bool,
    /// Why the broker blocks its publishes (a resource alarm), if it does.
    #[serde(default)]
    pub blocked: Option<String>,
    /// Its job types.
    #[serde(default)]
    pub jobs: Vec<JobStatus>,
    /// The schedules it carries, by name (each led by one worker).
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleHealth>,
    /// Its handler budget, if it has one.
    #[serde(default)]
    pub budget: Option<BudgetStatus>,
    /// The attempts running now, the longest-running first: at most
    /// [`ACTIVITY_AT_MOST`] of them ([`WorkerStatus::running_total`] in all).
    #[serde(default)]
    pub running: Vec<RunningJob>,
    /// How many attempts run now in all.
    #[serde(default)]
    pub running_total: usize,
    /// The jobs held here for a retry in place, the soonest due first: at
    /// most [`ACTIVITY_AT_MOST`] ([`WorkerStatus::retrying_total`] in all).
    #[serde(default)]
    pub retrying: Vec<RetryingJob>,
    /// How many jobs are held here for a retry in place in all.
    #[serde(default)]
    pub retrying_total: usize,
}

/// The most running attempts, and the most jobs held for a retry in place,
/// a heartbeat lists (each): a worker with 10 000 handlers still sends a
/// small heartbeat, with the totals beside.
pub const ACTIVITY_AT_MOST: usize = 100;

/// An attempt running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunningJob {
    /// Its job type's name.
    pub job: String,
    /// The job's id.
    pub job_id: String,
    /// Which attempt it is (1 for the first).
    pub attempt: u32,
    /// When it started, by the worker's clock.
    #[serde(with = "super::time::millis")]
    pub started_at: SystemTime,
    /// A partitioned job's key.
    #[serde(default)]
    pub key: Option<String>,
}

/// A job a worker holds for a retry in place (a quorum, capped or
/// partitioned job's backoff), its delivery unacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryingJob {
    /// Its job type's name.
    pub job: String,
    /// The job's id.
    pub job_id: String,
    /// The attempt it waits to make.
    pub attempt: u32,
    /// When its last attempt failed, by the worker's clock.
    #[serde(with = "super::time::millis")]
    pub failed_at: SystemTime,
    /// When its next attempt is due, by the worker's clock.
    #[serde(with = "super::time::millis")]
    pub next_attempt_at: SystemTime,
    /// Why its last attempt failed.
    pub error: String,
    /// A partitioned job's key.
    #[serde(default)]
    pub key: Option<String>,
}

/// A worker's handler budget ([`crate::WorkerBuilder::max_handlers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BudgetStatus {
    /// The most handlers over all its job types.
    pub max: usize,
    /// Handlers holding a slot of it now.
    pub in_use: usize,
}

/// A job type's limits shared by every process, as one worker sees them
/// ([`crate::docs::limits`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SharedLimitsStatus {
    /// Its global concurrency in force (set at run time, or as built).
    pub global_concurrency: Option<u32>,
    /// The resource it holds a permit of, with its size.
    pub resource: Option<(String, u32)>,
    /// Its global rate, as `#[job]` writes it (`"100/s"`).
    pub global_rate: Option<String>,
    /// Its rate per key, as `#[job]` writes it.
    pub key_rate: Option<String>,
    /// Who holds its permits now (every process's), by resource.
    pub holders: Vec<PermitStatus>,
    /// Starts a second that passed its limits in this worker, since its
    /// last heartbeat.
    pub started_per_second: f64,
    /// Why its starts wait on the store, if they do.
    pub problem: Option<String>,
}

/// A permit held ([`crate::store::Store::permits`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PermitStatus {
    /// The resource: `job:<queue>` for a global concurrency,
    /// `resource:<name>` for a named one.
    pub resource: String,
    /// Its holder: `<worker id>/<job id>/<n>`.
    pub holder: String,
    /// How long its lease has left, in milliseconds.
    pub left_ms: u64,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Consuming.
    Running,
    /// Shutting down: no new deliveries, in-flight handlers finishing.
    Stopping,
    /// Stopped (its last heartbeat).
    Stopped,
}

impl WorkerState {
    /// The state as written in the format.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Stopping => "stopping",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// One job type as one worker runs it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job type's name.
    pub job: String,
    /// The job type's Rust name, without its path (`ChargeJob`; absent
    /// from an older worker's heartbeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Its work queue.
    pub queue: String,
    /// The queues it consumes: the work queue, its partition queues or its
    /// shards.
    pub consumed_queues: Vec<String>,
    /// Its dead-letter queue.
    pub dead_letter_queue: String,
    /// The delay queues its retries used lately (each expires once unused).
    pub delay_queues: Vec<String>,
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// Its partitions, if it is partitioned.
    pub partitions: Option<u16>,
    /// The highest priority its jobs may be enqueued with, if it takes
    /// priorities (absent from an older worker's heartbeat).
    pub priorities: Option<u8>,
    /// Its shards, if it is sharded over more than one queue.
    pub shards: Option<u16>,
    /// Unacked deliveries per consumer.
    pub prefetch: u16,
    /// The handler slots in force.
    pub concurrency: usize,
    /// The autoscaler's bounds, if its concurrency adapts.
    pub autoscale: Option<ConcurrencyRange>,
    /// The attempts a job gets in all.
    pub max_attempts: u32,
    /// Handlers running now.
    pub in_flight: u64,
    /// Its circuit breaker's state, if it has one.
    pub breaker: Option<BreakerHealth>,
    /// Whether an operator paused it on this worker.
    pub paused: bool,
    /// Attempts that succeeded since the worker started.
    pub succeeded: u64,
    /// Attempts that failed (retried or dead-lettered).
    pub failed: u64,
    /// Failed attempts scheduled again.
    pub retried: u64,
    /// Jobs dead-lettered.
    pub dead_lettered: u64,
    /// Attempts settled (succeeded or failed) per second, as the worker
    /// measured them since an earlier heartbeat at least a second before;
    /// absent from its first heartbeat (and from an older worker's). A
    /// console shows this rate until it has heard two heartbeats at least
    /// half an interval apart, and then measures its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// Its class in the worker's handler budget (`critical`, `default`,
    /// `bulk`).
    pub class: String,
    /// The budget's slots it holds now (0 without a budget).
    pub budget_held: usize,
    /// Its attempts waiting for a slot of the budget.
    pub budget_waiting: usize,
    /// Its limits shared by every process, if it has any.
    pub shared_limits: Option<SharedLimitsStatus>,
    /// Its queues as it declares them (work, partition or shard queues, the
    /// dead-letter queue, and the delay queues it used lately), for
    /// checking the broker's topology.
    pub declared: Vec<DeclaredQueue>,
    /// Its payload's JSON Schema (draft-07), if the job type gives one
    /// ([`crate::Job::payload_schema`]).
    pub payload_schema: Option<serde_json::Value>,
    /// Its last hour: the minutes with activity, oldest first (absent from
    /// an older worker's heartbeat).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<MinuteStatus>,
}

impl JobStatus {
    /// Whether `name` names this job type, as operators name it: its name
    /// (`charge`), its Rust type's (`ChargeJob`) or its work queue
    /// (`billing.charge`).
    pub fn is_named(&self, name: &str) -> bool {
        self.job == name || self.queue == name || self.type_name.as_deref() == Some(name)
    }
}

/// A queue as a worker declares it: [`QueueSpec`] in the format.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DeclaredQueue {
    /// Its name.
    pub name: String,
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// `x-max-length`.
    pub max_length: Option<u32>,
    /// `x-single-active-consumer`.
    pub single_active: bool,
    /// `x-message-ttl`, in milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// `x-dead-letter-routing-key` (through the default exchange).
    pub dead_letter_to: Option<String>,
    /// `x-expires`, in milliseconds.
    pub expires_ms: Option<u64>,
    /// `x-delivery-limit`.
    pub delivery_limit: Option<u32>,
    /// `x-max-priority` (absent from an older worker's heartbeat).
    pub max_priority: Option<u8>,
}

impl From<&QueueSpec> for DeclaredQueue {
    fn from(spec: &QueueSpec) -> Self {
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            name: spec.name.clone(),
            queue_type: spec.queue_type.as_str().to_owned(),
            max_length: spec.max_length,
            single_active: spec.single_active,
            message_ttl_ms: spec.message_ttl.map(millis),
            dead_letter_to: spec.dead_letter_to.clone(),
            expires_ms: spec.expires.map(millis),
            delivery_limit: spec.delivery_limit,
            max_priority: spec.max_priority,
        }
    }
}

impl DeclaredQueue {
    /// The queue as the broker declares it; `None` for a queue type this
    /// qjob does not know.
    pub fn spec(&self) -> Option<QueueSpec> {
        let queue_type = match self.queue_type.as_str() {
            "classic" => QueueType::Classic,
            "quorum" => QueueType::Quorum,
            _ => return None,
        };
        let mut spec = QueueSpec::new(self.name.clone())
            .with_queue_type(queue_type)
            .with_single_active(self.single_active);
        spec.max_length = self.max_length;
        spec.message_ttl = self.message_ttl_ms.map(Duration::from_millis);
        spec.dead_letter_to.clone_from(&self.dead_letter_to);
        spec.expires = self.expires_ms.map(Duration::from_millis);
        spec.delivery_limit = self.delivery_limit;
        spec.max_priority = self.max_priority;
        Some(spec)
    }
}

/// The bounds of an autoscaled job's concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConcurrencyRange {
    /// The least handler slots.
    pub min: usize,
    /// The most.
    pub max: usize,
}

impl ConcurrencyRange {
    /// The bounds `min..=max`.
    pub fn new(min: usize, max: usize) -> Self {
        Self { min, max }
    }
}
