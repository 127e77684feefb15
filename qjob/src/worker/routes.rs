//! Where a job type's messages go.

use std::sync::Arc;

use crate::broker::QueueSpec;
use crate::topology;

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
    pub(crate) leases: Arc<topology::Leases>,
}
