//! Commands to the workers (pause, resume, concurrency, cancel, a ping for
//! heartbeats), and collecting their replies.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Admin;
use super::heard::Seen;
use crate::Error;
use crate::protocol::{
    self, CONTROL_EXCHANGE, Command, CommandMessage, FORMAT, Reply, WorkerState,
};

/// How long a console waits for the workers' replies to a command by
/// default.
pub const DEFAULT_REPLY_WINDOW: Duration = Duration::from_secs(2);

impl Admin {
    /// Asks every worker for a heartbeat now and waits the reply window
    /// for them.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.send(Command::Ping).await?;
        tokio::time::sleep(self.reply_window).await;
        Ok(())
    }

    /// Pauses job type `job` (its name or queue) on every worker that runs
    /// it: their consumers are cancelled, running handlers finish, nothing
    /// is rejected. A worker started later consumes it (the pause belongs
    /// to the running workers). Returns the workers' replies.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn pause(&self, job: &str) -> Result<Vec<Reply>, Error> {
        self.send(Command::Pause {
            job: job.to_owned(),
        })
        .await
    }

    /// Resumes job type `job` on every worker that runs it.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn resume(&self, job: &str) -> Result<Vec<Reply>, Error> {
        self.send(Command::Resume {
            job: job.to_owned(),
        })
        .await
    }

    /// Sets job type `job`'s handler slots on every worker that runs it
    /// (refused, in the replies, for an autoscaled job or 0).
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn set_concurrency(
        &self,
        job: &str,
        concurrency: usize,
    ) -> Result<Vec<Reply>, Error> {
        self.send(Command::SetConcurrency {
            job: job.to_owned(),
            concurrency,
        })
        .await
    }

    /// Sets job type `job`'s global concurrency for every process that runs
    /// it, kept in their store in place of the one they were built with
    /// (`None`: back to theirs). Every worker running it replies; a job
    /// without `global_concurrency` or a limit of 0 is refused in the
    /// replies ([`crate::docs::limits`]).
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn set_global_concurrency(
        &self,
        job: &str,
        limit: Option<u32>,
    ) -> Result<Vec<Reply>, Error> {
        self.send(Command::SetGlobalConcurrency {
            job: job.to_owned(),
            limit,
        })
        .await
    }

    /// Cancels job `job_id` on every worker: a running handler is told
    /// ([`crate::JobContext::cancelled`]) and the job is dead-lettered as
    /// cancelled unless its handler succeeds; a delivery of it still to
    /// come is dead-lettered as cancelled when it arrives (within the
    /// workers' cancel memory, 24 h by default). A replay of its dead
    /// letter after the cancel runs normally.
    ///
    /// The workers running now remember it: one started later, or one that
    /// was reconnecting when the command went out (it has not replied),
    /// does not.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty id; the broker's error.
    pub async fn cancel(&self, job_id: &str) -> Result<Vec<Reply>, Error> {
        if job_id.trim().is_empty() {
            return Err(Error::Config("an empty job id cancels nothing".to_owned()));
        }
        self.send(Command::Cancel {
            job_id: job_id.to_owned(),
        })
        .await
    }

    /// Sends `command` to every worker and collects the replies of those
    /// concerned, until each alive one concerned replied or the reply
    /// window passed (a ping is not replied to: it returns at once). The
    /// one path every command takes: the methods above, and the ping of
    /// [`Admin::connect`] and [`Admin::refresh`].
    ///
    /// # Errors
    ///
    /// The broker's error, or the console's listener was lost.
    pub(super) async fn send(&self, command: Command) -> Result<Vec<Reply>, Error> {
        if let Some(lost) = self.seen().lost.clone() {
            return Err(Error::broker("listen to the workers", lost));
        }
        let id = format!(
            "{}-{}",
            self.id,
            self.commands.fetch_add(1, Ordering::Relaxed)
        );
        let expected = self.concerned(&command);
        let ping = matches!(command, Command::Ping);
        // Replies are collected from here on; the entry goes however this
        // ends (dropped too).
        let _collecting = (!ping).then(|| {
            self.seen().replies.insert(id.clone(), Vec::new());
            Collecting(&self.seen, &id)
        });
        let message = protocol::message(&CommandMessage {
            format: FORMAT,
            id: id.clone(),
            reply_to: self.id.clone(),
            command: command.clone(),
        });
        let key = format!("command.{}", command.name());
        self.broker
            .broadcast(CONTROL_EXCHANGE, &key, message)
            .await?;
        if ping {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.reply_window;
        loop {
            let heard = self.seen().heard.clone();
            let notified = heard.notified();
            {
                let seen = self.seen();
                let replies = &seen.replies[&id];
                let all = !expected.is_empty()
                    && expected
                        .iter()
                        .all(|worker| replies.iter().any(|r| &r.worker_id == worker));
                if all || Instant::now() >= deadline {
                    return Ok(replies.clone());
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// The alive workers a command concerns: those running (a stopping
    /// worker takes no command) that run its job, that carry its schedule
    /// (that lead it, for a fire now), or all for a cancel.
    fn concerned(&self, command: &Command) -> Vec<String> {
        let fire = matches!(command, Command::FireSchedule { .. });
        self.workers()
            .into_iter()
            .filter(|worker| worker.alive && worker.status.state == WorkerState::Running)
            .filter(|worker| match (command.job(), command.schedule()) {
                (Some(job), _) => worker.status.jobs.iter().any(|status| status.is_named(job)),
                (None, Some(schedule)) => worker
                    .status
                    .schedules
                    .get(schedule)
                    .is_some_and(|status| status.leader || !fire),
                (None, None) => true,
            })
            .map(|worker| worker.status.worker_id)
            .collect()
    }
}

/// Removes a command's reply entry when its `send` ends.
struct Collecting<'a>(&'a Mutex<Seen>, &'a str);

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.replies.remove(self.1);
    }
}
