//! Single publishes of concurrent callers, gathered onto shared sessions.
//!
//! Each session holds a channel of its own until its confirms come (see
//! `publisher.rs`), so a thousand callers each publishing one job at once
//! would open a thousand channels and wait for a thousand confirms, one
//! per channel. Instead, a caller of [`Broker::publish`] leaves its message
//! here and waits for its outcome; up to [`LEADERS`] tasks each take every
//! message waiting, publish them pipelined on one session, hand each
//! caller its own outcome (returns are told apart by message id), and
//! take what came meanwhile, until nothing waits.
//!
//! A caller that is dropped while its message still waits here takes it
//! back: a leader skips a message whose caller is gone, so an abandoned
//! publish sends nothing unless it was already on its way, as before.
//!
//! Callers share a session's fate: a confirm that does not come in time
//! makes the others of its session wait as long. So a session gathers the
//! messages of one queue (a queue that cannot confirm, such as a quorum
//! queue without its majority, holds up only its own callers), and at
//! most [`PER_QUEUE`] leaders publish to one queue at a time (the others
//! serve the other queues meanwhile). And a message is published on a
//! session of its own, not gathered, when it is large
//! (over [`GATHERED_BODY`]: a body the broker refuses closes the channel
//! under every message on it) or when its caller runs on a
//! current-thread runtime (a leader spawned there would wait, with the
//! messages of callers on other runtimes, whenever that runtime is not
//! driven, as when `block_on` has returned).
//!
//! [`Broker::publish`]: crate::broker::Broker::publish

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::Error;
use crate::broker::Message;

/// The most sessions publishing gathered messages at once: a message
/// that comes while they all publish waits for the next one to end.
const LEADERS: usize = 16;

/// The most leaders publishing to one queue at a time: a queue that
/// cannot confirm leaves the others a quarter of them.
const PER_QUEUE: usize = 12;

/// The largest body gathered; a larger one is published on a session of
/// its own.
pub(super) const GATHERED_BODY: usize = 128 * 1024;

/// Whether a publish by the current task may be gathered: a body no
/// larger than [`GATHERED_BODY`], from a task on a multi-thread runtime.
pub(super) fn gatherable(message: &Message) -> bool {
    message.body.len() <= GATHERED_BODY
        && tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        })
}

/// One caller's message and where its outcome goes.
pub(super) struct Waiting {
    pub(super) queue: String,
    pub(super) message: Message,
    pub(super) reply: oneshot::Sender<Result<(), Error>>,
}

/// The messages waiting for a leader, and how many leaders run.
#[derive(Default)]
pub(super) struct Gathering {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    leaders: usize,
    /// The leaders publishing to each queue now.
    publishing: std::collections::HashMap<String, usize>,
}

impl State {
    /// A leader is done with `queue`'s batch.
    fn done_with(&mut self, queue: &str) {
        if let Some(count) = self.publishing.get_mut(queue) {
            *count -= 1;
            if *count == 0 {
                self.publishing.remove(queue);
            }
        }
    }
}

impl Gathering {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the gathering lock is never poisoned")
    }

    /// Leaves `waiting` for a leader. `Some`: the caller must run a leader
    /// with it, counted already (dropped unused, it is counted out).
    pub(super) fn push(self: &Arc<Self>, waiting: Waiting) -> Option<Leading> {
        let mut state = self.state();
        state.waiting.push(waiting);
        if state.leaders < LEADERS {
            state.leaders += 1;
            return Some(Leading {
                gathering: Arc::clone(self),
                ended: false,
                queue: None,
            });
        }
        None
    }
}

/// A leader, counted. Dropped before it saw nothing waiting (a panic, a
/// task dropped before it ran, the runtime's end), it is counted out,
/// and if it was the last, the messages still waiting are dropped: their
/// callers learn that nothing will publish them.
pub(super) struct Leading {
    gathering: Arc<Gathering>,
    ended: bool,
    /// The queue of the batch it publishes now.
    queue: Option<String>,
}

