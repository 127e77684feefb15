//! What to do with a delivery once its attempt ended: a pure decision,
//! then the broker operations that carry it out in an at-least-once order
//! (publish and confirm first, ack last).

use std::time::{Duration, SystemTime};

use crate::broker::{Broker, Delivery, HeaderValue, Message, QueueSpec};
use crate::error::FailureKind;
use crate::policy::backoff::{self, BackoffPolicy};
use crate::worker::observer::AttemptOutcome;
use crate::worker::runnable::Outcome;
use crate::{DeadReason, Error, headers, topology};

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

/// The message of the next attempt: the same id, body and headers, attempt
/// + 1, and the time of the first failure.
pub(crate) fn retry_message(mut message: Message, attempt: u32) -> Message {
    message.headers.insert(
        headers::ATTEMPT.into(),
        HeaderValue::Int(i64::from(attempt) + 1),
    );
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

/// Where a job type's messages go, as declared: a settlement whose target
/// vanished (a queue deleted under the worker) declares it again.
pub(crate) struct Routes {
    /// The queue consumed: the work queue, one partition queue or one
    /// shard.
    pub(crate) queue: QueueSpec,
    /// Where retries go: the queue consumed, or a sharded job's work queue
    /// (which every worker consumes, whatever its `shards`).
    pub(crate) retry: QueueSpec,
    pub(crate) dead_letter: QueueSpec,
    /// The delay queues' leases.
    pub(crate) leases: std::sync::Arc<topology::Leases>,
}

/// The message that carries an outcome on, published before the original
/// is acked.
enum Outgoing<'a> {
    Direct {
        queue: &'a QueueSpec,
        message: Message,
    },
    Delayed(topology::Delayed),
}

impl<'a> Outgoing<'a> {
    /// What `action` publishes, if anything.
    fn of(routes: &'a Routes, attempt: u32, action: Action, message: Message) -> Option<Self> {
        let (queue, retry) = (&routes.queue, &routes.retry);
        let delayed = |delay, message| {
            Some(Outgoing::Delayed(topology::delayed(
                &retry.name,
                retry.queue_type,
                delay,
                message,
            )))
        };
        match action {
            Action::Ack => None,
            Action::Retry { delay, .. } if delay.is_zero() => Some(Outgoing::Direct {
                queue: retry,
                message: retry_message(message, attempt),
            }),
            Action::Retry { delay, .. } => delayed(delay, retry_message(message, attempt)),
            Action::Defer { delay } => delayed(delay, message),
            Action::DeadLetter { reason, error } => Some(Outgoing::Direct {
                queue: &routes.dead_letter,
                message: dead_letter_message(message, &queue.name, attempt, &reason, &error),
            }),
        }
    }

    async fn publish(&self, broker: &dyn Broker, leases: &topology::Leases) -> Result<(), Error> {
        match self {
            Outgoing::Direct { queue, message } => {
                let published = broker.publish(&queue.name, message.clone()).await;
                if let Err(Error::Unroutable { .. }) = &published {
                    // The queue is gone: declare it again for the next try.
                    let _ = broker.declare_queue(queue).await;
                }
                published
            }
            Outgoing::Delayed(delayed) => delayed.publish(broker, leases).await,
        }
    }
}

/// The wait before publishing a settlement again after `failures` failed
/// tries: 100 ms, doubling, at most 5 s.
pub(crate) fn settle_backoff(failures: u32) -> Duration {
    backoff::retry_delay(failures, Duration::from_secs(5))
}

/// Carries out `action` for `delivery`: for a retry or a dead letter the new
/// message is confirmed before the original is acked.
///
/// A publish that fails (a resource alarm, a lost connection, a missing or
/// full queue) is tried again with [`settle_backoff`] while the delivery is
/// held: the outcome is decided, so the handler never runs again for it and
/// nothing loops. `failed` hears of each failure and the wait after it. Once
/// the delivery cannot be settled any more (its channel closed) the broker
/// delivers it again, and [`Unsettled`] says why.
pub(crate) async fn apply(
    broker: &dyn Broker,
    routes: &Routes,
    attempt: u32,
    action: Action,
    delivery: Delivery,
    failed: impl Fn(&Error, Duration),
) -> Result<(), Unsettled> {
    let Delivery { message, acker, .. } = delivery;
    if !acker.is_open() {
        // Publishing now would only add a copy: the broker delivers the
        // original again.
        return Err(Unsettled::ChannelClosed);
    }
    if let Some(outgoing) = Outgoing::of(routes, attempt, action, message) {
        let mut failures = 0;
        while let Err(error) = outgoing.publish(broker, &routes.leases).await {
            failures += 1;
            let wait = settle_backoff(failures);
            failed(&error, wait);
            // While a resource alarm lasts, publishing again would fail the
            // same way: wait it out without churning the broker.
            loop {
                tokio::time::sleep(wait).await;
                if !acker.is_open() {
                    return Err(Unsettled::ChannelClosed);
                }
                if broker.blocked_reason().is_none() {
                    break;
                }
            }
        }
    }
    // `is_open` says nothing once the ack was tried (lapin spends the acker
    // on the attempt): a failed ack is reported as it is.
    acker.ack().await.map_err(Unsettled::Failed)
}

/// Why a delivery could not be settled; the broker delivers it again.
#[derive(Debug)]
pub(crate) enum Unsettled {
    /// Its channel closed (a lost connection, a consumer timeout).
    ChannelClosed,
    /// The broker refused the ack.
    Failed(Error),
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
    fn settlements_are_tried_again_with_a_growing_bounded_wait() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| settle_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(settle_backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn retry_and_dead_letter_messages_keep_the_original() {
        let mut original = Message {
            id: Some("id-1".into()),
            body: b"{\"a\":1}".to_vec(),
            ..Message::default()
        };
        original.headers.insert("custom".into(), "kept".into());
        let retry = retry_message(original.clone(), 2);
        assert_eq!(retry.headers[headers::ATTEMPT], HeaderValue::Int(3));
        assert_eq!(retry.body, original.body);
        assert_eq!(retry.id, original.id);
        let dead = dead_letter_message(original.clone(), "q", 3, &DeadReason::Permanent, "nope");
        assert_eq!(dead.body, original.body);
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
