//! Scrapes the Prometheus exporter after a run whose outcomes are known and
//! finds every documented metric with the right value. Its own binary: the
//! recorder is global.

use metrics_exporter_prometheus::PrometheusBuilder;
use qjob::{JobContext, JobError, job};
use qjob_testkit::TestKit;

#[job(queue = "scraped", retry = 2, concurrency = 3)]
async fn scraped(n: u32, ctx: JobContext) -> Result<(), JobError> {
    match n {
        0 => Err(JobError::permanent(JobError::msg("never"))),
        1 if ctx.attempt() == 1 => Err(JobError::msg("once")),
        _ => Ok(()),
    }
}

#[job(
    queue = "scraped.guarded",
    retry = 0,
    circuit_breaker(failure_rate = 1.0, min_attempts = 1, window = "60s", open_for = "1h")
)]
async fn guarded(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    Err(JobError::msg("down"))
}

/// The value of the sample `name` whose labels include every `labels` pair.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| {
            line.split(['{', ' ']).next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .next()
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{scrape}"))
}

#[tokio::test(start_paused = true)]
async fn every_documented_metric_is_scraped_with_its_value() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let mut kit = TestKit::new().register(ScrapedJob).register(GuardedJob);
    kit.enqueue::<GuardedJob>(1).await.unwrap();
    // 0: permanent failure; 1: fails once; 2, 3, 4: succeed; plus garbage.
    kit.client().enqueue_all::<ScrapedJob>(0..5).await.unwrap();
    kit.start().await;
    kit.broker()
        .publish_raw("scraped", "not a number")
        .await
        .unwrap();
    kit.run_until_idle().await;
    // Let the queue sampler take a sample of the idle queues (every 15 s by
    // default), on the paused clock.
    tokio::time::sleep(std::time::Duration::from_secs(15)).await;

    let scrape = prometheus.render();
    let q = ("queue", "scraped");
    assert_eq!(sample(&scrape, "qjob_jobs_consumed_total", &[q]), 7.0);
    assert_eq!(sample(&scrape, "qjob_jobs_succeeded_total", &[q]), 4.0);
    assert_eq!(sample(&scrape, "qjob_jobs_failed_total", &[q]), 2.0);
    assert_eq!(sample(&scrape, "qjob_jobs_retried_total", &[q]), 1.0);
    let dead = "qjob_jobs_dead_lettered_total";
    assert_eq!(sample(&scrape, dead, &[q, ("reason", "permanent")]), 1.0);
    assert_eq!(sample(&scrape, dead, &[q, ("reason", "malformed")]), 1.0);
    let durations = "qjob_handler_duration_seconds_count";
    assert_eq!(
        sample(&scrape, durations, &[q, ("outcome", "succeeded")]),
        4.0
    );
    assert_eq!(
        sample(&scrape, durations, &[q, ("outcome", "retried")]),
        1.0
    );
    assert_eq!(
        sample(&scrape, durations, &[q, ("outcome", "dead_lettered")]),
        2.0
    );
    assert_eq!(
        sample(&scrape, "qjob_time_in_queue_seconds_count", &[q]),
        7.0
    );
    assert_eq!(sample(&scrape, "qjob_jobs_in_flight", &[q]), 0.0);
    assert_eq!(sample(&scrape, "qjob_worker_concurrency", &[q]), 3.0);
    assert_eq!(sample(&scrape, "qjob_queue_depth", &[q]), 0.0);
    assert_eq!(sample(&scrape, "qjob_queue_consumers", &[q]), 1.0);
    let guarded = ("queue", "scraped.guarded");
    assert_eq!(
        sample(&scrape, "qjob_circuit_breaker_state", &[guarded]),
        1.0
    );
}
