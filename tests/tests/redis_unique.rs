//! Unique jobs on RabbitMQ with their locks in Redis (`QJOB_REDIS_URL`, or
//! 127.0.0.1:6379; `.ci/run` starts it): producers racing on one key
//! publish one job.

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

#[tokio::test]
async fn an_unreachable_redis_is_an_error_to_the_producer() {
    let error = RedisStore::connect("redis://127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Store { .. }), "{error}");
}
