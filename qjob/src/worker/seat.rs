//! What an attempt needs before its handler runs: a handler slot of its
//! job type, a slot of the worker's budget if it has one, and the permits
//! and rates its shared limits ask for. A start that finds no permit
//! waits holding no slot ([`crate::docs::limits`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::JobId;
use crate::worker::budget::{BudgetSlot, InBudget};
use crate::worker::halt::Halt;
use crate::worker::handler::Handler;
use crate::worker::quota::{Entry, Held};

/// What an attempt runs in; given back when it ends.
pub(crate) struct Seat {
    _slot: OwnedSemaphorePermit,
    _budget: Option<BudgetSlot>,
    pub(crate) held: Option<Held>,
}

impl Seat {
    /// Gives everything back: the slots at once, the permits in the
    /// background (see [`Held::release`]).
    pub(crate) fn leave(self) {
        if let Some(held) = self.held {
            held.release();
        }
    }
}

impl Handler {
    /// Waits for a seat for an attempt of `job_id` (its rate key `key`):
    /// `slot` is the handler slot the consumer gave the delivery, if any,
    /// else one of `slots` is taken. `None` if a pause or a stop is asked
    /// meanwhile (`halt`, `ran` as [`Halt::asked`] takes them).
    pub(super) async fn seat(
        &self,
        mut slot: Option<OwnedSemaphorePermit>,
        slots: &Arc<Semaphore>,
        (job_id, key): (&JobId, Option<&str>),
        (halt, ran): (&Halt, bool),
    ) -> Option<Seat> {
        loop {
            let slot = match slot.take() {
                Some(slot) => slot,
                None => tokio::select! {
                    biased;
                    () = halt.clone().asked(ran) => return None,
                    slot = slots.clone().acquire_owned() => slot.expect("semaphore never closed"),
                },
            };
            let budget = match &self.budget {
                Some(InBudget { budget, member }) => Some(tokio::select! {
                    biased;
                    () = halt.clone().asked(ran) => return None,
                    taken = budget.take(*member) => taken,
                }),
                None => None,
            };
            let Some(quota) = &self.quota else {
                return Some(Seat {
                    _slot: slot,
                    _budget: budget,
                    held: None,
                });
            };
            let entered = tokio::select! {
                biased;
                () = halt.clone().asked(ran) => return None,
                entry = quota.try_enter(job_id, key) => entry,
            };
            match entered {
                Entry::Held(held) => {
                    return Some(Seat {
                        _slot: slot,
                        _budget: budget,
                        held: Some(held),
                    });
                }
                Entry::Wait(wait) => {
                    // No slot is held while the limits say wait.
                    drop(slot);
                    if let Some(budget) = budget {
                        budget.give_back();
                    }
                    tokio::select! {
                        biased;
                        () = halt.clone().asked(ran) => return None,
                        () = quota.wait(wait) => {}
                    }
                }
            }
        }
    }
}
