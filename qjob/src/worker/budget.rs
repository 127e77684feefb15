//! A worker's handler budget ([`crate::WorkerBuilder::max_handlers`]): the
//! most handlers it runs over all its job types, shared by class and
//! weight, with a floor for each.
//!
//! When a handler ends, its slot goes to a job type with work waiting, by
//! this rule:
//!
//! 1. a job type holding fewer than [`FLOOR`] slots, the one holding the
//!    fewest first: no job type starves;
//! 2. else the highest [`JobClass`] with work waiting;
//! 3. within it, the job type holding the fewest slots per unit of weight
//!    (the first registered on a tie).
//!
//! No handler is stopped to make room: a class takes slots as they free.
//! A slot freed by a job type holding less than its share (see
//! [`entitled`]) waits [`HANDOVER`] for that job type's next attempt
//! first: its consumer takes the next delivery only once the handler's
//! slot is free, and the slot must not go to a lower class meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::JobClass;

/// The slots each job type with work waiting gets before any class's
/// preference applies.
pub(crate) const FLOOR: usize = 1;

/// How long a slot freed by a job type below its share is kept for its
/// next attempt.
pub(crate) const HANDOVER: std::time::Duration = std::time::Duration::from_millis(10);

/// Where a worker's budget is, and a job type's place in it (what its
/// handler takes slots from).
pub(crate) struct InBudget {
    pub(crate) budget: Arc<Budget>,
    pub(crate) member: usize,
}

/// A worker's handler budget.
pub(crate) struct Budget {
    size: usize,
    state: Mutex<State>,
}

/// A job type in the budget.
pub(crate) struct Member {
    pub(crate) job: &'static str,
    pub(crate) class: JobClass,
    pub(crate) weight: u32,
}

struct State {
    in_use: usize,
    members: Vec<Holding>,
    /// Slots kept for a member's next attempt ([`HANDOVER`]), counted in
    /// `in_use` and its `held`, each with its number.
    kept: Vec<(usize, u64)>,
    handovers: u64,
}

struct Holding {
    member: Member,
    held: usize,
    waiting: VecDeque<oneshot::Sender<BudgetSlot>>,
}

/// One job type's share of the budget now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) job: &'static str,
    pub(crate) class: JobClass,
    pub(crate) held: usize,
    pub(crate) waiting: usize,
}

/// A slot of the budget, given back when dropped (kept a moment for its
/// job type's next attempt, see [`HANDOVER`], unless given back with
/// [`BudgetSlot::give_back`]).
pub(crate) struct BudgetSlot {
    budget: Arc<Budget>,
    member: usize,
    armed: bool,
    handover: bool,
}

impl BudgetSlot {
    /// Gives the slot back at once: its attempt did not run (it waits on
    /// shared limits), so no next attempt of its job type is coming.
    pub(crate) fn give_back(mut self) {
        self.handover = false;
    }
}

