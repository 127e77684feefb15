//! Adaptive concurrency: how many handlers a job needs, from measured
//! throughput, handler time, queue depth and its growth — with hysteresis,
//! a cooldown, bounded steps and conservative scale-down, so that a noisy
//! depth around a threshold never makes it flap (the flaws of a
//! depth-only, five-minute-step autoscaler).
//!
//! Every interval the dispatcher feeds a [`Sample`] and applies the
//! [`Decision`]; the controller itself is pure and takes time as input.

use std::time::Duration;

use tokio::time::Instant;

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AutoscaleSettings {
    /// The fewest handlers.
    pub min: usize,
    /// The most handlers (the job's `concurrency`).
    pub max: usize,
    /// How long a job may wait in the queue: the backlog is to be drained
    /// within this.
    pub target_latency: Duration,
    /// The least time between two changes.
    pub cooldown: Duration,
    /// The largest change at once, up; scale-down moves at half of it.
    pub max_step: usize,
    /// Scale up when the need exceeds the current concurrency by this factor.
    pub up_threshold: f64,
    /// Scale down when the need is below the current concurrency by this
    /// factor (and twice the cooldown has passed).
    pub down_threshold: f64,
}

impl AutoscaleSettings {
    /// Settings between `min` and `max` with a latency target, and
    /// defaults for the rest: 30 s cooldown, steps of a quarter of the range
    /// (at least 1), scale up above 110 % of the current need, down below 60 %.
    pub(crate) fn new(min: usize, max: usize, target_latency: Duration) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Self {
            min,
            max,
            target_latency,
            cooldown: Duration::from_secs(30),
            max_step: ((max - min) / 4).max(1),
            up_threshold: 1.1,
            down_threshold: 0.6,
        }
    }
}

/// What was measured over the last interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// When.
    pub at: Instant,
    /// The queue's ready messages, or `None` if sampling failed (the last
    /// depth is used).
    pub depth: Option<u64>,
    /// Jobs finished since the previous sample.
    pub completed: u64,
    /// Handler time those jobs took, in all.
    pub busy: Duration,
}

/// Why the controller decided what it did (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Nothing measured yet.
    NoData,
    /// The need is within the hysteresis band.
    Steady,
    /// Scaled up to meet the need.
    ScaleUp,
    /// Scaled down.
    ScaleDown,
    /// A change is due but the cooldown has not passed.
    Cooldown,
}

impl Reason {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::NoData => "no_data",
            Reason::Steady => "steady",
            Reason::ScaleUp => "scale_up",
            Reason::ScaleDown => "scale_down",
            Reason::Cooldown => "cooldown",
        }
    }
}

/// The controller's answer for one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The concurrency to run with now.
    pub concurrency: usize,
    /// The concurrency the load needs (unclamped by `max`).
    pub needed: usize,
    /// Workers an external autoscaler should run: the need over `max`.
    pub replicas: usize,
    /// Why.
    pub reason: Reason,
}

/// The controller of one job type in one worker.
#[derive(Debug, Clone)]
pub(crate) struct Autoscaler {
    settings: AutoscaleSettings,
    concurrency: usize,
    last_change: Option<Instant>,
    last: Option<(Instant, u64)>,
    /// Smoothed seconds per job.
    job_time: Option<f64>,
    /// Smoothed need: scaling up needs the raw need *and* this above the
    /// current concurrency, scaling down needs this below it, so a single
    /// noisy sample moves nothing.
    smoothed_need: Option<f64>,
}

impl Autoscaler {
    /// Starts at `min`.
    pub(crate) fn new(settings: AutoscaleSettings) -> Self {
        Self {
            settings,
            concurrency: settings.min,
            last_change: None,
            last: None,
            job_time: None,
            smoothed_need: None,
        }
    }

