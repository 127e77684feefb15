//! The unique-job scenarios on MemoryBroker: the same as on RabbitMQ
//! (`amqp_unique.rs`).

qjob_tests::unique_tests!(qjob_tests::scenarios::Env::memory().await);

use qjob::Job;
use qjob::store::MemoryStore;
use qjob_tests::unique::UniqueFinishedJob;
use qjob_tests::{Act, Task};

/// A publish the broker refused stored nothing: the lock is given back
/// before the enqueue returns, and the next enqueue of the key, at once,
/// publishes.
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
    assert_eq!(
        store.held(&key),
        None,
        "the lock is free when enqueue returns"
    );
    let next = client
        .enqueue_unique::<UniqueFinishedJob>(task())
        .await
        .unwrap();
    assert!(!next.is_duplicate());
    assert_eq!(broker.ready_count(UniqueFinishedJob::QUEUE), 1);
}

/// In one `enqueue_all`, a second job of a key whose first job the broker
/// refused is not reported as enqueued under the first one's id: neither
/// was stored.
#[tokio::test]
async fn a_duplicate_of_a_refused_job_in_one_batch_is_not_enqueued() {
    let broker = qjob_testkit::MemoryBroker::new();
    let store = MemoryStore::new();
    let client = qjob::Client::new(broker.clone()).with_store(store.clone());
    let task = |seq| Task::keyed("memory:batch-refused", "account-1", seq, Act::Succeed);
    broker.fail_next_publish_to(UniqueFinishedJob::QUEUE);
    let results = client
        .enqueue_all::<UniqueFinishedJob>([task(0), task(1)])
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert!(
        matches!(&results[1], Err(qjob::Error::NotSent { reason, .. }) if reason.contains("same batch")),
        "{results:?}"
    );
    assert_eq!(broker.ready_count(UniqueFinishedJob::QUEUE), 0);
    let key = format!("unique:{}:\"account-1\"", UniqueFinishedJob::QUEUE);
    assert_eq!(
        store.held(&key),
        None,
        "the lock is free when enqueue_all returns"
    );
    let again = client
        .enqueue_all::<UniqueFinishedJob>([task(2)])
        .await
        .unwrap();
    assert!(again[0].is_ok(), "{again:?}");
    assert_eq!(broker.ready_count(UniqueFinishedJob::QUEUE), 1);
}

#[tokio::test]
async fn memory_store_keeps_permits_and_rates() {
    qjob_tests::limits::a_store_keeps_permits_and_rates(qjob::store::MemoryStore::new()).await;
}