impl Leading {
    /// The next messages, of callers still there: the oldest waiting for a
    /// queue that fewer than [`PER_QUEUE`] leaders publish to, and those
    /// after it for the same queue, at most `most` in all. None: the
    /// leader is counted out, and ends (a leader that finishes a batch
    /// takes what waits for a queue it made free).
    pub(super) fn next(&mut self, most: usize) -> Vec<Waiting> {
        let mut state = self.gathering.state();
        if let Some(queue) = self.queue.take() {
            state.done_with(&queue);
        }
        state.waiting.retain(|waiting| !waiting.reply.is_closed());
        let free = |state: &State, queue: &str| {
            state.publishing.get(queue).copied().unwrap_or(0) < PER_QUEUE
        };
        let Some(queue) = state
            .waiting
            .iter()
            .find(|waiting| free(&state, &waiting.queue))
            .map(|waiting| waiting.queue.clone())
        else {
            state.leaders -= 1;
            self.ended = true;
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut kept = Vec::with_capacity(state.waiting.len());
        for waiting in state.waiting.drain(..) {
            if batch.len() < most && waiting.queue == queue {
                batch.push(waiting);
            } else {
                kept.push(waiting);
            }
        }
        state.waiting = kept;
        *state.publishing.entry(queue.clone()).or_insert(0) += 1;
        self.queue = Some(queue);
        batch
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut state = self.gathering.state();
        if let Some(queue) = self.queue.take() {
            state.done_with(&queue);
        }
        state.leaders -= 1;
        if state.leaders == 0 {
            state.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(queue: &str) -> (Waiting, oneshot::Receiver<Result<(), Error>>) {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            queue: queue.to_owned(),
            message: Message::new(b"{}".to_vec()),
            reply,
        };
        (waiting, answer)
    }

    #[test]
    fn at_most_so_many_leaders_and_each_ends_once_nothing_waits() {
        let gathering = Arc::new(Gathering::default());
        let mut answers = Vec::new();
        let mut leaders = Vec::new();
        for _ in 0..LEADERS + 2 {
            let (waiting, answer) = waiting("q");
            answers.push(answer);
            leaders.extend(gathering.push(waiting));
        }
        assert_eq!(leaders.len(), LEADERS);
        let mut leading = leaders.pop().unwrap();
        assert_eq!(leading.next(2).len(), 2);
        assert_eq!(leading.next(LEADERS).len(), LEADERS);
        assert!(leading.next(LEADERS).is_empty());
        drop(leading);
        assert_eq!(gathering.state().leaders, LEADERS - 1);
        assert!(gathering.state().publishing.is_empty());
        // The others, dropped before they ran, are counted out.
        drop(leaders);
        assert_eq!(gathering.state().leaders, 0);
    }

    #[test]
    fn a_batch_is_one_queues_and_a_busy_queue_leaves_leaders_to_the_others() {
        let gathering = Arc::new(Gathering::default());
        let mut answers = Vec::new();
        let mut leaders = Vec::new();
        for queue in ["slow", "fast", "slow", "fast", "slow"] {
            let (message, answer) = waiting(queue);
            answers.push(answer);
            leaders.extend(gathering.push(message));
        }
        // One queue's messages, oldest first, in order.
        let mut first = leaders.pop().unwrap();
        let batch = first.next(10);
        assert_eq!(
            batch.iter().map(|w| w.queue.as_str()).collect::<Vec<_>>(),
            ["slow", "slow", "slow"]
        );
        let mut second = leaders.pop().unwrap();
        assert_eq!(second.next(10).len(), 2, "the other queue's");
        // A queue with PER_QUEUE leaders publishing to it waits for one.
        drop(leaders);
        let mut slow = Vec::new();
        for _ in 1..PER_QUEUE {
            let (message, answer) = waiting("slow");
            answers.push(answer);
            let mut leading = gathering.push(message).unwrap();
            assert_eq!(leading.next(10).len(), 1);
            slow.push(leading);
        }
        let (message, answer) = waiting("slow");
        answers.push(answer);
        let mut idle = gathering.push(message).unwrap();
        assert!(idle.next(10).is_empty(), "slow is at its limit");
        // The second leader, done with its batch, takes another queue's
        // message before the one slow must wait for.
        let (message, answer) = waiting("fast");
        answers.push(answer);
        let _ = gathering.push(message);
        assert_eq!(
            second
                .next(10)
                .iter()
                .map(|w| w.queue.as_str())
                .collect::<Vec<_>>(),
            ["fast"]
        );
        // A slow leader done with its batch frees the queue: the waiting
        // message goes.
        assert_eq!(first.next(10).len(), 1);
        drop((first, second, slow));
    }

    #[test]
    fn a_caller_gone_takes_its_message_back() {
        let gathering = Arc::new(Gathering::default());
        let (kept, _answer) = waiting("kept");
        let (gone, answer) = waiting("gone");
        let mut leading = gathering.push(gone).unwrap();
        let _other = gathering.push(kept).unwrap();
        drop(answer);
        let batch = leading.next(10);
        assert_eq!(
            batch.iter().map(|w| w.queue.as_str()).collect::<Vec<_>>(),
            ["kept"]
        );
    }

    #[test]
    fn the_last_leader_dropped_mid_way_drops_what_waits() {
        let gathering = Arc::new(Gathering::default());
        let (first, _first_answer) = waiting("first");
        let (second, mut second_answer) = waiting("second");
        let mut leading = gathering.push(first).unwrap();
        let _publishing = leading.next(1);
        let other = gathering.push(second).unwrap();
        // Both leaders dropped (a panic, the runtime's end) before the
        // second took "second": its caller hears that nothing will send it.
        drop(other);
        assert_eq!(gathering.state().waiting.len(), 1);
        drop(leading);
        assert_eq!(gathering.state().leaders, 0);
        assert!(matches!(
            second_answer.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn large_bodies_and_current_thread_runtimes_are_not_gathered() {
        let small = Message::new(vec![0; GATHERED_BODY]);
        let large = Message::new(vec![0; GATHERED_BODY + 1]);
        assert!(!gatherable(&small), "no runtime");
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        current.block_on(async { assert!(!gatherable(&small)) });
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        multi.block_on(async {
            assert!(gatherable(&small));
            assert!(!gatherable(&large));
        });
    }
}
