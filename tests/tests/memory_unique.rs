//! The unique-job scenarios on MemoryBroker: the same as on RabbitMQ
//! (`amqp_unique.rs`).

qjob_tests::unique_tests!(qjob_tests::scenarios::Env::memory().await);

use qjob::Job;
use qjob::store::MemoryStore;
use qjob_tests::unique::UniqueFinishedJob;
use qjob_tests::{Act, Task};

/// A publish the broker refused stored nothing: the lock is given back,
/// and the next enqueue of the key publishes.
#[tokio::test]
async fn a_refused_publish_gives_the_lock_back() {
    let broker = qjob_testkit::MemoryBroker::new();
    let store = MemoryStore::new();
    let client = qjob::Client::new(broker.clone()).with_store(store.clone());
    let task = || Task::keyed("memory:refused", "account-1", 0, Act::Succeed);
    broker.fail_next_publish_to(UniqueFinishedJob::QUEUE);
    let refused = client.enqueue_unique::<UniqueFinishedJob>(task()).await;
    assert!(refused.is_err(), "{refused:?}");
    let key = format!("unique:{}:\"account-1\"", UniqueFinishedJob::QUEUE);
    let limit = std::time::Duration::from_secs(5);
    qjob_tests::until("the lock given back", limit, async || {
        store.held(&key).is_none()
    })
    .await;
    let next = client
        .enqueue_unique::<UniqueFinishedJob>(task())
        .await
        .unwrap();
    assert!(!next.is_duplicate());
    assert_eq!(broker.ready_count(UniqueFinishedJob::QUEUE), 1);
}
