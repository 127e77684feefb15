//! The queues a job type needs, as [`QueueSpec`]s for the broker.

use std::time::{Duration, SystemTime};

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
/// there, comes back early with its `qjob-not-before` time, and waits
/// again for the rest (see [`Delayed`]).
pub(crate) const MAX_DELAY_HOP: Duration = Duration::from_secs(24 * 3600);

/// A message on its way into a delay queue.
pub(crate) struct Delayed {
    /// The delay queue to declare (renewing its lease) and publish to.
    pub(crate) spec: QueueSpec,
    pub(crate) message: Message,
}

/// Plans the wait of `message` for `delay` before it goes (back) into
/// `queue`: one hop of at most [`MAX_DELAY_HOP`], and a `qjob-not-before`
/// header when more hops will follow.
pub(crate) fn delayed(
    queue: &str,
    queue_type: QueueType,
    delay: Duration,
    mut message: Message,
) -> Delayed {
    let delay = backoff::round_up(delay);
    if delay > MAX_DELAY_HOP {
        let due = SystemTime::now() + delay;
        message.headers.insert(
            headers::NOT_BEFORE.into(),
            HeaderValue::Int(headers::millis(due)),
        );
    }
    Delayed {
        spec: delay_queue(queue, queue_type, delay.min(MAX_DELAY_HOP)),
        message,
    }
}

/// How long a delivered message still has to wait, per its
/// `qjob-not-before` header (ignoring less than 10 ms, the delay precision).
pub(crate) fn remaining_wait(message: &Message) -> Option<Duration> {
    let due = message.headers.get(headers::NOT_BEFORE)?.as_int()?;
    let wait = headers::from_millis(due)
        .duration_since(SystemTime::now())
        .ok()?;
    (wait >= Duration::from_millis(10)).then_some(wait)
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
    fn long_delays_hop_and_carry_their_due_time() {
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
        let left = remaining_wait(&long.message).expect("a due time");
        assert!(
            left > week - Duration::from_secs(5) && left <= week,
            "{left:?}"
        );
    }
}
