//! The queues a job type needs, as [`QueueSpec`]s for the broker.

use std::time::Duration;

use crate::broker::{Broker, HeaderValue, Message, QueueSpec};
use crate::policy::backoff;
use crate::{Error, JobOptions, QueueType, headers};

/// The work queue of a job type.
pub(crate) fn work_queue(options: &JobOptions) -> QueueSpec {
    let spec = QueueSpec::new(options.queue())
        .with_queue_type(options.queue_type())
        .with_single_active(options.single_active());
    match options.max_length() {
        Some(max_length) => spec.with_max_length(max_length),
        None => spec,
    }
}

/// The dead-letter queue: same type as the work queue, no length cap (dead
/// letters are never dropped), never single-active.
pub(crate) fn dead_letter_queue(options: &JobOptions) -> QueueSpec {
    QueueSpec::new(options.dead_letter_queue()).with_queue_type(options.queue_type())
}

/// How long a delay queue outlives its last use. Every retry redeclares its
/// delay queue before publishing (a redeclare renews the lease), so a queue
/// expires only after its last message has moved on.
pub(crate) const DELAY_QUEUE_GRACE: Duration = Duration::from_secs(60);

/// The delay queue for `delay`: `<queue>.delay.<ms>ms`, whose messages expire
/// after `delay` back into the work queue. Same type as the work queue.
pub(crate) fn delay_queue(queue: &str, queue_type: QueueType, delay: Duration) -> QueueSpec {
    QueueSpec::new(format!("{queue}.delay.{}ms", delay.as_millis()))
        .with_queue_type(queue_type)
        .with_message_ttl(delay)
        .with_dead_letter_to(queue)
        .with_expires(delay.saturating_add(DELAY_QUEUE_GRACE))
}

/// The longest a message waits in one delay queue. A longer delay waits
/// there, comes back with the rest of its wait in `qjob-delay-left`, and
/// waits again (see [`Delayed`]).
pub(crate) const MAX_DELAY_HOP: Duration = Duration::from_secs(24 * 3600);

/// A message on its way into a delay queue.
pub(crate) struct Delayed {
    /// The delay queue to declare (renewing its lease) and publish to.
    pub(crate) spec: QueueSpec,
    pub(crate) message: Message,
}

/// Plans the wait of `message` for `delay` before it goes (back) into
/// `queue`: one hop of at most [`MAX_DELAY_HOP`], with what is left after it
/// in the `qjob-delay-left` header (counted in hops, not on a clock, so it
/// holds on any clock, virtual ones included).
pub(crate) fn delayed(
    queue: &str,
    queue_type: QueueType,
    delay: Duration,
    mut message: Message,
) -> Delayed {
    let delay = backoff::round_up(delay);
    let hop = delay.min(MAX_DELAY_HOP);
    let left = delay - hop;
    if left.is_zero() {
        message.headers.remove(headers::DELAY_LEFT);
    } else {
        let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        message
            .headers
            .insert(headers::DELAY_LEFT.into(), HeaderValue::Int(left));
    }
    Delayed {
        spec: delay_queue(queue, queue_type, hop),
        message,
    }
}

/// How long a delivered message still has to wait (`qjob-delay-left`).
pub(crate) fn remaining_wait(message: &Message) -> Option<Duration> {
    let left = message.headers.get(headers::DELAY_LEFT)?.as_int()?;
    u64::try_from(left)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

impl Delayed {
    /// Declares the delay queue (renewing its lease) and publishes into it.
    pub(crate) async fn publish(self, broker: &dyn Broker) -> Result<(), Error> {
        broker.declare_queue(&self.spec).await?;
        broker.publish(&self.spec.name, self.message).await
    }
}

/// Declares every queue of a job type.
pub(crate) async fn declare(broker: &dyn Broker, options: &JobOptions) -> Result<(), Error> {
    broker.declare_queue(&work_queue(options)).await?;
    broker.declare_queue(&dead_letter_queue(options)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_expire_back_into_the_work_queue() {
        let spec = delay_queue(
            "billing.charge",
            QueueType::Quorum,
            Duration::from_millis(1500),
        );
        assert_eq!(spec.name, "billing.charge.delay.1500ms");
        assert_eq!(spec.message_ttl, Some(Duration::from_millis(1500)));
        assert_eq!(spec.dead_letter_to.as_deref(), Some("billing.charge"));
        assert_eq!(spec.queue_type, QueueType::Quorum);
        assert!(spec.expires.unwrap() > spec.message_ttl.unwrap());
    }

    #[test]
    fn long_delays_hop_and_carry_the_rest_of_the_wait() {
        let short = delayed(
            "q",
            QueueType::Classic,
            Duration::from_secs(90),
            Message::default(),
        );
        assert_eq!(short.spec.message_ttl, Some(Duration::from_secs(90)));
        assert_eq!(remaining_wait(&short.message), None);
        let week = Duration::from_secs(7 * 24 * 3600);
        let long = delayed("q", QueueType::Classic, week, Message::default());
        assert_eq!(long.spec.message_ttl, Some(MAX_DELAY_HOP));
        assert_eq!(remaining_wait(&long.message), Some(week - MAX_DELAY_HOP));
        let next = delayed("q", QueueType::Classic, week - MAX_DELAY_HOP, long.message);
        assert_eq!(
            remaining_wait(&next.message),
            Some(week - 2 * MAX_DELAY_HOP)
        );
        let last = delayed("q", QueueType::Classic, MAX_DELAY_HOP, next.message);
        assert_eq!(remaining_wait(&last.message), None);
    }
}
