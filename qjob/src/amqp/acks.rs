//! Acknowledgement batching for one consumer channel.
//!
//! Handlers finish in about the order their deliveries arrived, so acks form
//! runs of consecutive delivery tags. Whoever acks while no flush is under
//! way becomes the flusher: it lets the handlers the scheduler has already
//! woken ack first (while each turn brings more acks, a few turns at most),
//! then sends one `basic.ack(multiple = true)` for the
//! longest run of settled tags just above the channel's settled floor, and
//! single acks for anything above a gap, then looks again for acks that
//! arrived meanwhile. No ack ever waits for another to be settled: a slow
//! handler blocks no one else's ack, it only splits a run.
//!
//! The frames go out on the channel itself (`basic.ack` with the tag), not
//! through each delivery's lapin `Acker`, which hands every ack to a task
//! of lapin's that hands it to the channel: one hop and one task fewer per
//! frame. It is the same frame on the same channel; a closed channel fails
//! it the same way.
//!
//! The flush runs in a task of its own, never in the caller's future: a
//! handler's ack future may be dropped at any await (the operation bound
//! timing out, a shutdown aborting the handler), and a flush dropped half
//! way would leave `flushing` set with every later ack parked behind it.
//! Each frame it sends is bounded too, so a hung send cannot hold the acks
//! behind it either.
//!
//! A multiple ack settles every outstanding tag up to its own, so it is sent
//! only when every lower tag is known to be settled: the channel numbers its
//! deliveries 1, 2, 3, … and the book keeps the floor below which all are
//! settled. A tag delivered but not yet read by the consumer, or being
//! rejected, is neither ready nor settled and stops the run; so a channel
//! with two consumers (the old and the new one while the prefetch changes)
//! is as safe as one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicRejectOptions};

use super::bounded::{OPERATION_TIMEOUT, settled};
use crate::Error;

type Tag = u64;

/// Turns of the scheduler a flush waits at most for more acks to join it.
const GATHER_TURNS: usize = 8;

/// What is settled and what is ready to ack.
#[derive(Default)]
struct Book {
    /// Every tag up to this one is settled (delivery tags start at 1).
    floor: Tag,
    /// Settled tags above the floor.
    settled: BTreeSet<Tag>,
    /// Acked by their handler, waiting for the flusher.
    ready: BTreeSet<Tag>,
    flushing: bool,
}

/// One ack frame to send.
#[derive(Debug, PartialEq)]
struct Frame {
    tag: Tag,
    multiple: bool,
}

/// The ack state of one consumer channel, shared by its deliveries' ackers
/// (one reference each).
#[derive(Clone)]
pub(super) struct Acks(Arc<Shared>);

pub(super) struct Shared {
    /// The channel the deliveries came on, which the acks go out on.
    channel: Channel,
    book: Mutex<Book>,
    /// Notified when a flush ends.
    flushed: tokio::sync::Notify,
    /// The highest delivery tag handed to the worker.
    delivered: AtomicU64,
}

