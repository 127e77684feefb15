//! Limits shared by workers (global concurrency, resources, global and
//! per-key rates) and a worker's handler budget, on the paused clock:
//! several TestKits sharing one `MemoryStore` stand for several processes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use qjob::store::{MemoryStore, Store};
use qjob::{Error, JobContext, JobError, job};
use qjob_testkit::TestKit;
use tokio::time::Instant;

/// Handlers running now and the most seen, sampled at every start and end.
struct Running {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Running {
    const fn new() -> Self {
        Self {
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        }
    }

    async fn during(&self, work: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(work).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

static GLOBAL: Running = Running::new();

#[job(
    queue = "limits.global",
    concurrency = 10,
    prefetch = 20,
    global_concurrency = 5
)]
async fn global(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    GLOBAL.during(Duration::from_millis(100)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn global_concurrency_holds_across_workers() {
    let store = MemoryStore::new();
    let mut kits: Vec<TestKit> = (0..3)
        .map(|_| TestKit::new().register(GlobalJob).store(store.clone()))
        .collect();
    // One broker per kit: each worker has its own 60 jobs.
    for kit in &kits {
        let results = kit.client().enqueue_all::<GlobalJob>(0..60).await.unwrap();
        assert!(results.iter().all(Result::is_ok));
    }
    let start = Instant::now();
    let [a, b, c] = &mut kits[..] else {
        unreachable!()
    };
    tokio::join!(a.run_until_idle(), b.run_until_idle(), c.run_until_idle());
    assert_eq!(
        GLOBAL.most.load(Ordering::SeqCst),
        5,
        "never more than 5, and 5 reached"
    );
    for kit in &kits {
        assert_eq!(kit.succeeded::<GlobalJob>().len(), 60);
    }
    // 180 jobs of 100 ms, 5 at a time: 3.6 s, plus the polls of waiting
    // starts (at most 150 ms each time a permit frees in another worker).
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(3600), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        store
            .permits("job:limits.global")
            .await
            .unwrap()
            .holders
            .is_empty()
    );
}

static SHARED: Running = Running::new();

#[job(queue = "limits.resource.a", concurrency = 10, resource = "billing-db")]
async fn uses_db_a(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    SHARED.during(Duration::from_millis(50)).await;
    Ok(())
}

#[job(queue = "limits.resource.b", concurrency = 10, resource = "billing-db")]
async fn uses_db_b(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    SHARED.during(Duration::from_millis(50)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn job_types_share_a_resource() {
    let mut kit = TestKit::new()
        .register(UsesDbAJob)
        .register(UsesDbBJob)
        .store(MemoryStore::new())
        .configure(|worker| worker.resource("billing-db", 3));
    kit.client().enqueue_all::<UsesDbAJob>(0..30).await.unwrap();
    kit.client().enqueue_all::<UsesDbBJob>(0..30).await.unwrap();
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<UsesDbAJob>().len(), 30);
    assert_eq!(kit.succeeded::<UsesDbBJob>().len(), 30);
    assert_eq!(SHARED.most.load(Ordering::SeqCst), 3);
}

#[job(queue = "limits.unsized", resource = "nowhere")]
async fn unsized_resource(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "limits.storeless", global_concurrency = 2)]
async fn storeless(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test]
async fn a_limit_without_a_store_or_a_size_is_refused_at_start() {
    let broker = qjob_testkit::MemoryBroker::new();
    let worker = qjob::Worker::builder(broker.clone())
        .register(StorelessJob)
        .build();
    let error = worker.run_until(std::future::pending()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Config(text) if text.contains("needs a store")),
        "{error}"
    );
    let worker = qjob::Worker::builder(broker.clone())
        .register(UnsizedResourceJob)
        .store(MemoryStore::new())
        .build();
    let error = worker.run_until(std::future::pending()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Config(text) if text.contains("resource(\"nowhere\", permits)")),
        "{error}"
    );
    let worker = qjob::Worker::builder(broker)
        .register(StorelessJob)
        .store(MemoryStore::new())
        .max_handlers(0)
        .build();
    let error = worker.run_until(std::future::pending()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Config(text) if text.contains("max_handlers")),
        "{error}"
    );
}

