//! The queues a job type needs, as [`QueueSpec`]s for the broker.

use crate::Error;
use crate::JobOptions;
use crate::broker::{Broker, QueueSpec};

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

/// Declares every queue of a job type.
pub(crate) async fn declare(broker: &dyn Broker, options: &JobOptions) -> Result<(), Error> {
    broker.declare_queue(&work_queue(options)).await?;
    broker.declare_queue(&dead_letter_queue(options)).await
}