    /// Takes a sample and decides.
    pub(crate) fn observe(&mut self, sample: Sample) -> Decision {
        let s = self.settings;
        if sample.completed > 0 {
            let per_job = sample.busy.as_secs_f64() / sample.completed as f64;
            self.job_time = Some(match self.job_time {
                Some(smoothed) => 0.7 * smoothed + 0.3 * per_job,
                None => per_job,
            });
        }
        let depth = sample.depth.or(self.last.map(|(_, depth)| depth));
        let (Some(depth), Some(job_time)) = (depth, self.job_time) else {
            return self.decision(self.concurrency, Reason::NoData);
        };
        let elapsed = self
            .last
            .map(|(at, _)| sample.at.saturating_duration_since(at).as_secs_f64())
            .filter(|secs| *secs > 0.0);
        let previous_depth = self.last.map(|(_, depth)| depth);
        self.last = Some((sample.at, depth));
        // Little's law: handlers busy at the arrival rate, plus enough to
        // drain the backlog within the latency target.
        let arrivals = match (elapsed, previous_depth) {
            (Some(secs), Some(before)) => {
                let throughput = sample.completed as f64 / secs;
                let growth = (depth as f64 - before as f64) / secs;
                (throughput + growth).max(0.0)
            }
            _ => 0.0,
        };
        let backlog = depth as f64 * job_time / s.target_latency.as_secs_f64().max(0.001);
        let needed = (arrivals * job_time + backlog).ceil().max(1.0) as usize;
        let smoothed = match self.smoothed_need {
            Some(previous) => 0.6 * previous + 0.4 * needed as f64,
            None => needed as f64,
        };
        self.smoothed_need = Some(smoothed);
        let current = self.concurrency as f64;
        let since_change = self
            .last_change
            .map_or(Duration::MAX, |at| sample.at.saturating_duration_since(at));
        let target = needed.clamp(s.min, s.max);
        if needed as f64 > current * s.up_threshold
            && smoothed > current
            && target > self.concurrency
        {
            if since_change < s.cooldown {
                return self.decision(needed, Reason::Cooldown);
            }
            self.change(sample.at, (self.concurrency + s.max_step).min(target));
            return self.decision(needed, Reason::ScaleUp);
        }
        if smoothed < current * s.down_threshold && target < self.concurrency {
            if since_change < s.cooldown.saturating_mul(2) {
                return self.decision(needed, Reason::Cooldown);
            }
            let step = (s.max_step / 2).max(1);
            let floor = (smoothed.ceil() as usize).clamp(s.min, s.max);
            self.change(sample.at, self.concurrency.saturating_sub(step).max(floor));
            return self.decision(needed, Reason::ScaleDown);
        }
        self.decision(needed, Reason::Steady)
    }

    fn change(&mut self, at: Instant, concurrency: usize) {
        self.concurrency = concurrency;
        self.last_change = Some(at);
    }

    fn decision(&self, needed: usize, reason: Reason) -> Decision {
        Decision {
            concurrency: self.concurrency,
            needed,
            replicas: needed.div_ceil(self.settings.max).max(1),
            reason,
        }
    }
}

