//! The headers qjob writes on its messages, and reading them back.
//!
//! A first attempt carries no headers at all and only three AMQP
//! properties: `delivery_mode` 2 (persistent), `content_type`
//! `application/json`, and `message_id`, the job id: a UUID v7 whose
//! timestamp is the enqueue time in milliseconds. The job type is the
//! queue's (one job type per queue). Every other property or header costs
//! the broker work on each publish and each delivery: on RabbitMQ 3.10,
//! adding `type` and `timestamp` made a consumer of persistent jobs about a
//! fifth slower (the peer bench, `peers/apalis-amqp`), most of it once the
//! encoded properties pass 64 bytes.
//!
//! | header | type | meaning |
//! |---|---|---|
//! | `qjob-attempt` | integer | the attempt this delivery is (1-based; absent on the first) |
//! | `qjob-enqueued-at` | integer | first enqueue, ms since the Unix epoch (read if present, for producers whose ids are not UUID v7) |
//! | `qjob-error` | text | dead letters: the last error |
//! | `qjob-reason` | text | dead letters: why (`retries-exhausted`, `permanent`, `malformed`) |
//! | `qjob-attempts` | integer | dead letters: attempts made |
//! | `qjob-failed-at` | integer | dead letters: time of the last failure, ms since the epoch |
//! | `qjob-queue` | text | dead letters: the work queue the job came from |
//! | `qjob-first-failed-at` | integer | time of the first failure, ms since the epoch |
//! | `qjob-host` | text | dead letters: the worker's host |
//! | `qjob-replays` | integer | replays from the dead-letter queue |
//! | `qjob-delay-left` | integer | long delays: ms still to wait after this hop |
//! | `qjob-unique-key` | text | unique jobs: the lock's name in the store |
//! | `qjob-batch` | text | batch members: the batch's id |
//! | `traceparent`, `tracestate` | text | W3C trace context of the enqueuing span ([`crate::trace`]) |
//!
//! Other headers are kept as they are.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broker::{ExactValue, HeaderValue, Message};
use crate::job::JobId;

/// The attempt number of the delivery (1-based).
pub const ATTEMPT: &str = "qjob-attempt";
/// First enqueue time, milliseconds since the Unix epoch.
pub const ENQUEUED_AT: &str = "qjob-enqueued-at";
/// Dead letters: the last error.
pub const ERROR: &str = "qjob-error";
/// Dead letters: why the job was dead-lettered.
pub const REASON: &str = "qjob-reason";
/// Dead letters: the attempts made.
pub const ATTEMPTS: &str = "qjob-attempts";
/// Dead letters: time of the last failure, milliseconds since the Unix epoch.
pub const FAILED_AT: &str = "qjob-failed-at";
/// Dead letters: the work queue the job came from.
pub const QUEUE: &str = "qjob-queue";
/// Time of the first failure, milliseconds since the Unix epoch (set on the
/// first retry or dead letter, then kept).
pub const FIRST_FAILED_AT: &str = "qjob-first-failed-at";
/// Dead letters: the host of the worker that dead-lettered the job.
pub const HOST: &str = "qjob-host";
/// How many times the job was replayed from its dead-letter queue.
pub const REPLAYS: &str = "qjob-replays";
/// When the job was last replayed from its dead-letter queue, milliseconds
/// since the Unix epoch: an operator's cancel from before does not apply to
/// the replayed job.
pub const REPLAYED_AT: &str = "qjob-replayed-at";
/// A unique job's lock in the store (`unique:<queue>:<key>`): the worker
/// frees it by this name when the job starts or finishes.
pub const UNIQUE_KEY: &str = "qjob-unique-key";
/// The batch a job is a member of: the worker counts it there when the job
/// succeeds or is dead-lettered.
pub const BATCH: &str = "qjob-batch";
/// The wait left, in milliseconds, after the current delay-queue hop: a job
/// delayed longer than one delay queue holds comes back and waits again.
pub const DELAY_LEFT: &str = "qjob-delay-left";

/// Whether `name` is part of a job's failure history, which a replay from
/// the dead-letter queue clears.
pub(crate) fn is_failure_history(name: &str) -> bool {
    matches!(
        name,
        ATTEMPT | ERROR | REASON | ATTEMPTS | FAILED_AT | FIRST_FAILED_AT | QUEUE | HOST
    ) || name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
}

/// This machine's name, for dead letters: `$HOSTNAME`, else `/etc/hostname`.
pub(crate) fn host() -> &'static str {
    static HOST_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST_NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    })
}

/// Milliseconds since the Unix epoch.
pub(crate) fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// What qjob reads from a delivered message before running its handler.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    pub(crate) job_id: JobId,
    pub(crate) attempt: u32,
    pub(crate) enqueued_at: SystemTime,
    /// When it was last replayed from its dead-letter queue.
    pub(crate) replayed_at: Option<SystemTime>,
}

