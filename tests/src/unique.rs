//! Unique-job scenarios written once and run on both brokers (with a
//! `MemoryStore`): on RabbitMQ in `tests/amqp_unique.rs`, in memory in
//! `tests/memory_unique.rs`. RabbitMQ with Redis: `tests/redis_unique.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use qjob::broker::Message;
use qjob::store::{MemoryStore, Store};
use qjob::{Enqueued, Error, Job, Worker};

use crate::env::{Env, LIMIT, Running};
use crate::{Act, Task, probe, test_job};

test_job!(
    unique_finished,
    "qjob.test.unique.finished",
    retry = 0,
    unique(key = key, within = "10m")
);
// One handler: the second job of a key waits while the first runs.
test_job!(
    unique_started,
    "qjob.test.unique.started",
    concurrency = 1,
    unique(key = key, within = "10m", until = "started")
);
test_job!(
    unique_store_down,
    "qjob.test.unique.store-down",
    unique(within = "10m")
);

test_job!(inbox, "qjob.test.unique.inbox", inbox = "1h");

/// Runs a worker for `job` with `store`.
fn start<J: Job>(env: &Env, job: J, store: &MemoryStore) -> Running {
    env.run(
        Worker::builder(env.broker())
            .register(job)
            .store(store.clone())
            .build(),
    )
}

pub async fn a_second_enqueue_returns_the_first_job_until_it_is_done(env: &Env) {
    env.reset::<UniqueFinishedJob>().await;
    let tag = env.tag::<UniqueFinishedJob>();
    let probe = probe(&tag);
    let store = MemoryStore::new();
    let client = env.client().with_store(store.clone());
    let task = |seq, act| Task::keyed(&tag, "account-7", seq, act);
    let first = client
        .enqueue_unique::<UniqueFinishedJob>(task(0, Act::Succeed))
        .await
        .unwrap();
    assert!(!first.is_duplicate());
    let again = client
        .enqueue_unique::<UniqueFinishedJob>(task(1, Act::Succeed))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(first.id().clone()));
    // `enqueue` says the same with the id alone.
    let id = client
        .enqueue::<UniqueFinishedJob>(task(2, Act::Succeed))
        .await
        .unwrap();
    assert_eq!(&id, first.id());
    let other = client
        .enqueue_unique::<UniqueFinishedJob>(Task::keyed(
            &tag,
            "account-8",
            3,
            Act::FailPermanently,
        ))
        .await
        .unwrap();
    assert!(!other.is_duplicate(), "another key");
    env.wait_ready(UniqueFinishedJob::QUEUE, 2).await;

    let worker = start(env, UniqueFinishedJob, &store);
    probe
        .wait("both jobs", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 2
        })
        .await;
    // Done (one succeeded, one dead-lettered): both keys are free.
    let key = |account: &str| format!("unique:{}:\"{account}\"", UniqueFinishedJob::QUEUE);
    crate::eventually(
        "the keys freed",
        LIMIT,
        || (store.held(&key("account-7")), store.held(&key("account-8"))),
        |held| *held == (None, None),
    )
    .await;
    let next = client
        .enqueue_unique::<UniqueFinishedJob>(task(4, Act::Succeed))
        .await
        .unwrap();
    assert!(!next.is_duplicate());
    assert_ne!(next.id(), first.id());
    probe
        .wait("the next job", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 3
        })
        .await;
    worker.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [0, 4]);
}

