//! The dead letters from the console: browsed in place, looked up by job
//! id, replayed, discarded.

use super::Admin;
use crate::broker::Message;
use crate::dead_letters::{self, Visit, replay_message};
use crate::topology::names;
use crate::{DeadLetter, Error, headers, topology};

/// The most letters a browse, or a look-up by job id, reads from a queue
/// (holding them until it puts them back).
pub const BROWSE_AT_MOST: usize = 10_000;

/// Which dead letters to act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LetterFilter {
    /// Only those dead-lettered for this reason (`permanent`, …).
    pub reason: Option<String>,
    /// Only those whose error contains this text.
    pub error_contains: Option<String>,
}

impl LetterFilter {
    /// Every letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only letters dead-lettered for `reason`.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Only letters whose error contains `text`.
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// Whether `letter` passes.
    pub fn matches<P>(&self, letter: &DeadLetter<P>) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|reason| letter.reason == reason)
            && self
                .error_contains
                .as_deref()
                .is_none_or(|text| letter.error.contains(text))
    }
}

/// A dead letter as the console shows it: its payload as JSON.
pub type Letter = DeadLetter<serde_json::Value>;

impl Admin {
    /// The dead letters of dead-letter queue `queue` that `filter` passes,
    /// from the `offset`-th of those on, at most `limit`, oldest first.
    /// They stay in the queue, in their order: each is taken
    /// (`basic.get`) and held until the page is read, then all are put back
    /// in place. A page deep in a long queue holds every letter before it
    /// meanwhile, and another browse at the same time sees the queue
    /// without them; no browse reads more than the first
    /// [`BROWSE_AT_MOST`] letters (replay the rest by filter).
    ///
    /// # Errors
    ///
    /// The broker's error; every letter taken is put back.
    pub async fn dead_letters(
        &self,
        queue: &str,
        filter: &LetterFilter,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Letter>, Error> {
        let bounds = (offset, limit, BROWSE_AT_MOST);
        dead_letters::peek(&self.broker, queue, bounds, |letter| filter.matches(letter)).await
    }

    /// The dead letter of job `job_id` in `queue`, if it is among the first
    /// [`BROWSE_AT_MOST`] (left in place; the walk holds the letters before
    /// it).
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn dead_letter(&self, queue: &str, job_id: &str) -> Result<Option<Letter>, Error> {
        let mut found = None;
        dead_letters::walk(
            &self.broker,
            queue,
            false,
            within(job_id, |message| {
                found = Some(DeadLetter::from_message(message));
                Visit::Stop
            }),
        )
        .await?;
        Ok(found)
    }

    /// Replays the dead letter of job `job_id` from `queue` into the queue
    /// it failed on, its attempts counted afresh; the others stay in place
    /// (the walk holds the letters before it until it is found, among the
    /// first [`BROWSE_AT_MOST`]). Returns whether it was found.
    ///
    /// # Errors
    ///
    /// The broker's error (the queue it failed on no longer exists:
    /// [`Error::Unroutable`]); the letter then stays.
    pub async fn replay(&self, queue: &str, job_id: &str) -> Result<bool, Error> {
        let visit = within(job_id, |message| {
            Visit::Move(
                replay_target(queue, message),
                replay_message(message.clone()),
            )
        });
        Ok(dead_letters::walk(&self.broker, queue, false, visit).await? > 0)
    }

    /// Replays every dead letter of `queue` that `filter` passes, oldest
    /// first; the others stay in place and in order. Returns how many.
    ///
    /// # Errors
    ///
    /// As [`crate::DeadLetters::replay_where`].
    pub async fn replay_matching(
        &self,
        queue: &str,
        filter: &LetterFilter,
    ) -> Result<usize, Error> {
        dead_letters::walk(&self.broker, queue, true, |message| {
            let letter: DeadLetter<serde_json::Value> = DeadLetter::from_message(message);
            if filter.matches(&letter) {
                Visit::Move(
                    replay_target(queue, message),
                    replay_message(message.clone()),
                )
            } else {
                Visit::Keep
            }
        })
        .await
    }

    /// Removes the dead letter of job `job_id` from `queue`; the others stay
    /// in place (the walk holds the letters before it until it is found,
    /// among the first [`BROWSE_AT_MOST`]). Returns whether it was found.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn discard(&self, queue: &str, job_id: &str) -> Result<bool, Error> {
        let visit = within(job_id, |_| Visit::Discard);
        Ok(dead_letters::walk(&self.broker, queue, false, visit).await? > 0)
    }

    /// Removes every letter `queue` held when the purge started (those
    /// dead-lettered meanwhile stay); returns how many.
    ///
    /// # Errors
    ///
    /// The broker's error; what was removed before it stays removed.
    pub async fn purge(&self, queue: &str) -> Result<usize, Error> {
        dead_letters::walk(&self.broker, queue, true, |_| Visit::Discard).await
    }
}

/// A walk's visit for the letter of `job_id` among the first
/// [`BROWSE_AT_MOST`]: `found` says what to do with it; the letters before
/// it are kept, and the walk stops after it (or at the bound).
pub(super) fn within(
    job_id: &str,
    mut found: impl FnMut(&Message) -> Visit,
) -> impl FnMut(&Message) -> Visit {
    let (mut read, mut done) = (0, false);
    move |message| {
        read += 1;
        if done || read > BROWSE_AT_MOST {
            Visit::Stop
        } else if message.id.as_deref() == Some(job_id) {
            done = true;
            found(message)
        } else {
            Visit::Keep
        }
    }
}

/// Where a dead letter of `queue` is replayed: the queue it failed on
/// (`qjob-queue`; RabbitMQ's `x-first-death-queue` for one RabbitMQ moved),
/// or else the work queue the dead-letter queue is named after.
/// A sharded job's dead letter goes to the work queue, which every worker
/// consumes whatever its `shards`.
fn replay_target(queue: &str, message: &Message) -> String {
    let work = names::work_queue_of(queue);
    [headers::QUEUE, "x-first-death-queue"]
        .iter()
        .find_map(|name| message.headers.get(*name)?.as_str())
        .filter(|failed| topology::shard_index(work, failed).is_none())
        .unwrap_or(work)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_on(queue: &str) -> Message {
        let mut message = Message::default();
        message
            .headers
            .insert(headers::QUEUE.into(), queue.to_owned().into());
        message
    }

    #[test]
    fn a_dead_letter_goes_back_where_it_failed_except_to_a_shard() {
        let dlq = "mail.dlq";
        assert_eq!(replay_target(dlq, &failed_on("mail")), "mail");
        assert_eq!(replay_target(dlq, &failed_on("mail.p3")), "mail.p3");
        // A shard a later deploy may have dropped: the work queue, which
        // every worker consumes.
        assert_eq!(replay_target(dlq, &failed_on("mail.s3")), "mail");
        assert_eq!(replay_target(dlq, &failed_on("mail.sx")), "mail.sx");
        assert_eq!(replay_target(dlq, &Message::default()), "mail");
    }
}
