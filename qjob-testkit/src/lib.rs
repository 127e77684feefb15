//! Test support for qjob: [`MemoryBroker`], an in-memory [`qjob::Broker`]
//! with RabbitMQ's semantics for what qjob uses, so that handlers and whole
//! flows are tested without RabbitMQ. The testing guide,
//! [`qjob::docs::testing`], shows the harness ([`TestKit`]), its assertions
//! and the faults it can inject.
//!
//! ```
//! use qjob::{job, Client, JobContext, JobError, Worker};
//! use qjob_testkit::MemoryBroker;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Greet { name: String }
//!
//! #[job(queue = "testkit.greet", retry = 0)]
//! async fn greet(job: Greet, _ctx: JobContext) -> Result<(), JobError> {
//!     if job.name.is_empty() {
//!         return Err(JobError::msg("no name"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
//! let broker = MemoryBroker::new();
//! let client = Client::new(broker.clone());
//! client.enqueue::<GreetJob>(Greet { name: "Ada".into() }).await?;
//! client.enqueue::<GreetJob>(Greet { name: "".into() }).await?;
//! Worker::builder(broker.clone())
//!     .register(GreetJob)
//!     .build()
//!     .run_until(broker.wait_until_empty("testkit.greet"))
//!     .await?;
//! assert_eq!(broker.messages("testkit.greet.dlq").len(), 1);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod harness;
mod memory;
mod records;
mod text;

pub use harness::TestKit;
pub use memory::MemoryBroker;
pub use qjob::DeadLetter;
pub use records::Attempt;
