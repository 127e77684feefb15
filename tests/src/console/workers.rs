//! Workers and jobs as the console sees them (heartbeats, counts, a
//! sharded job's queues) and a worker resized from it.

use std::sync::atomic::Ordering;

use qjob::Job;
use qjob::admin::{QueueRole, TopologyProblem, WorkerState};
use qjob::broker::{Message, QueueSpec};

use super::support::{HEARTBEAT, connect, start, wait_job, wait_workers};
use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(
    heartbeat,
    "qjob.test.console.heartbeat",
    prefetch = 3,
    concurrency = 2
);
test_job!(
    resize,
    "qjob.test.console.resize",
    prefetch = 10,
    concurrency = 1
);
test_job!(
    sharded_view,
    "qjob.test.console.sharded",
    shards = 2,
    priorities = 3,
    retry = 1,
    backoff = fixed("1h")
);

pub async fn heartbeats_show_each_worker_and_a_stopped_one_as_gone(env: &Env) {
    env.reset::<HeartbeatJob>().await;
    let tag = env.tag::<HeartbeatJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let first = start(env, HeartbeatJob);
    let second = start(env, HeartbeatJob);
    let workers = wait_workers::<HeartbeatJob>(&admin, "two workers", |w| {
        w.iter().filter(|w| w.alive).count() == 2
    })
    .await;
    for worker in &workers {
        let status = &worker.status;
        assert_eq!(status.state, WorkerState::Running);
        assert_eq!(status.pid, std::process::id());
        assert_eq!(status.version.split('.').count(), 3, "qjob's version");
        assert_eq!(status.interval, HEARTBEAT);
        assert!(!status.host.is_empty());
        let job = &status.jobs[0];
        assert_eq!(job.queue, HeartbeatJob::QUEUE);
        assert_eq!(job.consumed_queues, [HeartbeatJob::QUEUE]);
        assert_eq!(
            job.dead_letter_queue,
            HeartbeatJob::options().dead_letter_queue()
        );
        assert_eq!((job.prefetch, job.concurrency), (3, 2));
        assert!(!job.paused);
    }
    assert_ne!(workers[0].status.worker_id, workers[1].status.worker_id);

    let client = env.client();
    for (seq, act) in [
        (0, Act::Succeed),
        (1, Act::Succeed),
        (2, Act::FailPermanently),
    ] {
        client
            .enqueue::<HeartbeatJob>(Task::new(&tag, seq, act))
            .await
            .unwrap();
    }
    probe
        .wait("three attempts", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 3
        })
        .await;
    let view = wait_job::<HeartbeatJob>(&admin, "the counts of both workers", |view| {
        view.succeeded == 2 && view.dead_lettered == 1 && view.dead_letters() == 1
    })
    .await;
    assert_eq!((view.workers, view.concurrency, view.failed), (2, 4, 1));
    assert_eq!(view.last_error.as_deref(), Some("permanently broken"));

    first.stop().await.unwrap();
    let workers = wait_workers::<HeartbeatJob>(&admin, "the stopped worker gone", |w| {
        w.len() == 2 && w.iter().filter(|w| w.alive).count() == 1
    })
    .await;
    let gone = workers.iter().find(|w| !w.alive).unwrap();
    assert_eq!(gone.status.state, WorkerState::Stopped);
    second.stop().await.unwrap();
}

pub async fn set_concurrency_resizes_the_handler_slots(env: &Env) {
    env.reset::<ResizeJob>().await;
    let tag = env.tag::<ResizeJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, ResizeJob);
    wait_workers::<ResizeJob>(&admin, "the worker", |w| w.len() == 1).await;
    env.client()
        .enqueue_all::<ResizeJob>((0..6).map(|seq| Task::new(&tag, seq, Act::Block)))
        .await
        .unwrap();
    probe
        .wait("one handler", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;

    let replies = admin.set_concurrency(ResizeJob::NAME, 3).await.unwrap();
    assert!(replies.len() == 1 && replies[0].ok, "{replies:?}");
    probe
        .wait("three handlers", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 3
        })
        .await;
    wait_job::<ResizeJob>(&admin, "the new concurrency reported", |view| {
        view.concurrency == 3
    })
    .await;

    let refused = admin.set_concurrency(ResizeJob::NAME, 0).await.unwrap();
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

