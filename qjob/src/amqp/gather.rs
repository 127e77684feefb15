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
//! [`Broker::publish`]: crate::broker::Broker::publish

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::Error;
use crate::broker::Message;

/// The most sessions publishing gathered messages at once: a message
/// that comes while they all publish waits for the next one to end.
const LEADERS: usize = 16;

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

    /// Leaves `waiting` for a leader. True: the caller must start one
    /// ([`Gathering::lead`]), counted already.
    pub(super) fn push(&self, waiting: Waiting) -> bool {
        let mut state = self.state();
        state.waiting.push(waiting);
        if state.leaders < LEADERS {
            state.leaders += 1;
            return true;
        }
        false
    }

    /// A leader's turn, counted by [`Gathering::push`]: takes batches
    /// until none waits.
    pub(super) fn lead(&self) -> Leading<'_> {
        Leading {
            gathering: self,
            ended: false,
        }
    }
}

/// A running leader. Dropped before it saw nothing waiting (a panic, the
/// runtime's end), it is counted out, and if it was the last, the
/// messages still waiting are dropped: their callers learn that nothing
/// will publish them.
pub(super) struct Leading<'a> {
    gathering: &'a Gathering,
    ended: bool,
}

impl Leading<'_> {
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

impl Drop for Leading<'_> {
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
    fn at_most_four_leaders_and_each_ends_once_nothing_waits() {
        let gathering = Gathering::default();
        let mut answers = Vec::new();
        let mut started = 0;
        for n in 0..6 {
            let (waiting, answer) = waiting(&format!("q{n}"));
            answers.push(answer);
            started += usize::from(gathering.push(waiting));
        }
        assert_eq!(started, 4);
        let mut leading = gathering.lead();
        let first = leading.next(4);
        assert_eq!(
            first.iter().map(|w| w.queue.as_str()).collect::<Vec<_>>(),
            ["q0", "q1", "q2", "q3"]
        );
        assert_eq!(leading.next(4).len(), 2);
        assert!(leading.next(4).is_empty());
        drop(leading);
        assert_eq!(gathering.state().leaders, 3);
    }

    #[test]
    fn a_caller_gone_takes_its_message_back() {
        let gathering = Gathering::default();
        let (kept, _answer) = waiting("kept");
        let (gone, answer) = waiting("gone");
        assert!(gathering.push(gone));
        assert!(gathering.push(kept));
        drop(answer);
        let mut leading = gathering.lead();
        let batch = leading.next(10);
        assert_eq!(
            batch.iter().map(|w| w.queue.as_str()).collect::<Vec<_>>(),
            ["kept"]
        );
    }

    #[test]
    fn the_last_leader_dropped_mid_way_drops_what_waits() {
        let gathering = Gathering::default();
        let (first, _first_answer) = waiting("first");
        let (second, mut second_answer) = waiting("second");
        assert!(gathering.push(first));
        let mut leading = gathering.lead();
        let _publishing = leading.next(1);
        assert!(gathering.push(second));
        // Both leaders dropped (a panic, the runtime's end) before the
        // second took "second": its caller hears that nothing will send it.
        drop(gathering.lead());
        assert_eq!(gathering.state().waiting.len(), 1);
        drop(leading);
        assert_eq!(gathering.state().leaders, 0);
        assert!(matches!(
            second_answer.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
