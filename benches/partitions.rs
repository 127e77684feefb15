//! Partitioned throughput on RabbitMQ: 30 partition queues, handlers of
//! 10 ms, concurrency 50, prefetch 10 per partition consumer.
//!
//! ```text
//! cargo bench -p qjob-benches --bench partitions
//! ```
//!
//! With 30 keys (one lane per partition at most) the ideal is 30 / 10 ms =
//! 3000 jobs/s; with 300 keys it is concurrency-bound, 50 / 10 ms = 5000.

use std::time::{Duration, Instant};

use qjob::broker::Broker;
use qjob::{Client, Job, Worker};
use qjob_benches::{DONE, Keyed, PartitionedJob, amqp_url, start_round, timers_alone};

#[tokio::main]
async fn main() {
    let url = amqp_url();
    let broker = qjob::AmqpBroker::connect(url.as_str())
        .await
        .expect("the bench needs RabbitMQ");
    let client = Client::new(broker.clone());
    let jobs = 6000u64;
    for (keys, ideal) in [(30u64, 3000.0), (300, 5000.0)] {
        let total = count_ready(&broker).await;
        assert_eq!(total, 0, "the partition queues start empty");
        let results = client
            .enqueue_all::<PartitionedJob>((0..jobs).map(|seq| Keyed {
                customer: format!("customer-{}", seq % keys),
                seq,
            }))
            .await
            .unwrap();
        assert!(results.iter().all(Result::is_ok));
        start_round(jobs as usize);
        let started = Instant::now();
        Worker::builder(broker.clone())
            .register(PartitionedJob)
            .build()
            .run_until(DONE.notified())
            .await
            .unwrap();
        let rate = jobs as f64 / started.elapsed().as_secs_f64();
        // The same waits with no broker: one task per key (30) or per
        // handler slot (50), whichever binds.
        let lanes = keys.min(50) as usize;
        let timers = timers_alone(jobs as usize, lanes, Duration::from_millis(10)).await;
        println!(
            "{keys:>3} keys over 30 partitions, 10 ms handlers, concurrency 50: {rate:.0} jobs/s \
             ({:.0}% of the ideal {ideal}; {:.0}% of {timers:.0}/s, the same 10 ms timers on \
             {lanes} tasks without a broker)",
            100.0 * rate / ideal,
            100.0 * rate / timers
        );
    }
}

async fn count_ready(broker: &qjob::AmqpBroker) -> u32 {
    let mut total = 0;
    for index in 0..30 {
        let queue = format!("{}.p{index}", PartitionedJob::QUEUE);
        total += broker
            .queue_stats(&queue)
            .await
            .unwrap()
            .map(|s| s.messages)
            .unwrap_or(0);
    }
    total
}
