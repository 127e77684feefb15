//! Limits shared by every process, and a worker's handler budget, as the
//! console sees them; a global concurrency set from it.

use std::sync::atomic::Ordering;

use qjob::store::MemoryStore;
use qjob::{Job, Worker};

use super::support::{HEARTBEAT, connect, wait_job, wait_workers};
use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(
    limited_view,
    "qjob.test.console.limits",
    prefetch = 10,
    concurrency = 4,
    global_concurrency = 2,
    class = "critical"
);

pub async fn shared_limits_are_seen_and_set_from_the_console(env: &Env) {
    env.reset::<LimitedViewJob>().await;
    let tag = env.tag::<LimitedViewJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = env.run(
        Worker::builder(env.broker())
            .register(LimitedViewJob)
            .store(MemoryStore::new())
            .max_handlers(8)
            .heartbeat_interval(HEARTBEAT)
            .build(),
    );
    env.client()
        .enqueue_all::<LimitedViewJob>((0..6).map(|seq| Task::new(&tag, seq, Act::Block)))
        .await
        .unwrap();
    probe
        .wait("two handlers, the global limit", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 2
        })
        .await;
    // A start polling for a permit holds a budget slot for a moment: the
    // heartbeats show the two running handlers once none polls.
    let view = wait_job::<LimitedViewJob>(&admin, "two permits and budget slots held", |view| {
        view.shared_limits
            .as_ref()
            .is_some_and(|limits| limits.holders.len() == 2)
            && view.status.budget_held == 2
    })
    .await;
    let limits = view.shared_limits.unwrap();
    assert_eq!(limits.global_concurrency, Some(2));
    assert!(
        limits
            .holders
            .iter()
            .all(|h| h.resource == "job:qjob.test.console.limits")
    );
    assert_eq!(limits.problem, None);
    assert_eq!(view.status.class, "critical");
    let workers = wait_workers::<LimitedViewJob>(&admin, "the budget in use", |workers| {
        workers.len() == 1
            && workers[0]
                .status
                .budget
                .is_some_and(|budget| budget.in_use == 2)
    })
    .await;
    assert_eq!(workers[0].status.budget.map(|budget| budget.max), Some(8));

    let replies = admin
        .set_global_concurrency(LimitedViewJob::NAME, Some(3))
        .await
        .unwrap();
    assert!(replies.len() == 1 && replies[0].ok, "{replies:?}");
    probe
        .wait("three handlers", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 3
        })
        .await;
    wait_job::<LimitedViewJob>(&admin, "the new limit reported", |view| {
        view.shared_limits
            .as_ref()
            .is_some_and(|limits| limits.global_concurrency == Some(3))
    })
    .await;
    let refused = admin
        .set_global_concurrency(LimitedViewJob::NAME, Some(0))
        .await
        .unwrap();
    assert!(refused.len() == 1 && !refused[0].ok, "{refused:?}");
    assert!(
        refused[0].message.contains("pause it instead"),
        "{refused:?}"
    );

    probe.release();
    probe.wait_succeeded("every job", LIMIT, 6).await;
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 3);
    worker.stop().await.unwrap();
}
