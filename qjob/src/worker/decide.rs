//! What becomes of a delivery once its attempt ended: a pure decision
//! (ack, retry after a delay, or dead-letter with a reason), and the
//! messages a retry or a dead letter carries. Carrying it out on the
//! broker is [`super::settle`]'s.

use std::time::{Duration, SystemTime};

use crate::broker::{HeaderValue, Message};
use crate::error::FailureKind;
use crate::policy::backoff::{self, BackoffPolicy};
use crate::worker::observer::AttemptOutcome;
use crate::worker::runnable::Outcome;
use crate::{DeadReason, headers};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Ack,
    /// Not due yet (`qjob-delay-left`): wait again, no attempt counted.
    Defer {
        delay: Duration,
    },
    Retry {
        error: String,
        delay: Duration,
    },
    DeadLetter {
        reason: DeadReason,
        error: String,
    },
}

impl Action {
    /// The outcome as observers see it.
    pub(crate) fn outcome(&self) -> AttemptOutcome {
        match self {
            Action::Ack | Action::Defer { .. } => AttemptOutcome::Succeeded,
            Action::Retry { error, delay } => AttemptOutcome::Retrying {
                error: error.clone(),
                delay: *delay,
            },
            Action::DeadLetter { reason, error } => AttemptOutcome::DeadLettered {
                reason: reason.clone(),
                error: error.clone(),
            },
        }
    }
}

/// What the decision needs to know about the attempt beyond its outcome.
pub(crate) struct Attempt<'a> {
    pub(crate) number: u32,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: &'a BackoffPolicy,
    /// In `[0, 1)`, for the backoff's jitter.
    pub(crate) jitter: f64,
}

/// Decides the fate of an attempt.
pub(crate) fn decide(outcome: Outcome, attempt: &Attempt<'_>) -> Action {
    let mut after = None;
    let (error, retryable) = match outcome {
        Outcome::Succeeded => return Action::Ack,
        Outcome::Malformed(reason) => {
            return Action::DeadLetter {
                reason: DeadReason::Malformed,
                error: reason,
            };
        }
        Outcome::Cancelled(error) => {
            return Action::DeadLetter {
                reason: DeadReason::Cancelled,
                error,
            };
        }
        Outcome::Failed(error) => {
            if let FailureKind::RetryAfter(delay) = error.kind() {
                after = Some(delay);
            }
            (error.chain(), error.kind() != FailureKind::Permanent)
        }
        Outcome::Panicked(message) => (message, true),
        Outcome::TimedOut(limit) => (format!("handler timed out after {limit:?}"), true),
    };
    if !retryable {
        Action::DeadLetter {
            reason: DeadReason::Permanent,
            error,
        }
    } else if attempt.number < attempt.max_attempts {
        let delay = match after {
            Some(delay) => backoff::round_up(delay),
            None => attempt.backoff.delay(attempt.number, attempt.jitter),
        };
        Action::Retry { error, delay }
    } else {
        Action::DeadLetter {
            reason: DeadReason::RetriesExhausted,
            error,
        }
    }
}

/// The message of the next attempt: the same id, body and headers, the
/// attempt after `attempt`, the time of the first failure, and the last
/// `error` (which the console shows while the retry waits).
pub(crate) fn retry_message(mut message: Message, attempt: u32, error: &str) -> Message {
    message.headers.insert(
        headers::ATTEMPT.into(),
        HeaderValue::Int(i64::from(attempt) + 1),
    );
    let error = crate::headers::cut(error, headers::RETRY_ERROR_AT_MOST);
    message.headers.insert(headers::ERROR.into(), error.into());
    record_first_failure(&mut message);
    message
}

fn record_first_failure(message: &mut Message) {
    message
        .headers
        .entry(headers::FIRST_FAILED_AT.into())
        .or_insert_with(|| HeaderValue::Int(headers::millis(SystemTime::now())));
}

