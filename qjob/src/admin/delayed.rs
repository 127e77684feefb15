//! The jobs waiting in delay queues (scheduled with `enqueue_in` or
//! `enqueue_at`, and retries in backoff), browsed in place in due order,
//! moved on now, or discarded.
//!
//! A job type's delay queues are those its workers' retries used lately
//! (their heartbeats) and those its delay index names: whoever declares a
//! delay queue, a worker or a client, names it there.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::{Admin, BROWSE_AT_MOST, JobView};
use crate::broker::{HeaderValue, Message};
use crate::dead_letters::{self, Visit};
use crate::headers::{self, from_millis};
use crate::topology::names;
use crate::{Error, topology};

/// A job waiting in a delay queue.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DelayedJob {
    /// Its job type's name.
    pub job: String,
    /// The delay queue it waits in.
    pub queue: String,
    /// The job's id.
    pub job_id: Option<String>,
    /// The attempt it makes when due (1: not yet tried; more: a retry).
    pub attempt: u32,
    /// When it is due, by the clock of whoever delayed it; `None` if the
    /// message does not say (delayed by a qjob before 0.2).
    pub due_at: Option<SystemTime>,
    /// When it was first enqueued (or its id was made, for a job whose
    /// message does not say).
    pub enqueued_at: Option<SystemTime>,
    /// Why its last attempt failed, for a retry.
    pub error: Option<String>,
    /// Its payload, if it is JSON.
    pub payload: Option<serde_json::Value>,
}

impl DelayedJob {
    /// Whether it waits to be retried (else it was scheduled for later).
    pub fn is_retry(&self) -> bool {
        self.attempt > 1
    }

    pub(super) fn read(job: &str, queue: &str, message: &Message) -> Self {
        let int = |name: &str| message.headers.get(name).and_then(HeaderValue::as_int);
        Self {
            job: job.to_owned(),
            queue: queue.to_owned(),
            job_id: message.id.clone(),
            attempt: int(headers::ATTEMPT)
                .and_then(|attempt| u32::try_from(attempt).ok())
                .unwrap_or(1),
            due_at: int(headers::DUE_AT).map(from_millis),
            enqueued_at: int(headers::ENQUEUED_AT).map(from_millis).or_else(|| {
                let id = crate::JobId::from(message.id.clone()?);
                id.created_at()
            }),
            error: message
                .headers
                .get(headers::ERROR)
                .map(HeaderValue::to_string),
            payload: serde_json::from_slice(&message.body).ok(),
        }
    }
}

/// Which delayed jobs to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Waiting {
    /// Scheduled for later, not yet tried.
    Scheduled,
    /// Retries waiting out their backoff.
    Retrying,
    /// Both.
    All,
}

impl Waiting {
    fn admits(self, job: &DelayedJob) -> bool {
        match self {
            Waiting::Scheduled => !job.is_retry(),
            Waiting::Retrying => job.is_retry(),
            Waiting::All => true,
        }
    }
}

/// Whether the console may read `job`'s delay queues. A quorum queue
/// counts each message taken and put back as a delivery, and RabbitMQ 4
/// moves a message past its delivery limit (20 by default) to the queue's
/// dead-letter target: for a delay queue, the work queue, so that a job
/// looked at 20 times would run before it is due. A quorum job type's
/// delay queues are counted, never read.
pub fn browsable(job: &JobView) -> bool {
    job.status.queue_type != crate::QueueType::Quorum.as_str()
}

