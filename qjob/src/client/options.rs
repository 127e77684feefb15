//! [`EnqueueOptions`]: what an enqueue says about one job beyond its
//! payload (its priority, when it runs), checked against its job type.

use std::time::{Duration, SystemTime};

use crate::{Error, Job};

/// How to enqueue one job: its priority and when it runs, for
/// [`Client::enqueue_with`](crate::Client::enqueue_with) (and the outbox's
/// `Outbox::enqueue_with`, feature `postgres`). The defaults: no priority,
/// at once.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use qjob::EnqueueOptions;
///
/// let urgent = EnqueueOptions::new().priority(9);
/// let later = EnqueueOptions::new().priority(2).delay(Duration::from_secs(60));
/// assert_ne!(urgent, later);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnqueueOptions {
    priority: Option<u8>,
    when: When,
}

/// When the job runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum When {
    #[default]
    Now,
    In(Duration),
    At(SystemTime),
}

impl EnqueueOptions {
    /// No priority, at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// The job's priority, from 0 to its job type's `priorities`
    /// ([`JobOptions::with_priorities`](crate::JobOptions::with_priorities)):
    /// workers take the waiting jobs of higher priority first. A job
    /// enqueued without one has priority 0. It keeps its priority through
    /// its retries, a delay and a replay from the dead-letter queue.
    ///
    /// The enqueue refuses a priority for a job type without
    /// `priorities`, or above them ([`Error::Config`]): it is never
    /// dropped or lowered silently.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Runs the job after `delay`, as [`Client::enqueue_in`](crate::Client::enqueue_in).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.when = When::In(delay);
        self
    }

    /// Runs the job at `at` (at once if that is past), as
    /// [`Client::enqueue_at`](crate::Client::enqueue_at).
    pub fn at(mut self, at: SystemTime) -> Self {
        self.when = When::At(at);
        self
    }

    /// The priority, checked against job type `J`'s.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a priority `J` does not take.
    pub(crate) fn priority_of<J: Job>(&self) -> Result<Option<u8>, Error> {
        let Some(priority) = self.priority else {
            return Ok(None);
        };
        match J::options().priorities() {
            Some(max) if priority <= max => Ok(Some(priority)),
            Some(max) => Err(Error::Config(format!(
                "job {} takes priorities from 0 to {max} (its `priorities`), not {priority}",
                J::NAME
            ))),
            None => Err(Error::Config(format!(
                "job {} takes no priority ({priority} was given): declare its priorities with \
                 #[job(priorities = N)] (JobOptions::with_priorities), and its queue takes them \
                 from 0 to N",
                J::NAME
            ))),
        }
    }

    /// How long after `now` the job runs (zero: at once).
    pub(crate) fn delay_from(&self, now: SystemTime) -> Duration {
        match self.when {
            When::Now => Duration::ZERO,
            When::In(delay) => delay,
            When::At(at) => at.duration_since(now).unwrap_or_default(),
        }
    }

    /// When job `J` runs, counted from `now`; `None`: at once.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a delay past the end of time.
    #[cfg(feature = "postgres")]
    pub(crate) fn run_at<J: Job>(&self, now: SystemTime) -> Result<Option<SystemTime>, Error> {
        match self.when {
            When::Now => Ok(None),
            When::At(at) => Ok(Some(at)),
            When::In(delay) => now.checked_add(delay).map(Some).ok_or_else(|| {
                Error::Config(format!(
                    "job {}: a delay of {delay:?} is out of range",
                    J::NAME
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobOptions;

    struct Plain;
    struct Ranked;

    macro_rules! job {
        ($job:ident, $options:expr) => {
            impl Job for $job {
                type Payload = ();
                const NAME: &'static str = stringify!($job);
                const QUEUE: &'static str = "q";
                fn options() -> JobOptions {
                    $options
                }
                async fn perform(
                    &self,
                    _: (),
                    _: crate::JobContext,
                ) -> Result<(), crate::JobError> {
                    Ok(())
                }
            }
        };
    }
    job!(Plain, JobOptions::new("q"));
    job!(Ranked, JobOptions::new("q").with_priorities(5));

    #[test]
    fn a_priority_is_taken_within_the_job_types_range_only() {
        let options = EnqueueOptions::new();
        assert_eq!(options.priority_of::<Plain>().unwrap(), None);
        assert_eq!(options.priority_of::<Ranked>().unwrap(), None);
        for priority in [0, 5] {
            let options = options.priority(priority);
            assert_eq!(options.priority_of::<Ranked>().unwrap(), Some(priority));
        }
        let Err(Error::Config(above)) = options.priority(6).priority_of::<Ranked>() else {
            panic!("a priority above the range is refused");
        };
        assert!(
            above.contains("Ranked") && above.contains("0 to 5"),
            "{above}"
        );
        let Err(Error::Config(none)) = options.priority(1).priority_of::<Plain>() else {
            panic!("a priority for a job type without priorities is refused");
        };
        assert!(
            none.contains("Plain") && none.contains("priorities = N"),
            "{none}"
        );
    }

    #[test]
    fn a_delay_or_a_time_says_when_the_job_runs() {
        let now = SystemTime::now();
        assert_eq!(EnqueueOptions::new().delay_from(now), Duration::ZERO);
        let minute = Duration::from_secs(60);
        assert_eq!(EnqueueOptions::new().delay(minute).delay_from(now), minute);
        assert_eq!(
            EnqueueOptions::new().at(now + minute).delay_from(now),
            minute
        );
        let past = now - minute;
        assert_eq!(
            EnqueueOptions::new().at(past).delay_from(now),
            Duration::ZERO
        );
    }
}
