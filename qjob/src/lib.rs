// The README's reference links, resolved in rustdoc (see `docs`).
#![doc = include_str!("docs/links.md")]
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod amqp;
pub mod broker;
mod client;
mod dead_letters;
pub mod docs;
mod error;
pub mod headers;
mod job;
mod options;
pub(crate) mod policy;
mod topology;
pub mod trace;
mod worker;

pub use amqp::{AmqpBroker, AmqpOptions};
pub use broker::Broker;
pub use client::Client;
pub use dead_letters::{DeadLetter, DeadLetters, DeadReason};
pub use error::{BoxError, Error, FailureKind, JobError};
pub use job::{Job, JobContext, JobId};
pub use options::{
    Autoscale, Backoff, CircuitBreaker, DEFAULT_CONCURRENCY, DEFAULT_PREFETCH, DEFAULT_RETRY,
    JobOptions, QueueType, RateLimit,
};
pub use qjob_macros::job;
pub use worker::{
    AttemptEvent, AttemptOutcome, BreakerHealth, DEFAULT_AUTOSCALE_INTERVAL,
    DEFAULT_BROKER_CONSUMER_TIMEOUT, DEFAULT_SAMPLE_INTERVAL, DEFAULT_SHUTDOWN_TIMEOUT, Health,
    HealthReport, Observer, Worker, WorkerBuilder,
};

#[doc(hidden)]
pub mod __private {
    //! Used by `#[job]`'s generated code; not part of the API.

    /// A handler's error type: one that converts into `JobError`. Named
    /// so that a wrong one is reported in these words, at the handler's
    /// return type.
    #[diagnostic::on_unimplemented(
        message = "a job handler's error type must convert into `qjob::JobError`; `{Self}` does not",
        label = "the handler's error type",
        note = "return `Result<(), qjob::JobError>` (`JobError::msg(text)` makes one from a message), or an error type that implements `std::error::Error + Send + Sync + 'static`"
    )]
    pub trait HandlerError {
        /// The error as the runtime's.
        fn into_job_error(self) -> crate::JobError;
    }

    impl<E: Into<crate::JobError>> HandlerError for E {
        fn into_job_error(self) -> crate::JobError {
            self.into()
        }
    }

    /// Converts a handler's result into the runtime's.
    pub fn into_job_result<E: HandlerError>(result: Result<(), E>) -> Result<(), crate::JobError> {
        result.map_err(HandlerError::into_job_error)
    }

    /// A `partition_by` field: anything with a text form.
    #[diagnostic::on_unimplemented(
        message = "a `partition_by` field must have a text form (implement `Display`); `{Self}` does not",
        label = "the partition key",
        note = "use a field of type `String`, `&str`, an integer or another type that implements `Display`; for an optional key, partition by a field that is always set"
    )]
    pub trait PartitionKey {
        /// The key's text.
        fn key_text(&self) -> String;
    }

    impl<T: std::fmt::Display + ?Sized> PartitionKey for T {
        fn key_text(&self) -> String {
            self.to_string()
        }
    }

    /// The partition key of a payload's `partition_by` field.
    pub fn partition_key<K: PartitionKey + ?Sized>(key: &K) -> String {
        key.key_text()
    }
}
