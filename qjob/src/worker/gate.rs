//! A job type's gate: its circuit breaker and rate limit, applied before
//! each attempt. While the breaker is open no handler runs and nothing is
//! rejected or dead-lettered: deliveries simply wait, unacked.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::JobOptions;
use crate::policy::breaker::{Admission, Breaker, BreakerState};
use crate::policy::rate::TokenBucket;

pub(crate) struct Gate {
    job: &'static str,
    breaker: Option<Mutex<Breaker>>,
    bucket: Option<Mutex<TokenBucket>>,
    /// Woken when the breaker's probe finishes.
    probed: Notify,
}

impl Gate {
    /// The gate of a job type, if it has a breaker or a rate limit.
    pub(crate) fn new(job: &'static str, options: &JobOptions) -> Option<Arc<Gate>> {
        let breaker = options
            .circuit_breaker()
            .map(|b| Mutex::new(Breaker::new(b)));
        let bucket = options
            .rate_limit()
            .map(|limit| Mutex::new(TokenBucket::new(limit, Instant::now())));
        (breaker.is_some() || bucket.is_some()).then(|| {
            Arc::new(Gate {
                job,
                breaker,
                bucket,
                probed: Notify::new(),
            })
        })
    }

    /// Waits until an attempt may start: the breaker admits it and the
    /// rate limit has a token.
    pub(crate) async fn enter(&self) {
        if let Some(breaker) = &self.breaker {
            loop {
                let probed = self.probed.notified();
                tokio::pin!(probed);
                probed.as_mut().enable();
                let admission = breaker
                    .lock()
                    .expect("breaker poisoned")
                    .admit(Instant::now());
                match admission {
                    Admission::Run => break,
                    Admission::WaitUntil(until) => tokio::time::sleep_until(until).await,
                    Admission::WaitForProbe => probed.await,
                }
            }
        }
        if let Some(bucket) = &self.bucket {
            loop {
                let taken = bucket.lock().expect("bucket poisoned").take(Instant::now());
                match taken {
                    Ok(()) => break,
                    Err(next) => tokio::time::sleep_until(next).await,
                }
            }
        }
    }

    /// An attempt that entered finished; `failed` unless it succeeded.
    pub(crate) fn leave(&self, failed: bool) {
        let Some(breaker) = &self.breaker else { return };
        let now = Instant::now();
        let mut breaker = breaker.lock().expect("breaker poisoned");
        let before = breaker.state(now);
        breaker.record(now, failed);
        let after = breaker.state(now);
        drop(breaker);
        match (before, after) {
            (BreakerState::Open { .. }, _) => {}
            (_, BreakerState::Open { until }) => tracing::warn!(
                job = self.job,
                open_for = ?until.saturating_duration_since(now),
                "circuit breaker opened: no {} job runs until it probes again",
                self.job
            ),
            (BreakerState::HalfOpen { .. }, BreakerState::Closed) => {
                tracing::info!(
                    job = self.job,
                    "circuit breaker closed: the probe succeeded"
                )
            }
            _ => {}
        }
        self.probed.notify_waiters();
    }
}
