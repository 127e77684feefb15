//! A queue's ready messages in the order they are delivered: by message
//! priority where the queue honours it, in publish order within one.
//!
//! - A classic queue declared with `x-max-priority = N` delivers the
//!   highest priority first; a priority above `N` counts as `N`, none as 0.
//! - A quorum queue delivers in publish order, as on RabbitMQ 3; with
//!   RabbitMQ 4's priorities (`MemoryBroker::set_quorum_priorities`), it
//!   has two levels, as on 4.0 to 4.2: priority 5 and above is high, the
//!   rest (and none) normal. While both wait, every third delivery takes
//!   the older of the two heads, so that normal messages are never starved
//!   (RabbitMQ's `rabbit_fifo_q`). (4.3 has 32 strict levels.)
//! - Any other queue delivers in publish order.
//!
//! A message given back goes to its place again: its level, its sequence.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use qjob::QueueType;
use qjob::broker::{Message, QueueSpec};

use super::queue::Stored;

/// The lowest priority a quorum queue counts as high.
const QUORUM_HIGH: u8 = 5;

/// How a quorum queue with both levels waiting picks: two high, then the
/// older of the two heads.
const QUORUM_WEIGHT: u8 = 2;

/// How a queue orders its messages by priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priorities {
    /// Not at all: publish order.
    None,
    /// Classic `x-max-priority`: levels 0 to this, highest first.
    UpTo(u8),
    /// Quorum: normal and high, weighted.
    TwoLevels,
}

/// Where a ready message waits: its level (highest first), then its
/// publish sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    level: Reverse<u8>,
    sequence: u64,
}

pub(super) struct Ready {
    priorities: Priorities,
    messages: BTreeMap<Place, Stored>,
    /// Quorum: the deliveries taken since the last that could go to a
    /// normal message (`rabbit_fifo_q`'s dequeue counter).
    taken: u8,
}

impl Ready {
    /// No message yet, ordered as the queue `spec` orders them; a quorum
    /// queue by priority if `quorum_priorities` (RabbitMQ 4).
    pub(super) fn new(spec: &QueueSpec, quorum_priorities: bool) -> Self {
        let priorities = match (spec.queue_type, spec.max_priority) {
            (QueueType::Quorum, _) if quorum_priorities => Priorities::TwoLevels,
            (QueueType::Quorum, _) => Priorities::None,
            (_, Some(max)) => Priorities::UpTo(max),
            _ => Priorities::None,
        };
        Self {
            priorities,
            messages: BTreeMap::new(),
            taken: 0,
        }
    }

    fn level(&self, message: &Message) -> u8 {
        match self.priorities {
            Priorities::None => 0,
            Priorities::UpTo(max) => message.priority.unwrap_or(0).min(max),
            Priorities::TwoLevels => u8::from(message.priority.unwrap_or(0) >= QUORUM_HIGH),
        }
    }

    /// Puts `stored`, published as `sequence`, in its place.
    pub(super) fn insert(&mut self, sequence: u64, stored: Stored) {
        let level = Reverse(self.level(&stored.message));
        self.messages.insert(Place { level, sequence }, stored);
    }

    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages, highest level first, each level in publish order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Stored> {
        self.messages.values()
    }

    /// The message at the head (highest level, oldest): the one that
    /// expires first, as RabbitMQ expires messages from the head.
    pub(super) fn head(&self) -> Option<&Stored> {
        self.messages.values().next()
    }

    /// Removes the message at the head (see [`Ready::head`]).
    pub(super) fn pop_head(&mut self) -> Option<(u64, Stored)> {
        let (place, stored) = self.messages.pop_first()?;
        Some((place.sequence, stored))
    }

