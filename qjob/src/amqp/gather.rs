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
//! makes the others of its session wait as long. So a message is
//! published on a session of its own, not gathered, when it is large
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
}

impl Leading {
    /// The next messages, at most `most`, those of callers still there;
    /// none: the leader is counted out, and ends.
    pub(super) fn next(&mut self, most: usize) -> Vec<Waiting> {
        let mut state = self.gathering.state();
        state.waiting.retain(|waiting| !waiting.reply.is_closed());
        if state.waiting.is_empty() {
            state.leaders -= 1;
            self.ended = true;
            return Vec::new();
        }
        let take = state.waiting.len().min(most);
        state.waiting.drain(..take).collect()
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut state = self.gathering.state();
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
        for n in 0..LEADERS + 2 {
            let (waiting, answer) = waiting(&format!("q{n}"));
            answers.push(answer);
            leaders.extend(gathering.push(waiting));
        }
        assert_eq!(leaders.len(), LEADERS);
        let mut leading = leaders.pop().unwrap();
        let first = leading.next(2);
        assert_eq!(
            first.iter().map(|w| w.queue.as_str()).collect::<Vec<_>>(),
            ["q0", "q1"]
        );
        assert_eq!(leading.next(LEADERS).len(), LEADERS);
        assert!(leading.next(LEADERS).is_empty());
        drop(leading);
        assert_eq!(gathering.state().leaders, LEADERS - 1);
        // The others, dropped before they ran, are counted out.
        drop(leaders);
        assert_eq!(gathering.state().leaders, 0);
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
