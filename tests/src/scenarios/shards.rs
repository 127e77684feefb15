//! Sharded jobs: producers spread over every shard, a worker consumes them
//! all and retries through the work queue; a queue merely named like a
//! shard is left alone.

use std::sync::atomic::Ordering;

use qjob::broker::HeaderValue;
use qjob::{Client, Job, headers};

use super::checks::header;
use crate::env::{Env, LIMIT, wait_consumers};
use crate::{Act, Task, probe, test_job};

// A job sharded over three queues, whose retries wait 200 ms.
test_job!(
    sharded,
    "qjob.test.sharded",
    shards = 3,
    retry = 1,
    backoff = fixed("200ms")
);
// A job whose queue has a namesake of its shards that qjob did not
// declare.
test_job!(foreign_shard, "qjob.test.foreign-shard");

/// A sharded job: producers spread its jobs over every shard, one by one
/// and in batches; a worker consumes every shard; a retry waits in the
/// work queue's delay queue and comes back to the work queue (shard 0,
/// which every worker consumes); the dead letters of every shard go to the
/// one dead-letter queue.
pub async fn a_sharded_job_runs_from_every_shard_and_retries_through_its_work_queue<
    J: Job<Payload = Task>,
>(
    env: &Env,
    job: J,
) {
    let options = J::options();
    let shards = options.consumed_queues();
    assert!(shards.len() >= 3, "scenario needs 3 shards or more");
    assert_eq!(options.retry(), 1, "scenario needs retry = 1");
    let qjob::Backoff::Fixed(delay) = options.backoff() else {
        panic!("scenario needs a fixed backoff");
    };
    let delay_queue = |shard: &str| format!("{shard}.delay.{}ms", delay.as_millis());
    env.reset::<J>().await;
    let delay_queues: Vec<String> = shards.iter().map(|shard| delay_queue(shard)).collect();
    env.delete_queues(&delay_queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let recording = crate::recording::Recording::new(env.broker());
    let client = Client::new(recording.clone());
    let tag = env.tag::<J>();
    let (succeeding, failing) = (60, 30);
    for seq in 0..failing {
        client
            .enqueue::<J>(Task::new(&tag, seq, Act::Fail))
            .await
            .unwrap();
    }
    let batch = (failing..failing + succeeding).map(|seq| Task::new(&tag, seq, Act::Succeed));
    let results = client.enqueue_all::<J>(batch).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let published = recording.queues.lock().unwrap().clone();
    assert_eq!(published.len() as u32, failing + succeeding);
    for shard in &shards {
        let held = published.values().filter(|queue| *queue == shard).count() as u32;
        assert!(held > 0, "{shard}: the producer sends to every shard");
        assert_eq!(
            env.ready(shard).await,
            held,
            "{shard} holds what went to it"
        );
    }
    // A delayed job waits in the work queue's delay queue.
    let later = Task::new(&tag, failing + succeeding, Act::Succeed);
    let delayed = client.enqueue_in::<J>(later, delay).await.unwrap();
    let queues = recording.queues.lock().unwrap().clone();
    assert_eq!(queues.get(delayed.as_str()), Some(&delay_queues[0]));
    let running = env.start(job);
    for shard in &shards {
        wait_consumers(env, shard, 1).await;
    }
    let dlq = options.dead_letter_queue();
    env.wait_ready(&dlq, failing).await;
    let probe = probe(&tag);
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == succeeding + 1
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        succeeding + 1 + 2 * failing
    );
    let dead = env.take_all(&dlq).await;
    assert_eq!(dead.len() as u32, failing);
    for dead in dead {
        // The second attempt ran from the work queue, whichever shard the
        // first ran from.
        let queue = header(&dead, headers::QUEUE);
        assert_eq!(
            queue,
            &HeaderValue::from(J::QUEUE),
            "the retry came back to the work queue"
        );
        assert_eq!(header(&dead, headers::ATTEMPTS), &HeaderValue::Int(2));
    }
    for shard in &shards {
        assert_eq!(env.ready(shard).await, 0, "{shard} drained");
    }
    assert!(
        env.broker()
            .queue_stats(&delay_queues[0])
            .await
            .unwrap()
            .is_some(),
        "the retries waited in the work queue's delay queue"
    );
    for unused in &delay_queues[1..] {
        assert!(
            env.broker().queue_stats(unused).await.unwrap().is_none(),
            "{unused}: no shard past the work queue has a delay queue"
        );
    }
}

/// A queue named like a shard of a job (`<queue>.s1`) that qjob did not
/// declare as one (another application's): the worker does not consume
/// it, and its messages stay. One that qjob declared as a shard, past it
/// (`<queue>.s2`, left by a deploy with three shards), it consumes.
pub async fn a_queue_named_like_a_shard_is_not_consumed_unless_qjob_declared_it<J: Job>(
    env: &Env,
    job: J,
) {
    let queue = J::QUEUE;
    let (foreign, shard) = (format!("{queue}.s1"), format!("{queue}.s2"));
    env.reset::<J>().await;
    env.delete_queues(&[&shard]).await;
    let broker = env.broker();
    broker
        .declare_queue(&qjob::broker::QueueSpec::new(&foreign))
        .await
        .unwrap();
    broker
        .declare_queue(&qjob::broker::QueueSpec::new(&shard).with_shard_of(queue))
        .await
        .unwrap();
    assert!(!broker.is_shard_of(&foreign, queue).await.unwrap());
    assert!(broker.is_shard_of(&shard, queue).await.unwrap());
    env.publish_raw(&foreign, b"another application's message")
        .await;
    let worker = env.start(job);
    wait_consumers(env, queue, 1).await;
    wait_consumers(env, &shard, 1).await;
    let (consumers, ready) = (env.consumers(&foreign).await, env.ready(&foreign).await);
    worker.stop().await.unwrap();
    // Deleted, a shard takes its mark with it.
    env.delete_queues(&[&foreign, &shard]).await;
    broker
        .declare_queue(&qjob::broker::QueueSpec::new(&shard))
        .await
        .unwrap();
    let marked_again = broker.is_shard_of(&shard, queue).await.unwrap();
    env.delete_queues(&[&shard]).await;
    assert_eq!(
        (consumers, ready),
        (0, 1),
        "{foreign}: consumers and ready messages"
    );
    assert!(!marked_again, "{shard} declared again is not marked");
}
