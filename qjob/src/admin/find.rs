//! Finding a job by id, wherever it is: running, held for a retry in
//! place, waiting in a delay queue, or dead-lettered.

use super::{Admin, DelayedJob, HeldView, Letter, Reply, RunningView};
use crate::Error;
use crate::dead_letters::{self, Visit};

/// Where a job is, and so what can be done with it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Whereabouts {
    /// An attempt of it runs on a worker: it can be cancelled.
    Running(RunningView),
    /// A worker holds it for a retry in place: it can run now, or be
    /// cancelled.
    Held(HeldView),
    /// It waits in a delay queue: it can run now, or be discarded.
    Delayed(DelayedJob),
    /// It is in its dead-letter queue: it can be replayed, or discarded.
    Dead {
        /// Its job type's name.
        job: String,
        /// The dead-letter queue.
        queue: String,
        /// The dead letter.
        letter: Box<Letter>,
    },
}

impl Whereabouts {
    /// Where it is, in a word: `running`, `held`, `delayed` or `dead`.
    pub fn place(&self) -> &'static str {
        match self {
            Whereabouts::Running(_) => "running",
            Whereabouts::Held(_) => "held",
            Whereabouts::Delayed(_) => "delayed",
            Whereabouts::Dead { .. } => "dead",
        }
    }

    /// Its job type's name.
    pub fn job(&self) -> &str {
        match self {
            Whereabouts::Running(running) => &running.running.job,
            Whereabouts::Held(held) => &held.retrying.job,
            Whereabouts::Delayed(delayed) => &delayed.job,
            Whereabouts::Dead { job, .. } => job,
        }
    }
}

impl Admin {
    /// Where job `job_id` is: running or held on an alive worker (as their
    /// last heartbeats list them, each at most
    /// [`ACTIVITY_AT_MOST`](crate::protocol::ACTIVITY_AT_MOST)), waiting
    /// in a delay queue (not a quorum job type's, which are never read:
    /// [`browsable`](super::browsable)), or dead-lettered, of the job types the alive
    /// workers run (among the first [`BROWSE_AT_MOST`](super::BROWSE_AT_MOST)
    /// messages of each queue, left in place). Empty if none: a job
    /// waiting in its work queue is not looked for (reading it would hold
    /// it from the workers), nor one already done.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty id; the broker's error.
    pub async fn find(&self, job_id: &str) -> Result<Vec<Whereabouts>, Error> {
        if job_id.trim().is_empty() {
            return Err(Error::Config("an empty job id names no job".to_owned()));
        }
        let mut found: Vec<Whereabouts> = self
            .running(None)
            .items
            .into_iter()
            .filter(|view| view.running.job_id == job_id)
            .map(Whereabouts::Running)
            .collect();
        found.extend(
            self.held(None)
                .items
                .into_iter()
                .filter(|view| view.retrying.job_id == job_id)
                .map(Whereabouts::Held),
        );
        for view in self.jobs().await? {
            let delay_queues = if super::delayed::browsable(&view) {
                self.delay_queues(&view).await?
            } else {
                Vec::new()
            };
            for queue in delay_queues {
                let visit = super::letters::within(job_id, |message| {
                    found.push(Whereabouts::Delayed(DelayedJob::read(
                        &view.job, &queue, message,
                    )));
                    Visit::Stop
                });
                dead_letters::walk(&self.broker, &queue, false, visit).await?;
            }
            let queue = &view.status.dead_letter_queue;
            if let Some(letter) = self.dead_letter(queue, job_id).await? {
                found.push(Whereabouts::Dead {
                    job: view.job.clone(),
                    queue: queue.clone(),
                    letter: Box::new(letter),
                });
            }
        }
        Ok(found)
    }
}

/// What an action on a waiting job did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Acted {
    /// It was in this delay queue, and moved on.
    Delayed(DelayedJob),
    /// A worker held it for a retry in place: its replies (those that did
    /// it say `ok`).
    Held(Vec<Reply>),
    /// A worker holds it, and none of the workers replied within the
    /// reply window.
    Unanswered,
    /// It waits nowhere: not in a delay queue, and no worker holds it.
    NotWaiting,
}

impl Admin {
    /// Runs waiting job `job_id` now, wherever it waits: out of its delay
    /// queue ([`Admin::run_delayed_now`]), or its wait in a worker ended
    /// ([`Admin::run_held_now`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty id; the broker's error.
    pub async fn run_now(&self, job_id: &str) -> Result<Acted, Error> {
        // The heartbeats first: they cost nothing to read.
        if self.is_held(job_id) {
            return Ok(held(self.run_held_now(job_id).await?));
        }
        if let Some(job) = self.run_delayed_now(job_id).await? {
            return Ok(Acted::Delayed(job));
        }
        Ok(Acted::NotWaiting)
    }

    /// Discards waiting job `job_id`, wherever it waits: dead-lettered as
    /// cancelled without running, from its delay queue
    /// ([`Admin::discard_delayed`]) or from the worker holding it (a
    /// [`Admin::cancel`]: should its next attempt have started since the
    /// worker's last heartbeat, that attempt is cancelled).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty id; the broker's error.
    pub async fn discard_waiting(&self, job_id: &str) -> Result<Acted, Error> {
        if self.is_held(job_id) {
            return Ok(held(self.cancel(job_id).await?));
        }
        if let Some(job) = self.discard_delayed(job_id).await? {
            return Ok(Acted::Delayed(job));
        }
        Ok(Acted::NotWaiting)
    }

    /// Whether an alive worker's last heartbeat lists `job_id` as held.
    fn is_held(&self, job_id: &str) -> bool {
        self.held(None)
            .items
            .iter()
            .any(|view| view.retrying.job_id == job_id)
    }
}

/// What the workers' `replies` to an action on a held job say.
fn held(replies: Vec<Reply>) -> Acted {
    if replies.iter().any(|reply| reply.ok) {
        Acted::Held(replies)
    } else if replies.is_empty() {
        Acted::Unanswered
    } else {
        Acted::NotWaiting
    }
}
