//! Message priority (`#[job(priorities = N)]`): high-priority jobs overtake
//! a backlog, on a classic queue and (on RabbitMQ 4) a quorum one; a
//! retry through a delay queue and a replayed dead letter keep their
//! priority; a priority the job type does not take is refused.

use std::sync::atomic::Ordering;

use qjob::broker::Broker;
use qjob::{EnqueueOptions, Error, Job, QueueType};

use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(
    ranked,
    "qjob.test.priority",
    priorities = 9,
    prefetch = 10,
    concurrency = 1,
    retry = 0
);
test_job!(
    ranked_quorum,
    "qjob.test.priority-quorum",
    queue_type = "quorum",
    priorities = 9,
    prefetch = 10,
    concurrency = 1,
    retry = 0
);
test_job!(
    ranked_retry,
    "qjob.test.priority-retry",
    priorities = 9,
    prefetch = 1,
    concurrency = 1,
    retry = 1,
    backoff = fixed("300ms")
);
test_job!(
    ranked_replay,
    "qjob.test.priority-replay",
    priorities = 9,
    retry = 0
);
test_job!(unranked, "qjob.test.priority-none");

/// The backlog of low-priority jobs.
const BACKLOG: u32 = 1_000;
/// The high-priority jobs enqueued after it.
const URGENT: u32 = 10;

fn urgent() -> EnqueueOptions {
    EnqueueOptions::new().priority(9)
}

/// 1 000 jobs without a priority wait while no worker runs, then 10 of
/// priority 9 come: once a worker starts (one handler at a time), the 10
/// are among the first `prefetch + 10` jobs it handles. On a quorum queue
/// that holds on RabbitMQ 4 (two levels: high ones two for each normal
/// one; `MemoryBroker` is asked to model it), and RabbitMQ 3 handles them
/// in publish order, last.
pub async fn high_priority_jobs_overtake_a_backlog<J: Job<Payload = Task> + Default>(env: &Env) {
    let options = J::options();
    assert_eq!(
        options.priorities(),
        Some(9),
        "scenario needs priorities = 9"
    );
    assert_eq!(options.concurrency(), 1, "scenario needs concurrency = 1");
    env.reset::<J>().await;
    if let Env::Memory(memory) = env {
        memory.set_quorum_priorities(true);
    }
    let tag = env.tag::<J>();
    let client = env.client();
    let backlog = (0..BACKLOG).map(|seq| Task::new(&tag, seq, Act::Succeed));
    let enqueued = client.enqueue_all::<J>(backlog).await.unwrap();
    assert!(enqueued.iter().all(Result::is_ok));
    for seq in BACKLOG..BACKLOG + URGENT {
        client
            .enqueue_with::<J>(Task::new(&tag, seq, Act::Succeed), urgent())
            .await
            .unwrap();
    }
    env.wait_ready(J::QUEUE, BACKLOG + URGENT).await;

    let probe = probe(&tag);
    let running = env.start(J::default());
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == BACKLOG + URGENT
        })
        .await;
    running.stop().await.unwrap();
    let handled = probe.done.lock().unwrap().clone();
    let places: Vec<usize> = (0..handled.len())
        .filter(|&place| handled[place] >= BACKLOG)
        .collect();
    assert_eq!(places.len(), URGENT as usize);
    let quorum_on_3 = options.queue_type() == QueueType::Quorum
        && matches!(env, Env::Amqp(..))
        && crate::rabbitmq_major() < 4;
    if quorum_on_3 {
        // RabbitMQ 3's quorum queues ignore priorities.
        assert!(
            places.iter().all(|&place| place >= BACKLOG as usize),
            "{places:?}"
        );
    } else {
        let within = usize::from(options.prefetch()) + URGENT as usize;
        assert!(places.iter().all(|&place| place < within), "{places:?}");
    }
}

