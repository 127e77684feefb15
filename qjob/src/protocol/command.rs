//! A console's commands to the workers, and the workers' replies.

use serde::{Deserialize, Serialize};

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
        /// The job type's name (`charge`), its type's (`ChargeJob`) or its queue.
        job: String,
    },
    /// The workers running `job` consume it again.
    Resume {
        /// The job type's name (`charge`), its type's (`ChargeJob`) or its queue.
        job: String,
    },
    /// The workers running `job` use this many handler slots each.
    SetConcurrency {
        /// The job type's name (`charge`), its type's (`ChargeJob`) or its queue.
        job: String,
        /// Handler slots per worker (at least 1).
        concurrency: usize,
    },
    /// Sets the global concurrency of `job` for every process that runs it
    /// (kept in the store, in place of the one its workers were built
    /// with); `None` goes back to theirs.
    SetGlobalConcurrency {
        /// The job type's name (`charge`), its type's (`ChargeJob`) or its queue.
        job: String,
        /// Handlers at once across every process (at least 1).
        limit: Option<u32>,
    },
    /// Cancels the job with this id: its running handler is told
    /// ([`crate::JobContext::cancelled`]), and a delivery of it yet to come
    /// is dead-lettered as cancelled.
    Cancel {
        /// The job's id.
        job_id: String,
    },
    /// The workers holding the job with this id for a retry in place end
    /// its wait: its next attempt starts now.
    RunNow {
        /// The job's id.
        job_id: String,
    },
    /// The worker leading schedule `schedule` enqueues one tick now, as a
    /// due tick is enqueued, with the tick id of the current second; the
    /// workers that do not lead it do not reply.
    FireSchedule {
        /// The schedule's name.
        schedule: String,
    },
    /// The workers carrying schedule `schedule` fire none of its ticks
    /// until resumed (its leader keeps its lease).
    PauseSchedule {
        /// The schedule's name.
        schedule: String,
    },
    /// The workers carrying schedule `schedule` fire it again; the ticks
    /// missed while paused go by its missed-tick policy.
    ResumeSchedule {
        /// The schedule's name.
        schedule: String,
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
            Command::SetGlobalConcurrency { .. } => "set-global-concurrency",
            Command::Cancel { .. } => "cancel",
            Command::RunNow { .. } => "run-now",
            Command::FireSchedule { .. } => "fire-schedule",
            Command::PauseSchedule { .. } => "pause-schedule",
            Command::ResumeSchedule { .. } => "resume-schedule",
        }
    }

    /// The job type it acts on, if it acts on one.
    pub fn job(&self) -> Option<&str> {
        match self {
            Command::Pause { job } | Command::Resume { job } => Some(job),
            Command::SetConcurrency { job, .. } | Command::SetGlobalConcurrency { job, .. } => {
                Some(job)
            }
            Command::Ping
            | Command::Cancel { .. }
            | Command::RunNow { .. }
            | Command::FireSchedule { .. }
            | Command::PauseSchedule { .. }
            | Command::ResumeSchedule { .. } => None,
        }
    }

    /// The schedule it acts on, if it acts on one.
    pub fn schedule(&self) -> Option<&str> {
        match self {
            Command::FireSchedule { schedule }
            | Command::PauseSchedule { schedule }
            | Command::ResumeSchedule { schedule } => Some(schedule),
            _ => None,
        }
    }
}

/// A command as sent: the command, its id and where replies go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandMessage {
    /// The format version ([`FORMAT`](super::FORMAT)).
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
    /// The format version ([`FORMAT`](super::FORMAT)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FORMAT;

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
    fn schedule_commands_name_their_schedule() {
        let fire = Command::FireSchedule {
            schedule: "nightly".into(),
        };
        let json = serde_json::to_value(&fire).unwrap();
        assert_eq!(json["command"], "fire-schedule");
        assert_eq!(json["schedule"], "nightly");
        assert_eq!(fire.name(), "fire-schedule");
        assert_eq!(fire.schedule(), Some("nightly"));
        assert_eq!(fire.job(), None);
        let pause = Command::PauseSchedule {
            schedule: "nightly".into(),
        };
        assert_eq!(pause.name(), "pause-schedule");
        assert_eq!(
            serde_json::from_value::<Command>(serde_json::to_value(&pause).unwrap()).unwrap(),
            pause
        );
        assert_eq!(Command::Pause { job: "x".into() }.schedule(), None);
    }
}
