//! Samples the depth and consumers of each job's queues at an interval
//! (passive declares) into the `qjob_queue_depth` and `qjob_queue_consumers`
//! gauges. A failed sample keeps the last values.

use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

/// A job's queue (the gauges' label) and the queues it consumes.
pub(crate) struct Sampled {
    pub(crate) job_queue: String,
    pub(crate) queues: Vec<String>,
}

pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    jobs: Vec<Sampled>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for job in &jobs {
            sample(&*broker, job).await;
        }
    }
}

async fn sample(broker: &dyn Broker, job: &Sampled) {
    let (mut messages, mut consumers) = (0u64, 0u64);
    for queue in &job.queues {
        match broker.queue_stats(queue).await {
            Ok(Some(stats)) => {
                messages += u64::from(stats.messages);
                consumers += u64::from(stats.consumers);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(queue, %error, "could not sample the queue; keeping the last values");
                return;
            }
        }
    }
    let label = job.job_queue.clone();
    gauge!("qjob_queue_depth", "queue" => label.clone()).set(messages as f64);
    gauge!("qjob_queue_consumers", "queue" => label).set(consumers as f64);
}
