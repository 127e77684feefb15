//! A job type's last hour in a heartbeat: per wall-clock minute, the
//! attempts that settled and their run times on one fixed log scale, so
//! that a console adds several workers' minutes up exactly.
//!
//! The scale: bin `i` holds run times in `[BOUNDS[i], BOUNDS[i + 1])`
//! microseconds, from 100 µs (`BOUNDS[0]`), each bound a quarter above the
//! one before (rounded down): 79 bins up to about 74 minutes. A shorter run
//! counts in the first bin, a longer one in the last. A bin stands for the
//! geometric middle of its bounds, within a factor of √1.25 (about 11.8 %)
//! of any run time it holds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One minute of one job type on one worker; a heartbeat carries only the
/// minutes with activity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MinuteStatus {
    /// The minute: whole minutes since the Unix epoch, by the worker's
    /// clock.
    pub minute: u64,
    /// Attempts that succeeded.
    #[serde(skip_serializing_if = "is_zero")]
    pub succeeded: u64,
    /// Attempts that failed (retried or dead-lettered).
    #[serde(skip_serializing_if = "is_zero")]
    pub failed: u64,
    /// Jobs dead-lettered.
    #[serde(skip_serializing_if = "is_zero")]
    pub dead_lettered: u64,
    /// The attempts' run times, as `[bin, attempts]` pairs in ascending
    /// bins, empty bins left out (the scale is in the
    /// [console guide](crate::docs::console)).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub run_times: Vec<(u16, u64)>,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// How many minutes a worker keeps and a console shows.
pub(crate) const WINDOW: usize = 60;

/// The bins' bounds in microseconds: 100 µs, then a quarter more each.
const BOUNDS: [u64; 80] = bounds();

/// The number of run-time bins.
pub(crate) const BINS: usize = BOUNDS.len() - 1;

const fn bounds() -> [u64; 80] {
    let mut bounds = [0; 80];
    bounds[0] = 100;
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] + bounds[i - 1] / 4;
        i += 1;
    }
    bounds
}

/// The bin of a run time.
pub(crate) fn bin(took: Duration) -> usize {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    BOUNDS
        .partition_point(|&bound| bound <= micros)
        .clamp(1, BINS)
        - 1
}

/// The run time bin `bin` stands for: the geometric middle of its bounds.
pub(crate) fn bin_value(bin: usize) -> Duration {
    let bin = bin.min(BINS - 1);
    let middle = (BOUNDS[bin] as f64 * BOUNDS[bin + 1] as f64).sqrt();
    Duration::from_nanos((middle * 1000.0).round() as u64)
}

/// The minute `at` falls in: whole minutes since the Unix epoch (0 for a
/// clock before it).
pub(crate) fn minute_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 60)
}

/// When minute `minute` begins.
pub(crate) fn start_of(minute: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(minute.saturating_mul(60))
}

/// Run times counted per bin, added up from several minutes or workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunTimes {
    counts: [u64; BINS],
}

impl Default for RunTimes {
    fn default() -> Self {
        Self { counts: [0; BINS] }
    }
}

impl RunTimes {
    /// Adds `[bin, attempts]` pairs as a heartbeat carries them; a bin
    /// beyond the scale (a newer worker's) counts in the last.
    pub(crate) fn add(&mut self, pairs: &[(u16, u64)]) {
        for &(bin, count) in pairs {
            let bin = usize::from(bin).min(BINS - 1);
            self.counts[bin] = self.counts[bin].saturating_add(count);
        }
    }

    /// The attempts counted.
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().fold(0, |sum, &c| sum.saturating_add(c))
    }

    /// The run time at `quantile` (0.5 for the median), nearest rank: the
    /// value of the bin that holds the `ceil(quantile × total)`-th
    /// shortest run; `None` without runs.
    pub(crate) fn quantile(&self, quantile: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (bin, &count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(count);
            if seen >= rank {
                return Some(bin_value(bin));
            }
        }
        Some(bin_value(BINS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_runs_from_100_micros_past_an_hour_in_steps_of_at_most_a_quarter() {
        assert_eq!(BINS, 79);
        assert_eq!(BOUNDS[0], 100);
        assert!(BOUNDS[BINS - 1] < 3_600_000_000 && BOUNDS[BINS] > 3_600_000_000);
        for pair in BOUNDS.windows(2) {
            let step = pair[1] as f64 / pair[0] as f64;
            assert!((1.24..=1.25).contains(&step), "{pair:?}");
        }
        assert_eq!(bin(Duration::ZERO), 0);
        assert_eq!(bin(Duration::from_micros(124)), 0);
        assert_eq!(bin(Duration::from_micros(125)), 1);
        assert_eq!(bin(Duration::from_secs(3600)), BINS - 1);
        assert_eq!(bin(Duration::MAX), BINS - 1);
    }

    #[test]
    fn a_bin_stands_for_its_run_times_within_the_square_root_of_a_step() {
        let precision = 1.25f64.sqrt();
        let mut micros = 100u64;
        while micros < 3_600_000_000 {
            let took = Duration::from_micros(micros);
            let ratio = bin_value(bin(took)).as_secs_f64() / took.as_secs_f64();
            assert!(
                (1.0 / precision - 1e-6..=precision + 1e-6).contains(&ratio),
                "{took:?}: {ratio}"
            );
            micros = micros * 11 / 10 + 1;
        }
    }

    #[test]
    fn quantiles_are_nearest_rank_over_the_bins() {
        let mut runs = RunTimes::default();
        assert_eq!(runs.quantile(0.5), None);
        let fast = bin(Duration::from_millis(10)) as u16;
        let slow = bin(Duration::from_millis(200)) as u16;
        runs.add(&[(fast, 94), (slow, 6)]);
        assert_eq!(runs.total(), 100);
        assert_eq!(runs.quantile(0.5), Some(bin_value(fast.into())));
        assert_eq!(runs.quantile(0.94), Some(bin_value(fast.into())));
        assert_eq!(runs.quantile(0.95), Some(bin_value(slow.into())));
        // A bin from a newer scale counts in the last.
        runs.add(&[(500, 1)]);
        assert_eq!(runs.quantile(1.0), Some(bin_value(BINS - 1)));
    }

    #[test]
    fn a_minute_is_sent_compact() {
        let minute = MinuteStatus {
            minute: 29_000_000,
            succeeded: 3,
            run_times: vec![(12, 3)],
            ..MinuteStatus::default()
        };
        let json = serde_json::to_string(&minute).unwrap();
        assert_eq!(
            json,
            r#"{"minute":29000000,"succeeded":3,"run_times":[[12,3]]}"#
        );
        assert_eq!(serde_json::from_str::<MinuteStatus>(&json).unwrap(), minute);
        assert_eq!(minute_of(start_of(29_000_000)), 29_000_000);
        assert_eq!(minute_of(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
