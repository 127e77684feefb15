//! One queue's state: ready messages in delivery order ([`Ready`]),
//! consumers with their unsettled deliveries, and the dispatch that hands
//! messages out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Weak;
use std::time::Duration;

use qjob::Error;
use qjob::QueueType;
use qjob::broker::{Delivery, HeaderValue, Message, QueueSpec};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ready::Ready;
use super::{MemoryAcker, Shared};

/// The header a quorum queue puts on a returned message.
const DELIVERY_COUNT: &str = "x-delivery-count";

pub(super) struct Stored {
    pub(super) message: Message,
    pub(super) redelivered: bool,
    /// Quorum queues: how often the message was returned to the queue.
    pub(super) returns: u32,
    /// When a message in a queue with a message TTL expires.
    pub(super) expires_at: Option<Instant>,
    /// When it was last delivered (for the consumer timeout); `None` while
    /// it is ready.
    pub(super) delivered_at: Option<Instant>,
}

pub(super) type Deliveries = mpsc::UnboundedSender<Result<Delivery, Error>>;

pub(super) struct ConsumerSlot {
    pub(super) id: u64,
    pub(super) prefetch: usize,
    pub(super) unacked: BTreeMap<u64, Stored>,
    pub(super) deliveries: Deliveries,
}

pub(super) struct Queue {
    pub(super) spec: QueueSpec,
    /// Ready messages in delivery order, each with its publish sequence,
    /// so a requeued message goes back to its original position.
    pub(super) ready: Ready,
    pub(super) consumers: VecDeque<ConsumerSlot>,
    /// Cancelled consumers that still hold unsettled deliveries.
    pub(super) cancelled: Vec<ConsumerSlot>,
    /// Last declare or consume, for `x-expires`.
    pub(super) last_used: Instant,
    /// The delivery limit of a quorum queue declared without one (RabbitMQ
    /// 4: 20; RabbitMQ 3: none).
    pub(super) default_delivery_limit: Option<u32>,
}

impl Queue {
    /// A queue declared as `spec`; a quorum one orders by priority if
    /// `quorum_priorities` (RabbitMQ 4).
    pub(super) fn new(
        spec: QueueSpec,
        default_delivery_limit: Option<u32>,
        quorum_priorities: bool,
    ) -> Self {
        Self {
            ready: Ready::new(&spec, quorum_priorities),
            spec,
            consumers: VecDeque::new(),
            cancelled: Vec::new(),
            last_used: Instant::now(),
            default_delivery_limit,
        }
    }

    /// Whether a publish is rejected (`x-overflow = reject-publish`). Only
    /// ready messages count. Quorum queues check before adding, so they hold
    /// one message over the limit; classic queues never exceed it.
    pub(super) fn is_full(&self) -> bool {
        let Some(max) = self.spec.max_length else {
            return false;
        };
        let ready = self.ready.len();
        match self.spec.queue_type {
            QueueType::Quorum => ready > max as usize,
            _ => ready >= max as usize,
        }
    }

    pub(super) fn unacked(&self) -> usize {
        self.slots().map(|c| c.unacked.len()).sum()
    }

    fn slots(&self) -> impl Iterator<Item = &ConsumerSlot> {
        self.consumers.iter().chain(&self.cancelled)
    }

    pub(super) fn slot_mut(&mut self, consumer: u64) -> Option<&mut ConsumerSlot> {
        self.consumers
            .iter_mut()
            .chain(&mut self.cancelled)
            .find(|c| c.id == consumer)
    }

    /// Moves a consumer out of the dispatch rotation; its unsettled
    /// deliveries stay with it until settled or it is removed.
    pub(super) fn cancel_consumer(&mut self, consumer: u64) {
        if let Some(index) = self.consumers.iter().position(|c| c.id == consumer) {
            let slot = self.consumers.remove(index).expect("index is in range");
            self.cancelled.push(slot);
        }
    }

    /// Cancels every consumer from the broker's side: out of the rotation,
    /// their streams ended (every sender of them dropped), what they hold
    /// kept.
    pub(super) fn cancel_all(&mut self) {
        self.cancelled.extend(self.consumers.drain(..));
        for slot in &mut self.cancelled {
            slot.deliveries = mpsc::unbounded_channel().0;
        }
    }

