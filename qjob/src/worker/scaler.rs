//! Applies a job's [`Autoscaler`] live: every interval it samples the
//! queue's depth and what the handlers did, and grows or shrinks the job's
//! handler slots and its consumers' prefetch to match.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::policy::autoscale::{AutoscaleSettings, Autoscaler, Sample, prefetch_for};
use crate::worker::control::Slots;
use crate::worker::health::Health;

/// What the handlers of a job did since the last sample.
#[derive(Debug, Default)]
pub(crate) struct Work {
    completed: AtomicU64,
    busy_nanos: AtomicU64,
}

impl Work {
    /// An attempt took `took`.
    pub(crate) fn record(&self, took: Duration) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn take(&self) -> (u64, Duration) {
        let completed = self.completed.swap(0, Ordering::Relaxed);
        let busy = Duration::from_nanos(self.busy_nanos.swap(0, Ordering::Relaxed));
        (completed, busy)
    }
}

/// One autoscaled job.
pub(crate) struct Scaled {
    pub(crate) job_queue: String,
    pub(crate) queues: Vec<String>,
    pub(crate) settings: AutoscaleSettings,
    pub(crate) slots: Arc<Slots>,
    pub(crate) work: Arc<Work>,
    /// Where the consumers take their prefetch from, and the job's
    /// configured prefetch (for `max` handlers); `None` when the prefetch
    /// stays as configured (single-active-consumer queues).
    pub(crate) prefetch: Option<(watch::Sender<u16>, u16)>,
    /// Whether an operator paused the job: no decision meanwhile (an empty
    /// run with a growing queue would scale it up, and ask for replicas).
    pub(crate) paused: watch::Receiver<bool>,
}

pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    job: Scaled,
    interval: Duration,
    health: Health,
    stop: CancellationToken,
) {
    let mut autoscaler = Autoscaler::new(job.settings);
    let mut current = job.settings.min;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (completed, busy) = job.work.take();
        if *job.paused.borrow() {
            continue;
        }
        let depth = depth(&*broker, &job.queues).await;
        let decision = autoscaler.observe(Sample {
            at: Instant::now(),
            depth,
            completed,
            busy,
        });
        let queue = job.job_queue.clone();
        counter!("qjob_scaling_decisions_total", "queue" => queue.clone(), "reason" => decision.reason.as_str())
            .increment(1);
        gauge!("qjob_recommended_replicas", "queue" => queue.clone()).set(decision.replicas as f64);
        job.slots.resize(decision.concurrency);
        if decision.concurrency != current {
            let prefetch = job.prefetch.as_ref().map(|(target, configured)| {
                let prefetch = prefetch_for(decision.concurrency, job.settings.max, *configured);
                target.send_replace(prefetch);
                prefetch
            });
            tracing::info!(
                queue,
                from = current,
                to = decision.concurrency,
                prefetch,
                needed = decision.needed,
                reason = decision.reason.as_str(),
                "concurrency changed"
            );
        }
        current = decision.concurrency;
        gauge!("qjob_worker_concurrency", "queue" => job.job_queue.clone()).set(current as f64);
        health.concurrency(&job.job_queue, current);
    }
}

/// The ready messages over the job's queues, `None` if a sample failed.
async fn depth(broker: &dyn Broker, queues: &[String]) -> Option<u64> {
    let mut total = 0;
    for queue in queues {
        total += u64::from(broker.queue_stats(queue).await.ok()??.messages);
    }
    Some(total)
}
