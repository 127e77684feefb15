//! [`Outcomes`]: the outcome of each of a batch of operations, filled by
//! index as they come back (out of order, from several lanes or groups),
//! then read in input order.

/// One outcome per operation, set by the operation's index. Those never
/// set (a broker that answered for fewer messages than it was given) get
/// the outcome [`Outcomes::finish`] is told.
#[derive(Debug)]
pub(crate) struct Outcomes<T> {
    slots: Vec<Option<T>>,
}

impl<T> Outcomes<T> {
    /// `count` outcomes, none set yet.
    pub(crate) fn new(count: usize) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(count, || None);
        Self { slots }
    }

    /// None yet, room for `count`: [`Outcomes::push`] adds them.
    pub(crate) fn with_capacity(count: usize) -> Self {
        Self {
            slots: Vec::with_capacity(count),
        }
    }

    /// Adds the next operation's outcome (`None`: not known yet); returns
    /// its index.
    pub(crate) fn push(&mut self, outcome: Option<T>) -> usize {
        self.slots.push(outcome);
        self.slots.len() - 1
    }

    /// Sets operation `index`'s outcome.
    pub(crate) fn set(&mut self, index: usize, outcome: T) {
        self.slots[index] = Some(outcome);
    }

    /// Operation `index`'s outcome, if it was set.
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        self.slots[index].as_ref()
    }

    /// The outcomes in input order, `missing(index)` for those never set.
    pub(crate) fn finish(self, mut missing: impl FnMut(usize) -> T) -> Vec<T> {
        self.slots
            .into_iter()
            .enumerate()
            .map(|(index, outcome)| outcome.unwrap_or_else(|| missing(index)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_come_back_in_input_order_and_the_missing_ones_are_filled() {
        let mut outcomes = Outcomes::new(3);
        outcomes.set(2, "c");
        outcomes.set(0, "a");
        assert_eq!(outcomes.get(1), None);
        assert_eq!(outcomes.finish(|_| "none"), ["a", "none", "c"]);
        let mut pushed = Outcomes::with_capacity(2);
        assert_eq!(pushed.push(Some(1)), 0);
        assert_eq!(pushed.push(None), 1);
        assert_eq!(pushed.finish(|_| 0), [1, 0]);
    }
}
