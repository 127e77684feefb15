//! Policies: plain, synchronous state machines and functions that the
//! dispatch loop applies. They know nothing of brokers or async.

pub(crate) mod autoscale;
pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod lanes;
pub(crate) mod partition;
pub(crate) mod rate;
