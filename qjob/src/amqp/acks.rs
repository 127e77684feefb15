//! Acknowledgement batching for one consumer channel.
//!
//! Handlers finish in about the order their deliveries arrived, so acks form
//! runs of consecutive delivery tags. Whoever acks while no flush is under
//! way becomes the flusher: it sends one `basic.ack(multiple = true)` for the
//! longest run starting at the oldest unsettled delivery, and single acks for
//! anything above a gap, then looks again for acks that arrived meanwhile.
//! No ack ever waits for another to be settled: a slow handler blocks no one
//! else's ack, it only splits a run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::Error;

type Tag = u64;

/// What is delivered and what is ready to ack; `A` is the means to send
/// an ack (lapin's acker; anything in the tests).
struct Book<A> {
    /// Delivered and not yet sent a settlement.
    unsettled: BTreeSet<Tag>,
    /// Acked by their handler, waiting for the flusher.
    ready: BTreeMap<Tag, A>,
    flushing: bool,
}

impl<A> Default for Book<A> {
    fn default() -> Self {
        Self {
            unsettled: BTreeSet::new(),
            ready: BTreeMap::new(),
            flushing: false,
        }
    }
}

/// One ack frame to send.
#[derive(Debug, PartialEq)]
struct Frame<A> {
    acker: A,
    multiple: bool,
}

/// The ack state of one consumer channel.
#[derive(Clone, Default)]
pub(super) struct Acks {
    book: Arc<Mutex<Book<lapin::Acker>>>,
}

impl Acks {
    /// Records a delivery as unsettled.
    pub(super) fn delivered(&self, tag: Tag) {
        self.lock().unsettled.insert(tag);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book<lapin::Acker>> {
        self.book.lock().expect("ack book poisoned")
    }

    /// Acks `tag`, batched with whatever else is ready.
    pub(super) async fn ack(&self, tag: Tag, acker: lapin::Acker) -> Result<(), Error> {
        {
            let mut book = self.lock();
            book.ready.insert(tag, acker);
            if book.flushing {
                return Ok(());
            }
            book.flushing = true;
        }
        let mut first_error = None;
        loop {
            let frames = {
                let mut book = self.lock();
                let frames = book.take_frames();
                if frames.is_empty() {
                    book.flushing = false;
                    break;
                }
                frames
            };
            for frame in frames {
                let sent = frame
                    .acker
                    .ack(BasicAckOptions {
                        multiple: frame.multiple,
                    })
                    .await;
                if let Err(error) = super::subscription::settled(sent, "ack") {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Rejects `tag` at once.
    pub(super) async fn reject(
        &self,
        tag: Tag,
        acker: &lapin::Acker,
        requeue: bool,
    ) -> Result<(), Error> {
        self.lock().unsettled.remove(&tag);
        let sent = acker.reject(BasicRejectOptions { requeue }).await;
        super::subscription::settled(sent, "reject")
    }
}

impl<A> Book<A> {
    /// The frames that settle every ready ack: one multiple ack for the run
    /// of ready tags at the bottom of `unsettled`, single acks for the rest.
    fn take_frames(&mut self) -> Vec<Frame<A>> {
        let mut run_end = None;
        for tag in &self.unsettled {
            if self.ready.contains_key(tag) {
                run_end = Some(*tag);
            } else {
                break;
            }
        }
        let mut frames = Vec::new();
        if let Some(end) = run_end {
            let above = self.unsettled.split_off(&(end + 1));
            let run = std::mem::replace(&mut self.unsettled, above);
            let mut acker = None;
            for tag in run {
                acker = self.ready.remove(&tag);
            }
            frames.push(Frame {
                acker: acker.expect("the run is not empty"),
                multiple: true,
            });
        }
        for (tag, acker) in std::mem::take(&mut self.ready) {
            self.unsettled.remove(&tag);
            frames.push(Frame {
                acker,
                multiple: false,
            });
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(unsettled: &[Tag], ready: &[Tag]) -> Book<Tag> {
        Book {
            unsettled: unsettled.iter().copied().collect(),
            ready: ready.iter().map(|&tag| (tag, tag)).collect(),
            flushing: false,
        }
    }

    fn frame(acker: Tag, multiple: bool) -> Frame<Tag> {
        Frame { acker, multiple }
    }

    #[test]
    fn a_run_from_the_oldest_delivery_is_one_multiple_ack() {
        let mut book = book(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]);
        assert_eq!(book.take_frames(), [frame(5, true)]);
        assert!(book.unsettled.is_empty() && book.ready.is_empty());
    }

    #[test]
    fn acks_above_a_slow_delivery_go_out_singly_at_once() {
        let mut book = book(&[1, 2, 3, 4], &[2, 3]);
        assert_eq!(book.take_frames(), [frame(2, false), frame(3, false)]);
        assert_eq!(book.unsettled.iter().copied().collect::<Vec<_>>(), [1, 4]);
        assert!(book.ready.is_empty());
    }

    #[test]
    fn a_run_then_singles_never_cover_an_unsettled_delivery() {
        let mut book = book(&[1, 2, 3, 4, 5], &[1, 2, 4]);
        assert_eq!(book.take_frames(), [frame(2, true), frame(4, false)]);
        assert_eq!(book.unsettled.iter().copied().collect::<Vec<_>>(), [3, 5]);
    }

    #[test]
    fn nothing_ready_sends_nothing() {
        let mut book = book(&[7, 8], &[]);
        assert!(book.take_frames().is_empty());
        assert_eq!(book.unsettled.len(), 2);
    }
}