impl Envelope {
    /// Reads the envelope. Messages from other producers may lack qjob's
    /// headers: they count as a first attempt, enqueued now. A qjob header of
    /// the wrong type is an error naming it.
    pub(crate) fn read(message: &Message) -> Result<Self, String> {
        let attempt = match message.headers.get(ATTEMPT) {
            None => 1,
            // Any integer width: other producers write small ints narrow.
            Some(value) if value.as_int().is_some_and(|n| n >= 1) => {
                u32::try_from(value.as_int().unwrap_or(1)).unwrap_or(u32::MAX)
            }
            Some(other) => {
                return Err(format!(
                    "header {ATTEMPT} must be an integer >= 1, found {other:?}"
                ));
            }
        };
        let job_id = message.id.clone().map(JobId::from).unwrap_or_default();
        let enqueued_at = match message.headers.get(ENQUEUED_AT) {
            // A message without an id got a fresh one here: its time is now,
            // not the enqueue time.
            None => (message.id.is_some())
                .then(|| job_id.created_at())
                .flatten()
                .or_else(|| {
                    message
                        .timestamp
                        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
                })
                .unwrap_or_else(SystemTime::now),
            Some(HeaderValue::Exact(ExactValue::Timestamp(secs))) => {
                UNIX_EPOCH + Duration::from_secs(*secs)
            }
            Some(value) if value.as_int().is_some() => from_millis(value.as_int().unwrap_or(0)),
            Some(other) => {
                return Err(format!(
                    "header {ENQUEUED_AT} must be an integer (ms since the epoch), found {other:?}"
                ));
            }
        };
        let replayed_at = message
            .headers
            .get(REPLAYED_AT)
            .and_then(HeaderValue::as_int)
            .map(from_millis);
        Ok(Self {
            job_id,
            attempt,
            enqueued_at,
            replayed_at,
        })
    }
}

/// A fresh job message: its id and body, nothing else (see the module's
/// docs).
pub(crate) fn new_job(id: &JobId, body: Vec<u8>) -> Message {
    Message {
        id: Some(id.to_string()),
        body,
        ..Message::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_producers_integer_widths_and_timestamps_read() {
        let mut message = Message::default();
        message
            .headers
            .insert(ATTEMPT.into(), HeaderValue::Exact(ExactValue::I32(3)));
        message.headers.insert(
            ENQUEUED_AT.into(),
            HeaderValue::Exact(ExactValue::Timestamp(1_700_000_000)),
        );
        let envelope = Envelope::read(&message).unwrap();
        assert_eq!(envelope.attempt, 3);
        assert_eq!(
            envelope.enqueued_at,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        message
            .headers
            .insert(ATTEMPT.into(), HeaderValue::Exact(ExactValue::U8(0)));
        assert!(Envelope::read(&message).is_err(), "attempt 0 is malformed");
    }

    #[test]
    fn new_job_messages_read_back() {
        let id = JobId::new();
        let message = new_job(&id, b"{}".to_vec());
        let envelope = Envelope::read(&message).unwrap();
        assert_eq!(envelope.job_id, id);
        assert_eq!(envelope.attempt, 1);
        let age = SystemTime::now()
            .duration_since(envelope.enqueued_at)
            .unwrap();
        assert!(age < Duration::from_secs(5));
    }

    #[test]
    fn an_explicit_enqueue_time_wins_over_the_id() {
        let mut message = new_job(&JobId::new(), Vec::new());
        message
            .headers
            .insert(ENQUEUED_AT.into(), HeaderValue::Int(1_000));
        assert_eq!(
            Envelope::read(&message).unwrap().enqueued_at,
            from_millis(1_000)
        );
    }

    #[test]
    fn foreign_messages_without_an_id_are_enqueued_at_their_timestamp() {
        let message = Message {
            timestamp: Some(1_700_000_000),
            ..Message::default()
        };
        let envelope = Envelope::read(&message).unwrap();
        assert_eq!(envelope.enqueued_at, from_millis(1_700_000_000_000));
        assert!(envelope.job_id.created_at().is_some(), "a fresh job id");
    }

    #[test]
    fn foreign_messages_fall_back_to_the_timestamp_property() {
        let message = Message {
            id: Some("not-a-uuid".into()),
            timestamp: Some(1_700_000_000),
            ..Message::default()
        };
        let envelope = Envelope::read(&message).unwrap();
        assert_eq!(envelope.enqueued_at, from_millis(1_700_000_000_000));
        assert_eq!(envelope.job_id.as_str(), "not-a-uuid");
    }

    #[test]
    fn foreign_messages_are_first_attempts() {
        let envelope = Envelope::read(&Message::default()).unwrap();
        assert_eq!(envelope.attempt, 1);
    }

    #[test]
    fn malformed_qjob_headers_are_named() {
        let mut message = Message::default();
        message.headers.insert(ATTEMPT.into(), "two".into());
        let error = Envelope::read(&message).unwrap_err();
        assert!(error.contains(ATTEMPT), "{error}");
        message.headers.insert(ATTEMPT.into(), HeaderValue::Int(0));
        assert!(Envelope::read(&message).is_err());
        message.headers.insert(ATTEMPT.into(), HeaderValue::Int(2));
        message
            .headers
            .insert(ENQUEUED_AT.into(), HeaderValue::Bool(true));
        assert!(Envelope::read(&message).unwrap_err().contains(ENQUEUED_AT));
    }
}
