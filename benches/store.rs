//! `MemoryStore::acquire` with 10 000 and with 200 000 live locks: the time
//! per acquire should not grow with the locks held (an inbox or unique jobs
//! on `MemoryStore` take one lock per job).
//!
//! ```text
//! cargo bench -p qjob-benches --bench store
//! ```

use std::time::{Duration, Instant};

use qjob::store::{MemoryStore, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let acquires: u32 = std::env::var("QJOB_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: u32 = std::env::var("QJOB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let hour = Duration::from_secs(3600);
    for round in 1..=rounds {
        let mut per_acquire = Vec::new();
        for live in [10_000u32, 200_000] {
            let store = MemoryStore::new();
            for i in 0..live {
                assert_eq!(
                    store
                        .acquire(&format!("live-{i}"), "bench", hour)
                        .await
                        .unwrap(),
                    None
                );
            }
            let started = Instant::now();
            for i in 0..acquires {
                // Half new keys, half keys held already: both answers.
                let key = if i % 2 == 0 {
                    format!("new-{i}")
                } else {
                    format!("live-{i}")
                };
                std::hint::black_box(store.acquire(&key, "bench", hour).await.unwrap());
            }
            let micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(acquires);
            println!("round {round}: {micros:.2} µs per acquire at {live} live locks");
            per_acquire.push(micros);
        }
        println!(
            "round {round}: 200 000 live locks cost {:.2}× the time per acquire of 10 000",
            per_acquire[1] / per_acquire[0]
        );
    }
}
