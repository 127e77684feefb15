#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod amqp;
pub mod broker;
mod client;
mod dead_letters;
mod error;
pub mod headers;
mod job;
mod options;
pub mod policy;
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

    /// Converts a handler's result into the runtime's.
    pub fn into_job_result<E: Into<crate::JobError>>(
        result: Result<(), E>,
    ) -> Result<(), crate::JobError> {
        result.map_err(Into::into)
    }
}
