//! Commands to the schedules the workers carry: fire one tick now, pause,
//! resume ([`crate::docs::periodic`] says what each does to the ticks).

use super::Admin;
use crate::Error;
use crate::protocol::{Command, Reply};

impl Admin {
    /// Has the worker leading schedule `name` enqueue one tick now, as a
    /// due tick is enqueued (the same payload and headers), with the tick
    /// id of the current second on its clock
    /// ([`crate::schedule::tick_id`]): two requests within a second are
    /// one tick to an inbox, and so is one made in the second of a regular
    /// tick. The regular ticks go on as before: the lease's record of the
    /// last tick does not move. It works while the schedule is paused.
    /// Returns the leader's reply (its message names the tick's job id;
    /// `ok` is false if the publish failed).
    ///
    /// The workers that do not lead the schedule do not reply; it returns
    /// once the leader its heartbeats name replied, or after the reply
    /// window.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty name; [`Error::Timeout`] when no
    /// worker leading the schedule replied within the reply window (no
    /// running worker carries it, none leads it yet, or the leader was
    /// too slow: a tick may then still have gone out); the broker's
    /// error.
    pub async fn fire_schedule(&self, name: &str) -> Result<Reply, Error> {
        named(name)?;
        let replies = self
            .send(Command::FireSchedule {
                schedule: name.to_owned(),
            })
            .await?;
        // The leader's answer; a refusal (a failed publish, a worker that
        // does not know the command) only if no worker fired.
        let fired = replies.iter().position(|reply| reply.ok).unwrap_or(0);
        replies
            .into_iter()
            .nth(fired)
            .ok_or_else(|| Error::Timeout {
                operation: format!("firing schedule {name:?} (no worker leading it answered)"),
                after: self.reply_window,
            })
    }

    /// Pauses schedule `name` on every worker that carries it: none fires
    /// its ticks until resumed; its leader keeps the lease (leadership
    /// does not move) and its next tick moves on as time passes. A worker
    /// started later, or one that was reconnecting when the command went
    /// out (it has not replied), fires it: the pause belongs to the
    /// workers running at the time. Returns the workers' replies.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty name; the broker's error.
    pub async fn pause_schedule(&self, name: &str) -> Result<Vec<Reply>, Error> {
        named(name)?;
        self.send(Command::PauseSchedule {
            schedule: name.to_owned(),
        })
        .await
    }

    /// Resumes schedule `name` on every worker that carries it. Its
    /// leader treats the ticks that went by while it was paused as missed
    /// ones: under [`Missed::Latest`](crate::schedule::Missed) the latest
    /// fires once, at once; under `Missed::Skip` none does. Returns the
    /// workers' replies.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty name; the broker's error.
    pub async fn resume_schedule(&self, name: &str) -> Result<Vec<Reply>, Error> {
        named(name)?;
        self.send(Command::ResumeSchedule {
            schedule: name.to_owned(),
        })
        .await
    }
}

/// Refuses an empty schedule name.
fn named(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        Err(Error::Config(
            "which schedule? The name is empty".to_owned(),
        ))
    } else {
        Ok(())
    }
}