impl std::ops::Deref for Acks {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Acks {
    pub(super) fn new(channel: Channel) -> Self {
        Self(Arc::new(Shared {
            channel,
            book: Mutex::default(),
            flushed: tokio::sync::Notify::new(),
            delivered: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("ack book poisoned")
    }

    /// Records that `tag` was handed to the worker.
    pub(super) fn delivered(&self, tag: Tag) {
        self.delivered.fetch_max(tag, Ordering::Relaxed);
    }

    /// How many acks are ready, and whether every delivery handed out is
    /// settled or ready (then no ack can join a flush by waiting).
    fn readiness(&self) -> (usize, bool) {
        let delivered = self.delivered.load(Ordering::Relaxed);
        let book = self.lock();
        (book.ready.len(), book.accounts_for(delivered))
    }

    /// Acks `tag`, batched with whatever else is ready.
    pub(super) async fn ack(&self, tag: Tag) -> Result<(), Error> {
        {
            let mut book = self.lock();
            book.ready.insert(tag);
            if book.flushing {
                return Ok(());
            }
            book.flushing = true;
        }
        // The guard exists before the task does: a task never polled (the
        // runtime shutting down) still ends the flush when dropped.
        // The flush's first round sends this ack; it may go on with acks
        // that come meanwhile, which this caller does not wait for.
        let (first, sent) = tokio::sync::oneshot::channel();
        tokio::spawn(Flushing(Some(self.clone())).run(Some(first)));
        sent.await.unwrap_or_else(|_| {
            Err(Error::broker(
                "ack",
                "the flush sending it ended before it did (the runtime shutting down)",
            ))
        })
    }

    /// Sends what handlers acked before the channel closes: waits for a
    /// flush under way (one whose handler was aborted goes on without it),
    /// then flushes what a flush dropped before it ran (the runtime
    /// shutting down) left ready.
    pub(super) async fn finish(&self) -> Result<(), Error> {
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            let flush_here = {
                let mut book = self.lock();
                if !book.flushing && book.ready.is_empty() {
                    return Ok(());
                }
                // No flush under way: this one sends what is ready.
                !std::mem::replace(&mut book.flushing, true)
            };
            if flush_here {
                return Flushing(Some(self.clone())).run(None).await;
            }
            flushed.await;
        }
    }
}

impl Flushing {
    /// Sends every ready ack, then whatever became ready meanwhile, until
    /// nothing is; returns the first error. `first` hears how the first
    /// round went (what was ready when the flush began).
    async fn run(mut self, mut first: Option<FirstRound>) -> Result<(), Error> {
        let acks = self.0.clone().expect("a flush owns its book");
        // Handlers already woken (a burst of deliveries) ack first and
        // join this flush: it waits while each turn of the scheduler
        // brings more, a few turns at most, and not at all when no other
        // delivery is out (prefetch 1).
        let mut seen = None;
        for _ in 0..=GATHER_TURNS {
            let (ready, all_ready) = acks.readiness();
            if all_ready || seen == Some(ready) {
                break;
            }
            seen = Some(ready);
            tokio::task::yield_now().await;
        }
        let mut first_error = None;
        loop {
            let frames = {
                let mut book = acks.lock();
                let frames = book.take_frames();
                if frames.is_empty() {
                    book.flushing = false;
                    self.0 = None;
                    acks.flushed.notify_waiters();
                    break;
                }
                frames
            };
            let mut round_error = None;
            for frame in frames {
                let options = BasicAckOptions {
                    multiple: frame.multiple,
                };
                let sent = acks.channel.basic_ack(frame.tag, options);
                let sent = tokio::time::timeout(OPERATION_TIMEOUT, sent)
                    .await
                    .map_or(Ok(false), |sent| sent.map(|()| true));
                if let Err(error) = settled(sent, "ack") {
                    round_error.get_or_insert(error);
                }
            }
            match first.take() {
                Some(first) => {
                    let _ = first.send(round_error.map_or(Ok(()), Err));
                }
                None => {
                    if let Some(error) = round_error {
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        if let Some(first) = first {
            // Nothing was ready: a flush that finished meanwhile sent it.
            let _ = first.send(Ok(()));
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Acks {
    /// Rejects `tag` at once.
    pub(super) async fn reject(
        &self,
        tag: Tag,
        acker: &lapin::Acker,
        requeue: bool,
    ) -> Result<(), Error> {
        // Recorded once sent: until then no multiple ack may cover it.
        let sent = acker.reject(BasicRejectOptions { requeue }).await;
        self.lock().settled.insert(tag);
        settled(sent, "reject")
    }
}

/// Where a flush tells how its first round went.
type FirstRound = tokio::sync::oneshot::Sender<Result<(), Error>>;

/// One flush of a channel's acks. Dropped before it ran to its end (a
/// panic, the runtime shutting down), it ends the flush, so that the next
/// ack starts a new one.
struct Flushing(Option<Acks>);

impl Drop for Flushing {
    fn drop(&mut self) {
        if let Some(acks) = self.0.take() {
            if let Ok(mut book) = acks.book.lock() {
                book.flushing = false;
            }
            acks.flushed.notify_waiters();
        }
    }
}

impl Book {
    /// Whether every tag up to `delivered` is settled or ready.
    fn accounts_for(&self, delivered: Tag) -> bool {
        delivered <= self.floor + (self.settled.len() + self.ready.len()) as Tag
    }

    /// The frames that settle every ready ack: one multiple ack for the run
    /// of ready (or already settled) tags just above the floor, single acks
    /// for the rest.
    fn take_frames(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut last = None;
        let mut tag = self.floor + 1;
        loop {
            if self.ready.remove(&tag) {
                last = Some(tag);
            } else if !self.settled.remove(&tag) {
                break;
            }
            tag += 1;
        }
        self.floor = tag - 1;
        if let Some(tag) = last {
            frames.push(Frame {
                tag,
                multiple: true,
            });
        }
        for tag in std::mem::take(&mut self.ready) {
            self.settled.insert(tag);
            frames.push(Frame {
                tag,
                multiple: false,
            });
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A book whose tags up to `floor` and `settled` are settled, with
    /// `ready` acked by their handlers.
    fn book(floor: Tag, settled: &[Tag], ready: &[Tag]) -> Book {
        Book {
            floor,
            settled: settled.iter().copied().collect(),
            ready: ready.iter().copied().collect(),
            flushing: false,
        }
    }

    fn frame(tag: Tag, multiple: bool) -> Frame {
        Frame { tag, multiple }
    }

    #[test]
    fn a_run_from_the_oldest_delivery_is_one_multiple_ack() {
        let mut book = book(0, &[], &[1, 2, 3, 4, 5]);
        assert_eq!(book.take_frames(), [frame(5, true)]);
        assert_eq!(book.floor, 5);
        assert!(book.settled.is_empty() && book.ready.is_empty());
    }

    #[test]
    fn acks_above_a_slow_delivery_go_out_singly_at_once() {
        let mut book = book(0, &[], &[2, 3]);
        assert_eq!(book.take_frames(), [frame(2, false), frame(3, false)]);
        assert_eq!(book.floor, 0);
        assert_eq!(book.settled.iter().copied().collect::<Vec<_>>(), [2, 3]);
        assert!(book.ready.is_empty());
    }

    #[test]
    fn a_run_then_singles_never_cover_an_unsettled_delivery() {
        let mut book = book(0, &[], &[1, 2, 4]);
        assert_eq!(book.take_frames(), [frame(2, true), frame(4, false)]);
        assert_eq!(book.floor, 2);
    }

    #[test]
    fn a_run_passes_over_tags_settled_singly_before() {
        // 1 was slow: 2 and 3 went out singly, 4 is ready now.
        let mut book = book(0, &[2, 3], &[1, 4]);
        assert_eq!(book.take_frames(), [frame(4, true)]);
        assert_eq!(book.floor, 4);
        assert!(book.settled.is_empty());
    }

    #[test]
    fn a_tag_not_yet_read_stops_the_run() {
        // Two consumers on the channel: 6 went to the other one and is not
        // read yet, so 5 and 7 must not be covered by one multiple ack.
        let mut book = book(4, &[], &[5, 7]);
        assert_eq!(book.take_frames(), [frame(5, true), frame(7, false)]);
        assert_eq!(book.floor, 5);
        let mut book = book_after(book, &[6]);
        assert_eq!(book.take_frames(), [frame(6, true)]);
        assert_eq!(book.floor, 7);
    }

    fn book_after(mut book: Book, ready: &[Tag]) -> Book {
        book.ready.extend(ready.iter().copied());
        book
    }

    #[test]
    fn a_flush_waits_only_while_deliveries_are_out() {
        // 1..=4 settled, 5 and 7 ready, 6 out: 7 delivered, 6 accounted.
        let book = book(4, &[], &[5, 7]);
        assert!(!book.accounts_for(7));
        let book = book_after(book, &[6]);
        assert!(book.accounts_for(7));
        assert!(!book.accounts_for(8), "8 was handed out since");
    }

    #[test]
    fn nothing_ready_sends_nothing() {
        let mut book = book(6, &[8], &[]);
        assert!(book.take_frames().is_empty());
        assert_eq!(book.floor, 6);
    }
}
