//! Console scenarios written once and run on both brokers: on RabbitMQ in
//! `tests/amqp_console.rs`, in memory in `tests/memory_console.rs`. The
//! RabbitMQ broker is shared with other tests, whose workers the console
//! sees too: each scenario looks at its own job type only.

mod activity;
mod cancel;
mod history;
mod letters;
mod limits;
mod pause;
mod schedules;
mod support;
mod workers;

pub use activity::*;
pub use cancel::*;
pub use history::*;
pub use letters::*;
pub use limits::*;
pub use pause::*;
pub use schedules::*;
pub use support::wait_job;
pub use workers::*;
