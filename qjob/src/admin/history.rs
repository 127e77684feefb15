//! The last hour of each job type across the alive workers: their minutes
//! added up, and the run-time percentiles of the added histograms.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::Admin;
use crate::protocol::JobStatus;
use crate::protocol::history::{RunTimes, WINDOW, minute_of, start_of};

/// A job type's last hour across the alive workers that run it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobHistory {
    /// The job type's name.
    pub job: String,
    /// Its work queue.
    pub queue: String,
    /// The alive workers that run it.
    pub workers: usize,
    /// The 60 minutes ending with the current one (by the console's
    /// clock), oldest first, with or without activity.
    pub minutes: Vec<MinuteView>,
}

impl JobHistory {
    /// The minutes in which attempts settled.
    pub fn active(&self) -> impl Iterator<Item = &MinuteView> {
        self.minutes.iter().filter(|minute| minute.is_active())
    }

    /// Attempts that succeeded in the hour.
    pub fn succeeded(&self) -> u64 {
        self.minutes.iter().map(|minute| minute.succeeded).sum()
    }

    /// Attempts that failed (retried or dead-lettered) in the hour.
    pub fn failed(&self) -> u64 {
        self.minutes.iter().map(|minute| minute.failed).sum()
    }

    /// Jobs dead-lettered in the hour.
    pub fn dead_lettered(&self) -> u64 {
        self.minutes.iter().map(|minute| minute.dead_lettered).sum()
    }
}

/// One minute of a job type, over the alive workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MinuteView {
    /// When the minute began (a whole UTC minute).
    pub start: SystemTime,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed (retried or dead-lettered).
    pub failed: u64,
    /// Jobs dead-lettered (a malformed or cancelled job too, which is not
    /// a failed attempt).
    pub dead_lettered: u64,
    /// Attempts whose handler ran, and so were timed.
    pub runs: u64,
    /// The median run time, within the histogram's precision (see the
    /// [console guide](crate::docs::console)); `None` without runs.
    pub p50: Option<Duration>,
    /// The 95th percentile run time, likewise.
    pub p95: Option<Duration>,
}

impl MinuteView {
    /// Whether an attempt settled in it.
    pub fn is_active(&self) -> bool {
        self.succeeded > 0 || self.failed > 0 || self.dead_lettered > 0
    }
}

impl Admin {
    /// The last hour of each job type the alive workers run (of `job`
    /// alone, by name, type name or queue, if given), by name: per minute, the
    /// attempts settled and the run-time percentiles over those workers.
    /// Empty if no alive worker runs `job`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use qjob::{job, JobContext, JobError, Worker, Client};
    /// # use qjob::admin::Admin;
    /// # use qjob_testkit::MemoryBroker;
    /// # #[job(queue = "docs.admin.history")]
    /// # async fn email(_to: String, _ctx: JobContext) -> Result<(), JobError> { Ok(()) }
    /// # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
    /// # let broker = MemoryBroker::new();
    /// # let admin = Admin::connect(broker.clone()).await?;
    /// # Client::new(broker.clone()).enqueue::<EmailJob>("a@example.com".into()).await?;
    /// # let worker = Worker::builder(broker.clone()).register(EmailJob)
    /// #     .heartbeat_interval(std::time::Duration::from_millis(20)).build();
    /// # let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # let running = tokio::spawn(worker.run_until(async { let _ = stopped.await; }));
    /// # while admin.history(Some("email")).first().is_none_or(|h| h.succeeded() == 0) {
    /// #     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    /// # }
    /// for history in admin.history(Some("email")) {
    ///     for minute in history.active() {
    ///         println!("{:?}: {} succeeded, p95 {:?}", minute.start, minute.succeeded, minute.p95);
    ///     }
    /// }
    /// # stop.send(()).unwrap(); running.await.unwrap()?;
    /// # Ok(()) }
    /// ```
    pub fn history(&self, job: Option<&str>) -> Vec<JobHistory> {
        let workers = self.workers();
        let statuses = workers
            .iter()
            .filter(|worker| worker.alive)
            .flat_map(|worker| &worker.status.jobs)
            .filter(|status| job.is_none_or(|job| status.is_named(job)));
        merge(minute_of(SystemTime::now()), statuses)
    }
}

