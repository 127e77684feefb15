use std::time::Duration;

use qjob::{Backoff, Job, JobContext, JobError, QueueType, Unique, UniqueUntil, job};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Customer {
    pub id: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Webhook {
    pub customer: Customer,
    pub url: String,
}

#[job(
    queue = "webhooks.deliver",
    prefetch = 25,
    retry = 5,
    concurrency = 50,
    backoff = exponential(base = "200ms", max = "5m"),
    jitter = false,
    timeout = "30s",
    partition_by = customer.id,
    partitions = 30,
    circuit_breaker(failure_rate = 0.2, min_attempts = 20, window = "60s", open_for = "5m"),
    rate_limit = "100/s",
    queue_type = "quorum",
    max_length = 50000,
    delivery_limit = 20,
    priorities = 10,
    autoscale(min = 5, max = 50, target_latency = "10s"),
    unique(key = customer.id, within = "10m", until = "started"),
    inbox = "1h",
)]
pub async fn deliver(hook: Webhook, _ctx: JobContext) -> Result<(), JobError> {
    let _ = hook.url;
    Ok(())
}

fn main() {
    let options = DeliverJob::options();
    assert_eq!(DeliverJob::QUEUE, "webhooks.deliver");
    assert_eq!(DeliverJob::NAME, "deliver");
    assert_eq!(options.prefetch(), 25);
    assert_eq!(options.retry(), 5);
    assert_eq!(options.concurrency(), 50);
    assert_eq!(
        options.backoff(),
        Backoff::Exponential {
            base: Duration::from_millis(200),
            max: Duration::from_secs(300),
            jitter: false
        }
    );
    assert_eq!(options.timeout(), Some(Duration::from_secs(30)));
    assert_eq!(options.partitions(), Some(30));
    let breaker = options.circuit_breaker().unwrap();
    assert_eq!(breaker.failure_rate, 0.2);
    assert_eq!(breaker.min_attempts, 20);
    assert_eq!(breaker.window, Duration::from_secs(60));
    assert_eq!(breaker.open_for, Duration::from_secs(300));
    let rate = options.rate_limit().unwrap();
    assert_eq!((rate.count, rate.per), (100, Duration::from_secs(1)));
    assert_eq!(options.queue_type(), QueueType::Quorum);
    assert_eq!(options.max_length(), Some(50000));
    assert_eq!(options.delivery_limit(), Some(20));
    assert_eq!(options.priorities(), Some(10));
    let autoscale = options.autoscale().unwrap();
    assert_eq!((autoscale.min, autoscale.max), (5, 50));
    assert_eq!(autoscale.target_latency, Duration::from_secs(10));
    let hook = Webhook {
        customer: Customer { id: 42 },
        url: "https://example.com".into(),
    };
    assert_eq!(DeliverJob::partition_key(&hook).as_deref(), Some("42"));
    assert_eq!(
        options.unique(),
        Some(Unique::new(Duration::from_secs(600), UniqueUntil::Started))
    );
    assert_eq!(DeliverJob::unique_key(&hook).as_deref(), Some("42"));
    assert_eq!(options.inbox(), Some(Duration::from_secs(3600)));
}
