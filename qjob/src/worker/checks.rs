//! Start-up checks of a job's options against the broker's limits.

use std::time::Duration;

use crate::policy::backoff::BackoffPolicy;
use crate::worker::held;
use crate::{JobOptions, topology};

/// A warning when a delivery of this job can stay unacked longer than the
/// broker's consumer timeout. The broker counts from delivery: a message
/// prefetched while every handler slot is busy waits for up to
/// `ceil(prefetch / concurrency)` handler runs before it is acked.
/// A job whose consumers prefetch fewer messages in all than it has
/// handler slots: the slots past the prefetch never run. (An autoscaled
/// job's prefetch follows its slots.)
pub(crate) fn prefetch_warning(
    job: &str,
    options: &JobOptions,
    consumers: usize,
) -> Option<String> {
    if options.autoscale().is_some() {
        return None;
    }
    let prefetched = usize::from(options.prefetch()).saturating_mul(consumers.max(1));
    (prefetched < options.concurrency()).then(|| {
        format!(
            "job {job} (queue {:?}) has {} handler slots but its consumers prefetch {prefetched} \
             messages in all, so at most {prefetched} handlers run at once; set `prefetch` to at \
             least the concurrency (twice it keeps every slot busy while acks travel)",
            options.queue(),
            options.concurrency()
        )
    })
}

pub(crate) fn consumer_timeout_warning(
    job: &str,
    options: &JobOptions,
    consumer_timeout: Duration,
) -> Option<String> {
    // Zero: the broker has no consumer timeout.
    let budget = held::hold_budget(consumer_timeout)?;
    let Some(timeout) = options.timeout() else {
        return Some(format!(
            "job {job} (queue {:?}) has no timeout: a handler running longer than the broker's \
             consumer timeout ({consumer_timeout:?}) gets its channel closed and its messages \
             redelivered; set `timeout` below it, or raise `consumer_timeout` in rabbitmq.conf",
            options.queue()
        ));
    };
    let breaker_wait = options
        .circuit_breaker()
        .map_or(Duration::ZERO, |breaker| breaker.open_for);
    if let Some(held) = held_in_place(options, timeout) {
        let attempts = timeout
            .saturating_mul(options.max_attempts())
            .saturating_add(breaker_wait);
        if attempts >= budget {
            return Some(format!(
                "job {job} (queue {:?}) retries in place: its {} attempts of up to {timeout:?} \
                 (and a breaker open for {breaker_wait:?}) can hold a delivery past the broker's \
                 consumer timeout ({consumer_timeout:?}); RabbitMQ then takes it back and delivers \
                 it again, and only this worker remembers the attempts already made; lower the \
                 retries or the timeout, or raise `consumer_timeout` in rabbitmq.conf",
                options.queue(),
                options.max_attempts(),
            ));
        }
        if held.saturating_add(breaker_wait) >= budget {
            return Some(format!(
                "job {job} (queue {:?}) retries in place: its backoff would hold a delivery up to \
                 {held:?} ({} attempts of up to {timeout:?} and the waits between them), past the \
                 broker's consumer timeout ({consumer_timeout:?}); the worker shortens the waits \
                 to keep within {budget:?}; shorten the backoff, or raise `consumer_timeout` in \
                 rabbitmq.conf",
                options.queue(),
                options.max_attempts(),
            ));
        }
    }
    // A sharded job's consumers each prefetch, into the same slots.
    let prefetched = usize::from(options.prefetch()) * usize::from(options.shards());
    let runs = u32::try_from(prefetched.div_ceil(options.concurrency())).unwrap_or(u32::MAX);
    let worst = timeout.saturating_mul(runs).saturating_add(breaker_wait);
    (worst >= consumer_timeout).then(|| {
        format!(
            "job {job} (queue {:?}): a delivery can wait up to {worst:?} for its ack ({runs} \
             handler runs of up to {timeout:?}: {prefetched} prefetched over concurrency {}, and a breaker \
             open for {breaker_wait:?}), more than the broker's consumer timeout \
             ({consumer_timeout:?}); lower the timeout, the prefetch or the breaker's `open_for`, \
             or raise `consumer_timeout` in rabbitmq.conf",
            options.queue(),
            options.concurrency()
        )
    })
}