    /// Replaces a consumer by one with another prefetch, as RabbitMQ
    /// needs: `replacement` joins at the back and takes deliveries from
    /// now on; the old one is cancelled and keeps what it holds, which no
    /// longer counts against the prefetch.
    pub(super) fn replace_consumer(&mut self, consumer: u64, replacement: u64, prefetch: usize) {
        let Some(index) = self.consumers.iter().position(|c| c.id == consumer) else {
            return;
        };
        let old = self.consumers.remove(index).expect("index is in range");
        self.consumers.push_back(ConsumerSlot {
            id: replacement,
            prefetch,
            unacked: BTreeMap::new(),
            deliveries: old.deliveries.clone(),
        });
        self.cancelled.push(old);
    }

    /// Removes a consumer and returns what it held to the queue (see
    /// [`Queue::give_back`]); also the messages past their delivery limit,
    /// for the caller to dead-letter.
    pub(super) fn remove_consumer(
        &mut self,
        consumer: u64,
    ) -> Option<(ConsumerSlot, Vec<Message>)> {
        let mut slot = if let Some(index) = self.consumers.iter().position(|c| c.id == consumer) {
            self.consumers.remove(index).expect("index is in range")
        } else if let Some(index) = self.cancelled.iter().position(|c| c.id == consumer) {
            self.cancelled.swap_remove(index)
        } else {
            return None;
        };
        let over_limit = std::mem::take(&mut slot.unacked)
            .into_iter()
            .filter_map(|(sequence, stored)| self.give_back(sequence, stored))
            .collect();
        Some((slot, over_limit))
    }

    /// Puts a returned delivery back at its position, marked redelivered.
    /// A quorum queue counts the return in `x-delivery-count`; past its
    /// `delivery_limit` the message is handed back for dead-lettering
    /// instead (with `x-delivery-count = 0`, as RabbitMQ 3.10 writes it).
    pub(super) fn give_back(&mut self, sequence: u64, mut stored: Stored) -> Option<Message> {
        stored.redelivered = true;
        stored.delivered_at = None;
        if self.spec.queue_type == QueueType::Quorum {
            stored.returns += 1;
            let over = self
                .spec
                .delivery_limit
                .or(self.default_delivery_limit)
                .is_some_and(|limit| stored.returns > limit);
            let count = if over { 0 } else { stored.returns };
            stored
                .message
                .headers
                .insert(DELIVERY_COUNT.into(), HeaderValue::Int(count.into()));
            if over {
                return Some(stored.message);
            }
        }
        self.ready.insert(sequence, stored);
        None
    }

    /// The consumers (cancelled or not, and the `basic.get` holder) holding
    /// a delivery unsettled since `before` or earlier.
    pub(super) fn holding_since(&self, before: Instant) -> Vec<u64> {
        self.slots()
            .filter(|slot| {
                slot.unacked
                    .values()
                    .any(|s| s.delivered_at.is_some_and(|at| at <= before))
            })
            .map(|slot| slot.id)
            .collect()
    }

    /// When the longest-held unsettled delivery was delivered.
    pub(super) fn oldest_delivery(&self) -> Option<Instant> {
        self.slots()
            .flat_map(|slot| slot.unacked.values())
            .filter_map(|stored| stored.delivered_at)
            .min()
    }

    /// The ids of every consumer, cancelled or not.
    pub(super) fn consumer_ids(&self) -> Vec<u64> {
        self.slots().map(|c| c.id).collect()
    }

    /// Removes the expired messages at the head (RabbitMQ expires messages
    /// of a queue with a message TTL from the head).
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<Message> {
        let mut expired = Vec::new();
        while self
            .ready
            .head()
            .and_then(|stored| stored.expires_at)
            .is_some_and(|at| at <= now)
        {
            let (_, stored) = self.ready.pop_head().expect("a head just read");
            expired.push(stored.message);
        }
        expired
    }

