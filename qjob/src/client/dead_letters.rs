//! The client side of dead letters: [`DeadLetters`], a job type's
//! dead-letter queue to peek at and replay from.

use std::marker::PhantomData;

use super::Client;
use crate::Error;
use crate::broker::queue_depth;
use crate::dead_letters::{DeadLetter, Visit, peek, replay_message, walk};
use crate::job::Job;

impl Client {
    /// The dead-letter queue of job type `J`: peek at it, replay its jobs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize, Debug)] struct Charge { account: String }
    /// # #[qjob::job(queue = "docs.dlq.charge")]
    /// # async fn charge(job: Charge, ctx: qjob::JobContext) -> Result<(), qjob::JobError> { Ok(()) }
    /// # async fn run(client: qjob::Client) -> Result<(), qjob::Error> {
    /// for letter in client.dead_letters::<ChargeJob>().peek(10).await? {
    ///     println!("{:?} failed {} times: {}", letter.payload, letter.attempts, letter.error);
    /// }
    /// let replayed = client
    ///     .dead_letters::<ChargeJob>()
    ///     .replay_where(|letter| letter.reason == "retries-exhausted")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn dead_letters<J: Job>(&self) -> DeadLetters<'_, J> {
        DeadLetters::new(self)
    }
}

/// The dead-letter queue of job type `J`: [`Client::dead_letters`].
pub struct DeadLetters<'a, J> {
    client: &'a Client,
    job: PhantomData<J>,
}

impl<J> std::fmt::Debug for DeadLetters<'_, J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

impl<'a, J: Job> DeadLetters<'a, J> {
    fn new(client: &'a Client) -> Self {
        Self {
            client,
            job: PhantomData,
        }
    }

    /// The number of dead letters.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn count(&self) -> Result<u32, Error> {
        let queue = J::options().dead_letter_queue();
        Ok(queue_depth(self.client.broker(), &queue)
            .await?
            .unwrap_or(0))
    }

    /// The first `n` dead letters, oldest first, left in the queue in place
    /// (the walk holds the `n` it reads).
    ///
    /// # Errors
    ///
    /// The broker's error; every message taken is put back.
    pub async fn peek(&self, n: usize) -> Result<Vec<DeadLetter<J::Payload>>, Error> {
        let queue = J::options().dead_letter_queue();
        peek(
            &self.client.shared_broker(),
            &queue,
            (0, n, usize::MAX),
            |_| true,
        )
        .await
    }

    /// Replays every dead letter into the work queue; returns how many.
    ///
    /// # Errors
    ///
    /// As [`DeadLetters::replay_where`].
    pub async fn replay_all(&self) -> Result<usize, Error> {
        self.replay_where(|_| true).await
    }

    /// Replays the oldest `n` dead letters; returns how many.
    ///
    /// # Errors
    ///
    /// As [`DeadLetters::replay_where`].
    pub async fn replay_first(&self, n: usize) -> Result<usize, Error> {
        let mut replayed = 0;
        self.replay_until(|_| {
            replayed += 1;
            if replayed <= n { Some(true) } else { None }
        })
        .await
    }

    /// Replays the dead letters that `select` picks, oldest first, into the
    /// work queue with their attempt count reset. Each replay is confirmed
    /// by the broker before its dead letter is removed; the others stay in
    /// the dead-letter queue in their order. Returns how many were replayed.
    ///
    /// The walk holds at most 1 000 of the letters it keeps, to put them
    /// back in place; past those, each letter kept moves to the tail of the
    /// queue (republished, confirmed, then removed), so memory stays bounded
    /// on a queue of any size. Their order is kept; letters dead-lettered
    /// during the walk end up before them, and if the walk fails part-way,
    /// those moved so far are at the tail.
    ///
    /// # Errors
    ///
    /// The broker's error. Replays confirmed before it stay done; the dead
    /// letter being replayed and every one not replayed stay in the queue.
    pub async fn replay_where(
        &self,
        mut select: impl FnMut(&DeadLetter<J::Payload>) -> bool,
    ) -> Result<usize, Error> {
        self.replay_until(|letter| Some(select(letter))).await
    }

    /// Replays what `select` picks (`Some(true)`) until it says stop (`None`).
    async fn replay_until(
        &self,
        mut select: impl FnMut(&DeadLetter<J::Payload>) -> Option<bool>,
    ) -> Result<usize, Error> {
        if self.count().await? == 0 {
            return Ok(0);
        }
        self.client.ensure_declared::<J>().await?;
        let queue = J::options().dead_letter_queue();
        walk(&self.client.shared_broker(), &queue, true, |message| {
            let letter = DeadLetter::from_message(message);
            match select(&letter) {
                Some(true) => Visit::Move(
                    Client::target::<J>(letter.payload.as_ref()).into_owned(),
                    replay_message(message.clone()),
                ),
                Some(false) => Visit::Keep,
                None => Visit::Stop,
            }
        })
        .await
    }
}
