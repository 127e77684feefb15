//! A smooth rate limit: a token bucket that refills continuously.

use std::time::Duration;

use tokio::time::Instant;

use crate::RateLimit;

/// At most `count` starts per `per`, evenly: the bucket holds a tenth of a
/// period's tokens (at least one), so a burst after a quiet spell is short
/// and the steady rate is exact.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_token: Duration,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `limit`, as of `now`.
    ///
    /// # Panics
    ///
    /// If the limit's count is 0 (`#[job]` rejects it at compile time).
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        assert!(limit.count > 0, "a rate limit allows at least one start");
        let capacity = f64::from((limit.count / 10).max(1));
        Self {
            capacity,
            tokens: capacity,
            per_token: limit.per / limit.count,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let earned = elapsed.as_secs_f64() / self.per_token.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + earned).min(self.capacity);
    }

    /// Takes a token at `now`, or says when the next one is ready.
    ///
    /// # Errors
    ///
    /// The time to try again when the bucket is empty.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(now + self.per_token.mul_f64(missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_is_exact() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(100, Duration::from_secs(1)), start);
        let mut now = start;
        let mut started = 0;
        while now < start + Duration::from_secs(10) {
            match bucket.take(now) {
                Ok(()) => started += 1,
                Err(next) => now = next,
            }
        }
        // 10 s at 100/s, plus the initial bucket of 10.
        assert!((1000..=1011).contains(&started), "{started}");
    }

    #[test]
    fn an_empty_bucket_says_when_to_come_back() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(2, Duration::from_secs(1)), start);
        assert_eq!(bucket.take(start), Ok(()));
        let next = bucket.take(start).unwrap_err();
        assert_eq!(next, start + Duration::from_millis(500));
        assert_eq!(bucket.take(next), Ok(()));
    }

    #[test]
    fn a_quiet_spell_allows_only_a_short_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(600, Duration::from_secs(60)), start);
        let later = start + Duration::from_secs(3600);
        let burst = std::iter::from_fn(|| bucket.take(later).ok()).count();
        assert_eq!(burst, 60);
    }
}
