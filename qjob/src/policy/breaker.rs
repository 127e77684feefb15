//! A job type's circuit breaker: closed → open → half-open → closed.
//!
//! Closed, it counts attempts and failures over a sliding window; when at
//! least `min_attempts` were made and the failure rate reaches
//! `failure_rate`, it opens. Open, it admits nothing for `open_for`, then
//! half-opens: it admits one probe; the probe's success closes it, a failure
//! opens it again. Time is an input, so tests drive it with any clock.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::CircuitBreaker;

/// The breaker's state, as metrics and health reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Jobs flow.
    Closed,
    /// No job runs until the given time.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is allowed (or running); its outcome decides.
    HalfOpen {
        /// Whether the probe was admitted and has not finished.
        probing: bool,
    },
}

/// What the dispatcher may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Start a job.
    Run,
    /// Start no job until this time (then ask again).
    WaitUntil(Instant),
    /// Start no job until the running probe finishes.
    WaitForProbe,
}

/// The circuit breaker of one job type in one worker.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    settings: CircuitBreaker,
    state: BreakerState,
    /// Finished attempts in the window: when, and whether they failed.
    window: VecDeque<(Instant, bool)>,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(settings: CircuitBreaker) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            window: VecDeque::new(),
        }
    }

    /// The state at `now` (an open breaker whose time is up is half-open).
    pub(crate) fn state(&mut self, now: Instant) -> BreakerState {
        if let BreakerState::Open { until } = self.state
            && now >= until
        {
            self.state = BreakerState::HalfOpen { probing: false };
        }
        self.state
    }

    /// Whether a job may start at `now`. Admitting the half-open probe
    /// marks it running.
    pub(crate) fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Run,
            BreakerState::Open { until } => Admission::WaitUntil(until),
            BreakerState::HalfOpen { probing: true } => Admission::WaitForProbe,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                Admission::Run
            }
        }
    }

    /// An admitted job did not run after all: a probe it was is given up,
    /// for the next job to make.
    pub(crate) fn withdraw(&mut self) {
        if let BreakerState::HalfOpen { probing: true } = self.state {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }

    /// An admitted job finished at `now`.
    pub(crate) fn record(&mut self, now: Instant, failed: bool) {
        match self.state(now) {
            BreakerState::HalfOpen { .. } => {
                self.window.clear();
                self.state = if failed {
                    BreakerState::Open {
                        until: now + self.settings.open_for,
                    }
                } else {
                    BreakerState::Closed
                };
            }
            // A job admitted before the breaker opened finishes late: it
            // neither reopens nor closes anything.
            BreakerState::Open { .. } => {}
            BreakerState::Closed => {
                self.window.push_back((now, failed));
                self.forget_before(now.checked_sub(self.settings.window));
                if self.tripped() {
                    self.window.clear();
                    self.state = BreakerState::Open {
                        until: now + self.settings.open_for,
                    };
                }
            }
        }
    }

    fn forget_before(&mut self, start: Option<Instant>) {
        let Some(start) = start else { return };
        while self.window.front().is_some_and(|(at, _)| *at < start) {
            self.window.pop_front();
        }
    }

    fn tripped(&self) -> bool {
        let attempts = self.window.len();
        if attempts < self.settings.min_attempts as usize {
            return false;
        }
        let failures = self.window.iter().filter(|(_, failed)| *failed).count();
        failures as f64 / attempts as f64 >= self.settings.failure_rate
    }

    #[cfg(test)]
    /// The attempts counted in the window now.
    pub(crate) fn window_len(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn breaker() -> Breaker {
        Breaker::new(CircuitBreaker::new(0.5, 10, secs(60), secs(3)))
    }

    #[test]
    fn stays_closed_below_the_minimum_attempts() {
        let mut breaker = breaker();
        let t0 = Instant::now();
        for i in 0..9 {
            assert_eq!(breaker.admit(t0), Admission::Run);
            breaker.record(t0 + Duration::from_millis(i), true);
        }
        assert_eq!(breaker.state(t0), BreakerState::Closed);
    }

    #[test]
    fn opens_at_the_failure_rate_then_probes_and_closes() {
        let mut breaker = breaker();
        let t0 = Instant::now();
        for _ in 0..10 {
            breaker.record(t0, true);
        }
        assert_eq!(breaker.admit(t0), Admission::WaitUntil(t0 + secs(3)));
        assert_eq!(
            breaker.admit(t0 + secs(2)),
            Admission::WaitUntil(t0 + secs(3))
        );
        assert_eq!(breaker.admit(t0 + secs(3)), Admission::Run, "one probe");
        assert_eq!(breaker.admit(t0 + secs(3)), Admission::WaitForProbe);
        breaker.record(t0 + secs(4), false);
        assert_eq!(breaker.state(t0 + secs(4)), BreakerState::Closed);
        assert_eq!(breaker.admit(t0 + secs(4)), Admission::Run);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let mut breaker = breaker();
        let t0 = Instant::now();
        for _ in 0..10 {
            breaker.record(t0, true);
        }
        assert_eq!(breaker.admit(t0 + secs(3)), Admission::Run);
        breaker.record(t0 + secs(5), true);
        assert_eq!(
            breaker.state(t0 + secs(5)),
            BreakerState::Open {
                until: t0 + secs(8)
            }
        );
    }

    #[test]
    fn the_rate_is_measured_over_the_window_only() {
        let mut breaker = breaker();
        let t0 = Instant::now();
        for _ in 0..9 {
            breaker.record(t0, true);
        }
        // 61 s later the old failures no longer count.
        for _ in 0..10 {
            breaker.record(t0 + secs(61), false);
        }
        assert_eq!(breaker.window_len(), 10);
        breaker.record(t0 + secs(62), true);
        assert_eq!(breaker.state(t0 + secs(62)), BreakerState::Closed);
    }

    #[test]
    fn successes_keep_it_closed_under_the_rate() {
        let mut breaker = breaker();
        let t0 = Instant::now();
        for i in 0..100 {
            breaker.record(t0, i % 3 == 0);
        }
        assert_eq!(breaker.state(t0), BreakerState::Closed);
    }

    #[test]
    fn late_results_while_open_change_nothing() {
        let mut breaker = breaker();
        let t0 = Instant::now();
        for _ in 0..10 {
            breaker.record(t0, true);
        }
        breaker.record(t0 + secs(1), false);
        assert_eq!(
            breaker.admit(t0 + secs(1)),
            Admission::WaitUntil(t0 + secs(3))
        );
    }
}
