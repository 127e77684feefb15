//! The broker's state behind its lock: the queues, the faults armed, and
//! what moves messages between queues (dead-lettering, expiry, the
//! consumer timeout).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qjob::Error;
use qjob::broker::Message;
use tokio::time::Instant;

use super::death::{self, Reason};
use super::queue::{Queue, Stored};

#[derive(Default)]
pub(super) struct State {
    pub(super) queues: HashMap<String, Queue>,
    pub(super) next_id: u64,
    /// Publishes to fail with a negative confirm: per queue, or `None` for any.
    pub(super) failing_publishes: Vec<Option<String>>,
    /// Queues whose next published message is delivered twice.
    pub(super) duplicating: HashSet<String>,
    /// Queues whose publishes never go out.
    pub(super) hanging: HashSet<String>,
    /// Queues whose next published message is stored but never confirmed.
    pub(super) unconfirmed: HashSet<String>,
    /// RabbitMQ's `consumer_timeout`, when modelled.
    pub(super) consumer_timeout: Option<Duration>,
    /// When the consumer timeout is next checked, if a check is scheduled.
    pub(super) timeout_check: Option<Instant>,
    /// Why publishing is blocked (a resource alarm), while it is.
    pub(super) blocked: Option<String>,
    /// The delivery limit of quorum queues declared without one.
    pub(super) default_delivery_limit: Option<u32>,
    /// Whether quorum queues declared from now on order by priority
    /// (RabbitMQ 4).
    pub(super) quorum_priorities: bool,
    /// Topic exchanges: each binding's queue and pattern.
    pub(super) exchanges: HashMap<String, Vec<(String, String)>>,
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl State {
    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Stores `message` in `queue` at the back.
    pub(super) fn enqueue(
        &mut self,
        queue: &str,
        message: Message,
        redelivered: bool,
    ) -> Option<Instant> {
        let sequence = self.next_id();
        let target = self.queues.get_mut(queue)?;
        let expires_at = target.spec.message_ttl.map(|ttl| Instant::now() + ttl);
        target.ready.insert(
            sequence,
            Stored {
                message,
                redelivered,
                returns: 0,
                expires_at,
                delivered_at: None,
            },
        );
        expires_at
    }

    /// Dead-letters a message that left `queue` for `reason`: to the queue's
    /// dead-letter target with an `x-death` record, or nowhere (as RabbitMQ
    /// drops it) when there is none or the target does not exist.
    pub(super) fn dead_letter(
        &mut self,
        queue: &str,
        mut message: Message,
        reason: Reason,
    ) -> Option<(String, Instant)> {
        let target = self.queues.get(queue)?.spec.dead_letter_to.clone()?;
        if self.queues.get(&target)?.is_full() {
            // RabbitMQ dead-letters at most once: a target that rejects
            // publishes drops the message.
            return None;
        }
        death::record(&mut message.headers, queue, reason, unix_seconds());
        let expires_at = self.enqueue(&target, message, false)?;
        Some((target, expires_at))
    }

    /// Dead-letters messages past their queue's delivery limit; returns
    /// the expiries that scheduled.
    pub(super) fn dead_letter_all(&mut self, queue: &str, messages: Vec<Message>) -> Vec<Instant> {
        messages
            .into_iter()
            .filter_map(|message| self.dead_letter(queue, message, Reason::DeliveryLimit))
            .map(|(_, at)| at)
            .collect()
    }

    /// Closes every consumer holding a delivery unsettled for longer than
    /// the consumer timeout, as RabbitMQ closes its channel: the stream
    /// ends with an error and what the consumer held returns to its queue.
    /// Returns the expiries that dead-lettering (past a delivery limit)
    /// scheduled.
    pub(super) fn time_out_consumers(&mut self) -> Vec<Instant> {
        let Some(timeout) = self.consumer_timeout else {
            return Vec::new();
        };
        let Some(before) = Instant::now().checked_sub(timeout) else {
            return Vec::new();
        };
        let mut over_limit = Vec::new();
        for (name, queue) in &mut self.queues {
            for id in queue.holding_since(before) {
                if let Some((slot, messages)) = queue.remove_consumer(id) {
                    let _ = slot.deliveries.send(Err(Error::broker(
                        format!("consume queue {name:?}"),
                        format!(
                            "PRECONDITION_FAILED - delivery acknowledgement timed out. Timeout value used: {} ms",
                            timeout.as_millis()
                        ),
                    )));
                    over_limit.push((name.clone(), messages));
                }
            }
        }
        over_limit
            .into_iter()
            .flat_map(|(queue, messages)| self.dead_letter_all(&queue, messages))
            .collect()
    }

    /// When the consumer timeout must be checked next, if that is sooner
    /// than the check already scheduled (which it then replaces).
    pub(super) fn next_timeout_check(&mut self) -> Option<Instant> {
        let timeout = self.consumer_timeout?;
        let due = self
            .queues
            .values()
            .filter_map(Queue::oldest_delivery)
            .min()?
            + timeout;
        if self.timeout_check.is_some_and(|scheduled| scheduled <= due) {
            return None;
        }
        self.timeout_check = Some(due);
        Some(due)
    }

    /// Expires due messages of every queue with a TTL; returns the expiries
    /// that dead-lettering scheduled.
    pub(super) fn expire_due(&mut self) -> Vec<(String, Instant)> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (name, queue) in &mut self.queues {
            if queue.spec.message_ttl.is_some() {
                for message in queue.take_expired(now) {
                    expired.push((name.clone(), message));
                }
            }
        }
        expired
            .into_iter()
            .filter_map(|(queue, message)| self.dead_letter(&queue, message, Reason::Expired))
            .collect()
    }
}
