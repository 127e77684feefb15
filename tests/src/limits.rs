//! The jobs of the shared-limits tests (`tests/tests/redis_limits.rs`):
//! run in worker processes (`qjob-test-worker limits`), each start and end
//! printed to stdout as `<kind> start|end <seq> <µs since the epoch>`.

use std::io::Write;
use std::time::Duration;

use qjob::{JobContext, JobError, job};
use serde::{Deserialize, Serialize};

/// A job of the shared-limits tests: its number, its key, how long it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limited {
    pub seq: u32,
    pub key: String,
    pub millis: u64,
}

impl Limited {
    pub fn new(seq: u32, key: impl Into<String>, millis: u64) -> Self {
        Self {
            seq,
            key: key.into(),
            millis,
        }
    }
}

async fn report(kind: &str, job: &Limited) -> Result<(), JobError> {
    print_event(kind, "start", job)?;
    tokio::time::sleep(Duration::from_millis(job.millis)).await;
    print_event(kind, "end", job)?;
    Ok(())
}

fn print_event(kind: &str, event: &str, job: &Limited) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{kind} {event} {} {} {}",
        job.seq,
        crate::micros_since_epoch(),
        job.key
    )?;
    stdout.flush()
}

#[job(
    queue = "qjob.test.limits.global",
    concurrency = 10,
    prefetch = 20,
    global_concurrency = 5
)]
pub async fn globally_limited(job: Limited, _ctx: JobContext) -> Result<(), JobError> {
    report("global", &job).await
}

#[job(
    queue = "qjob.test.limits.rate",
    concurrency = 10,
    prefetch = 50,
    global_rate = "100/s"
)]
pub async fn globally_rated(job: Limited, _ctx: JobContext) -> Result<(), JobError> {
    report("rate", &job).await
}

#[job(
    queue = "qjob.test.limits.key",
    concurrency = 10,
    prefetch = 100,
    key_rate = "5/s",
    rate_by = key
)]
pub async fn rated_per_key(job: Limited, _ctx: JobContext) -> Result<(), JobError> {
    report("key", &job).await
}

/// The permits and rates contract of a [`qjob::store::Store`], on any
/// store with no keys of these names: limits hold under concurrent calls,
/// permits are freed, renewed and expire, a limit set at run time wins.
pub async fn a_store_keeps_permits_and_rates(store: impl qjob::store::Store + Clone) {
    use qjob::RateLimit;
    let lease = Duration::from_secs(1);
    // 20 racing takes of a resource of 3: 3 win.
    let takes = (0..20).map(|n| {
        let store = store.clone();
        tokio::spawn(async move { store.take_permit("db", &format!("h{n}"), 3, lease).await })
    });
    let won = futures_util::future::join_all(takes)
        .await
        .into_iter()
        .filter(|taken| *taken.as_ref().unwrap().as_ref().unwrap())
        .count();
    assert_eq!(won, 3);
    let permits = store.permits("db").await.unwrap();
    assert_eq!(permits.holders.len(), 3);
    let (holder, left) = permits.holders[0].clone();
    assert!(
        left <= lease && left > Duration::from_millis(500),
        "{left:?}"
    );
    assert!(
        store.take_permit("db", &holder, 3, lease).await.unwrap(),
        "held: renewed"
    );
    assert!(store.free_permit("db", &holder).await.unwrap());
    assert!(
        !store.free_permit("db", &holder).await.unwrap(),
        "freed once"
    );
    assert!(
        store.take_permit("db", "late", 3, lease).await.unwrap(),
        "a freed permit is free"
    );
    assert!(!store.take_permit("db", "later", 3, lease).await.unwrap());
    store.set_permit_limit("db", Some(4)).await.unwrap();
    assert_eq!(store.permits("db").await.unwrap().limit, Some(4));
    assert!(
        store.take_permit("db", "later", 3, lease).await.unwrap(),
        "the limit set wins"
    );
    store.set_permit_limit("db", None).await.unwrap();
    assert!(
        store
            .renew_permit("db", "later", Duration::from_secs(5))
            .await
            .unwrap()
    );
    // The others' leases run out; the renewed one lasts.
    crate::until(
        "the unrenewed leases to run out",
        Duration::from_secs(10),
        async || {
            let permits = store.permits("db").await.unwrap();
            let holders: Vec<&str> = permits.holders.iter().map(|(h, _)| h.as_str()).collect();
            holders == ["later"]
        },
    )
    .await;
    assert!(
        !store.renew_permit("db", "late", lease).await.unwrap(),
        "expired"
    );
    // A rate of 10/s: a burst of 1, then one start per 100 ms.
    let rate = RateLimit::new(10, Duration::from_secs(1));
    assert_eq!(store.take_rate("calls", rate).await.unwrap(), None);
    let wait = store
        .take_rate("calls", rate)
        .await
        .unwrap()
        .expect("spaced");
    assert!(
        wait <= Duration::from_millis(100) && wait > Duration::from_millis(50),
        "{wait:?}"
    );
    tokio::time::sleep(wait).await;
    assert_eq!(store.take_rate("calls", rate).await.unwrap(), None);
    assert_eq!(
        store.take_rate("other", rate).await.unwrap(),
        None,
        "keys apart"
    );
    // 20 racing starts at 1 000/s (a burst of 100): all start.
    let fast = RateLimit::new(1000, Duration::from_secs(1));
    let starts = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.take_rate("fast", fast).await })
    });
    for started in futures_util::future::join_all(starts).await {
        assert_eq!(started.unwrap().unwrap(), None);
    }
}