/// For a job that retries in place: the longest its worker holds one
/// delivery, every attempt running to `timeout` and every backoff at its
/// longest.
fn held_in_place(options: &JobOptions, timeout: Duration) -> Option<Duration> {
    if !topology::retries_in_place(options) {
        return None;
    }
    let backoff = BackoffPolicy::new(options.backoff());
    let waits = (1..options.max_attempts())
        .map(|retry| backoff.delay(retry, LONGEST_JITTER))
        .fold(Duration::ZERO, Duration::saturating_add);
    Some(waits.saturating_add(timeout.saturating_mul(options.max_attempts())))
}

/// The jitter that gives the longest backoff (jitter is in `[0, 1)`).
const LONGEST_JITTER: f64 = 0.999_999;

#[cfg(test)]
mod tests {
    use super::*;

    /// RabbitMQ's default consumer timeout.
    const LIMIT: Duration = Duration::from_secs(30 * 60);

    #[test]
    fn a_prefetch_below_the_slots_warns() {
        let options = JobOptions::new("q").with_concurrency(100);
        let warning = prefetch_warning("fetch", &options, 1).unwrap();
        assert!(warning.contains("at most 25 handlers"), "{warning}");
        // Partition consumers prefetch together.
        let options = options.with_prefetch(10);
        assert_eq!(prefetch_warning("fetch", &options, 30), None);
        assert!(prefetch_warning("fetch", &JobOptions::new("q"), 1).is_none());
    }

    #[test]
    fn no_timeout_warns() {
        let warning = consumer_timeout_warning("charge", &JobOptions::new("q"), LIMIT).unwrap();
        assert!(warning.contains("no timeout"), "{warning}");
    }

    #[test]
    fn a_broker_without_a_consumer_timeout_warns_of_nothing() {
        // MemoryBroker by default: an in-memory run gets no RabbitMQ advice.
        let options = JobOptions::new("q").with_queue_type(crate::QueueType::Quorum);
        assert_eq!(
            consumer_timeout_warning("charge", &options, Duration::ZERO),
            None
        );
    }

    #[test]
    fn a_short_timeout_with_enough_slots_is_fine() {
        let options = JobOptions::new("q")
            .with_timeout(Duration::from_secs(60))
            .with_prefetch(20)
            .with_concurrency(10);
        assert_eq!(consumer_timeout_warning("charge", &options, LIMIT), None);
    }

    #[test]
    fn a_long_backoff_held_in_place_warns() {
        // 8 retries of up to 10 minutes each: held about an hour.
        let options = JobOptions::new("q")
            .with_queue_type(crate::QueueType::Quorum)
            .with_timeout(Duration::from_secs(30))
            .with_retry(8)
            .with_backoff(crate::Backoff::Exponential {
                base: Duration::from_secs(30),
                max: Duration::from_secs(600),
                jitter: true,
            });
        let warning = consumer_timeout_warning("charge", &options, LIMIT).unwrap();
        assert!(warning.contains("shortens the waits"), "{warning}");
        // Attempts that alone outlast the consumer timeout.
        let slow = options.clone().with_timeout(Duration::from_secs(300));
        let warning = consumer_timeout_warning("charge", &slow, LIMIT).unwrap();
        assert!(warning.contains("9 attempts"), "{warning}");
        // The same backoff through a delay queue holds nothing.
        let classic = options.with_queue_type(crate::QueueType::Classic);
        assert_eq!(consumer_timeout_warning("charge", &classic, LIMIT), None);
    }

    #[test]
    fn an_open_breaker_counts_as_a_wait() {
        let options = JobOptions::new("q")
            .with_timeout(Duration::from_secs(60))
            .with_circuit_breaker(crate::CircuitBreaker::new(
                0.5,
                10,
                Duration::from_secs(60),
                LIMIT,
            ));
        let warning = consumer_timeout_warning("charge", &options, LIMIT).unwrap();
        assert!(warning.contains("breaker"), "{warning}");
    }

    #[test]
    fn prefetched_messages_waiting_for_slots_count_too() {
        // 10 minutes per run, 3 runs before the last prefetched one is acked.
        let options = JobOptions::new("q")
            .with_timeout(Duration::from_secs(600))
            .with_prefetch(25)
            .with_concurrency(10);
        let warning = consumer_timeout_warning("charge", &options, LIMIT).unwrap();
        assert!(warning.contains("3 handler runs"), "{warning}");
        let long = JobOptions::new("q")
            .with_timeout(LIMIT)
            .with_prefetch(1)
            .with_concurrency(1);
        assert!(consumer_timeout_warning("charge", &long, LIMIT).is_some());
    }
}