/// A sharded job as the console sees it: its shards, the work queue's
/// delay queue where the retries of every shard wait, and the shards past
/// its `shards` (left by a deploy with more) with what they hold. Once the
/// last worker is gone, the delay queue is an orphan. (Its shards are
/// priority queues: the topology check finds their `x-max-priority` as
/// the worker declared it.)
pub async fn a_sharded_job_shows_its_shards_and_the_extra_ones(env: &Env) {
    let shards = ShardedViewJob::options().consumed_queues();
    let work = ShardedViewJob::QUEUE;
    let delay_queue = format!("{work}.delay.3600000ms");
    let extra: Vec<String> = (2..4).map(|index| format!("{work}.s{index}")).collect();
    env.reset::<ShardedViewJob>().await;
    env.delete_queues(&[&delay_queue, &extra[0], &extra[1]])
        .await;
    let tag = env.tag::<ShardedViewJob>();
    let admin = connect(env).await;
    let worker = start(env, ShardedViewJob);
    wait_workers::<ShardedViewJob>(&admin, "the worker", |w| w.len() == 1).await;
    // One failing job in each shard, as a foreign producer would send it.
    for (seq, shard) in shards.iter().enumerate() {
        let task = Task::new(&tag, seq as u32, Act::Fail);
        env.publish_raw(shard, &serde_json::to_vec(&task).unwrap())
            .await;
    }
    let view =
        wait_job::<ShardedViewJob>(&admin, "both retries waiting", |view| view.delayed() == 2)
            .await;
    assert_eq!(view.status.shards, Some(2));
    assert_eq!(view.status.consumed_queues, shards);
    let work_queues: Vec<&str> = view
        .queues
        .iter()
        .filter(|queue| queue.role == QueueRole::Work)
        .map(|queue| queue.name.as_str())
        .collect();
    assert_eq!(work_queues, shards);
    assert_eq!(view.status.delay_queues, [delay_queue.as_str()]);
    let ours = |problems: Vec<TopologyProblem>| -> Vec<TopologyProblem> {
        problems
            .into_iter()
            .filter(|problem| problem.to_string().contains(work))
            .collect()
    };
    assert_eq!(ours(admin.check_topology().await.unwrap()), []);

    // Two shards past the worker's (as a producer with more shards
    // declares them), the last one holding a job; then a queue of another
    // application named like the next shard, which is not reported.
    let broker = env.broker();
    for queue in &extra {
        broker
            .declare_queue(&QueueSpec::new(queue.clone()).with_shard_of(work))
            .await
            .unwrap();
    }
    broker.publish(&extra[1], Message::default()).await.unwrap();
    let foreign = format!("{work}.s4");
    env.delete_queues(&[&foreign]).await;
    broker
        .declare_queue(&QueueSpec::new(foreign.clone()))
        .await
        .unwrap();
    let problems = ours(admin.check_topology().await.unwrap());
    let extra_shards: Vec<(String, u32)> = problems
        .iter()
        .filter_map(|problem| match problem {
            TopologyProblem::ExtraShard {
                queue, messages, ..
            } => Some((queue.clone(), *messages)),
            _ => None,
        })
        .collect();
    assert_eq!(
        extra_shards,
        [(extra[0].clone(), 0), (extra[1].clone(), 1)],
        "{problems:?}"
    );
    env.delete_queues(&[&extra[0], &extra[1], &foreign]).await;

    worker.stop().await.unwrap();
    wait_workers::<ShardedViewJob>(&admin, "the worker gone", |w| !w[0].alive).await;
    let problems = ours(admin.check_topology().await.unwrap());
    let orphan = TopologyProblem::OrphanDelayQueue {
        queue: delay_queue.clone(),
        messages: 2,
        target: work.to_owned(),
        target_exists: true,
    };
    assert_eq!(problems, [orphan]);
    env.delete_queues(&[&delay_queue]).await;
}
