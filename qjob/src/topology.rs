//! The queues a job type needs, as [`QueueSpec`]s for the broker.

use std::time::Duration;

use crate::broker::{Broker, QueueSpec};
use crate::{Error, JobOptions, QueueType};

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
}
