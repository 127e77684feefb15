// The README's reference links, resolved in rustdoc (see `docs`).
#![doc = include_str!("docs/links.md")]
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// What is public, and for whom. Everything else is `pub(crate)`; a change
// to this surface shows in `public-api.txt` (`scripts/public-api`, checked
// in CI), so that it is a decision, not an accident.

pub mod admin;
mod amqp;
mod client;
mod dead_letters;
mod error;
mod id;
mod job;
mod limits;
mod options;
mod outcomes;
pub(crate) mod policy;
mod protocol;
pub mod store;
mod topology;
mod worker;

// Defining jobs: the attribute, the trait it implements (by hand too), what
// a handler receives and returns, and the options it declares.
pub use error::{BoxError, FailureKind, JobError};
pub use id::JobId;
pub use job::{Job, JobContext};
pub use limits::JobClass;
pub use options::{
    Autoscale, Backoff, CircuitBreaker, JobOptions, QueueType, RateLimit, Unique, UniqueUntil,
};
pub use qjob_macros::job;

// Producing, and what becomes of jobs that failed for good: the client, and
// the dead letters it browses and replays.
pub use client::dead_letters::DeadLetters;
pub use client::{Client, EnqueueOptions, Enqueued};
pub use dead_letters::{DeadLetter, DeadReason};

// Consuming: the worker and its builder, the health report readiness probes
// read, and the observer hook for what metrics do not say.
pub use worker::{
    AttemptEvent, AttemptOutcome, BreakerHealth, BudgetHealth, BudgetShare, Health, HealthReport,
    Observer, ScheduleHealth, SharedLimitHealth, Worker, WorkerBuilder,
};

// Periodic jobs: when they fire, and what a new leader does with the ticks
// it missed.
#[cfg(feature = "periodic")]
pub mod schedule;
#[cfg(feature = "periodic")]
pub use schedule::Schedule;

// Batches: jobs with a callback once they have all finished.
pub mod batch;

// Enqueueing inside a PostgreSQL transaction (feature `postgres`).
#[cfg(feature = "postgres")]
pub mod outbox;

// Connecting: RabbitMQ, the broker qjob ships. `Broker` and the `broker`
// module are the seam another transport implements (qjob-testkit's
// `MemoryBroker` does); the types on it are public for that reason.
pub use amqp::{AmqpBroker, AmqpOptions};
pub mod broker;
pub use broker::Broker;

// Operating: the console's view of workers, queues and dead letters, and
// its commands (the `qjob` tool and `qjob-web` are built on it).
// (`pub mod admin` above.)

// Every fallible call's error.
pub use error::Error;

// The header names and the trace context on qjob's messages, for producers,
// consumers and tools outside qjob that read or write them.
pub mod headers;
pub mod trace;

// The guides, as rustdoc pages.
pub mod docs;

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

    /// The schedule of `#[job(cron = "...")]`, whose expression the macro
    /// checked.
    #[cfg(feature = "periodic")]
    pub fn schedule(expression: &str) -> crate::Schedule {
        crate::Schedule::cron(expression).expect("#[job] checked the cron expression")
    }

    #[cfg(feature = "periodic")]
    /// A `cron` job's payload: one with a default, which each tick carries.
    #[diagnostic::on_unimplemented(
        message = "a job with `cron` needs a payload with a default: `{Self}` does not implement `Default`",
        label = "the schedule's payload",
        note = "use `()` or a payload that implements `Default`, or leave `cron` out and add the schedule with its payload through `WorkerBuilder::schedule`"
    )]
    pub trait SchedulePayload {
        /// The payload each tick carries.
        fn ticked() -> Self;
    }

    #[cfg(feature = "periodic")]
    impl<T: Default> SchedulePayload for T {
        fn ticked() -> Self {
            T::default()
        }
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

    /// The unique key of a payload's `unique(key = …)` field: its JSON;
    /// none (the job is not unique) for a `null` (an `Option` that is
    /// `None`).
    pub fn unique_key<K: serde::Serialize + ?Sized>(key: &K) -> Option<String> {
        serde_json::to_string(key)
            .ok()
            .filter(|json| json != "null")
    }

    /// The JSON value of a payload's schema.
    pub use serde_json::Value as JsonValue;

    /// The schema of `#[job(schema)]`'s payload: draft-07, as
    /// [`Job::payload_schema`](crate::Job::payload_schema) says.
    pub fn payload_schema<P: PayloadSchema + ?Sized>() -> Option<JsonValue> {
        Some(P::payload_schema())
    }

    /// A payload that `#[job(schema)]` can describe: one that derives
    /// `schemars::JsonSchema`, with qjob's feature `schemars`.
    #[cfg(feature = "schemars")]
    #[diagnostic::on_unimplemented(
        message = "`#[job(schema)]` needs a payload that implements `schemars::JsonSchema`; `{Self}` does not",
        label = "the payload's schema",
        note = "derive it: `#[derive(schemars::JsonSchema)]` (schemars 1), or leave `schema` out"
    )]
    pub trait PayloadSchema {
        /// The payload's JSON Schema.
        fn payload_schema() -> JsonValue;
    }

    #[cfg(feature = "schemars")]
    impl<T: schemars::JsonSchema + ?Sized> PayloadSchema for T {
        fn payload_schema() -> JsonValue {
            schemars::generate::SchemaSettings::draft07()
                .into_generator()
                .into_root_schema_for::<T>()
                .to_value()
        }
    }

    /// Without qjob's feature `schemars`, no payload can be described: a
    /// `#[job(schema)]` says so at `schema`.
    #[cfg(not(feature = "schemars"))]
    #[diagnostic::on_unimplemented(
        message = "`#[job(schema)]` needs qjob's feature `schemars`",
        label = "the payload's schema",
        note = "turn it on (`features = [\"schemars\"]` on qjob in Cargo.toml) and derive `schemars::JsonSchema` for the payload; or leave `schema` out"
    )]
    pub trait PayloadSchema {
        /// The payload's JSON Schema.
        fn payload_schema() -> JsonValue;
    }

    /// The partition key of a payload's `partition_by` field.
    pub fn partition_key<K: PartitionKey + ?Sized>(key: &K) -> String {
        key.key_text()
    }
}
