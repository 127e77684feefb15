//! Unique jobs on RabbitMQ with their locks in Redis (`QJOB_REDIS_URL`, or
//! 127.0.0.1:6379; `.ci/run` starts it): producers racing on one key
//! publish one job.

use std::time::{Duration, Instant};

use qjob::store::RedisStore;
use qjob::{Client, Enqueued, Error, Job};
use qjob_tests::scenarios::Env;
use qjob_tests::{Act, Task};

qjob_tests::test_job!(
    redis_unique,
    "qjob.test.unique.redis",
    unique(key = key, within = "1m")
);

fn redis_url() -> String {
    std::env::var("QJOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// A store of its own for this run: keys under a fresh prefix.
async fn store() -> RedisStore {
    let store = RedisStore::connect(&redis_url())
        .await
        .unwrap_or_else(|error| panic!("these tests need Redis ({}): {error}", redis_url()));
    store.with_prefix(format!("qjob-test:{}:", uuid::Uuid::now_v7().simple()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_producers_racing_on_one_key_publish_one_job() {
    let env = Env::amqp().await;
    env.reset::<RedisUniqueJob>().await;
    let tag = env.tag::<RedisUniqueJob>();
    let store = store().await;
    // Eight producers, each its own client and Redis connection.
    let mut producers = Vec::new();
    for seq in 0..8 {
        let client = Client::new(env.broker()).with_store(store.clone());
        let task = Task::keyed(&tag, "invoice-42", seq, Act::Succeed);
        producers.push(tokio::spawn(async move {
            client.enqueue_unique::<RedisUniqueJob>(task).await
        }));
    }
    let mut results = Vec::new();
    for producer in producers {
        results.push(producer.await.unwrap().unwrap());
    }
    let new: Vec<&Enqueued> = results.iter().filter(|r| !r.is_duplicate()).collect();
    assert_eq!(new.len(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.id() == new[0].id()), "{results:?}");
    env.wait_ready(RedisUniqueJob::QUEUE, 1).await;
    let messages = env.take_all(RedisUniqueJob::QUEUE).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id.as_deref(), Some(new[0].id().as_str()));
}

/// Nothing listening: an `Error::Store` within the default bound (2 s),
/// not after the connection's retries (7.9 s before).
#[tokio::test]
async fn an_unreachable_redis_is_an_error_to_the_producer_within_the_bound() {
    let started = Instant::now();
    let error = RedisStore::connect("redis://127.0.0.1:1/")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, Error::Store { .. }), "{error}");
    assert!(
        took <= RedisStore::DEFAULT_TIMEOUT + MARGIN,
        "the error came after {took:?}"
    );
    let error = RedisStore::connect_within("redis://127.0.0.1:1/", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
}

/// How much later than its bound an error may come (a loaded machine).
const MARGIN: Duration = Duration::from_millis(700);

qjob_tests::test_job!(
    redis_gone,
    "qjob.test.unique.redis.gone",
    unique(key = key, within = "1m")
);

/// Redis stops answering, then goes away, after the store connected: a
/// unique job's enqueue is an `Error::Store` within the store's bound
/// each time, and publishes nothing.
#[tokio::test]
async fn a_unique_enqueue_while_redis_is_stalled_or_gone_fails_within_the_bound() {
    let env = Env::amqp().await;
    env.reset::<RedisGoneJob>().await;
    let tag = env.tag::<RedisGoneJob>();
    let mut redis = OwnRedis::start(&[]).await;
    // Under the half second a command waits for an answer by itself, so
    // that only the bound can make the error come in time.
    let bound = Duration::from_millis(300);
    let store = RedisStore::connect_within(&redis.url, bound).await.unwrap();
    let client = Client::new(env.broker()).with_store(store);
    let first = client
        .enqueue_unique::<RedisGoneJob>(Task::keyed(&tag, "a", 1, Act::Succeed))
        .await
        .unwrap();

    let pid = redis.child.id().to_string();
    // The shell's own `kill`: a fresh machine may have no kill program.
    let signal = |signal: &str| {
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill {signal} {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    for (seq, what) in [(2, "stalled"), (3, "gone")] {
        if what == "gone" {
            signal("-CONT");
            redis.child.kill().unwrap();
            redis.child.wait().unwrap();
        }
        let started = Instant::now();
        let error = client
            .enqueue_unique::<RedisGoneJob>(Task::keyed(
                &tag,
                &format!("k{seq}"),
                seq,
                Act::Succeed,
            ))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(error, Error::Store { .. }), "{what}: {error}");
        assert!(
            took <= bound + Duration::from_millis(180),
            "{what}: the error came after {took:?}"
        );
    }
    let published: Vec<String> = env
        .take_all(RedisGoneJob::QUEUE)
        .await
        .into_iter()
        .filter_map(|got| got.id)
        .collect();
    assert_eq!(published, [first.id().to_string()]);
}

/// A redis-server of this test's own, on a free port, with `settings`;
/// stopped when dropped. (The shared Redis's settings stay as they are.)
struct OwnRedis {
    child: std::process::Child,
    url: String,
}

impl OwnRedis {
    async fn start(settings: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(settings)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("these tests need redis-server on the PATH (.ci/run installs it)");
        qjob_tests::until(
            "redis-server to listen",
            std::time::Duration::from_secs(10),
            async || {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn connect_refuses_a_redis_that_evicts_keys_when_full() {
    for policy in ["allkeys-lru", "volatile-ttl"] {
        let redis = OwnRedis::start(&["--maxmemory", "64mb", "--maxmemory-policy", policy]).await;
        let error = RedisStore::connect(&redis.url).await.unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{policy}: {error:?}");
        assert!(error.to_string().contains(policy), "{error}");
        assert!(error.to_string().contains("noeviction"), "{error}");
    }
    // No limit, or noeviction: nothing is evicted.
    for settings in [
        &["--maxmemory", "0", "--maxmemory-policy", "allkeys-lru"][..],
        &["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"][..],
    ] {
        let redis = OwnRedis::start(settings).await;
        let store = RedisStore::connect(&redis.url).await;
        assert!(store.is_ok(), "{settings:?}: {store:?}");
    }
}

#[tokio::test]
async fn connect_warns_but_succeeds_when_the_policy_cannot_be_read() {
    let redis = OwnRedis::start(&[
        "--maxmemory",
        "64mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--rename-command",
        "CONFIG",
        "",
    ])
    .await;
    let store = RedisStore::connect(&redis.url).await;
    assert!(store.is_ok(), "{store:?}");
}

#[tokio::test]
async fn connect_succeeds_on_the_tests_redis() {
    // The shared Redis of the tests runs with no limit or noeviction (as
    // .ci/run starts it); a store on it is what the other tests use.
    store().await;
}

#[tokio::test]
async fn redis_keeps_permits_and_rates() {
    qjob_tests::limits::a_store_keeps_permits_and_rates(store().await).await;
}
