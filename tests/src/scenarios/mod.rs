//! Worker scenarios written once and run on both brokers: on RabbitMQ in
//! `tests/amqp_worker.rs`, in memory in `tests/memory_worker.rs`. One
//! module per topic, each with the job types its scenarios run (one queue
//! each; the memory tests use the same names: a fresh `MemoryBroker` shares
//! nothing with RabbitMQ).

mod batches;
mod capped;
mod checks;
mod dead_letters;
mod delays;
mod failures;
mod handlers;
mod ordering;
mod priority;
mod shards;

pub use crate::env::{Env, LIMIT, Running, wait_consumers};
pub use batches::*;
pub use capped::*;
pub use dead_letters::*;
pub use delays::*;
pub use failures::*;
pub use handlers::*;
pub use ordering::*;
pub use priority::*;
pub use shards::*;
