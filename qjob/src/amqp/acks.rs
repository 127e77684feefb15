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

#[derive(Default)]
struct Book {
    /// Delivered and not yet sent a settlement.
    unsettled: BTreeSet<Tag>,
    /// Acked by their handler, waiting for the flusher.
    ready: BTreeMap<Tag, lapin::Acker>,
    flushing: bool,
}

/// One ack frame to send.
struct Frame {
    acker: lapin::Acker,
    multiple: bool,
}

/// The ack state of one consumer channel.
#[derive(Clone, Default)]
pub(super) struct Acks {
    book: Arc<Mutex<Book>>,
}

impl Acks {
    /// Records a delivery as unsettled.
    pub(super) fn delivered(&self, tag: Tag) {
        self.lock().unsettled.insert(tag);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
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
                if let Err(error) = super::settled(sent, "ack") {
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
        super::settled(sent, "reject")
    }
}

impl Book {
    /// The frames that settle every ready ack: one multiple ack for the run
    /// of ready tags at the bottom of `unsettled`, single acks for the rest.
    fn take_frames(&mut self) -> Vec<Frame> {
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
