//! Start-up checks of a job's options against the broker's limits.

use std::time::Duration;

use crate::JobOptions;

/// RabbitMQ's default `consumer_timeout`: a delivery unacked for longer
/// makes the broker close the channel and redeliver.
pub const DEFAULT_BROKER_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A warning when a delivery of this job can stay unacked longer than the
/// broker's consumer timeout. The broker counts from delivery: a message
/// prefetched while every handler slot is busy waits for up to
/// `ceil(prefetch / concurrency)` handler runs before it is acked.
pub(crate) fn consumer_timeout_warning(
    job: &str,
    options: &JobOptions,
    consumer_timeout: Duration,
) -> Option<String> {
    let Some(timeout) = options.timeout() else {
        return Some(format!(
            "job {job} (queue {:?}) has no timeout: a handler running longer than the broker's \
             consumer timeout ({consumer_timeout:?}) gets its channel closed and its messages \
             redelivered; set `timeout` below it, or raise `consumer_timeout` in rabbitmq.conf",
            options.queue()
        ));
    };
    let runs = u32::try_from(usize::from(options.prefetch()).div_ceil(options.concurrency()))
        .unwrap_or(u32::MAX);
    let worst = timeout.saturating_mul(runs);
    (worst >= consumer_timeout).then(|| {
        format!(
            "job {job} (queue {:?}): a delivery can wait up to {worst:?} for its ack ({runs} \
             handler runs of up to {timeout:?}: prefetch {} over concurrency {}), more than the \
             broker's consumer timeout ({consumer_timeout:?}); lower the timeout or the prefetch, \
             or raise `consumer_timeout` in rabbitmq.conf",
            options.queue(),
            options.prefetch(),
            options.concurrency()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = DEFAULT_BROKER_CONSUMER_TIMEOUT;

    #[test]
    fn no_timeout_warns() {
        let warning = consumer_timeout_warning("charge", &JobOptions::new("q"), LIMIT).unwrap();
        assert!(warning.contains("no timeout"), "{warning}");
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
