//! The headers qjob writes on its messages and reads back, and the reasons
//! a job is dead-lettered: the one reference of both, which the guides link
//! to.
//!
//! # A first attempt
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
//! Messages from other producers are jobs too: without `qjob-attempt` a
//! message is a first attempt; without a message id it gets a fresh job id;
//! its enqueue time is `qjob-enqueued-at`, or else the time in a UUID v7
//! message id, or else the `timestamp` property. A qjob header of the wrong
//! type (`qjob-attempt` not an integer >= 1, `qjob-enqueued-at` neither an
//! integer nor a timestamp) makes the message `malformed`.
//!
//! # Headers
//!
//! | header | type | written on | meaning |
//! |---|---|---|---|
//! | `qjob-attempt` | integer | a retry | the attempt this delivery is, 1-based; absent on the first, so the first retry carries 2 |
//! | `qjob-enqueued-at` | integer | never by qjob | first enqueue, ms since the Unix epoch: read if present, for producers whose ids are not UUID v7 (an AMQP timestamp, in seconds, is read too) |
//! | `qjob-first-failed-at` | integer | the first retry or dead letter, then kept | time of the first failure, ms since the epoch |
//! | `qjob-error` | text | a retry, a dead letter | the last error, with its chain of sources (on a retry, for the console, cut to 2 KiB) |
//! | `qjob-reason` | text | a dead letter | why: one of the [reasons](#dead-letter-reasons) |
//! | `qjob-attempts` | integer | a dead letter | the attempts made |
//! | `qjob-failed-at` | integer | a dead letter | time of the last failure, ms since the epoch |
//! | `qjob-queue` | text | a dead letter | the queue the job was consumed from: the work queue, or the partition queue (`<queue>.p<N>`) or shard (`<queue>.s<N>`) that delivered it. The console replays a dead letter there, a shard's to the work queue |
//! | `qjob-host` | text | a dead letter | the host of the worker that dead-lettered it (`$HOSTNAME`, else `/etc/hostname`) |
//! | `qjob-replays` | integer | a replay | how many times the job was replayed from its dead-letter queue |
//! | `qjob-replayed-at` | integer | a replay | when it was last replayed, ms since the epoch: an operator's cancel from before does not apply to the replayed job |
//! | `qjob-delay-left` | integer | a delay longer than one delay-queue hop | ms still to wait after this hop |
//! | `qjob-due-at` | integer | a message into a delay queue | when it is due, ms since the epoch by the clock of whoever delayed it: for the console's list only (the wait is the queue's TTL) |
//! | `qjob-discarded` | text | a delayed job an operator discarded | the worker dead-letters it as `cancelled` without running it |
//! | `qjob-unique-key` | text | a unique job's enqueue | the lock's name in the store (`unique:<queue>:<key>`), which the worker frees by it |
//! | `qjob-batch` | text | a batch member's enqueue | the batch's id: the worker counts the member there when it succeeds or is dead-lettered |
//! | `traceparent`, `tracestate` | text | an enqueue inside a span, with the `opentelemetry` feature | W3C trace context of the enqueuing span ([`crate::trace`]) |
//!
//! Other headers are kept as they are through retries, delays and dead
//! letters. A replay from the dead-letter queue removes the failure history
//! (`qjob-attempt`, `qjob-error`, `qjob-reason`, `qjob-attempts`,
//! `qjob-failed-at`, `qjob-first-failed-at`, `qjob-queue`, `qjob-host`,
//! `qjob-due-at`, `qjob-discarded`, and
//! RabbitMQ's `x-death`, `x-delivery-count` and `x-first-death-*`), so the
//! attempts count afresh, and keeps the rest.
//!
//! Of RabbitMQ's own headers qjob reads two, on dead letters:
//! `x-first-death-reason` `delivery_limit` (without `qjob-reason`) is the
//! reason `delivery-limit`, and `x-first-death-queue` is where the console
//! replays a dead letter that has no `qjob-queue`.
//!
//! # Dead-letter reasons
//!
//! A dead letter goes to `<queue>.dlq`, keeping the body, the message id and
//! every header, with its reason in `qjob-reason`, read back as
//! [`DeadReason`](crate::DeadReason):
//!
//! | reason | when |
//! |---|---|
//! | `retries-exhausted` | every attempt failed: an error, a panic or a timeout, `retry` + 1 times |
//! | `permanent` | the handler returned a permanent error ([`JobError::permanent`](crate::JobError::permanent)); not retried |
//! | `malformed` | the body does not deserialize into the payload, or a qjob header has the wrong type; dead-lettered at once, not counted as an attempt |
//! | `cancelled` | an operator cancelled the job ([the console](crate::docs::console)): while it ran, and its handler did not succeed, or before it was delivered; or discarded it while it waited; not retried |
//! | `delivery-limit` | RabbitMQ moved it, not qjob: it came back to its quorum queue unsettled more often than the job's `delivery_limit` (its worker crashed, or lost its connection, while holding it). It carries no qjob dead-letter headers, only RabbitMQ's `x-death` and `x-first-death-*` |
//!
//! A reason another version of qjob wrote and this one does not know reads
//! as `DeadReason::Other`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::JobId;
use crate::broker::{ExactValue, HeaderValue, Message};

