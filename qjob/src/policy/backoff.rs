//! How long a failed job waits before its next attempt.

use std::time::Duration;

use crate::Backoff;

/// Delays are rounded up to this precision below [`COARSE_FROM`] …
const FINE: Duration = Duration::from_millis(10);
/// … and to whole seconds from there on, so that the number of distinct
/// delays (each one a delay queue on the broker) stays small.
const COARSE_FROM: Duration = Duration::from_secs(10);
/// Jitter is drawn from this many steps, for the same reason.
const JITTER_STEPS: u32 = 8;

/// Computes retry delays from a job's [`Backoff`]: exponential from 1 s
/// with a 300 s cap gives 1 s, 2 s, 4 s, 8 s … 300 s (unit tests below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackoffPolicy {
    backoff: Backoff,
}

impl BackoffPolicy {
    /// The policy for `backoff`.
    pub(crate) const fn new(backoff: Backoff) -> Self {
        Self { backoff }
    }

    /// The delay before retry number `retry` (1 before the second attempt),
    /// with `jitter` in `[0, 1)` placing it between half and all of the
    /// exponential delay when jitter is on. Never overflows; rounded up to
    /// 10 ms (whole seconds from 10 s on).
    pub(crate) fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let retry = retry.max(1);
        let raw = match self.backoff {
            Backoff::Immediate => Duration::ZERO,
            Backoff::Fixed(delay) => delay,
            Backoff::Incremental { base, step } => {
                base.saturating_add(step.saturating_mul(retry - 1))
            }
            Backoff::Exponential {
                base,
                max,
                jitter: on,
            } => {
                let factor = 1u32.checked_shl(retry - 1).unwrap_or(u32::MAX);
                let capped = base.saturating_mul(factor).min(max);
                if on {
                    with_jitter(capped, jitter)
                } else {
                    capped
                }
            }
        };
        round_up(raw)
    }
}

/// Between half and all of `delay`, in [`JITTER_STEPS`] steps.
fn with_jitter(delay: Duration, jitter: f64) -> Duration {
    let step = (jitter.clamp(0.0, 1.0) * f64::from(JITTER_STEPS)).floor() as u32;
    let step = step.min(JITTER_STEPS - 1);
    let half = delay / 2;
    let rest = (delay - half).as_nanos() * u128::from(step + 1) / u128::from(JITTER_STEPS);
    half.saturating_add(from_nanos(rest))
}

fn from_nanos(nanos: u128) -> Duration {
    match u64::try_from(nanos / 1_000_000_000) {
        Ok(secs) => Duration::new(secs, (nanos % 1_000_000_000) as u32),
        Err(_) => Duration::MAX,
    }
}

/// The wait before trying again something that failed `failures` times in
/// a row (a reconnect, a re-publish, a relay round; 0 counts as 1): 100 ms,
/// doubling, at most 6.4 s and at most `max`. Not a job's backoff, which
/// its options set ([`BackoffPolicy`]).
pub(crate) fn retry_delay(failures: u32, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (Duration::from_millis(100) * 2u32.pow(doublings)).min(max)
}

/// Rounds up to the delay precision.
pub(crate) fn round_up(delay: Duration) -> Duration {
    let quantum = if delay >= COARSE_FROM {
        Duration::from_secs(1)
    } else {
        FINE
    };
    let quantum_ns = quantum.as_nanos();
    let ns = delay.as_nanos();
    from_nanos(ns.div_ceil(quantum_ns).saturating_mul(quantum_ns))
}