static RATED: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[job(
    queue = "limits.rate",
    concurrency = 20,
    prefetch = 50,
    global_rate = "100/s"
)]
async fn rated(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    RATED.lock().unwrap().push(Instant::now());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_global_rate_holds_across_workers() {
    let store = MemoryStore::new();
    let mut kits: Vec<TestKit> = (0..3)
        .map(|_| TestKit::new().register(RatedJob).store(store.clone()))
        .collect();
    for kit in &kits {
        kit.client().enqueue_all::<RatedJob>(0..2000).await.unwrap();
    }
    let start = Instant::now();
    let [a, b, c] = &mut kits[..] else {
        unreachable!()
    };
    tokio::select! {
        _ = async { tokio::join!(a.run_until_idle(), b.run_until_idle(), c.run_until_idle()) } => {
            panic!("6 000 jobs at 100/s cannot be done in 30 s")
        }
        () = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
    let starts = RATED.lock().unwrap().clone();
    let within = starts
        .iter()
        .filter(|at| at.duration_since(start) < Duration::from_secs(30))
        .count();
    // 100/s for 30 s, plus one burst of 10.
    assert!((2700..=3300).contains(&within), "{within} starts in 30 s");
    assert!(within >= 2990, "the rate is used fully: {within}");
    for window in starts.windows(21) {
        let span = window[20] - window[0];
        assert!(
            span >= Duration::from_millis(100),
            "21 starts within {span:?}"
        );
    }
}

static KEYED: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Call {
    customer: String,
}

#[job(queue = "limits.key.rate", concurrency = 20, prefetch = 100, key_rate = "5/s", rate_by = customer)]
async fn per_customer(call: Call, _ctx: JobContext) -> Result<(), JobError> {
    KEYED.lock().unwrap().push((call.customer, Instant::now()));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_rate_per_key_holds_for_each_key() {
    let mut kit = TestKit::new()
        .register(PerCustomerJob)
        .store(MemoryStore::new());
    let calls = (0..500).map(|n| Call {
        customer: format!("c{}", n % 10),
    });
    kit.client()
        .enqueue_all::<PerCustomerJob>(calls)
        .await
        .unwrap();
    let start = Instant::now();
    kit.run_until_idle().await;
    let starts = KEYED.lock().unwrap().clone();
    assert_eq!(starts.len(), 500);
    // 50 per key at 5/s (a burst of 1): 9.8 s for each key, all at once.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(9800), "{took:?}");
    assert!(
        took < Duration::from_secs(12),
        "keys do not wait for each other: {took:?}"
    );
    for key in 0..10 {
        let key = format!("c{key}");
        let times: Vec<Instant> = starts
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, at)| *at)
            .collect();
        assert_eq!(times.len(), 50);
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(199),
                "{key}: {:?}",
                pair[1] - pair[0]
            );
        }
    }
}

static CRITICAL: Running = Running::new();
static BULK: Running = Running::new();
static SAMPLES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

#[job(
    queue = "limits.budget.critical",
    concurrency = 10,
    prefetch = 20,
    class = "critical"
)]
async fn critical(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    CRITICAL.during(Duration::from_millis(200)).await;
    Ok(())
}