pub async fn a_started_job_frees_its_key(env: &Env) {
    env.reset::<UniqueStartedJob>().await;
    let tag = env.tag::<UniqueStartedJob>();
    let probe = probe(&tag);
    let store = MemoryStore::new();
    let client = env.client().with_store(store.clone());
    let task = |seq, act| Task::keyed(&tag, "report-1", seq, act);
    let first = client
        .enqueue_unique::<UniqueStartedJob>(task(0, Act::Block))
        .await
        .unwrap();
    let worker = start(env, UniqueStartedJob, &store);
    probe
        .wait("the first job running", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    // It runs: another of the same key may wait in the queue behind it.
    let second = client
        .enqueue_unique::<UniqueStartedJob>(task(1, Act::Succeed))
        .await
        .unwrap();
    assert!(!second.is_duplicate());
    assert_ne!(second.id(), first.id());
    let third = client
        .enqueue_unique::<UniqueStartedJob>(task(2, Act::Succeed))
        .await
        .unwrap();
    assert_eq!(&third, &Enqueued::Duplicate(second.id().clone()));
    probe.release();
    probe.wait_succeeded("both jobs", LIMIT, 2).await;
    worker.stop().await.unwrap();
}

/// A store that cannot be reached.
struct Unreachable;

fn refused<T>(operation: &str) -> Result<T, Error> {
    Err(Error::Store {
        operation: operation.into(),
        message: "connection refused".into(),
    })
}

#[async_trait]
impl Store for Unreachable {
    async fn acquire(&self, _: &str, _: &str, _: Duration) -> Result<Option<String>, Error> {
        refused("acquire")
    }

    async fn release(&self, _: &str, _: &str) -> Result<bool, Error> {
        refused("release")
    }

    async fn holder(&self, _: &str) -> Result<Option<String>, Error> {
        refused("get")
    }

    async fn batch_create(&self, _: &str, _: &str, _: Duration) -> Result<bool, Error> {
        refused("create a batch")
    }

    async fn batch_update(
        &self,
        _: &str,
        _: qjob::store::BatchUpdate<'_>,
        _: &str,
    ) -> Result<Option<qjob::store::BatchCounts>, Error> {
        refused("update a batch")
    }

    async fn take_permit(&self, _: &str, _: &str, _: u32, _: Duration) -> Result<bool, Error> {
        refused("take a permit")
    }

    async fn renew_permit(&self, _: &str, _: &str, _: Duration) -> Result<bool, Error> {
        refused("renew a permit")
    }

    async fn free_permit(&self, _: &str, _: &str) -> Result<bool, Error> {
        refused("free a permit")
    }

    async fn permits(&self, _: &str) -> Result<qjob::store::Permits, Error> {
        refused("read permits")
    }

    async fn set_permit_limit(&self, _: &str, _: Option<u32>) -> Result<(), Error> {
        refused("set a permit limit")
    }

    async fn take_rate(&self, _: &str, _: qjob::RateLimit) -> Result<Option<Duration>, Error> {
        refused("take a rate")
    }
}

pub async fn an_unreachable_store_is_an_error_and_nothing_is_enqueued(env: &Env) {
    env.reset::<UniqueStoreDownJob>().await;
    let tag = env.tag::<UniqueStoreDownJob>();
    let client = env.client().with_store(Unreachable);
    let error = client
        .enqueue::<UniqueStoreDownJob>(Task::new(&tag, 0, Act::Succeed))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Store { .. }), "{error}");
    let without = env
        .client()
        .enqueue::<UniqueStoreDownJob>(Task::new(&tag, 1, Act::Succeed))
        .await
        .unwrap_err();
    assert!(matches!(without, Error::Config(_)), "{without}");
    assert_eq!(env.ready(UniqueStoreDownJob::QUEUE).await, 0);
    // A batch cannot start without its store either.
    let batch = client
        .batch()
        .on_complete::<crate::jobs::BatchDoneJob>()
        .open()
        .await
        .unwrap_err();
    assert!(matches!(batch, Error::Store { .. }), "{batch}");
    let worker = Worker::builder(env.broker())
        .register(UniqueStoreDownJob)
        .build();
    let refused = worker.run_until(std::future::ready(())).await.unwrap_err();
    assert!(
        refused.to_string().contains("WorkerBuilder::store"),
        "{refused}"
    );
}

pub async fn a_job_delivered_twice_runs_once_with_an_inbox(env: &Env) {
    env.reset::<InboxJob>().await;
    let tag = env.tag::<InboxJob>();
    let probe = probe(&tag);
    let store = MemoryStore::new();
    // A producer that published the same job twice (same id), and
    // another job.
    let message = |seq: u32, id: &str| {
        Message::new(serde_json::to_vec(&Task::new(&tag, seq, Act::Succeed)).unwrap()).with_id(id)
    };
    let broker = env.broker();
    broker
        .declare_queue(&qjob::broker::QueueSpec::new(InboxJob::QUEUE))
        .await
        .unwrap();
    for (seq, id) in [(0, "job-a"), (0, "job-a"), (1, "job-b")] {
        broker
            .publish(InboxJob::QUEUE, message(seq, id))
            .await
            .unwrap();
    }
    let worker = start(env, InboxJob, &store);
    env.wait_ready(InboxJob::QUEUE, 0).await;
    probe.wait_succeeded("both jobs", LIMIT, 2).await;
    worker.stop().await.unwrap();
    let done = probe.done_sorted();
    assert_eq!(done, [0, 1], "job-a ran once");
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 2);
    assert_eq!(env.ready(&InboxJob::options().dead_letter_queue()).await, 0);
    let key = format!("inbox:{}:job-a", InboxJob::QUEUE);
    assert_eq!(store.held(&key).as_deref(), Some("job-a"));
}
