//! How a worker runs handlers: at most `concurrency` at once, a shutdown
//! that finishes what started and returns the rest, a shutdown timeout
//! for a stuck handler, and an observer's panic that stalls nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::{Job, Worker};
use tokio::sync::oneshot;

use crate::env::{Env, LIMIT};
use crate::{Act, Probe, Task, probe, test_job};

test_job!(
    concurrency,
    "qjob.test.concurrency",
    prefetch = 10,
    concurrency = 4
);
test_job!(
    shutdown,
    "qjob.test.shutdown",
    prefetch = 10,
    concurrency = 2
);
test_job!(stuck, "qjob.test.stuck");
test_job!(
    observed,
    "qjob.test.observed",
    partition_by = key,
    partitions = 1,
    retry = 2,
    backoff = fixed("50ms")
);

/// Under load the worker runs exactly `concurrency` handlers at once: the
/// limit is reached and never exceeded.
pub async fn concurrency_is_reached_and_never_exceeded<J: Job<Payload = Task>>(env: &Env, job: J) {
    let options = J::options();
    assert!(usize::from(options.prefetch()) > options.concurrency());
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let jobs = 40;
    let results = env
        .client()
        .enqueue_all::<J>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Sleep(30))))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let running = env.start(job);
    let probe = probe(&tag);
    probe
        .wait_succeeded("every job to succeed", LIMIT, jobs)
        .await;
    running.stop().await.unwrap();
    assert_eq!(
        probe.max_in_flight.load(Ordering::SeqCst),
        options.concurrency()
    );
    let done = probe.done_sorted();
    assert_eq!(done, (0..jobs).collect::<Vec<_>>());
}

/// Shutdown: no new deliveries, started handlers finish and are acked,
/// everything else is back in the queue, ready.
pub async fn shutdown_finishes_started_handlers_and_returns_the_rest<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
) {
    let concurrency = J::options().concurrency();
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let jobs = 12;
    env.client()
        .enqueue_all::<J>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Block)))
        .await
        .unwrap();
    let running = env.start(job);
    let probe: Arc<Probe> = probe(&tag);
    probe
        .wait("handlers to start", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == concurrency
        })
        .await;
    let stopped = running.signal();
    // The worker cancels its consumer before it waits for the handlers.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while env.consumers(J::QUEUE).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stopped.is_finished(), "the worker waits for its handlers");
    probe.release();
    tokio::time::timeout(LIMIT, stopped)
        .await
        .expect("worker stops")
        .unwrap()
        .unwrap();
    assert_eq!(probe.succeeded.load(Ordering::SeqCst) as usize, concurrency);
    env.wait_ready(J::QUEUE, jobs - concurrency as u32).await;
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}

/// A handler still running at the shutdown timeout is abandoned: the worker
/// returns, and the message is ready again for the next worker.
pub async fn shutdown_timeout_abandons_stuck_handlers<J: Job<Payload = Task>>(env: &Env, job: J) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    env.client()
        .enqueue::<J>(Task::new(&tag, 1, Act::Block))
        .await
        .unwrap();
    let running = env.start_with(job, Duration::from_millis(300));
    let probe = probe(&tag);
    probe
        .wait("the handler to start", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(probe.succeeded.load(Ordering::SeqCst), 0);
    assert_eq!(
        probe.in_flight.load(Ordering::SeqCst),
        0,
        "the handler was dropped"
    );
    env.wait_ready(J::QUEUE, 1).await;
    assert_eq!(env.consumers(J::QUEUE).await, 0);
}

/// An observer that panics at every event (user code) stalls nothing: a
/// partitioned key's later jobs still run, in order, after a retry that the
/// observer was told about.
pub async fn a_panicking_observer_stalls_nothing<J: Job<Payload = Task>>(env: &Env, job: J) {
    struct Panicking;
    impl qjob::Observer for Panicking {
        fn attempt_settled(&self, _event: &qjob::AttemptEvent<'_>) {
            panic!("an observer's bug");
        }
    }
    assert!(
        J::options().partitions().is_some(),
        "scenario needs a partitioned job"
    );
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let client = env.client();
    for (seq, act) in [(0, Act::FailFirst), (1, Act::Succeed), (2, Act::Succeed)] {
        client
            .enqueue::<J>(Task::keyed(&tag, "one-key", seq, act))
            .await
            .unwrap();
    }
    let worker = Worker::builder(env.broker())
        .register(job)
        .observer(Arc::new(Panicking))
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    probe.wait_succeeded("every job of the key", LIMIT, 3).await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [0, 1, 2]);
    assert_eq!(env.ready(&format!("{}.p0", J::QUEUE)).await, 0);
}
