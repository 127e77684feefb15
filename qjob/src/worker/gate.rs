//! A job type's gate: its circuit breaker and rate limit, applied before
//! each attempt. While the breaker is open no handler runs and nothing is
//! rejected or dead-lettered: deliveries simply wait, unacked.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::JobOptions;
use crate::policy::breaker::{Admission, Breaker, BreakerState};
use crate::policy::rate::TokenBucket;
use crate::worker::health::BreakerHealth;

pub(crate) struct Gate {
    job: &'static str,
    queue: String,
    breaker: Option<Mutex<Breaker>>,
    bucket: Option<Mutex<TokenBucket>>,
    /// Woken when the breaker's probe finishes.
    probed: Notify,
}

impl Gate {
    /// The gate of a job type, if it has a breaker or a rate limit.
    pub(crate) fn new(job: &'static str, options: &JobOptions) -> Option<Arc<Gate>> {
        let queue = options.queue().to_owned();
        let breaker = options
            .circuit_breaker()
            .map(|b| Mutex::new(Breaker::new(b)));
        let bucket = options
            .rate_limit()
            .map(|limit| Mutex::new(TokenBucket::new(limit, Instant::now())));
        (breaker.is_some() || bucket.is_some()).then(|| {
            Arc::new(Gate {
                job,
                queue,
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
        metrics::gauge!("qjob_circuit_breaker_state", "queue" => self.queue.clone())
            .set(BreakerHealth::from(after).as_gauge());
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

    /// An attempt that entered does not run after all (its delivery's
    /// channel closed while it waited): no verdict; a probe it was is made
    /// by the next attempt.
    pub(crate) fn withdraw(&self) {
        if let Some(breaker) = &self.breaker {
            breaker.lock().expect("breaker poisoned").withdraw();
            self.probed.notify_waiters();
        }
    }

    /// The breaker's state now, if the job has one.
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        let breaker = self.breaker.as_ref()?;
        Some(
            breaker
                .lock()
                .expect("breaker poisoned")
                .state(Instant::now()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::CircuitBreaker;

    #[test]
    fn breaker_state_is_a_gauge_by_queue() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let options = JobOptions::new("hooks").with_circuit_breaker(CircuitBreaker::new(
            0.5,
            2,
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let gate = Gate::new("deliver", &options).unwrap();
        let gauge = || {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find(|(key, ..)| key.key().name() == "qjob_circuit_breaker_state")
                .map(|(key, _, _, value)| {
                    (
                        key.key()
                            .labels()
                            .map(|l| l.value().to_owned())
                            .collect::<Vec<_>>(),
                        value,
                    )
                })
        };
        metrics::with_local_recorder(&recorder, || {
            gate.leave(false);
            assert_eq!(
                gauge(),
                Some((vec!["hooks".to_owned()], DebugValue::Gauge(0.0.into())))
            );
            gate.leave(true);
            gate.leave(true);
            assert_eq!(
                gauge(),
                Some((vec!["hooks".to_owned()], DebugValue::Gauge(1.0.into())))
            );
        });
        assert_eq!(
            gate.breaker_state().map(BreakerHealth::from),
            Some(BreakerHealth::Open)
        );
    }
}