impl Budget {
    /// A budget of `size` slots for these job types (by index).
    pub(crate) fn new(size: usize, members: Vec<Member>) -> Arc<Budget> {
        let members = members
            .into_iter()
            .map(|member| Holding {
                member,
                held: 0,
                waiting: VecDeque::new(),
            })
            .collect();
        Arc::new(Budget {
            size,
            state: Mutex::new(State {
                in_use: 0,
                members,
                kept: Vec::new(),
                handovers: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most handlers.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Waits for a slot for job type `member` (its index). Dropped while
    /// it waits, it takes nothing (a slot given meanwhile is given back).
    pub(crate) async fn take(self: &Arc<Self>, member: usize) -> BudgetSlot {
        let (sender, receiver) = oneshot::channel();
        {
            let mut state = self.state();
            if let Some(at) = state.kept.iter().position(|(kept, _)| *kept == member) {
                state.kept.swap_remove(at);
                return BudgetSlot {
                    budget: self.clone(),
                    member,
                    armed: true,
                    handover: true,
                };
            }
            state.members[member].waiting.push_back(sender);
            self.dispatch(&mut state);
        }
        receiver
            .await
            .expect("the budget outlives its waiters: it holds their senders")
    }

    /// Hands free slots to waiters, by the rule of the module.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while state.in_use < self.size {
            for holding in &mut state.members {
                while holding.waiting.front().is_some_and(|s| s.is_closed()) {
                    holding.waiting.pop_front();
                }
            }
            let Some(next) = next_member(&state.members) else {
                return;
            };
            let sender = state.members[next]
                .waiting
                .pop_front()
                .expect("next_member picks a member with a waiter");
            let slot = BudgetSlot {
                budget: self.clone(),
                member: next,
                armed: true,
                handover: true,
            };
            match sender.send(slot) {
                Ok(()) => {
                    state.in_use += 1;
                    state.members[next].held += 1;
                }
                // Its waiter went away: nothing was counted.
                Err(mut slot) => slot.armed = false,
            }
        }
    }

    /// Each job type's share now.
    pub(crate) fn shares(&self) -> Vec<Share> {
        self.state()
            .members
            .iter()
            .map(|holding| Share {
                job: holding.member.job,
                class: holding.member.class,
                held: holding.held,
                waiting: holding.waiting.iter().filter(|s| !s.is_closed()).count(),
            })
            .collect()
    }

    /// Slots held now.
    pub(crate) fn in_use(&self) -> usize {
        self.state().in_use
    }
}

/// The member to give the next slot to: below its floor first, then the
/// highest class, then the fewest held per weight.
fn next_member(members: &[Holding]) -> Option<usize> {
    let waiting = || {
        members
            .iter()
            .enumerate()
            .filter(|(_, holding)| !holding.waiting.is_empty())
    };
    let starved = waiting()
        .filter(|(_, holding)| holding.held < FLOOR)
        .min_by_key(|(_, holding)| holding.held);
    if let Some((index, _)) = starved {
        return Some(index);
    }
    let class = waiting().map(|(_, holding)| holding.member.class).max()?;
    waiting()
        .filter(|(_, holding)| holding.member.class == class)
        .min_by(|(_, a), (_, b)| {
            // held / weight, compared without division.
            let a_share = a.held as u64 * u64::from(b.member.weight);
            let b_share = b.held as u64 * u64::from(a.member.weight);
            a_share.cmp(&b_share)
        })
        .map(|(index, _)| index)
}

/// The slots `member` is entitled to while the members holding or waiting
/// for slots compete: its floor, and, in the highest class among them, a
/// share by weight of what the floors leave.
fn entitled(members: &[Holding], size: usize, member: usize) -> usize {
    let active = |holding: &&Holding| holding.held > 0 || !holding.waiting.is_empty();
    let count = members.iter().filter(active).count();
    let Some(top) = members.iter().filter(active).map(|h| h.member.class).max() else {
        return size;
    };
    let this = &members[member].member;
    if this.class != top {
        return FLOOR;
    }
    let weights: u64 = members
        .iter()
        .filter(active)
        .filter(|holding| holding.member.class == top)
        .map(|holding| u64::from(holding.member.weight))
        .sum();
    let left = size.saturating_sub(FLOOR * count) as u64;
    FLOOR + (left * u64::from(this.weight) / weights.max(1)) as usize
}

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let budget = self.budget.clone();
        let mut state = budget.state();
        let member = self.member;
        let below = state.members[member].held <= entitled(&state.members, budget.size, member);
        if self.handover && below && state.members[member].waiting.is_empty() {
            // Kept for the member's next attempt, for a moment.
            state.handovers += 1;
            let number = state.handovers;
            state.kept.push((member, number));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let budget = budget.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(HANDOVER).await;
                    let mut state = budget.state();
                    if let Some(at) = state.kept.iter().position(|(_, n)| *n == number) {
                        state.kept.swap_remove(at);
                        state.in_use -= 1;
                        state.members[member].held -= 1;
                        budget.dispatch(&mut state);
                    }
                });
                return;
            }
            state.kept.pop();
        }
        state.in_use -= 1;
        state.members[member].held -= 1;
        budget.dispatch(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(size: usize, classes: &[(JobClass, u32)]) -> Arc<Budget> {
        let members = classes
            .iter()
            .zip(["a", "b", "c"])
            .map(|(&(class, weight), job)| Member { job, class, weight })
            .collect();
        Budget::new(size, members)
    }

    fn held(budget: &Budget) -> Vec<usize> {
        budget.shares().iter().map(|share| share.held).collect()
    }

    /// Every member asks for `asks` slots at once, then the slots are
    /// given back one by one, each as its holder ends, `turns` times: what
    /// each member holds at the end, with the budget full all along.
    async fn settle(budget: &Arc<Budget>, asks: usize, turns: usize) -> Vec<usize> {
        let members = budget.shares().len();
        let mut waits = Vec::new();
        for _ in 0..asks {
            for member in 0..members {
                let budget = budget.clone();
                waits.push(tokio::spawn(async move { budget.take(member).await }));
            }
        }
        while budget.in_use() < budget.size() {
            tokio::task::yield_now().await;
        }
        for _ in 0..turns {
            let done = waits.iter().position(|w| w.is_finished()).unwrap();
            drop(waits.remove(done).await.unwrap());
            tokio::task::yield_now().await;
            assert_eq!(
                budget.in_use(),
                budget.size(),
                "a freed slot goes to a waiter at once"
            );
        }
        held(budget)
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_class_takes_what_is_left_above_the_floors() {
        let budget = budget(10, &[(JobClass::Bulk, 1), (JobClass::Critical, 1)]);
        assert_eq!(settle(&budget, 40, 30).await, [1, 9]);
    }

    #[tokio::test(start_paused = true)]
    async fn equal_classes_share_by_weight() {
        let budget = budget(8, &[(JobClass::Default, 3), (JobClass::Default, 1)]);
        assert_eq!(settle(&budget, 40, 30).await, [6, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_job_type_waiting_keeps_its_floor() {
        let budget = budget(
            3,
            &[
                (JobClass::Critical, 1),
                (JobClass::Bulk, 1),
                (JobClass::Bulk, 5),
            ],
        );
        assert_eq!(settle(&budget, 40, 30).await, [1, 1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_goes_away_takes_nothing() {
        let budget = budget(1, &[(JobClass::Default, 1)]);
        let first = budget.take(0).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(0).await }
        });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(first);
        assert_eq!(budget.in_use(), 0);
        let _again = budget.take(0).await;
        assert_eq!(budget.in_use(), 1);
    }
}
