//! What the console does to the schedules a worker carries: pause one,
//! resume it, fire one tick now. The console holds a [`ScheduleControl`]
//! per schedule; the schedule's task (`worker::scheduler`) holds the other
//! end and does the firing, so that only the leader fires, from the one
//! task that owns the schedule's state.
// Without the `periodic` feature a worker carries no schedule: the
// console finds none to command.
#![cfg_attr(not(feature = "periodic"), allow(dead_code))]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::JobId;
use crate::protocol::Command;
use crate::worker::health::Health;

/// How long the console waits for a schedule's task to fire a tick now:
/// past it, the console does not reply (and the task, if it has not
/// started, does not fire).
const FIRED_WITHIN: Duration = Duration::from_secs(2);

/// Requests to fire now that may wait for the schedule's task.
const WAITING_REQUESTS: usize = 8;

/// The console's end of one schedule.
pub(crate) struct ScheduleControl {
    pub(crate) name: String,
    paused: watch::Sender<bool>,
    requests: mpsc::Sender<FireNow>,
    /// Held by the schedule's task from its pause check through a tick's
    /// publish: a pause is answered only once no tick is on its way.
    firing: Arc<tokio::sync::Mutex<()>>,
}

/// A request to fire one tick now, answered by the schedule's task.
pub(crate) struct FireNow {
    pub(crate) answer: oneshot::Sender<Fired>,
}

/// What came of a [`FireNow`].
pub(crate) enum Fired {
    /// The tick's job was enqueued, with this id.
    Enqueued(JobId),
    /// This worker does not lead the schedule: another does.
    NotLeading,
    /// The publish failed: nothing was enqueued, or (a timeout) it is not
    /// known.
    Failed(String),
}

/// The schedule task's end: whether the schedule is paused, and the
/// requests to fire now. It keeps the console's end alive, so the pause
/// flag and the requests never close under it.
#[cfg(feature = "periodic")]
pub(crate) struct Controlled {
    pub(crate) paused: watch::Receiver<bool>,
    pub(crate) requests: mpsc::Receiver<FireNow>,
    /// Held from the pause check through a tick's publish.
    pub(crate) firing: Arc<tokio::sync::Mutex<()>>,
    _control: Arc<ScheduleControl>,
}

#[cfg(feature = "periodic")]
impl ScheduleControl {
    /// Both ends of schedule `name`'s control, not paused.
    pub(crate) fn pair(name: &str) -> (Arc<ScheduleControl>, Controlled) {
        let (paused, paused_rx) = watch::channel(false);
        let (requests, requests_rx) = mpsc::channel(WAITING_REQUESTS);
        let firing = Arc::new(tokio::sync::Mutex::new(()));
        let control = Arc::new(ScheduleControl {
            name: name.to_owned(),
            paused,
            requests,
            firing: firing.clone(),
        });
        let controlled = Controlled {
            paused: paused_rx,
            requests: requests_rx,
            firing,
            _control: control.clone(),
        };
        (control, controlled)
    }
}

/// Carries out a schedule command: whether it did, and what it says
/// about it; `None` when this worker does not carry the schedule, or does
/// not lead it (a fire now), or its task did not answer in time.
pub(crate) async fn obey(
    schedules: &[Arc<ScheduleControl>],
    health: &Health,
    command: &Command,
) -> Option<(bool, String)> {
    let name = command.schedule()?;
    let control = schedules.iter().find(|control| control.name == name)?;
    let leads = || {
        health
            .report()
            .schedules
            .get(name)
            .is_some_and(|schedule| schedule.leader)
    };
    let role = || {
        if leads() {
            "this worker leads it and keeps its lease"
        } else {
            "this worker stands by"
        }
    };
    match command {
        Command::PauseSchedule { .. } => {
            let was = control.paused.send_replace(true);
            #[cfg(feature = "periodic")]
            health.schedule(name, |schedule| schedule.paused = true);
            // A tick past its pause check before the flag went up is
            // published before the pause is answered.
            drop(control.firing.lock().await);
            let what = if was { "was paused already" } else { "paused" };
            Some((
                true,
                format!(
                    "schedule {name} {what}: no tick fires until resumed ({})",
                    role()
                ),
            ))
        }
        Command::ResumeSchedule { .. } => {
            // Only a change wakes the task: a resume of a schedule not
            // paused runs no missed-tick policy.
            let mut was = false;
            control.paused.send_if_modified(|paused| {
                was = std::mem::replace(paused, false);
                was
            });
            #[cfg(feature = "periodic")]
            health.schedule(name, |schedule| schedule.paused = false);
            let what = if was {
                "resumed: the ticks missed while paused go by its missed-tick policy"
            } else {
                "was not paused"
            };
            Some((true, format!("schedule {name} {what}")))
        }
        // A worker that does not lead it stays silent at once: its task
        // would not fire, and its commands must not wait on it.
        Command::FireSchedule { .. } if !leads() => None,
        Command::FireSchedule { .. } => fire_now(control).await,
        _ => None,
    }
}

/// Asks the schedule's task to fire one tick now; `None` if it does not
/// lead the schedule or did not answer within [`FIRED_WITHIN`].
async fn fire_now(control: &ScheduleControl) -> Option<(bool, String)> {
    let name = &control.name;
    let (answer, answered) = oneshot::channel();
    if control.requests.try_send(FireNow { answer }).is_err() {
        return Some((
            false,
            format!("schedule {name}: too many fire-now requests waiting; try again"),
        ));
    }
    // Dropping `answered` at the deadline tells the task not to fire.
    match tokio::time::timeout(FIRED_WITHIN, answered).await {
        Ok(Ok(Fired::Enqueued(id))) => Some((
            true,
            format!("schedule {name}: tick {id} enqueued now; its regular ticks go on as before"),
        )),
        Ok(Ok(Fired::Failed(error))) => Some((
            false,
            format!("schedule {name}: the tick could not be enqueued: {error}"),
        )),
        Ok(Ok(Fired::NotLeading)) | Ok(Err(_)) | Err(_) => None,
    }
}
