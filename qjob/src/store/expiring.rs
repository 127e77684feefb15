//! A map whose entries expire at a deadline, expired from a heap of
//! deadlines: each call pays for the entries that expired since the last
//! one, in O(log n) each, never for the ones still live.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

/// Entries live until their deadline (`until > now`). Replacing or removing
/// an entry leaves its deadline in the heap; a deadline that is not its
/// key's current one expires nothing, and the heap is rebuilt from the map
/// when such stale deadlines outnumber the entries.
#[derive(Debug)]
pub(super) struct ExpiringMap<V> {
    entries: HashMap<Arc<str>, (V, Instant)>,
    deadlines: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// Deadlines looked at by [`Self::expire`], for the tests.
    examined: u64,
}

impl<V> Default for ExpiringMap<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            deadlines: BinaryHeap::new(),
            examined: 0,
        }
    }
}

impl<V> ExpiringMap<V> {
    /// Removes every entry whose deadline is `now` or past.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(Reverse((deadline, _))) = self.deadlines.peek() {
            self.examined += 1;
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, key))) = self.deadlines.pop() else {
                break;
            };
            if self
                .entries
                .get(&key)
                .is_some_and(|(_, until)| *until == deadline)
            {
                self.entries.remove(&key);
            }
        }
    }

    /// The live entry of `key` and its deadline.
    pub(super) fn get(&self, key: &str, now: Instant) -> Option<&(V, Instant)> {
        self.entries.get(key).filter(|(_, until)| *until > now)
    }

    /// The live value of `key`, to change in place (its deadline stays).
    pub(super) fn get_mut(&mut self, key: &str, now: Instant) -> Option<&mut V> {
        self.entries
            .get_mut(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value)
    }

    /// Sets `key` to `value` until `until`, replacing what it held.
    pub(super) fn insert(&mut self, key: &str, value: V, until: Instant) {
        let key: Arc<str> = Arc::from(key);
        self.entries.insert(Arc::clone(&key), (value, until));
        self.deadlines.push(Reverse((until, key)));
        if self.deadlines.len() > 2 * self.entries.len() + 64 {
            // Stale deadlines from keys released or taken again: after as
            // many pushes as there are entries, so O(1) per insert.
            self.deadlines = self
                .entries
                .iter()
                .map(|(key, (_, until))| Reverse((*until, Arc::clone(key))))
                .collect();
        }
    }

    /// Removes `key`'s entry.
    pub(super) fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(super) fn deadlines(&self) -> usize {
        self.deadlines.len()
    }

    #[cfg(test)]
    pub(super) fn examined(&self) -> u64 {
        self.examined
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_entry_lives_until_its_deadline() {
        let now = Instant::now();
        let mut map = ExpiringMap::default();
        map.insert("a", 1, now + Duration::from_secs(1));
        map.insert("b", 2, now + Duration::from_secs(2));
        map.expire(now + Duration::from_millis(999));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a", now).map(|(v, _)| *v), Some(1));
        assert!(
            map.get("a", now + Duration::from_secs(1)).is_none(),
            "expired at its deadline"
        );
        map.expire(now + Duration::from_secs(1));
        assert_eq!(map.len(), 1, "a expired, b not");
        map.expire(now + Duration::from_secs(3));
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn an_old_deadline_does_not_expire_a_new_entry() {
        let now = Instant::now();
        let mut map = ExpiringMap::default();
        map.insert("k", "first", now + Duration::from_secs(1));
        map.remove("k");
        map.insert("k", "second", now + Duration::from_secs(10));
        map.expire(now + Duration::from_secs(5));
        assert_eq!(
            map.get("k", now + Duration::from_secs(5)).map(|(v, _)| *v),
            Some("second")
        );
        map.insert("k", "third", now + Duration::from_secs(20));
        map.expire(now + Duration::from_secs(15));
        assert_eq!(
            map.get("k", now + Duration::from_secs(15)).map(|(v, _)| *v),
            Some("third")
        );
        map.expire(now + Duration::from_secs(20));
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn stale_deadlines_stay_bounded() {
        let now = Instant::now();
        let mut map = ExpiringMap::default();
        for i in 0..10_000u64 {
            map.insert("k", i, now + Duration::from_secs(3600 + i));
        }
        assert_eq!(map.len(), 1);
        assert!(
            map.deadlines() <= 2 * map.len() + 65,
            "{} deadlines",
            map.deadlines()
        );
    }
}
