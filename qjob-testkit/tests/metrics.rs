//! The worker's metrics, read back through a debugging recorder after a run
//! whose outcomes are known. Its own binary: the recorder is global.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use qjob::{JobContext, JobError, job};
use qjob_testkit::TestKit;

#[job(queue = "metered", retry = 2, concurrency = 3)]
async fn metered(n: u32, ctx: JobContext) -> Result<(), JobError> {
    match n {
        0 => Err(JobError::permanent(JobError::msg("never"))),
        1 if ctx.attempt() == 1 => Err(JobError::msg("once")),
        _ => Ok(()),
    }
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// Every series as `name{label=value,…}` → value.
fn series(snapshot: Snapshot) -> HashMap<String, DebugValue> {
    snapshot
        .into_iter()
        .map(|(key, _, _, value)| {
            let mut labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (
                format!("{}{{{}}}", key.key().name(), labels.join(",")),
                value,
            )
        })
        .collect()
}

fn count(value: Option<&DebugValue>) -> u64 {
    match value {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("expected a counter, got {other:?}"),
    }
}

fn samples(value: Option<&DebugValue>) -> usize {
    match value {
        Some(DebugValue::Histogram(values)) => values.len(),
        other => panic!("expected a histogram, got {other:?}"),
    }
}

fn level(value: Option<&DebugValue>) -> f64 {
    match value {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("expected a gauge, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_what_happened() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");

    let mut kit = TestKit::new().register(MeteredJob);
    // 0: permanent failure; 1: fails once then succeeds; 2, 3, 4: succeed.
    kit.client().enqueue_all::<MeteredJob>(0..5).await.unwrap();
    // The first two dead-letter publishes are refused: the settlement is
    // held and published again, never re-run (nothing more is consumed).
    kit.broker().fail_next_publish_to("metered.dlq");
    kit.broker().fail_next_publish_to("metered.dlq");
    kit.start().await;
    kit.broker()
        .publish_raw("metered", "not a number")
        .await
        .unwrap();
    kit.run_until_idle().await;

    let all = series(snapshotter.snapshot().into_vec());
    let get = |name: &str| all.get(name);
    assert_eq!(count(get("qjob_jobs_consumed_total{queue=metered}")), 7);
    assert_eq!(count(get("qjob_jobs_succeeded_total{queue=metered}")), 4);
    assert_eq!(count(get("qjob_jobs_failed_total{queue=metered}")), 2);
    assert_eq!(count(get("qjob_jobs_retried_total{queue=metered}")), 1);
    assert_eq!(
        count(get(
            "qjob_jobs_dead_lettered_total{queue=metered,reason=permanent}"
        )),
        1
    );
    assert_eq!(
        count(get(
            "qjob_jobs_dead_lettered_total{queue=metered,reason=malformed}"
        )),
        1
    );
    assert_eq!(
        samples(get(
            "qjob_handler_duration_seconds{outcome=succeeded,queue=metered}"
        )),
        4
    );
    assert_eq!(
        samples(get(
            "qjob_handler_duration_seconds{outcome=retried,queue=metered}"
        )),
        1
    );
    assert_eq!(
        samples(get(
            "qjob_handler_duration_seconds{outcome=dead_lettered,queue=metered}"
        )),
        2
    );
    assert_eq!(samples(get("qjob_time_in_queue_seconds{queue=metered}")), 7);
    assert_eq!(
        count(get("qjob_settlement_failures_total{queue=metered}")),
        2
    );
    assert_eq!(level(get("qjob_jobs_in_flight{queue=metered}")), 0.0);
    assert_eq!(level(get("qjob_worker_concurrency{queue=metered}")), 3.0);
}