/// The workers' job statuses added up per job type, over the hour ending
/// with minute `now`.
fn merge<'a>(now: u64, statuses: impl IntoIterator<Item = &'a JobStatus>) -> Vec<JobHistory> {
    let first = now.saturating_sub(WINDOW as u64 - 1);
    let mut jobs: BTreeMap<&str, (JobHistory, Vec<RunTimes>)> = BTreeMap::new();
    for status in statuses {
        let (history, runs) = jobs.entry(&status.job).or_insert_with(|| {
            let minutes = (first..=now).map(|minute| MinuteView {
                start: start_of(minute),
                succeeded: 0,
                failed: 0,
                dead_lettered: 0,
                runs: 0,
                p50: None,
                p95: None,
            });
            let history = JobHistory {
                job: status.job.clone(),
                queue: status.queue.clone(),
                workers: 0,
                minutes: minutes.collect(),
            };
            (history, vec![RunTimes::default(); WINDOW])
        });
        history.workers += 1;
        // A minute outside the hour (a worker's clock ahead of this one's)
        // is left out.
        for minute in &status.history {
            let Some(index) = minute
                .minute
                .checked_sub(first)
                .and_then(|index| usize::try_from(index).ok())
                .filter(|index| *index < history.minutes.len())
            else {
                continue;
            };
            let view = &mut history.minutes[index];
            view.succeeded = view.succeeded.saturating_add(minute.succeeded);
            view.failed = view.failed.saturating_add(minute.failed);
            view.dead_lettered = view.dead_lettered.saturating_add(minute.dead_lettered);
            runs[index].add(&minute.run_times);
        }
    }
    jobs.into_values()
        .map(|(mut history, runs)| {
            for (view, runs) in history.minutes.iter_mut().zip(&runs) {
                view.runs = runs.total();
                view.p50 = runs.quantile(0.5);
                view.p95 = runs.quantile(0.95);
            }
            history
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MinuteStatus;
    use crate::protocol::history::{bin, bin_value};

    const NOW: u64 = 29_000_000;

    fn status(job: &str, minutes: Vec<MinuteStatus>) -> JobStatus {
        JobStatus {
            job: job.into(),
            queue: format!("q.{job}"),
            history: minutes,
            ..JobStatus::default()
        }
    }

    fn minute(minute: u64, counts: (u64, u64, u64), runs: &[(Duration, u64)]) -> MinuteStatus {
        MinuteStatus {
            minute,
            succeeded: counts.0,
            failed: counts.1,
            dead_lettered: counts.2,
            run_times: runs
                .iter()
                .map(|(took, count)| (bin(*took) as u16, *count))
                .collect(),
        }
    }

    #[test]
    fn workers_minutes_add_up_per_job_over_the_hour_ending_now() {
        let ms = Duration::from_millis;
        let a = status(
            "email",
            vec![
                minute(NOW - 60, (100, 0, 0), &[]),
                minute(NOW - 59, (2, 1, 0), &[(ms(10), 3)]),
                minute(NOW, (5, 0, 0), &[(ms(10), 5)]),
                minute(NOW + 1, (7, 0, 0), &[]),
            ],
        );
        let b = status("email", vec![minute(NOW, (1, 2, 2), &[(ms(400), 3)])]);
        let c = status("report", vec![]);
        let merged = merge(NOW, [&a, &b, &c]);
        assert_eq!(merged.len(), 2);
        let email = &merged[0];
        assert_eq!(
            (email.job.as_str(), email.queue.as_str()),
            ("email", "q.email")
        );
        assert_eq!(email.workers, 2);
        assert_eq!(email.minutes.len(), 60);
        assert_eq!(email.minutes[0].start, start_of(NOW - 59));
        assert_eq!(email.minutes[59].start, start_of(NOW));
        // The minute before the hour and the one after now are left out.
        assert_eq!(
            (email.succeeded(), email.failed(), email.dead_lettered()),
            (8, 3, 2)
        );
        let active: Vec<_> = email.active().collect();
        assert_eq!(active.len(), 2);
        let oldest = &email.minutes[0];
        assert_eq!((oldest.succeeded, oldest.failed, oldest.runs), (2, 1, 3));
        assert_eq!(oldest.p50, Some(bin_value(bin(ms(10)))));
        // 5 runs of 10 ms here and 3 of 400 ms on the other worker.
        let last = &email.minutes[59];
        assert_eq!((last.succeeded, last.failed, last.dead_lettered), (6, 2, 2));
        assert_eq!(last.runs, 8);
        assert_eq!(last.p50, Some(bin_value(bin(ms(10)))));
        assert_eq!(last.p95, Some(bin_value(bin(ms(400)))));
        assert!(
            email.minutes[1..59]
                .iter()
                .all(|m| !m.is_active() && m.p50.is_none())
        );
        let report = &merged[1];
        assert_eq!((report.job.as_str(), report.workers), ("report", 1));
        assert_eq!(report.active().count(), 0);
    }
}
