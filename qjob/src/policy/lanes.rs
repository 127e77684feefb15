//! Per-key lanes: jobs with the same key run one at a time, in arrival
//! order; different keys run side by side.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The lanes of one consumer. `T` is whatever waits (a delivery).
#[derive(Debug)]
pub(crate) struct Lanes<K, T> {
    /// Keys with a job running; the jobs queued behind it, in order.
    busy: HashMap<K, VecDeque<T>>,
}

impl<K, T> Default for Lanes<K, T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, T> Lanes<K, T> {
    /// A job with `key` arrived: `Some(item)` if its lane was free (run it
    /// now; the lane is busy until [`Lanes::finish`]), `None` if it queued.
    pub(crate) fn admit(&mut self, key: K, item: T) -> Option<T> {
        match self.busy.get_mut(&key) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.busy.insert(key, VecDeque::new());
                Some(item)
            }
        }
    }

    /// The running job of `key` finished: the next one to run, if any (the
    /// lane stays busy), or `None` (the lane is free).
    pub(crate) fn finish(&mut self, key: &K) -> Option<T> {
        let queue = self.busy.get_mut(key)?;
        let next = queue.pop_front();
        if next.is_none() {
            self.busy.remove(key);
        }
        next
    }

    #[cfg(test)]
    /// Keys with a job running.
    pub(crate) fn busy(&self) -> usize {
        self.busy.len()
    }

    #[cfg(test)]
    /// Jobs waiting behind a running one.
    pub(crate) fn queued(&self) -> usize {
        self.busy.values().map(VecDeque::len).sum()
    }

    /// Takes out everything waiting; the running jobs keep their lanes busy
    /// until they finish.
    pub(crate) fn take_queued(&mut self) -> Vec<T> {
        self.busy.values_mut().flat_map(std::mem::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_runs_in_arrival_order_one_at_a_time() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit("k", 1), Some(1));
        for n in 2..=5 {
            assert_eq!(lanes.admit("k", n), None);
        }
        assert_eq!((lanes.busy(), lanes.queued()), (1, 4));
        let order: Vec<_> = std::iter::from_fn(|| lanes.finish(&"k")).collect();
        assert_eq!(order, [2, 3, 4, 5]);
        assert_eq!((lanes.busy(), lanes.queued()), (0, 0));
    }

    #[test]
    fn a_busy_key_never_holds_up_another() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit("slow", 1), Some(1));
        assert_eq!(lanes.admit("slow", 2), None);
        let keys: Vec<String> = (10..20).map(|n| format!("key-{n}")).collect();
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(lanes.admit(key.as_str(), n), Some(n));
        }
        assert_eq!(lanes.busy(), 11);
    }

    #[test]
    fn finishing_an_unknown_key_is_harmless() {
        let mut lanes: Lanes<&str, u32> = Lanes::default();
        assert_eq!(lanes.finish(&"nobody"), None);
    }

    #[test]
    fn taking_what_waited_keeps_running_lanes_busy() {
        let mut lanes = Lanes::default();
        lanes.admit("a", 1);
        lanes.admit("a", 2);
        lanes.admit("b", 3);
        lanes.admit("b", 4);
        let mut waited = lanes.take_queued();
        waited.sort();
        assert_eq!(waited, [2, 4]);
        assert_eq!((lanes.busy(), lanes.queued()), (2, 0));
        assert_eq!(lanes.admit("a", 5), None, "a is still running");
        assert_eq!(lanes.finish(&"a"), Some(5));
    }
}
