//! How the consumer hands a delivery to its handler task: with a slot for
//! one attempt, or to retry in place; and what halts an attempt that has
//! not started (a pause, a stop).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a delivery's retries happen (see [`Handler::handle`]).
pub(crate) enum Retries {
    /// Through the broker: one attempt here, in this handler slot of
    /// `slots`, or one it takes (a job with shared limits: its consumer
    /// takes deliveries without a slot, since a start the limits make wait
    /// holds none). It does not start once a pause or stop is asked, e.g.
    /// while it waits at the gate.
    ThroughBroker {
        slot: Option<OwnedSemaphorePermit>,
        slots: Arc<Semaphore>,
        halt: Halt,
    },
    /// In the worker, holding the delivery, received at `received`; each
    /// attempt takes a slot of `slots`.
    InPlace {
        received: Instant,
        slots: Arc<Semaphore>,
        /// Asked once the job pauses or the worker stops: the first
        /// attempt, not started by then, never starts; nor does a retry
        /// once the job pauses.
        halt: Halt,
    },
}

/// Whether the consumer holding a delivery pauses or stops: an attempt
/// that has not started does not start, and the delivery is left
/// unsettled, to go back to the queue (in its place) when the
/// subscription closes.
///
/// A stop halts a delivery whose first attempt has not started (`ran` is
/// false); one retrying in place goes on within the shutdown timeout, as
/// its attempts so far live in this worker's memory and would start over
/// on another. A pause halts both: this worker keeps the attempts, and
/// continues from them when the job comes back to it.
#[derive(Clone)]
pub(crate) struct Halt {
    stop: CancellationToken,
    paused: watch::Receiver<bool>,
}

impl Halt {
    pub(crate) fn new(stop: CancellationToken, paused: watch::Receiver<bool>) -> Self {
        Self { stop, paused }
    }

    pub(super) fn is_asked(&self, ran: bool) -> bool {
        *self.paused.borrow() || (!ran && self.stop.is_cancelled())
    }

    /// Resolves once a pause (or, before any attempt `ran`, a stop) is
    /// asked; never if none can be any more.
    pub(super) async fn asked(mut self, ran: bool) {
        async fn paused(flag: &mut watch::Receiver<bool>) {
            if flag.wait_for(|on| *on).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = self.stop.cancelled(), if !ran => {}
            () = paused(&mut self.paused) => {}
        }
    }
}
