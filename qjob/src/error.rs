//! Errors of the runtime ([`Error`]) and of handlers ([`JobError`]).

use std::fmt;
use std::time::Duration;

/// A boxed error from a transport, kept opaque so that no transport type
/// appears in qjob's API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in qjob itself: connecting, declaring, publishing,
/// consuming, or configuring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached or refused the connection.
    #[error("could not connect to the broker at {url}: {source}")]
    Connect {
        /// The address tried, with any password hidden.
        url: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// A broker operation failed (channel or connection error, closed connection).
    #[error("{operation} failed: {source}")]
    Broker {
        /// What qjob was doing, e.g. `publish to queue "billing.charge"`.
        operation: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// The broker declined a publish with a negative confirm (`basic.nack`).
    #[error(
        "the broker rejected the message published to queue {queue:?} (negative publisher confirm)"
    )]
    PublishRejected {
        /// The queue published to.
        queue: String,
    },
    /// The queue is at its `max_length` and rejects publishes
    /// (`x-overflow = reject-publish`): the job was not enqueued.
    #[error(
        "queue {queue:?} is full (max_length {max_length}): the broker rejected the job; retry later or raise max_length"
    )]
    QueueFull {
        /// The queue published to.
        queue: String,
        /// Its length limit.
        max_length: u32,
    },
    /// A queue exists with other arguments than this side declares.
    #[error(
        "queue {queue:?} already exists with {argument} = {existing}, but it is declared with {argument} = {requested}: declare it the same way everywhere, or delete it and let qjob declare it again"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The argument that differs, e.g. `x-max-length`.
        argument: String,
        /// Its value on the broker (`none` when absent).
        existing: String,
        /// The value declared now (`none` when absent).
        requested: String,
    },
    /// The message could not be routed: the queue does not exist.
    #[error("the message published to queue {queue:?} was returned unroutable: {reason}")]
    Unroutable {
        /// The queue published to.
        queue: String,
        /// The broker's reply text.
        reason: String,
    },
    /// The broker blocks publishing on this connection (a memory or disk
    /// alarm): nothing was published; retry once it clears.
    #[error(
        "the broker blocks publishing ({reason}): nothing was published; retry once the broker's resource alarm clears"
    )]
    Blocked {
        /// The broker's reason.
        reason: String,
    },
    /// A publish was not sent at all (an earlier one of its batch failed,
    /// or no publishing channel came free in time): nothing of it reached
    /// the broker, so retrying cannot duplicate it.
    #[error("{operation}: not sent, {reason}")]
    NotSent {
        /// The publish.
        operation: String,
        /// Why it was not sent.
        reason: String,
    },
    /// An operation took longer than its limit; its outcome is unknown (a
    /// publish may or may not have been stored).
    #[error("{operation} did not complete within {after:?}")]
    Timeout {
        /// What timed out.
        operation: String,
        /// The limit.
        after: std::time::Duration,
    },
    /// The payload could not be serialized to JSON.
    #[error("could not serialize the payload of job {job}: {source}")]
    Serialize {
        /// The job's name.
        job: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration is invalid (for example a malformed environment override).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store of locks ([`crate::store::Store`]) could not be reached or
    /// refused: a unique job is then not enqueued.
    #[error("the store failed to {operation}: {message}")]
    Store {
        /// What was asked of it.
        operation: String,
        /// Why it failed.
        message: String,
    },
    /// The database of the outbox ([`crate::outbox`]) failed: the job was
    /// then not written (the caller's transaction should roll back), or a
    /// relay's round did not complete (its rows are published later).
    #[error("the database failed to {operation}: {source}")]
    Database {
        /// What was asked of it.
        operation: String,
        /// The database driver's error (a `sqlx::Error`).
        #[source]
        source: BoxError,
    },
    /// The worker was run with no job registered.
    #[error("no job registered with the worker: `register` a job before running it")]
    NoJobRegistered,
    /// Two registered job types consume the same queue.
    #[error(
        "jobs {first} and {second} both consume queue {queue:?}; each queue belongs to one job type: give one of them another `queue`"
    )]
    QueueTaken {
        /// The queue.
        queue: String,
        /// The job type registered first.
        first: &'static str,
        /// The job type registered second.
        second: &'static str,
    },
}

impl Error {
    /// Wraps a transport error with what qjob was doing.
    pub fn broker(operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Broker {
            operation: operation.into(),
            source: source.into(),
        }
    }
}

/// How a failed attempt should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Retry if attempts are left, after the job's backoff.
    Retryable,
    /// Retry if attempts are left, after this delay instead of the backoff.
    RetryAfter(Duration),
    /// Do not retry: dead-letter now.
    Permanent,
}

/// The error a handler returns.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into a `JobError`,
/// so `?` works in handlers; such an error is retryable. Like `anyhow::Error`,
/// `JobError` does not itself implement `std::error::Error` (that would make
/// the blanket conversion impossible).
///
/// # Examples
///
/// ```
/// use qjob::JobError;
/// use std::time::Duration;
///
/// fn parse(s: &str) -> Result<u64, JobError> {
///     let n: u64 = s.parse()?; // retryable
///     if n == 0 {
///         return Err(JobError::permanent(JobError::msg("zero is never valid")));
///     }
///     if n > 100 {
///         return Err(JobError::retry_after(JobError::msg("busy"), Duration::from_secs(30)));
///     }
///     Ok(n)
/// }
/// assert!(parse("x").unwrap_err().is_retryable());
/// assert!(parse("0").unwrap_err().is_permanent());
/// ```
pub struct JobError {
    source: BoxError,
    kind: FailureKind,
}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl JobError {
    /// A retryable error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            source: Box::new(Message(message.to_string())),
            kind: FailureKind::Retryable,
        }
    }

    /// Marks `error` permanent: the remaining retries are skipped and the job
    /// is dead-lettered at once.
    pub fn permanent(error: impl Into<JobError>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            ..error.into()
        }
    }

    /// Retries after `delay` instead of the job's backoff (if attempts are left).
    pub fn retry_after(error: impl Into<JobError>, delay: Duration) -> Self {
        Self {
            kind: FailureKind::RetryAfter(delay),
            ..error.into()
        }
    }

    /// How this failure is to be treated.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// True unless the error is permanent.
    pub fn is_retryable(&self) -> bool {
        self.kind != FailureKind::Permanent
    }

    /// True if the error skips the remaining retries.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The error and its chain of sources, joined by `": "`.
    pub fn chain(&self) -> String {
        let mut text = self.source.to_string();
        let mut next = self.source.source();
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self {
            source: Box::new(error),
            kind: FailureKind::Retryable,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_errors_convert_and_are_retryable() {
        let error: JobError = "x".parse::<u32>().unwrap_err().into();
        assert_eq!(error.kind(), FailureKind::Retryable);
        assert!(error.to_string().contains("invalid digit"));
    }

    #[test]
    fn permanent_and_retry_after_keep_the_message() {
        let error = JobError::permanent(JobError::msg("card declined"));
        assert!(error.is_permanent());
        assert_eq!(error.to_string(), "card declined");
        let error = JobError::retry_after(JobError::msg("busy"), Duration::from_secs(3));
        assert_eq!(
            error.kind(),
            FailureKind::RetryAfter(Duration::from_secs(3))
        );
        assert!(error.is_retryable());
    }

    #[test]
    fn chain_lists_sources() {
        let io = std::io::Error::other("disk full");
        let error = JobError::from(Error::broker("publish", io));
        assert_eq!(error.chain(), "publish failed: disk full: disk full");
    }
}
