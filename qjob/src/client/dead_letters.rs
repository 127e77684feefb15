//! The client side of dead letters: [`DeadLetters`], a job type's
//! dead-letter queue to peek at and replay from.

use super::Client;
use crate::dead_letters::DeadLetters;
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