/// A high-priority job that fails once waits out its backoff in a delay
/// queue and comes back with its priority: the next job a worker takes
/// (prefetch 1, one handler) is its retry, ahead of the 19 low-priority
/// jobs that waited before it came back.
pub async fn a_retry_keeps_its_priority_through_a_delay_queue<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
) {
    let options = J::options();
    assert_eq!(options.prefetch(), 1, "scenario needs prefetch = 1");
    assert_eq!(options.concurrency(), 1, "scenario needs concurrency = 1");
    env.reset::<J>().await;
    let delay_queue = format!("{}.delay.300ms", J::QUEUE);
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let client = env.client();
    // The low ones wait for the probe's release: the first holds the one
    // handler while the retry is away.
    let low = (1..=20).map(|seq| Task::new(&tag, seq, Act::Block));
    assert!(
        client
            .enqueue_all::<J>(low)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    client
        .enqueue_with::<J>(Task::new(&tag, 0, Act::FailFirst), urgent())
        .await
        .unwrap();
    env.wait_ready(J::QUEUE, 21).await;

    let running = env.start(job);
    // Its first attempt failed, and a low one runs: with prefetch 1, only
    // once the retry was confirmed in the delay queue.
    probe
        .wait("the first attempt and a low job", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 2
        })
        .await;
    // 19 low ones wait; the retry joins them.
    env.wait_ready(J::QUEUE, 20).await;
    probe.release();
    probe.wait_succeeded("every job", LIMIT, 21).await;
    running.stop().await.unwrap();
    let done = probe.done.lock().unwrap().clone();
    assert_eq!(done[..2], [1, 0], "the retry goes next: {done:?}");
    let attempts = probe.attempt_numbers.lock().unwrap().clone();
    assert_eq!(attempts[..3], [1, 1, 2]);
}

/// A high-priority job dead-lettered keeps its priority in the dead-letter
/// queue, and a replay publishes it with that priority again.
pub async fn a_replayed_dead_letter_keeps_its_priority<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert_eq!(J::options().retry(), 0, "scenario needs retry = 0");
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    let dlq = J::options().dead_letter_queue();
    let running = env.start(job);
    let task = Task::new(&tag, 1, Act::FailPermanently);
    client
        .enqueue_with::<J>(task, EnqueueOptions::new().priority(7))
        .await
        .unwrap();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();

    let broker = env.broker();
    let letter = broker.get(&dlq).await.unwrap().expect("the dead letter");
    assert_eq!(
        letter.message.priority,
        Some(7),
        "kept in the dead-letter queue"
    );
    letter.acker.reject(true).await.unwrap();
    assert_eq!(client.dead_letters::<J>().replay_all().await.unwrap(), 1);
    env.wait_ready(J::QUEUE, 1).await;
    let replayed = broker
        .get(J::QUEUE)
        .await
        .unwrap()
        .expect("the replayed job");
    assert_eq!(replayed.message.priority, Some(7), "replayed with it");
    replayed.acker.ack().await.unwrap();
}

/// A priority above the job type's `priorities`, or for a job type without
/// them, is `Error::Config` naming the job, and nothing is published: now
/// or delayed.
pub async fn a_priority_the_job_type_does_not_take_is_refused<J: Job<Payload = Task>>(
    env: &Env,
    _job: J,
) {
    assert_eq!(
        J::options().priorities(),
        None,
        "scenario needs a job without priorities"
    );
    env.reset::<J>().await;
    env.reset::<RankedJob>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    let task = || Task::new(&tag, 0, Act::Succeed);
    let later = EnqueueOptions::new()
        .priority(1)
        .delay(std::time::Duration::from_secs(60));
    let refusals = [
        (
            client
                .enqueue_with::<J>(task(), EnqueueOptions::new().priority(0))
                .await,
            J::NAME,
            "priorities = N",
        ),
        (
            client.enqueue_with::<J>(task(), later).await,
            J::NAME,
            "priorities = N",
        ),
        (
            client
                .enqueue_with::<RankedJob>(task(), EnqueueOptions::new().priority(10))
                .await,
            RankedJob::NAME,
            "from 0 to 9",
        ),
    ];
    for (refused, job, range) in refusals {
        let error = refused.unwrap_err();
        let Error::Config(text) = &error else {
            panic!("expected a configuration error, got {error:?}");
        };
        assert!(
            text.contains(&format!("job {job} ")) && text.contains(range),
            "{text}"
        );
    }
    assert_eq!(env.ready(J::QUEUE).await, 0);
    assert_eq!(env.ready(RankedJob::QUEUE).await, 0);
    client
        .enqueue_with::<RankedJob>(task(), EnqueueOptions::new().priority(9))
        .await
        .unwrap();
    env.wait_ready(RankedJob::QUEUE, 1).await;
}
