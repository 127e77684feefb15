//! 100 000 no-op jobs through `MemoryBroker` and a `Worker`: enqueued
//! (confirms pipelined), consumed, handled, acked.
//!
//! ```text
//! cargo bench -p qjob-benches --bench memory
//! ```

use std::time::Instant;

use qjob::{Client, Job, Worker};
use qjob_benches::{Bench, MemoryNoopJob};
use qjob_testkit::MemoryBroker;

#[tokio::main]
async fn main() {
    let jobs: u64 = std::env::var("QJOB_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for round in 1..=3 {
        let broker = MemoryBroker::new();
        let client = Client::new(broker.clone());
        let started = Instant::now();
        let results = client
            .enqueue_all::<MemoryNoopJob>((0..jobs).map(Bench::new))
            .await
            .unwrap();
        assert!(results.iter().all(Result::is_ok));
        let enqueued = started.elapsed();
        Worker::builder(broker.clone())
            .register(MemoryNoopJob)
            .build()
            .run_until(broker.wait_until_empty(MemoryNoopJob::QUEUE))
            .await
            .unwrap();
        let total = started.elapsed();
        println!(
            "round {round}: {jobs} jobs enqueued in {enqueued:.2?}, all handled and acked after {total:.2?} ({:.0} jobs/s end to end)",
            jobs as f64 / total.as_secs_f64()
        );
    }
}
