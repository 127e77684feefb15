//! Shared helpers of qjob's integration tests: a raw RabbitMQ handle to set
//! up and inspect queues, probes that handlers report to, and a task payload
//! whose behaviour each test scripts.

pub mod cluster;
pub mod conformance;
pub mod console;
pub mod env;
pub mod jobs;
pub mod limits;
pub mod outbox;
mod rabbit;
pub mod recording;
pub mod scenarios;
mod suites;
mod task;
pub mod tools;
pub mod unique;
mod wait;

pub use rabbit::{Got, Rabbit, amqp, amqp_url};
pub use task::{ANNOUNCE, Act, Probe, Task, micros_since_epoch, probe, run_task};
pub use tools::{
    close_connection, connection_channels, consumer_activity, consumer_prefetch, queue_messages,
    rabbitmq_major, rabbitmqctl, rabbitmqctl_ok,
};
pub use wait::{eventually, until};