/// The attempt number of the delivery (1-based).
pub const ATTEMPT: &str = "qjob-attempt";
/// First enqueue time, milliseconds since the Unix epoch.
pub const ENQUEUED_AT: &str = "qjob-enqueued-at";
/// Dead letters and retries: the last error.
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
/// When a job waiting in a delay queue is due, in milliseconds since the
/// Unix epoch by the clock of whoever delayed it: for the console's list
/// (the wait itself is the delay queue's TTL, on the broker's clock).
pub const DUE_AT: &str = "qjob-due-at";
/// An operator discarded the job from its delay queue: the worker that
/// gets it dead-letters it as cancelled without running it (so its batch
/// counts it and its unique lock is freed). The text says who and when.
pub const DISCARDED: &str = "qjob-discarded";

/// The most bytes of its last error a retry carries in `qjob-error` (a
/// dead letter carries it whole): enough for the console, far below a
/// frame.
pub(crate) const RETRY_ERROR_AT_MOST: usize = 2048;

/// `text` cut to at most `bytes` bytes, on a character boundary, with `…`
/// where it was cut.
pub(crate) fn cut(text: &str, bytes: usize) -> String {
    if text.len() <= bytes {
        return text.to_owned();
    }
    let mut end = bytes.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Whether `name` is part of a job's failure history, which a replay from
/// the dead-letter queue clears.
pub(crate) fn is_failure_history(name: &str) -> bool {
    matches!(
        name,
        ATTEMPT
            | ERROR
            | REASON
            | ATTEMPTS
            | FAILED_AT
            | FIRST_FAILED_AT
            | QUEUE
            | HOST
            | DISCARDED
            | DUE_AT
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
    /// A partitioned job's key (read from its payload by the consumer, not
    /// from the message's headers).
    pub(crate) key: Option<String>,
    /// Whether an operator discarded it from its delay queue ([`DISCARDED`]).
    pub(crate) discarded: bool,
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
            key: None,
            discarded: message.headers.contains_key(DISCARDED),
        })
    }
}

/// A fresh job message: its id and body, nothing else (see the module's
/// docs).
pub(crate) fn new_job(id: &JobId, body: Vec<u8>) -> Message {
    Message::new(body).with_id(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        let cut_text = cut(&"é".repeat(3000), RETRY_ERROR_AT_MOST);
        assert!(cut_text.len() <= RETRY_ERROR_AT_MOST, "{}", cut_text.len());
        assert!(cut_text.ends_with("é…"));
    }

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
        let message = Message::default().with_timestamp(1_700_000_000);
        let envelope = Envelope::read(&message).unwrap();
        assert_eq!(envelope.enqueued_at, from_millis(1_700_000_000_000));
        assert!(envelope.job_id.created_at().is_some(), "a fresh job id");
    }

    #[test]
    fn foreign_messages_fall_back_to_the_timestamp_property() {
        let message = Message::default()
            .with_id("not-a-uuid")
            .with_timestamp(1_700_000_000);
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