/// The dead letter: the original message plus what happened to it.
pub(crate) fn dead_letter_message(
    mut message: Message,
    queue: &str,
    attempt: u32,
    reason: &DeadReason,
    error: &str,
) -> Message {
    let headers = &mut message.headers;
    headers.insert(headers::ERROR.into(), error.into());
    headers.insert(headers::REASON.into(), reason.as_str().into());
    headers.insert(headers::ATTEMPTS.into(), HeaderValue::Int(attempt.into()));
    headers.insert(
        headers::FAILED_AT.into(),
        HeaderValue::Int(headers::millis(SystemTime::now())),
    );
    headers.insert(headers::QUEUE.into(), queue.into());
    headers.insert(headers::HOST.into(), headers::host().into());
    record_first_failure(&mut message);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobError;

    const FIXED: BackoffPolicy = BackoffPolicy::new(crate::Backoff::Fixed(Duration::from_secs(2)));

    fn decide(outcome: Outcome, number: u32, max_attempts: u32) -> Action {
        super::decide(
            outcome,
            &Attempt {
                number,
                max_attempts,
                backoff: &FIXED,
                jitter: 0.5,
            },
        )
    }

    #[test]
    fn success_acks() {
        assert_eq!(decide(Outcome::Succeeded, 1, 1), Action::Ack);
    }

    #[test]
    fn retries_wait_the_backoff_or_what_the_error_asks() {
        let failed = Outcome::Failed(JobError::msg("boom"));
        assert_eq!(
            decide(failed, 1, 3),
            Action::Retry {
                error: "boom".into(),
                delay: Duration::from_secs(2)
            }
        );
        let busy = JobError::retry_after(JobError::msg("busy"), Duration::from_millis(7001));
        assert_eq!(
            decide(Outcome::Failed(busy), 1, 3),
            Action::Retry {
                error: "busy".into(),
                delay: Duration::from_millis(7010)
            }
        );
    }

    #[test]
    fn retryable_failures_retry_until_the_last_attempt() {
        let failed = || Outcome::Failed(JobError::msg("boom"));
        assert!(matches!(decide(failed(), 1, 4), Action::Retry { .. }));
        assert!(matches!(decide(failed(), 3, 4), Action::Retry { .. }));
        assert_eq!(
            decide(failed(), 4, 4),
            Action::DeadLetter {
                reason: DeadReason::RetriesExhausted,
                error: "boom".into()
            }
        );
    }

    #[test]
    fn permanent_errors_and_malformed_payloads_dead_letter_at_once() {
        let permanent = Outcome::Failed(JobError::permanent(JobError::msg("declined")));
        assert!(matches!(
            decide(permanent, 1, 6),
            Action::DeadLetter {
                reason: DeadReason::Permanent,
                ..
            }
        ));
        assert!(matches!(
            decide(Outcome::Malformed("bad json".into()), 1, 6),
            Action::DeadLetter {
                reason: DeadReason::Malformed,
                ..
            }
        ));
    }

    #[test]
    fn panics_and_timeouts_are_failed_attempts() {
        assert!(matches!(
            decide(Outcome::Panicked("handler panicked: x".into()), 1, 2),
            Action::Retry { .. }
        ));
        let Action::DeadLetter { error, .. } =
            decide(Outcome::TimedOut(Duration::from_secs(2)), 2, 2)
        else {
            panic!("expected a dead letter");
        };
        assert!(error.contains("timed out after 2s"), "{error}");
    }

    #[test]
    fn retry_and_dead_letter_messages_keep_the_original() {
        let mut original = Message::new(b"{\"a\":1}".to_vec())
            .with_id("id-1")
            .with_priority(3);
        original.headers.insert("custom".into(), "kept".into());
        let retry = retry_message(original.clone(), 2, "smtp down");
        assert_eq!(retry.priority, Some(3));
        assert_eq!(retry.headers[headers::ATTEMPT], HeaderValue::Int(3));
        assert_eq!(
            retry.headers[headers::ERROR],
            HeaderValue::from("smtp down")
        );
        assert_eq!(retry.body, original.body);
        assert_eq!(retry.id, original.id);
        let dead = dead_letter_message(original.clone(), "q", 3, &DeadReason::Permanent, "nope");
        assert_eq!(dead.body, original.body);
        assert_eq!(dead.priority, Some(3));
        assert_eq!(dead.headers["custom"], HeaderValue::from("kept"));
        assert_eq!(dead.headers[headers::ERROR], HeaderValue::from("nope"));
        assert_eq!(
            dead.headers[headers::REASON],
            HeaderValue::from("permanent")
        );
        assert_eq!(dead.headers[headers::ATTEMPTS], HeaderValue::Int(3));
        assert_eq!(dead.headers[headers::QUEUE], HeaderValue::from("q"));
        assert!(dead.headers[headers::FAILED_AT].as_int().unwrap() > 0);
        assert_eq!(
            dead.headers[headers::HOST],
            HeaderValue::from(headers::host())
        );
        let first = retry.headers[headers::FIRST_FAILED_AT].clone();
        let later = dead_letter_message(retry, "q", 3, &DeadReason::Permanent, "nope");
        assert_eq!(
            later.headers[headers::FIRST_FAILED_AT],
            first,
            "the first failure is kept"
        );
    }
}