    /// Takes the next message to deliver, with its sequence.
    pub(super) fn pop_next(&mut self) -> Option<(u64, Stored)> {
        if self.priorities != Priorities::TwoLevels {
            return self.pop_head();
        }
        let turn = self.taken == QUORUM_WEIGHT;
        self.taken = if turn { 0 } else { self.taken + 1 };
        let head = *self.messages.keys().next()?;
        let normal = Place {
            level: Reverse(0),
            sequence: 0,
        };
        let place = match self.messages.range(normal..).next() {
            Some((&oldest_normal, _))
                if head.level == Reverse(1) && turn && oldest_normal.sequence < head.sequence =>
            {
                oldest_normal
            }
            _ => head,
        };
        let stored = self.messages.remove(&place).expect("a key just read");
        Some((place.sequence, stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(priority: Option<u8>, body: &str) -> Stored {
        let mut message = Message::new(body);
        message.priority = priority;
        Stored {
            message,
            redelivered: false,
            returns: 0,
            expires_at: None,
            delivered_at: None,
        }
    }

    /// Fills a queue declared as `spec` with `(priority, name)` in order,
    /// and delivers them all.
    fn delivered(spec: QueueSpec, published: &[(Option<u8>, &str)]) -> Vec<String> {
        delivered_on(spec, true, published)
    }

    /// As [`delivered`], with RabbitMQ 4's quorum priorities or not.
    fn delivered_on(
        spec: QueueSpec,
        quorum_priorities: bool,
        published: &[(Option<u8>, &str)],
    ) -> Vec<String> {
        let mut ready = Ready::new(&spec, quorum_priorities);
        for (sequence, (priority, body)) in published.iter().enumerate() {
            ready.insert(sequence as u64, stored(*priority, body));
        }
        std::iter::from_fn(|| ready.pop_next())
            .map(|(_, s)| String::from_utf8(s.message.body).unwrap())
            .collect()
    }

    #[test]
    fn a_classic_priority_queue_delivers_higher_first_and_fifo_within_one() {
        let spec = QueueSpec::new("q").with_max_priority(5);
        let order = delivered(
            spec,
            &[
                (None, "a"),
                (Some(2), "b"),
                (Some(9), "c"),
                (Some(0), "d"),
                (Some(5), "e"),
                (Some(2), "f"),
            ],
        );
        // 9 counts as 5, the maximum: it keeps its place among the fives.
        assert_eq!(order, ["c", "e", "b", "f", "a", "d"]);
    }

    #[test]
    fn a_queue_without_priorities_delivers_in_publish_order() {
        let order = delivered(
            QueueSpec::new("q"),
            &[(Some(1), "a"), (Some(9), "b"), (None, "c")],
        );
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn a_quorum_queue_on_4_takes_two_high_for_each_older_normal() {
        let quorum = || QueueSpec::new("q").with_queue_type(QueueType::Quorum);
        // Normal ones first, then high ones: two high, then the older
        // normal one, as RabbitMQ 4.0 delivers them.
        let order = delivered(
            quorum(),
            &[
                (None, "n1"),
                (Some(4), "n2"),
                (None, "n3"),
                (Some(5), "h1"),
                (Some(9), "h2"),
                (Some(200), "h3"),
                (Some(5), "h4"),
            ],
        );
        assert_eq!(order, ["h1", "h2", "n1", "h3", "h4", "n2", "n3"]);
        // High ones published first are never overtaken by normal ones.
        let order = delivered(
            quorum(),
            &[
                (Some(7), "h1"),
                (Some(7), "h2"),
                (Some(7), "h3"),
                (None, "n1"),
            ],
        );
        assert_eq!(order, ["h1", "h2", "h3", "n1"]);
        // As on RabbitMQ 3: publish order.
        let order = delivered_on(quorum(), false, &[(None, "n1"), (Some(9), "h1")]);
        assert_eq!(order, ["n1", "h1"]);
    }

    #[test]
    fn a_message_given_back_returns_to_its_place() {
        let mut ready = Ready::new(&QueueSpec::new("q").with_max_priority(3), false);
        ready.insert(1, stored(Some(1), "low"));
        ready.insert(2, stored(Some(3), "high"));
        ready.insert(3, stored(Some(3), "high-2"));
        let (sequence, first) = ready.pop_next().unwrap();
        assert_eq!(first.message.body, b"high");
        ready.insert(sequence, first);
        let bodies: Vec<&[u8]> = ready.iter().map(|s| &s.message.body[..]).collect();
        assert_eq!(bodies, [&b"high"[..], b"high-2", b"low"]);
        assert_eq!(ready.head().unwrap().message.body, b"high");
        assert_eq!(ready.len(), 3);
    }
}