impl Admin {
    /// The delay queues of `job` that exist now: those its workers' retries
    /// used lately, and those its delay index names (or named when this
    /// console last read it: another reading it at the same time holds its
    /// entries), by name.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn delay_queues(&self, job: &JobView) -> Result<Vec<String>, Error> {
        let queue_type = match job.status.queue_type.as_str() {
            "quorum" => crate::QueueType::Quorum,
            _ => crate::QueueType::Classic,
        };
        let mut named: BTreeSet<String> = job.status.delay_queues.iter().cloned().collect();
        for target in &job.status.consumed_queues {
            let index = names::delay_index(target);
            dead_letters::walk(&self.broker, &index, false, |message| {
                if let Ok(name) = std::str::from_utf8(&message.body) {
                    named.insert(name.to_owned());
                }
                Visit::Keep
            })
            .await?;
        }
        let belongs = |name: &String| {
            job.status
                .consumed_queues
                .iter()
                .any(|target| topology::delay_queue_named(target, queue_type, name).is_some())
        };
        named.extend(
            self.seen_delay_queues()
                .iter()
                .filter(|name| belongs(name))
                .cloned(),
        );
        let mut queues = Vec::new();
        for name in named.into_iter().filter(belongs) {
            if self.broker.queue_stats(&name).await?.is_some() {
                self.seen_delay_queues().insert(name.clone());
                queues.push(name);
            } else {
                self.seen_delay_queues().remove(&name);
            }
        }
        Ok(queues)
    }

    fn seen_delay_queues(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.delay_queues_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The jobs waiting in the delay queues of job type `job` (its name or
    /// queue) or of every job type the alive workers run, that `which`
    /// admits: the `limit` soonest due from the `offset`-th on. A quorum
    /// job type's are not read ([`browsable`]). They stay
    /// in place: each queue is read (`basic.get`) and put back at once, as
    /// [`Admin::dead_letters`] does, so a job due meanwhile moves on after
    /// the read; no more than [`BROWSE_AT_MOST`] are read in all.
    ///
    /// # Errors
    ///
    /// The broker's error; what was read is put back.
    pub async fn delayed(
        &self,
        job: Option<&str>,
        which: Waiting,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DelayedJob>, Error> {
        let mut found = Vec::new();
        let mut read = 0;
        for view in self
            .jobs_named(job)
            .await?
            .iter()
            .filter(|view| browsable(view))
        {
            for queue in self.delay_queues(view).await? {
                dead_letters::walk(&self.broker, &queue, false, |message| {
                    if read >= BROWSE_AT_MOST {
                        return Visit::Stop;
                    }
                    read += 1;
                    let delayed = DelayedJob::read(&view.job, &queue, message);
                    if which.admits(&delayed) {
                        found.push(delayed);
                    }
                    Visit::Keep
                })
                .await?;
            }
        }
        // Soonest due first; a job that does not say when last.
        found.sort_by(|a, b| {
            (a.due_at.is_none(), a.due_at, &a.job_id).cmp(&(
                b.due_at.is_none(),
                b.due_at,
                &b.job_id,
            ))
        });
        Ok(found.into_iter().skip(offset).take(limit).collect())
    }

    /// Moves the delayed job `job_id` on now: out of its delay queue into
    /// the queue it waits for, as if its wait were over (a retry keeps its
    /// attempt). Returns it, or `None` if no delay queue of the job types
    /// the alive workers run holds it (among the first [`BROWSE_AT_MOST`]
    /// of each; a quorum job type's are not read, see [`browsable`]).
    ///
    /// # Errors
    ///
    /// The broker's error; the job then stays where it was (or, if the
    /// publish went through and the removal did not, it is in both places:
    /// it runs twice at most, never zero times).
    pub async fn run_delayed_now(&self, job_id: &str) -> Result<Option<DelayedJob>, Error> {
        self.move_delayed(job_id, |message| {
            message.headers.remove(headers::DELAY_LEFT);
            message.headers.remove(headers::DUE_AT);
        })
        .await
    }

    /// Discards the delayed job `job_id`: it moves on now marked discarded
    /// ([`headers::DISCARDED`]), and the worker that gets it dead-letters it
    /// as cancelled without running it, so its batch counts it, its unique
    /// lock is freed and its dead-letter queue keeps it. The workers are
    /// then told to cancel it too ([`Admin::cancel`]), for a copy left
    /// behind. Returns it, or `None` as [`Admin::run_delayed_now`] does.
    ///
    /// # Errors
    ///
    /// As [`Admin::run_delayed_now`].
    pub async fn discard_delayed(&self, job_id: &str) -> Result<Option<DelayedJob>, Error> {
        let by = format!(
            "discarded at {} from the console",
            headers::millis(SystemTime::now())
        );
        self.move_delayed(job_id, |message| {
            message.headers.remove(headers::DELAY_LEFT);
            message.headers.remove(headers::DUE_AT);
            message
                .headers
                .insert(headers::DISCARDED.into(), by.clone().into());
        })
        .await
    }

    /// Finds `job_id` in the delay queues and moves it, changed by
    /// `change`, to the queue its delay queue leads to.
    async fn move_delayed(
        &self,
        job_id: &str,
        change: impl Fn(&mut Message),
    ) -> Result<Option<DelayedJob>, Error> {
        if job_id.trim().is_empty() {
            return Err(Error::Config("an empty job id names no job".to_owned()));
        }
        for view in self
            .jobs_named(None)
            .await?
            .iter()
            .filter(|view| browsable(view))
        {
            for queue in self.delay_queues(view).await? {
                let Some(target) = names::delay_target(&queue) else {
                    continue;
                };
                let mut moved = None;
                let visit = super::letters::within(job_id, |message| {
                    moved = Some(DelayedJob::read(&view.job, &queue, message));
                    let mut message = message.clone();
                    change(&mut message);
                    Visit::Move(target.to_owned(), message)
                });
                dead_letters::walk(&self.broker, &queue, false, visit).await?;
                if moved.is_some() {
                    return Ok(moved);
                }
            }
        }
        Ok(None)
    }

    /// The job types the alive workers run, or the one named `job` (by
    /// name, type name or queue).
    async fn jobs_named(&self, job: Option<&str>) -> Result<Vec<JobView>, Error> {
        let mut jobs = self.jobs().await?;
        if let Some(job) = job {
            jobs.retain(|view| view.status.is_named(job));
        }
        Ok(jobs)
    }
}