/// A jitter value in `[0, 1)` that is the same for the same job and attempt
/// and spread across jobs (SplitMix64 over the id's FNV-1a hash).
pub(crate) fn jitter_for(job_id: &str, attempt: u32) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in job_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = hash.wrapping_add(u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_delays_double_up_to_the_cap() {
        let policy = BackoffPolicy::new(Backoff::Exponential {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter: false,
        });
        assert_eq!(policy.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(policy.delay(4, 0.0), Duration::from_secs(8));
        assert_eq!(policy.delay(20, 0.0), Duration::from_secs(300));
    }

    const S: Duration = Duration::from_secs(1);

    fn exponential(jitter: bool) -> BackoffPolicy {
        BackoffPolicy::new(Backoff::Exponential {
            base: Duration::from_millis(200),
            max: Duration::from_secs(300),
            jitter,
        })
    }

    fn policies() -> Vec<BackoffPolicy> {
        vec![
            BackoffPolicy::new(Backoff::Immediate),
            BackoffPolicy::new(Backoff::Fixed(Duration::from_millis(1500))),
            BackoffPolicy::new(Backoff::Incremental {
                base: S,
                step: 2 * S,
            }),
            exponential(false),
            exponential(true),
            BackoffPolicy::new(Backoff::Exponential {
                base: Duration::MAX,
                max: Duration::MAX,
                jitter: true,
            }),
        ]
    }

    #[test]
    fn each_kind_computes_its_delays() {
        let fixed = BackoffPolicy::new(Backoff::Fixed(Duration::from_millis(1500)));
        assert_eq!(fixed.delay(1, 0.5), Duration::from_millis(1500));
        assert_eq!(fixed.delay(7, 0.5), Duration::from_millis(1500));
        let incremental = BackoffPolicy::new(Backoff::Incremental {
            base: S,
            step: 2 * S,
        });
        assert_eq!(incremental.delay(1, 0.0), S);
        assert_eq!(incremental.delay(3, 0.0), 5 * S);
        assert_eq!(
            BackoffPolicy::new(Backoff::Immediate).delay(3, 0.9),
            Duration::ZERO
        );
        let exponential = exponential(false);
        assert_eq!(exponential.delay(1, 0.0), Duration::from_millis(200));
        assert_eq!(exponential.delay(2, 0.0), Duration::from_millis(400));
        assert_eq!(exponential.delay(11, 0.0), Duration::from_secs(205));
        assert_eq!(exponential.delay(12, 0.0), Duration::from_secs(300));
    }

    #[test]
    fn without_jitter_delays_never_shrink_and_stop_at_the_cap() {
        for policy in policies() {
            let mut previous = Duration::ZERO;
            for retry in 1..=1000 {
                let delay = policy.delay(retry, 0.999);
                if !matches!(policy.backoff, Backoff::Exponential { jitter: true, .. }) {
                    assert!(delay >= previous, "{policy:?} retry {retry}");
                }
                if let Backoff::Exponential { max, .. } = policy.backoff {
                    assert!(delay <= round_up(max), "{policy:?} retry {retry}");
                }
                previous = delay;
            }
        }
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        let plain = exponential(false);
        let jittered = exponential(true);
        for retry in 1..=40 {
            let full = plain.delay(retry, 0.0);
            let mut seen = std::collections::BTreeSet::new();
            for sample in 0..1000 {
                let jitter = f64::from(sample) / 1000.0;
                let delay = jittered.delay(retry, jitter);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "retry {retry}: {delay:?} of {full:?}"
                );
                seen.insert(delay);
            }
            assert!(
                seen.len() <= JITTER_STEPS as usize,
                "retry {retry}: {} delays",
                seen.len()
            );
        }
    }

    #[test]
    fn no_overflow_at_attempt_1000_or_with_huge_settings() {
        for policy in policies() {
            for retry in [0, 1, 31, 32, 33, 64, 1000, u32::MAX] {
                let _ = policy.delay(retry, 0.5);
            }
        }
        let huge = BackoffPolicy::new(Backoff::Incremental {
            base: Duration::MAX,
            step: Duration::MAX,
        });
        assert!(huge.delay(1000, 0.0) >= Duration::from_secs(u64::MAX / 2));
    }

    #[test]
    fn rounding_goes_up_and_coarsens_from_ten_seconds() {
        assert_eq!(
            round_up(Duration::from_millis(1)),
            Duration::from_millis(10)
        );
        assert_eq!(
            round_up(Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            round_up(Duration::from_millis(10_001)),
            Duration::from_secs(11)
        );
        assert_eq!(round_up(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn jitter_values_are_stable_and_spread() {
        assert_eq!(jitter_for("job-1", 2), jitter_for("job-1", 2));
        let values: Vec<f64> = (0..1000)
            .map(|n| jitter_for(&format!("job-{n}"), 1))
            .collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let low = values.iter().filter(|v| **v < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below one half");
    }
}
