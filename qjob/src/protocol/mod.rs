//! What workers and consoles say to each other over the broker: worker
//! heartbeats and command replies on [`STATUS_EXCHANGE`], commands on
//! [`CONTROL_EXCHANGE`], all JSON.
//!
//! The format is versioned ([`FORMAT`]): a change that adds fields keeps
//! the version (readers ignore what they do not know, and take a default
//! for what is missing); a change that older readers would misread bumps
//! it, and readers skip messages of a version they do not know.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::QueueType;
use crate::broker::{Message, QueueSpec};

mod health;

pub use health::{BreakerHealth, ScheduleHealth};

/// The topic exchange workers broadcast their heartbeats
/// (`worker.<worker id>`) and command replies (`reply.<console id>`) to.
pub const STATUS_EXCHANGE: &str = "qjob.status";

/// The topic exchange consoles send commands to (`command.<name>`); every
/// running worker listens on it through a private queue of its own.
pub const CONTROL_EXCHANGE: &str = "qjob.control";

/// The version of the status and command format this qjob writes and reads.
pub const FORMAT: u32 = 1;

/// A worker's heartbeat: who it is and how each of its job types is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The format version ([`FORMAT`]).
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
    #[serde(with = "millis")]
    pub started_at: SystemTime,
    /// When this heartbeat was sent.
    #[serde(with = "millis")]
    pub sent_at: SystemTime,
    /// How often it sends heartbeats: a console counts it gone after a few
    /// missed ones.
    #[serde(with = "duration_millis")]
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
    /// The last failure's error.
    pub last_error: Option<String>,
    /// Its queues as it declares them (work, partition or shard queues, the
    /// dead-letter queue, and the delay queues it used lately), for
    /// checking the broker's topology.
    pub declared: Vec<DeclaredQueue>,
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

/// A command to the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Command {
    /// Every worker sends a heartbeat now.
    Ping,
    /// The workers running job type `job` (its name or its queue) cancel
    /// its consumers; its running handlers finish, and nothing is rejected.
    Pause {
        /// The job type's name or queue.
        job: String,
    },
    /// The workers running `job` consume it again.
    Resume {
        /// The job type's name or queue.
        job: String,
    },
    /// The workers running `job` use this many handler slots each.
    SetConcurrency {
        /// The job type's name or queue.
        job: String,
        /// Handler slots per worker (at least 1).
        concurrency: usize,
    },
    /// Cancels the job with this id: its running handler is told
    /// ([`crate::JobContext::cancelled`]), and a delivery of it yet to come
    /// is dead-lettered as cancelled.
    Cancel {
        /// The job's id.
        job_id: String,
    },
}

impl Command {
    /// The command's name, as written in the format (and the last word of
    /// its routing key).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::SetConcurrency { .. } => "set-concurrency",
            Command::Cancel { .. } => "cancel",
        }
    }

    /// The job type it acts on, if it acts on one.
    pub fn job(&self) -> Option<&str> {
        match self {
            Command::Pause { job } | Command::Resume { job } => Some(job),
            Command::SetConcurrency { job, .. } => Some(job),
            Command::Ping | Command::Cancel { .. } => None,
        }
    }
}

/// A command as sent: the command, its id and where replies go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandMessage {
    /// The format version ([`FORMAT`]).
    pub format: u32,
    /// The command's id, which replies carry.
    pub id: String,
    /// The console's id: replies go to `reply.<reply_to>`.
    pub reply_to: String,
    /// The command.
    #[serde(flatten)]
    pub command: Command,
}

/// A worker's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reply {
    /// The format version ([`FORMAT`]).
    pub format: u32,
    /// The command answered.
    pub command_id: String,
    /// The worker answering.
    pub worker_id: String,
    /// Whether the worker did what the command asked.
    pub ok: bool,
    /// What it did, or why not.
    pub message: String,
}

/// What a console reads off the status exchange.
#[derive(Debug)]
pub(crate) enum StatusMessage {
    Heartbeat(WorkerStatus),
    Reply(Reply),
}

impl StatusMessage {
    /// Reads a status message; `None` for another format version or a
    /// message that is not one.
    pub(crate) fn read(message: &Message) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(&message.body).ok()?;
        if value.get("format").and_then(serde_json::Value::as_u64) != Some(u64::from(FORMAT)) {
            return None;
        }
        if value.get("command_id").is_some() {
            serde_json::from_value(value).ok().map(StatusMessage::Reply)
        } else {
            serde_json::from_value(value)
                .ok()
                .map(StatusMessage::Heartbeat)
        }
    }
}

/// A JSON message of the format.
pub(crate) fn message(value: &impl Serialize) -> Message {
    Message {
        body: serde_json::to_vec(value).expect("the status format serializes"),
        ..Message::default()
    }
}

/// Times as milliseconds since the Unix epoch.
mod millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::to_millis(*at))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Optional times as milliseconds since the Unix epoch (`null` for none).
pub(crate) mod millis_opt {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        at: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_some(&super::to_millis(*at)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
    }
}

/// Durations as milliseconds.
mod duration_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

fn to_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_back_with_their_tag() {
        let sent = CommandMessage {
            format: FORMAT,
            id: "c-1".into(),
            reply_to: "console".into(),
            command: Command::SetConcurrency {
                job: "email".into(),
                concurrency: 4,
            },
        };
        let json = serde_json::to_value(&sent).unwrap();
        assert_eq!(json["command"], "set-concurrency");
        assert_eq!(json["concurrency"], 4);
        let read: CommandMessage = serde_json::from_value(json).unwrap();
        assert_eq!(read, sent);
    }

    #[test]
    fn heartbeats_of_another_format_are_skipped() {
        let status = WorkerStatus {
            format: FORMAT,
            worker_id: "w".into(),
            host: "h".into(),
            pid: 1,
            version: "0.1.0".into(),
            started_at: UNIX_EPOCH + Duration::from_millis(1_000),
            sent_at: UNIX_EPOCH + Duration::from_millis(2_000),
            interval: Duration::from_secs(5),
            state: WorkerState::Running,
            connected: true,
            blocked: None,
            jobs: vec![JobStatus {
                job: "email".into(),
                breaker: Some(BreakerHealth::HalfOpen),
                ..JobStatus::default()
            }],
            schedules: [("nightly".to_owned(), {
                let mut schedule = ScheduleHealth::new("report", "0 2 * * *", "UTC");
                schedule.leader = true;
                schedule.next = Some(UNIX_EPOCH + Duration::from_millis(3_000));
                schedule.problem = Some("a lease records a tick 86400 s ahead".into());
                schedule
            })]
            .into(),
        };
        let Some(StatusMessage::Heartbeat(read)) = StatusMessage::read(&message(&status)) else {
            panic!("a heartbeat reads back");
        };
        assert_eq!(read, status);
        let mut json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["jobs"][0]["breaker"], "half-open");
        // An earlier version's schedule says no problem.
        let mut earlier = json.clone();
        earlier["schedules"]["nightly"]
            .as_object_mut()
            .unwrap()
            .remove("problem");
        let Some(StatusMessage::Heartbeat(read)) = StatusMessage::read(&message(&earlier)) else {
            panic!("an earlier heartbeat reads");
        };
        assert_eq!(read.schedules["nightly"].problem, None);
        json["format"] = 2.into();
        let newer = message(&json);
        assert!(StatusMessage::read(&newer).is_none());
    }
}
