//! Broker-level scenarios written once against the `Broker` trait and run on
//! both brokers: what the runtime relies on, checked on RabbitMQ itself and
//! on the in-memory fake, so the fake cannot drift.

mod broadcast;
mod consuming;
mod dead_lettering;
mod priority;
mod publishing;
mod queues;
mod single_active;
mod support;

pub use broadcast::*;
pub use consuming::*;
pub use dead_lettering::*;
pub use priority::*;
pub use publishing::*;
pub use queues::*;
pub use single_active::*;
