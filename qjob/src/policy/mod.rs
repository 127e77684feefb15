//! Policies: plain, synchronous state machines and functions that the
//! dispatch loop applies. They know nothing of brokers or async.

pub mod autoscale;
pub mod backoff;
pub mod breaker;
pub mod lanes;
pub mod partition;
pub mod rate;
