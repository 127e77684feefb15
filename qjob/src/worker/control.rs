//! What the console's commands act on while a worker runs: a job type's
//! handler slots (resized by hand or by the autoscaler). The job ids an
//! operator cancelled are in `cancellations`.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// A job type's handler slots, shared by its consumers. Growing adds
/// permits at once; shrinking takes the free ones at once, and a task
/// takes the rest as running handlers give theirs back.
#[derive(Debug)]
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    sizes: Arc<Mutex<Sizes>>,
}

#[derive(Debug)]
struct Sizes {
    current: usize,
    /// Permits to take away as running handlers give them back.
    owed: usize,
    /// Whether a task is taking them.
    collecting: bool,
}

impl Slots {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(size)),
            sizes: Arc::new(Mutex::new(Sizes {
                current: size,
                owed: 0,
                collecting: false,
            })),
        }
    }

    /// The semaphore handlers take their slot from.
    pub(crate) fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }

    /// The number of slots in force.
    pub(crate) fn size(&self) -> usize {
        lock(&self.sizes).current
    }

    /// Sets the number of slots to `size` (in a Tokio runtime).
    pub(crate) fn resize(&self, size: usize) {
        let mut sizes = lock(&self.sizes);
        if size > sizes.current {
            let more = size - sizes.current;
            let forgiven = more.min(sizes.owed);
            sizes.owed -= forgiven;
            self.semaphore.add_permits(more - forgiven);
        } else {
            sizes.owed += sizes.current - size;
        }
        sizes.current = size;
        let taken = self.semaphore.forget_permits(sizes.owed);
        sizes.owed -= taken;
        if sizes.owed > 0 && !sizes.collecting {
            sizes.collecting = true;
            tokio::spawn(collect(self.semaphore.clone(), self.sizes.clone()));
        }
    }
}

fn lock(sizes: &Mutex<Sizes>) -> std::sync::MutexGuard<'_, Sizes> {
    // Nothing under this lock panics; a poisoned one holds consistent sizes.
    sizes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the permits owed as handlers give them back; ends when none is
/// owed (a resize may forgive them). Every permit owed is held by a
/// running handler, so it ends once those finish.
async fn collect(semaphore: Arc<Semaphore>, sizes: Arc<Mutex<Sizes>>) {
    loop {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let mut sizes = lock(&sizes);
        if sizes.owed == 0 {
            sizes.collecting = false;
            return;
        }
        permit.forget();
        sizes.owed -= 1;
        if sizes.owed == 0 {
            sizes.collecting = false;
            return;
        }
    }
}

/// The most handler slots a console may set for one job type on one worker.
pub(crate) const MAX_CONSOLE_CONCURRENCY: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets the collector task run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn slots_shrink_as_permits_come_back() {
        let slots = Slots::new(3);
        let mut held: Vec<_> = (0..3)
            .map(|_| slots.semaphore().clone().try_acquire_owned().unwrap())
            .collect();
        slots.resize(1);
        assert_eq!(slots.size(), 1);
        held.pop();
        settle().await;
        assert_eq!(slots.semaphore().available_permits(), 0, "taken back");
        drop(held);
        settle().await;
        assert_eq!(slots.semaphore().available_permits(), 1);
        assert!(!lock(&slots.sizes).collecting, "the collector ended");
        slots.resize(4);
        assert_eq!(slots.semaphore().available_permits(), 4);
    }

    #[tokio::test]
    async fn growing_forgives_what_is_owed_first() {
        let slots = Slots::new(2);
        let held: Vec<_> = (0..2)
            .map(|_| slots.semaphore().clone().try_acquire_owned().unwrap())
            .collect();
        slots.resize(0);
        slots.resize(2);
        drop(held);
        settle().await;
        assert_eq!(slots.semaphore().available_permits(), 2);
        assert!(!lock(&slots.sizes).collecting);
    }
}