#[job(
    queue = "limits.budget.bulk",
    concurrency = 10,
    prefetch = 20,
    class = "bulk"
)]
async fn bulk(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    BULK.during(Duration::from_millis(300)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn critical_jobs_hold_their_share_of_the_budget_and_bulk_keeps_its_floor() {
    let mut kit = TestKit::new()
        .register(BulkJob)
        .register(CriticalJob)
        .configure(|worker| worker.max_handlers(10));
    // Bulk is backlogged first and takes the whole budget.
    kit.client().enqueue_all::<BulkJob>(0..400).await.unwrap();
    kit.start().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(BULK.now.load(Ordering::SeqCst), 10);
    kit.client()
        .enqueue_all::<CriticalJob>(0..400)
        .await
        .unwrap();
    let sampler = async {
        // Once the bulk handlers running then have ended (300 ms) and bulk
        // had its floor back (by 500 ms), every sample: critical holds the
        // budget but bulk's floor.
        // Samples fall between the starts and ends (on a 100 ms grid).
        tokio::time::sleep(Duration::from_millis(650)).await;
        for _ in 0..60 {
            let sample = (
                CRITICAL.now.load(Ordering::SeqCst),
                BULK.now.load(Ordering::SeqCst),
            );
            SAMPLES.lock().unwrap().push(sample);
            let health = kit.health().unwrap().budget.unwrap();
            assert!(health.in_use <= 10);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    sampler.await;
    let samples = SAMPLES.lock().unwrap().clone();
    for (critical, bulk) in &samples {
        assert!(
            critical + bulk <= 10,
            "the budget is never exceeded: {samples:?}"
        );
        assert!(*critical >= 9, "critical holds its share: {samples:?}");
        assert_eq!(*bulk, 1, "bulk keeps its floor: {samples:?}");
    }
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<CriticalJob>().len(), 400);
    assert_eq!(kit.succeeded::<BulkJob>().len(), 400);
}

/// A store that can be taken down: its permits and rates fail meanwhile.
#[derive(Clone, Default)]
struct Flaky {
    store: MemoryStore,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Flaky {
    fn check(&self) -> Result<(), Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Store {
                operation: "take a permit".to_owned(),
                message: "connection refused".to_owned(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, Error> {
        self.store.acquire(key, owner, ttl).await
    }
    async fn release(&self, key: &str, owner: &str) -> Result<bool, Error> {
        self.store.release(key, owner).await
    }
    async fn holder(&self, key: &str) -> Result<Option<String>, Error> {
        self.store.holder(key).await
    }
    async fn batch_create(
        &self,
        batch: &str,
        callback: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.store.batch_create(batch, callback, ttl).await
    }
    async fn batch_update(
        &self,
        batch: &str,
        update: qjob::store::BatchUpdate<'_>,
        claimant: &str,
    ) -> Result<Option<qjob::store::BatchCounts>, Error> {
        self.store.batch_update(batch, update, claimant).await
    }
    async fn take_permit(
        &self,
        resource: &str,
        holder: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.check()?;
        self.store.take_permit(resource, holder, limit, lease).await
    }
    async fn renew_permit(
        &self,
        resource: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.check()?;
        self.store.renew_permit(resource, holder, lease).await
    }
    async fn free_permit(&self, resource: &str, holder: &str) -> Result<bool, Error> {
        self.check()?;
        self.store.free_permit(resource, holder).await
    }
    async fn permits(&self, resource: &str) -> Result<qjob::store::Permits, Error> {
        self.check()?;
        self.store.permits(resource).await
    }
    async fn set_permit_limit(&self, resource: &str, limit: Option<u32>) -> Result<(), Error> {
        self.check()?;
        self.store.set_permit_limit(resource, limit).await
    }
    async fn take_rate(&self, key: &str, rate: qjob::RateLimit) -> Result<Option<Duration>, Error> {
        self.check()?;
        self.store.take_rate(key, rate).await
    }
}

static GUARDED: Running = Running::new();

#[job(queue = "limits.store.down", concurrency = 4, global_concurrency = 2)]
async fn guarded(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    GUARDED.during(Duration::from_millis(100)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn while_the_store_is_down_jobs_wait_and_health_says_why() {
    let store = Flaky::default();
    store.down.store(true, Ordering::SeqCst);
    let mut kit = TestKit::new().register(GuardedJob).store(store.clone());
    kit.client().enqueue_all::<GuardedJob>(0..10).await.unwrap();
    kit.start().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        GUARDED.most.load(Ordering::SeqCst),
        0,
        "nothing runs past an unchecked limit"
    );
    let health = kit.health().unwrap();
    let limits = &health.shared_limits["guarded"];
    let problem = limits.problem.as_deref().unwrap_or_default();
    assert!(problem.contains("connection refused"), "{problem:?}");
    assert_eq!(
        kit.broker().ready_count("limits.store.down")
            + kit.broker().unacked_count("limits.store.down"),
        10
    );
    store.down.store(false, Ordering::SeqCst);
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<GuardedJob>().len(), 10);
    assert_eq!(GUARDED.most.load(Ordering::SeqCst), 2);
    assert_eq!(kit.health().unwrap().shared_limits["guarded"].problem, None);
}

#[job(
    queue = "limits.budget.autoscaled",
    prefetch = 100,
    autoscale(min = 1, max = 40, target_latency = "100ms")
)]
async fn autoscaled(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// Adaptive concurrency scales a job type up to the worker's budget and
/// never past it, however much its backlog asks for.
#[tokio::test(start_paused = true)]
async fn autoscaling_stays_within_the_budget() {
    let mut kit = TestKit::new().register(AutoscaledJob).configure(|worker| {
        worker
            .max_handlers(10)
            .autoscale_interval(Duration::from_secs(1))
    });
    kit.client()
        .enqueue_all::<AutoscaledJob>(0..5000)
        .await
        .unwrap();
    kit.start().await;
    let mut most = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let health = kit.health().unwrap();
        let slots = health.concurrency["limits.budget.autoscaled"];
        assert!(slots <= 10, "{slots} handler slots, past the budget of 10");
        assert!(health.budget.unwrap().in_use <= 10);
        most = most.max(slots);
    }
    assert_eq!(most, 10, "scaled up to the budget");
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<AutoscaledJob>().len(), 5000);
}
