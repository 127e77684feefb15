//! [`Sent`]: how much of a publish has gone out.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many messages of one publish have gone out, from the first: handed
/// to the transport, so that the broker may store them even if the
/// publish is abandoned (its future dropped) before the confirm. Filled by
/// [`Broker::publish_tracked`] and [`Broker::publish_all_tracked`]; the
/// producer reads it when it is dropped mid-publish, to keep the lock (or
/// the batch count) of a job that may exist and give back those of jobs
/// that cannot.
///
/// # Examples
///
/// ```
/// use qjob::broker::Sent;
///
/// let sent = Sent::new();
/// sent.mark(2);
/// sent.mark(1); // never goes back
/// assert_eq!(sent.count(), 2);
/// ```
///
/// [`Broker::publish_tracked`]: super::Broker::publish_tracked
/// [`Broker::publish_all_tracked`]: super::Broker::publish_all_tracked
#[derive(Debug, Default)]
pub struct Sent(AtomicUsize);

impl Sent {
    /// None sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the first `count` messages (in the order given) have
    /// gone out. A lower count than one marked before changes nothing.
    pub fn mark(&self, count: usize) {
        self.0.fetch_max(count, Ordering::SeqCst);
    }

    /// How many messages, from the first, have gone out.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// None went out after all: the broker refused the one publish it
    /// tracks for good (the queue was missing) before it is tried again.
    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}