/// The prefetch that matches `concurrency` handlers when `prefetch` is
/// what the job configured for `max` handlers: the same share, never fewer
/// messages than handlers (an idle handler with nothing to take is waste),
/// never more than the configured prefetch (the operator's memory bound).
pub(crate) fn prefetch_for(concurrency: usize, max: usize, prefetch: u16) -> u16 {
    let configured = usize::from(prefetch.max(1));
    let share = (configured * concurrency).div_ceil(max.max(1));
    let matched = share.max(concurrency).min(configured).max(1);
    u16::try_from(matched).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_follows_the_handlers_within_bounds() {
        assert_eq!(prefetch_for(10, 10, 200), 200);
        assert_eq!(prefetch_for(1, 10, 200), 20);
        assert_eq!(prefetch_for(3, 10, 5), 3);
        assert_eq!(prefetch_for(8, 10, 5), 5);
    }

    const INTERVAL: Duration = Duration::from_secs(5);

    /// Replays a load trace: per interval, (depth, jobs completed, seconds per job).
    fn replay(scaler: &mut Autoscaler, trace: &[(u64, u64, f64)]) -> Vec<Decision> {
        let start = Instant::now();
        trace
            .iter()
            .enumerate()
            .map(|(i, &(depth, completed, per_job))| {
                scaler.observe(Sample {
                    at: start + INTERVAL * i as u32,
                    depth: Some(depth),
                    completed,
                    busy: Duration::from_secs_f64(per_job * completed as f64),
                })
            })
            .collect()
    }

    fn settings() -> AutoscaleSettings {
        AutoscaleSettings {
            cooldown: INTERVAL,
            ..AutoscaleSettings::new(2, 50, Duration::from_secs(10))
        }
    }

    #[test]
    fn a_burst_reaches_the_needed_concurrency_within_a_few_intervals() {
        let mut scaler = Autoscaler::new(settings());
        // 5 000 jobs of 100 ms land at once: 50 handlers drain them in 10 s.
        let trace = [
            (0, 10, 0.1),
            (5000, 10, 0.1),
            (4900, 100, 0.1),
            (4500, 400, 0.1),
            (4000, 500, 0.1),
            (3000, 1000, 0.1),
            (2000, 1000, 0.1),
            (1000, 1000, 0.1),
        ];
        let decisions = replay(&mut scaler, &trace);
        // Within the hysteresis band of the need three intervals after the burst.
        let reached = decisions
            .iter()
            .position(|d| d.concurrency as f64 * 1.1 >= d.needed.min(50) as f64 && d.needed > 10);
        assert!(reached.is_some_and(|i| i <= 4), "{decisions:#?}");
        assert!(decisions.iter().all(|d| d.concurrency <= 50));
        // Steps are bounded: a quarter of the range at most.
        for pair in decisions.windows(2) {
            assert!(
                pair[1].concurrency.abs_diff(pair[0].concurrency) <= 12,
                "{decisions:#?}"
            );
        }
    }

    #[test]
    fn a_noisy_flat_load_does_not_flap() {
        let mut scaler = Autoscaler::new(settings());
        // ~20 jobs/s of 250 ms: about 5 handlers; depth wobbles 0..40.
        let trace: Vec<(u64, u64, f64)> = (0..60)
            .map(|i| (if i % 2 == 0 { 40 } else { 0 }, 100, 0.25))
            .collect();
        let decisions = replay(&mut scaler, &trace);
        let changes = decisions
            .windows(2)
            .filter(|pair| pair[0].concurrency != pair[1].concurrency)
            .count();
        assert!(changes <= 3, "{changes} changes: {decisions:#?}");
    }

    #[test]
    fn scale_down_waits_for_twice_the_cooldown_and_moves_slowly() {
        let mut scaler = Autoscaler::new(settings());
        let busy: Vec<(u64, u64, f64)> = vec![(5000, 500, 0.1); 6];
        let idle: Vec<(u64, u64, f64)> = vec![(0, 1, 0.1); 12];
        let trace: Vec<_> = busy.into_iter().chain(idle).collect();
        let decisions = replay(&mut scaler, &trace);
        let peak = decisions[5].concurrency;
        assert!(peak >= 30, "{decisions:#?}");
        // No scale-down within twice the cooldown (two intervals) of the
        // last change.
        let last_up = decisions
            .iter()
            .rposition(|d| d.reason == Reason::ScaleUp)
            .unwrap();
        assert_ne!(
            decisions[last_up + 1].reason,
            Reason::ScaleDown,
            "{decisions:#?}"
        );
        let downs: Vec<_> = decisions[6..]
            .windows(2)
            .filter(|p| p[1].concurrency < p[0].concurrency)
            .map(|p| p[0].concurrency - p[1].concurrency)
            .collect();
        assert!(!downs.is_empty(), "{decisions:#?}");
        assert!(downs.iter().all(|d| *d <= 6), "half steps down: {downs:?}");
        assert!(decisions.last().unwrap().concurrency < peak);
    }

    #[test]
    fn slow_jobs_need_more_handlers_than_fast_ones_for_the_same_queue() {
        let fast = replay(
            &mut Autoscaler::new(settings()),
            &[(500, 100, 0.01), (500, 100, 0.01)],
        );
        let slow = replay(
            &mut Autoscaler::new(settings()),
            &[(500, 100, 1.0), (500, 100, 1.0)],
        );
        assert!(slow[1].needed > fast[1].needed * 10, "{fast:?} {slow:?}");
    }

    #[test]
    fn a_failed_sample_uses_the_last_depth_and_replicas_follow_the_need() {
        let mut scaler = Autoscaler::new(settings());
        let start = Instant::now();
        let first = scaler.observe(Sample {
            at: start,
            depth: Some(10_000),
            completed: 100,
            busy: Duration::from_secs(100),
        });
        let blind = scaler.observe(Sample {
            at: start + INTERVAL,
            depth: None,
            completed: 100,
            busy: Duration::from_secs(100),
        });
        assert_ne!(blind.reason, Reason::NoData);
        assert!(first.needed > 50 && first.replicas > 1, "{first:?}");
        assert_eq!(first.replicas, first.needed.div_ceil(50));
    }

    #[test]
    fn prefetch_follows_concurrency_within_the_configured_bound() {
        for max in [1, 7, 50] {
            for prefetch in [1u16, 5, 25, 200, 65535] {
                let mut last = 0;
                for concurrency in 1..=max {
                    let p = prefetch_for(concurrency, max, prefetch);
                    assert!(
                        p >= 1 && p <= prefetch,
                        "{concurrency}/{max} of {prefetch}: {p}"
                    );
                    assert!(p >= last, "never falls as concurrency grows");
                    assert!(usize::from(p) >= concurrency.min(usize::from(prefetch)));
                    last = p;
                }
                assert_eq!(last, prefetch, "at max the configured prefetch");
            }
        }
    }
}
