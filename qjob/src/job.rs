//! The [`Job`] trait that `#[job]` implements, and what a handler is told
//! about its attempt ([`JobContext`]).

use std::future::Future;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use tokio_util::sync::CancellationToken;

use crate::{JobError, JobId, JobOptions};

/// A job type: a payload, a queue, options and a handler.
///
/// `#[job(...)]` implements it for a unit struct named after the function;
/// implementing it by hand works the same.
///
/// # Examples
///
/// ```
/// use qjob::{Job, JobContext, JobError, JobOptions};
///
/// struct Ping;
///
/// impl Job for Ping {
///     type Payload = String;
///     const NAME: &'static str = "ping";
///     const QUEUE: &'static str = "ping";
///
///     fn options() -> JobOptions {
///         JobOptions::new(Self::QUEUE).with_retry(0)
///     }
///
///     async fn perform(&self, payload: String, _ctx: JobContext) -> Result<(), JobError> {
///         println!("{payload}");
///         Ok(())
///     }
/// }
/// assert_eq!(Ping::options().max_attempts(), 1);
/// ```
pub trait Job: Send + Sync + 'static {
    /// The payload, carried as JSON.
    type Payload: Serialize + DeserializeOwned + Send + 'static;

    /// The job type's name (used in logs, metrics and dead-letter headers).
    const NAME: &'static str;

    /// The work queue.
    const QUEUE: &'static str;

    /// The options as written in the code (environment overrides are applied
    /// by the worker at start).
    fn options() -> JobOptions;

    /// The partition key of a payload, for partitioned jobs.
    fn partition_key(_payload: &Self::Payload) -> Option<String> {
        None
    }

    /// The uniqueness key of a payload, for unique jobs
    /// ([`JobOptions::with_unique`]): by default the payload's JSON.
    fn unique_key(payload: &Self::Payload) -> Option<String> {
        serde_json::to_string(payload).ok()
    }

    /// The key of a payload's rate, for a job with a rate per key
    /// ([`JobOptions::with_key_rate`]; `#[job(rate_by = field)]`): `None`
    /// counts the job under no key's rate.
    fn rate_key(_payload: &Self::Payload) -> Option<String> {
        None
    }

    /// The payload's JSON Schema (draft-07), which the workers report to
    /// the console, so that producers in other languages learn what to
    /// publish ([`crate::admin::AsyncApi`], `qjob asyncapi`); `None` (the
    /// default) gives none. `#[job(schema)]` returns the schema that
    /// `schemars` derives for the payload (qjob's feature `schemars`); by
    /// hand, return any draft-07 schema, with its definitions under
    /// `definitions`.
    fn payload_schema() -> Option<serde_json::Value> {
        None
    }

    #[cfg(feature = "periodic")]
    /// The schedule `#[job(cron = "...")]` declares, with the payload its
    /// ticks carry: a worker that registers the job type also fires it on
    /// this schedule ([`crate::WorkerBuilder::schedule`] adds others).
    fn schedule() -> Option<(crate::Schedule, Self::Payload)> {
        None
    }

    /// Handles one payload.
    fn perform(
        &self,
        payload: Self::Payload,
        ctx: JobContext,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// What a handler knows about the attempt it runs.
///
/// The worker builds it from the delivery; tests craft one with
/// [`JobContext::new`] and the `with_…` methods.
///
/// # Examples
///
/// ```
/// use qjob::JobContext;
///
/// let ctx = JobContext::new("orders").with_attempt(3).with_redelivered(true);
/// assert_eq!(ctx.attempt(), 3);
/// assert!(ctx.redelivered());
/// assert_eq!(ctx.queue(), "orders");
/// ```
#[derive(Debug, Clone)]
pub struct JobContext {
    job_id: JobId,
    queue: String,
    attempt: u32,
    max_attempts: u32,
    redelivered: bool,
    enqueued_at: SystemTime,
    /// Cancelled when an operator cancels this job (`None` outside a
    /// worker).
    cancel: Option<CancellationToken>,
}

impl JobContext {
    /// A first attempt of a new job on `queue`, enqueued now.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            job_id: JobId::new(),
            queue: queue.into(),
            attempt: 1,
            max_attempts: 1,
            redelivered: false,
            enqueued_at: SystemTime::now(),
            cancel: None,
        }
    }

    /// The context of an attempt in a worker: attempt `attempt` of
    /// `max_attempts` of the job `job_id` enqueued at `enqueued_at`,
    /// consumed from `queue`, told of a cancel through `cancel`.
    pub(crate) fn of_attempt(
        queue: &str,
        job_id: JobId,
        enqueued_at: SystemTime,
        (attempt, max_attempts): (u32, u32),
        redelivered: bool,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            job_id,
            queue: queue.to_owned(),
            attempt,
            max_attempts: max_attempts.max(attempt),
            redelivered,
            enqueued_at,
            cancel: Some(cancel),
        }
    }

    /// Sets the job id.
    pub fn with_job_id(mut self, job_id: JobId) -> Self {
        self.job_id = job_id;
        self
    }

    /// Sets the attempt number (1-based).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self.max_attempts = self.max_attempts.max(self.attempt);
        self
    }

    /// Sets the number of attempts the job gets in all.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(self.attempt);
        self
    }

    /// Marks the delivery as a redelivery by the broker.
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// Sets when the job was first enqueued.
    pub fn with_enqueued_at(mut self, enqueued_at: SystemTime) -> Self {
        self.enqueued_at = enqueued_at;
        self
    }

    /// The job's id, the same on every attempt.
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// The queue the job was consumed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempts the job gets in all (first plus retries).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True on the last attempt: a retryable failure now dead-letters.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// True when the broker delivers this message again after an unacked
    /// delivery (a crash, a lost connection).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// When the job was first enqueued.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }

    /// Resolves once an operator cancels this job (`qjob cancel`, the
    /// console, [`crate::admin::Admin::cancel`]); never outside a worker.
    /// A handler that can stop early selects on it and returns an error:
    /// the job is then dead-lettered with reason
    /// [`crate::DeadReason::Cancelled`], not retried. A handler that ignores
    /// it finishes normally; if it succeeds, the job is acked as usual.
    ///
    /// ```
    /// # use qjob::{JobContext, JobError};
    /// async fn export(ctx: JobContext) -> Result<(), JobError> {
    ///     tokio::select! {
    ///         _ = ctx.cancelled() => Err(JobError::msg("cancelled by an operator")),
    ///         _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => Ok(()),
    ///     }
    /// }
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    /// #     .block_on(export(JobContext::new("exports"))).unwrap();
    /// ```
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(cancel) => cancel.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Whether an operator cancelled this job (see [`JobContext::cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }
}
