//! A schedule's lease: the message that records the last tick fired, and
//! the single-active-consumer queue that holds it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::broker::{Broker, Delivery, Message, QueueSpec};
use crate::{Error, QueueType, topology};

/// The lease message's format version.
const LEASE_FORMAT: u32 = 1;

/// The lease: the last tick fired (or, before the first, when the
/// schedule started), in milliseconds since the Unix epoch, and the id of
/// the record (each lease published carries a fresh one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Lease {
    format: u32,
    last_ms: Option<u64>,
    /// Absent in the leases of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
}

impl Lease {
    pub(super) fn new(last: Option<SystemTime>) -> Self {
        Self {
            format: LEASE_FORMAT,
            last_ms: last.map(millis),
            id: Some(uuid::Uuid::now_v7().to_string()),
        }
    }

    pub(super) fn last(&self) -> Option<SystemTime> {
        self.last_ms
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    pub(super) fn message(&self) -> Message {
        Message::new(serde_json::to_vec(self).expect("a lease serializes"))
    }

    /// A lease read from a delivery; one that does not read (another
    /// format) counts as knowing no tick.
    pub(super) fn read(delivery: &Delivery) -> Self {
        serde_json::from_slice(&delivery.message.body).unwrap_or(Lease {
            format: LEASE_FORMAT,
            last_ms: None,
            id: None,
        })
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `at` to the millisecond a lease keeps.
pub(super) fn truncated(at: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis(at))
}

/// Why a schedule stopped for good on this worker (it does not lead it
/// until it restarts).
pub(super) struct Refused(pub(super) String);

/// Declares the lease queue, or checks that the one there elects one
/// leader: declared by another version with other arguments, it is used
/// as it is if it has a single active consumer; without one every worker
/// would lead, so the schedule is refused (`Some`).
pub(super) async fn declare_lease_queue(
    broker: &dyn Broker,
    queue: &str,
) -> Result<Option<Refused>, Error> {
    // A lease handed from leader to leader is delivered again each time:
    // RabbitMQ 4's default delivery limit (20) would drop it.
    let mut spec = QueueSpec::new(queue)
        .with_queue_type(QueueType::Quorum)
        .with_single_active(true)
        .with_delivery_limit(topology::DEAD_LETTER_DELIVERY_LIMIT);
    // Each try takes the existing value of the argument that differed,
    // but for the single active consumer.
    for _ in 0..4 {
        let (argument, existing) = match broker.declare_queue(&spec).await {
            Ok(()) => return Ok(None),
            Err(Error::QueueMismatch {
                argument, existing, ..
            }) => (argument, existing),
            Err(error) => return Err(error),
        };
        spec = match (argument.as_str(), existing.as_str()) {
            ("x-queue-type", "classic") => QueueSpec {
                delivery_limit: None,
                ..spec.with_queue_type(QueueType::Classic)
            },
            ("x-queue-type", "quorum") => spec.with_queue_type(QueueType::Quorum),
            ("x-delivery-limit", "none") => QueueSpec {
                delivery_limit: None,
                ..spec
            },
            ("x-delivery-limit", limit) if limit.parse::<u32>().is_ok() => {
                spec.with_delivery_limit(limit.parse().expect("a number"))
            }
            ("x-single-active-consumer", _) => {
                return Ok(Some(Refused(format!(
                    "the lease queue {queue:?} exists without a single active consumer \
                     ({argument} = {existing}): every worker would lead it; delete the \
                     queue (no worker carrying the schedule running) to start afresh"
                ))));
            }
            _ => {
                return Ok(Some(Refused(format!(
                    "the lease queue {queue:?} exists with {argument} = {existing}, which \
                     qjob never declares: it cannot tell whether it elects one leader; \
                     delete the queue to start afresh"
                ))));
            }
        };
        tracing::warn!(
            queue,
            argument,
            existing,
            "the lease queue exists with other arguments; using it as it is"
        );
    }
    Ok(Some(Refused(format!(
        "the lease queue {queue:?} exists with arguments qjob does not know"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unused;

    #[async_trait::async_trait]
    impl crate::broker::Acker for Unused {
        async fn ack(&self) -> Result<(), Error> {
            unreachable!("not settled")
        }

        async fn reject(&self, _requeue: bool) -> Result<(), Error> {
            unreachable!("not settled")
        }
    }

    #[test]
    fn leases_read_back_and_unknown_ones_know_no_tick() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let lease = Lease::new(Some(at));
        let delivery = |body: Vec<u8>| Delivery::new(Message::new(body), Box::new(Unused));
        assert_eq!(
            Lease::read(&delivery(lease.message().body)).last(),
            Some(at)
        );
        assert_eq!(Lease::read(&delivery(b"junk".to_vec())).last(), None);
    }
}