    /// Takes the first ready message for `basic.get`: it is held, unsettled,
    /// by the consumer slot `getter` (created on first use, never dispatched to).
    pub(super) fn get(&mut self, getter: u64, shared: &Weak<Shared>) -> Option<Delivery> {
        let (sequence, mut stored) = self.ready.pop_next()?;
        stored.delivered_at = Some(Instant::now());
        if !self.cancelled.iter().any(|slot| slot.id == getter) {
            let (deliveries, _) = mpsc::unbounded_channel();
            self.cancelled.push(ConsumerSlot {
                id: getter,
                prefetch: 0,
                unacked: BTreeMap::new(),
                deliveries,
            });
        }
        let delivery = Delivery::new(
            stored.message.clone(),
            Box::new(MemoryAcker::new(
                shared.clone(),
                &self.spec.name,
                getter,
                sequence,
            )),
        )
        .with_redelivered(stored.redelivered);
        let slot = self.slot_mut(getter).expect("created above");
        slot.unacked.insert(sequence, stored);
        Some(delivery)
    }

    /// When the earliest ready message is due back in a work queue: its
    /// expiry, plus the rest of a qjob delay longer than one hop
    /// (`qjob-delay-left`).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.ready
            .iter()
            .filter_map(|stored| {
                let left = stored
                    .message
                    .headers
                    .get(qjob::headers::DELAY_LEFT)
                    .and_then(qjob::broker::HeaderValue::as_int)
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map_or(Duration::ZERO, Duration::from_millis);
                Some(stored.expires_at? + left)
            })
            .min()
    }

    /// Hands ready messages to consumers with free prefetch, round robin
    /// (only the first consumer of a single-active-consumer queue).
    pub(super) fn dispatch(&mut self, shared: &Weak<Shared>) {
        let active = if self.spec.single_active {
            self.consumers.len().min(1)
        } else {
            self.consumers.len()
        };
        let mut idle_turns = 0;
        while !self.ready.is_empty() && idle_turns < active {
            let slot = self.consumers.front_mut().expect("active consumers exist");
            if slot.unacked.len() >= slot.prefetch || slot.deliveries.is_closed() {
                idle_turns += 1;
            } else {
                idle_turns = 0;
                let (sequence, mut stored) = self.ready.pop_next().expect("not empty");
                stored.delivered_at = Some(Instant::now());
                let delivery = Delivery::new(
                    stored.message.clone(),
                    Box::new(MemoryAcker::new(
                        shared.clone(),
                        &self.spec.name,
                        slot.id,
                        sequence,
                    )),
                )
                .with_redelivered(stored.redelivered);
                slot.unacked.insert(sequence, stored);
                // A closed receiver is a dropped subscription, whose Drop
                // removes the consumer and requeues this message.
                let _ = slot.deliveries.send(Ok(delivery));
            }
            if !self.spec.single_active {
                self.consumers.rotate_left(1);
            }
        }
    }
}

/// The first argument in which `requested` differs from `existing`, named
/// and valued as RabbitMQ reports it (`none` for an absent argument).
pub(super) fn mismatch(existing: &QueueSpec, requested: &QueueSpec) -> Error {
    fn arguments(spec: &QueueSpec) -> [(&'static str, String); 8] {
        let or_none = |value: Option<String>| value.unwrap_or_else(|| "none".to_owned());
        let millis = |d: Option<Duration>| or_none(d.map(|d| d.as_millis().to_string()));
        [
            ("x-queue-type", spec.queue_type.as_str().to_owned()),
            (
                "x-max-length",
                or_none(spec.max_length.map(|n| n.to_string())),
            ),
            (
                "x-single-active-consumer",
                or_none(spec.single_active.then(|| "true".to_owned())),
            ),
            ("x-message-ttl", millis(spec.message_ttl)),
            (
                "x-dead-letter-routing-key",
                or_none(spec.dead_letter_to.clone()),
            ),
            ("x-expires", millis(spec.expires)),
            (
                "x-delivery-limit",
                or_none(spec.delivery_limit.map(|n| n.to_string())),
            ),
            (
                "x-max-priority",
                or_none(spec.max_priority.map(|n| n.to_string())),
            ),
        ]
    }
    let queue = requested.name.clone();
    let (argument, existing, requested) = arguments(existing)
        .into_iter()
        .zip(arguments(requested))
        .find(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| (name, a, b))
        .expect("the specs differ in an argument");
    Error::QueueMismatch {
        queue,
        argument: argument.to_owned(),
        existing,
        requested,
    }
}
