//! What the console heard: the listener on the status exchange, and the
//! workers' heartbeats (with the rates measured between them) and the
//! replies to commands it collects.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{Broker, Subscription};
use crate::policy::backoff;
use crate::protocol::{JobStatus, Reply, STATUS_EXCHANGE, StatusMessage, WorkerStatus};

/// How long a gone worker stays in view.
const GONE_KEPT: Duration = Duration::from_secs(600);

/// What the console heard.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) workers: BTreeMap<String, Tracked>,
    /// Replies to the commands awaited now, by command id.
    pub(super) replies: HashMap<String, Vec<Reply>>,
    /// Woken at each heartbeat and reply.
    pub(super) heard: Arc<Notify>,
    /// Whether the listener is lost (the connection closed).
    pub(super) lost: Option<String>,
}

/// One worker as last heard.
pub(super) struct Tracked {
    pub(super) status: WorkerStatus,
    pub(super) heard_at: Instant,
    /// The heartbeat its rates are measured from.
    pub(super) baseline: WorkerStatus,
    /// Per job: jobs settled per second between the baseline and the one
    /// before it.
    pub(super) rates: HashMap<String, f64>,
}

impl Seen {
    fn heartbeat(&mut self, status: WorkerStatus) {
        let now = Instant::now();
        let (baseline, rates) = match self.workers.remove(&status.worker_id) {
            // Rates are measured over at least half an interval: a
            // heartbeat a command asked for comes right after another.
            Some(before) if measurable(&before.baseline, &status) => {
                (status.clone(), rates(&before.baseline, &status))
            }
            Some(before) => (before.baseline, before.rates),
            None => (status.clone(), HashMap::new()),
        };
        self.workers.insert(
            status.worker_id.clone(),
            Tracked {
                status,
                heard_at: now,
                baseline,
                rates,
            },
        );
        self.workers
            .retain(|_, tracked| now.duration_since(tracked.heard_at) < GONE_KEPT);
    }
}

/// Whether `now` came at least half an interval after `before`.
fn measurable(before: &WorkerStatus, now: &WorkerStatus) -> bool {
    now.sent_at
        .duration_since(before.sent_at)
        .is_ok_and(|between| between >= now.interval / 2 && !between.is_zero())
}

/// Jobs settled per second, per job, between two heartbeats of a worker.
fn rates(before: &WorkerStatus, now: &WorkerStatus) -> HashMap<String, f64> {
    let Ok(between) = now.sent_at.duration_since(before.sent_at) else {
        return HashMap::new();
    };
    now.jobs
        .iter()
        .filter_map(|job| {
            let earlier = before.jobs.iter().find(|b| b.job == job.job)?;
            let settled = settled(job).saturating_sub(settled(earlier));
            Some((job.job.clone(), settled as f64 / between.as_secs_f64()))
        })
        .collect()
}

/// Attempts that ended: succeeded, or failed (retried or dead-lettered).
fn settled(job: &JobStatus) -> u64 {
    job.succeeded + job.failed
}

/// Reads the status exchange into `seen`; when the listener is lost (the
/// connection closed), says so in `seen` and listens again, with backoff.
pub(super) async fn listen(
    broker: Arc<dyn Broker>,
    patterns: [String; 2],
    mut listener: Box<dyn Subscription>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut failures = 0u32;
    loop {
        let lost = read(&mut listener, &seen).await;
        mark_lost(&seen, Some(lost));
        listener = loop {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff::retry_delay(failures, Duration::from_secs(5))).await;
            let patterns = [patterns[0].as_str(), patterns[1].as_str()];
            match broker.listen(STATUS_EXCHANGE, &patterns).await {
                Ok(listener) => break listener,
                Err(error) => mark_lost(&seen, Some(error.to_string())),
            }
        };
        failures = 0;
        mark_lost(&seen, None);
    }
}

fn mark_lost(seen: &Mutex<Seen>, lost: Option<String>) {
    let mut seen = seen.lock().expect("console state poisoned");
    seen.lost = lost;
    seen.heard.notify_waiters();
}

/// Reads heartbeats and replies into `seen` until the listener ends; why.
async fn read(listener: &mut Box<dyn Subscription>, seen: &Mutex<Seen>) -> String {
    loop {
        match listener.next().await {
            Some(Ok(delivery)) => {
                let _ = delivery.acker.ack().await;
                let Some(message) = StatusMessage::read(&delivery.message) else {
                    continue;
                };
                let mut seen = seen.lock().expect("console state poisoned");
                match message {
                    StatusMessage::Heartbeat(status) => seen.heartbeat(*status),
                    StatusMessage::Reply(reply) => {
                        if let Some(replies) = seen.replies.get_mut(&reply.command_id) {
                            replies.push(reply);
                        }
                    }
                }
                seen.heard.notify_waiters();
            }
            Some(Err(error)) => return error.to_string(),
            None => return "the broker cancelled the listener".to_owned(),
        }
    }
}
