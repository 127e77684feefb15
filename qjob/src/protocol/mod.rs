//! What workers and consoles say to each other over the broker: worker
//! heartbeats and command replies on [`STATUS_EXCHANGE`], commands on
//! [`CONTROL_EXCHANGE`], all JSON.
//!
//! The format is versioned ([`FORMAT`]): a change that adds fields keeps
//! the version (readers ignore what they do not know, and take a default
//! for what is missing); a change that older readers would misread bumps
//! it, and readers skip messages of a version they do not know.

use serde::Serialize;

use crate::broker::Message;

mod command;
mod health;
pub(crate) mod history;
mod status;
mod time;

pub use command::{Command, CommandMessage, Reply};
pub use health::{BreakerHealth, ScheduleHealth};
pub use history::MinuteStatus;
pub use status::{
    ACTIVITY_AT_MOST, BudgetStatus, ConcurrencyRange, DeclaredQueue, JobStatus, PermitStatus,
    RetryingJob, RunningJob, SharedLimitsStatus, WorkerState, WorkerStatus,
};

/// The topic exchange workers broadcast their heartbeats
/// (`worker.<worker id>`) and command replies (`reply.<console id>`) to.
pub const STATUS_EXCHANGE: &str = "qjob.status";

/// The topic exchange consoles send commands to (`command.<name>`); every
/// running worker listens on it through a private queue of its own.
pub const CONTROL_EXCHANGE: &str = "qjob.control";

/// The version of the status and command format this qjob writes and reads.
pub const FORMAT: u32 = 1;

/// What a console reads off the status exchange.
#[derive(Debug)]
pub(crate) enum StatusMessage {
    Heartbeat(Box<WorkerStatus>),
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
                .map(|status| StatusMessage::Heartbeat(Box::new(status)))
        }
    }
}

/// A JSON message of the format.
pub(crate) fn message(value: &impl Serialize) -> Message {
    Message::new(serde_json::to_vec(value).expect("the status format serializes"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

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
                let mut schedule = ScheduleHealth::new("report", "0 2 * * *", "UTC", "latest");
                schedule.leader = true;
                schedule.next = Some(UNIX_EPOCH + Duration::from_millis(3_000));
                schedule.problem = Some("a lease records a tick 86400 s ahead".into());
                schedule
            })]
            .into(),
            budget: Some(BudgetStatus { max: 10, in_use: 3 }),
            running: vec![RunningJob {
                job: "email".into(),
                job_id: "0193".into(),
                attempt: 2,
                started_at: UNIX_EPOCH + Duration::from_millis(1_500),
                key: Some("tenant-1".into()),
            }],
            running_total: 7,
            retrying: vec![RetryingJob {
                job: "email".into(),
                job_id: "0194".into(),
                attempt: 3,
                failed_at: UNIX_EPOCH + Duration::from_millis(1_600),
                next_attempt_at: UNIX_EPOCH + Duration::from_millis(9_000),
                error: "smtp down".into(),
                key: None,
            }],
            retrying_total: 1,
        };
        let Some(StatusMessage::Heartbeat(read)) = StatusMessage::read(&message(&status)) else {
            panic!("a heartbeat reads back");
        };
        assert_eq!(*read, status);
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
