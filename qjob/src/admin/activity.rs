//! What runs and waits in the workers now, from their heartbeats: the
//! attempts running, the jobs held for a retry in place, and a retry's
//! wait ended early.

use std::time::{Duration, SystemTime};

use super::Admin;
use crate::Error;
use crate::protocol::{Command, Reply, RetryingJob, RunningJob, WorkerStatus};

/// An attempt running now on an alive worker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunningView {
    /// The attempt, as the worker's heartbeat lists it.
    pub running: RunningJob,
    /// The worker's id, host and pid.
    pub worker: (String, String, u32),
    /// How long it has run, by the worker's clock (as of its heartbeat,
    /// plus the time since).
    pub running_for: Duration,
}

/// A job an alive worker holds for a retry in place.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HeldView {
    /// The job, as the worker's heartbeat lists it.
    pub retrying: RetryingJob,
    /// The worker's id, host and pid.
    pub worker: (String, String, u32),
    /// How long until its next attempt, by the worker's clock; zero once
    /// due.
    pub due_in: Duration,
}

/// Some of what the alive workers list, with how many there are in all.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Listed<T> {
    /// What is listed, in order.
    pub items: Vec<T>,
    /// Whether every worker listed all it has: each heartbeat lists at most
    /// [`ACTIVITY_AT_MOST`](crate::protocol::ACTIVITY_AT_MOST).
    pub complete: bool,
    /// How many there are over the alive workers, of every job type.
    pub total: usize,
}

impl Admin {
    /// The attempts running now on the alive workers, of job type `job`
    /// (its name or queue) or of all, the longest-running first.
    pub fn running(&self, job: Option<&str>) -> Listed<RunningView> {
        let mut listed = Listed::new();
        for worker in self.workers().into_iter().filter(|w| w.alive) {
            let status = &worker.status;
            let now = status.sent_at + worker.silent_for;
            listed.count(status.running.len(), status.running_total);
            for running in &status.running {
                if of_job(status, &running.job, job) {
                    listed.items.push(RunningView {
                        running_for: since(running.started_at, now),
                        worker: who(status),
                        running: running.clone(),
                    });
                }
            }
        }
        listed.items.sort_by(|a, b| {
            (b.running_for, &a.running.job_id).cmp(&(a.running_for, &b.running.job_id))
        });
        listed
    }

    /// The jobs the alive workers hold for a retry in place (a quorum,
    /// capped or partitioned job's backoff), of job type `job` (its name or
    /// queue) or of all, the soonest due first.
    pub fn held(&self, job: Option<&str>) -> Listed<HeldView> {
        let mut listed = Listed::new();
        for worker in self.workers().into_iter().filter(|w| w.alive) {
            let status = &worker.status;
            let now = status.sent_at + worker.silent_for;
            listed.count(status.retrying.len(), status.retrying_total);
            for retrying in &status.retrying {
                if of_job(status, &retrying.job, job) {
                    listed.items.push(HeldView {
                        due_in: retrying
                            .next_attempt_at
                            .duration_since(now)
                            .unwrap_or_default(),
                        worker: who(status),
                        retrying: retrying.clone(),
                    });
                }
            }
        }
        listed
            .items
            .sort_by(|a, b| (a.due_in, &a.retrying.job_id).cmp(&(b.due_in, &b.retrying.job_id)));
        listed
    }

    /// Ends the wait of job `job_id` where a worker holds it for a retry in
    /// place: its next attempt starts now. Every worker replies; the one
    /// holding it says so (`ok`), the others that they do not.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty id; the broker's error.
    pub async fn run_held_now(&self, job_id: &str) -> Result<Vec<Reply>, Error> {
        if job_id.trim().is_empty() {
            return Err(Error::Config("an empty job id runs nothing".to_owned()));
        }
        self.send(Command::RunNow {
            job_id: job_id.to_owned(),
        })
        .await
    }
}

impl<T> Listed<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            complete: true,
            total: 0,
        }
    }

    /// Counts one worker's list of `listed` out of `total`.
    fn count(&mut self, listed: usize, total: usize) {
        self.total += total;
        self.complete &= listed >= total;
    }
}

/// Whether `name`, a job type `status`'s worker runs, is `job` (by name,
/// type name or queue), or any with none.
fn of_job(status: &WorkerStatus, name: &str, job: Option<&str>) -> bool {
    job.is_none_or(|job| {
        name == job
            || status
                .jobs
                .iter()
                .any(|status| status.job == name && status.is_named(job))
    })
}

fn who(status: &WorkerStatus) -> (String, String, u32) {
    (status.worker_id.clone(), status.host.clone(), status.pid)
}

fn since(at: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(at).unwrap_or_default()
}
