//! The dead-letter queue: peeking and replaying letters, a long walk that
//! keeps their order, a quorum DLQ under browsing and one declared by an
//! older qjob, and a DLQ deleted under a running worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use qjob::Job;
use qjob::broker::Broker;

use crate::env::{Env, LIMIT};
use crate::{Act, Task, probe, test_job};

test_job!(replay, "qjob.test.replay", retry = 0);
test_job!(long_walk, "qjob.test.long-walk", retry = 0);
test_job!(
    old_quorum_dlq,
    "qjob.test.old-quorum-dlq",
    retry = 0,
    queue_type = "quorum"
);
test_job!(
    quorum_dlq,
    "qjob.test.quorum-dlq",
    retry = 0,
    queue_type = "quorum"
);
test_job!(dlq_deleted, "qjob.test.dlq-deleted", retry = 0);

/// Dead letters can be read without removing them and replayed (all, or
/// those a predicate picks) with their attempt count reset; the replayed
/// jobs run, the others stay in order.
pub async fn dead_letters_can_be_peeked_at_and_replayed<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert_eq!(J::options().retry(), 0, "scenario needs retry = 0");
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    // One at a time: jobs that fail at once are dead-lettered in any order.
    for seq in 1..=3 {
        client
            .enqueue::<J>(Task::new(&tag, seq, Act::FailUntilReleased))
            .await
            .unwrap();
        env.wait_ready(&dlq, seq).await;
    }

    let dead = client.dead_letters::<J>();
    let seqs = |letters: &[qjob::DeadLetter<Task>]| {
        letters
            .iter()
            .map(|l| l.payload.as_ref().unwrap().seq)
            .collect::<Vec<_>>()
    };
    let peeked = dead.peek(2).await.unwrap();
    assert_eq!(seqs(&peeked), [1, 2]);
    let letter = &peeked[0];
    assert_eq!(
        (letter.reason.as_str(), letter.attempts),
        ("retries-exhausted", 1)
    );
    assert_eq!(letter.error, "task 1 not released");
    assert!(letter.first_failed_at.is_some() && letter.failed_at.is_some());
    assert!(letter.host.is_some());
    assert_eq!(dead.count().await.unwrap(), 3, "peeking removes nothing");

    let probe = probe(&tag);
    probe.release();
    let replayed = dead
        .replay_where(|l| l.payload.as_ref().is_some_and(|t| t.seq == 2))
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    probe.wait_succeeded("the replayed job", LIMIT, 1).await;
    assert_eq!(
        seqs(&dead.peek(10).await.unwrap()),
        [1, 3],
        "the rest keep their order"
    );
    assert_eq!(dead.replay_all().await.unwrap(), 2);
    probe.wait_succeeded("every job", LIMIT, 3).await;
    running.stop().await.unwrap();
    assert_eq!(dead.count().await.unwrap(), 0);
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 1, 1, 1, 1, 1]);
    let done = probe.done_sorted();
    assert_eq!(done, [1, 2, 3]);
}

/// A walk over a dead-letter queue longer than what it holds in memory
/// (1 000 letters kept): `replay_where` replays the picked letters and the
/// rest stay, every one once, in their order.
pub async fn a_long_dead_letter_walk_holds_little_and_keeps_order<J: Job<Payload = Task>>(
    env: &Env,
    _job: J,
) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let broker = env.broker();
    let dlq = J::options().dead_letter_queue();
    broker
        .declare_queue(
            &qjob::broker::QueueSpec::new(&dlq).with_queue_type(J::options().queue_type()),
        )
        .await
        .unwrap();
    const LETTERS: u32 = 1_800;
    for seq in 1..=LETTERS {
        let body = serde_json::to_vec(&Task::new(&tag, seq, Act::Succeed)).unwrap();
        let message = qjob::broker::Message::new(body).with_id(format!("{tag}-{seq}"));
        broker.publish(&dlq, message).await.unwrap();
    }
    env.wait_ready(&dlq, LETTERS).await;
    // On MemoryBroker, watch how many letters the walk holds at once.
    let most_held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = match env {
        Env::Memory(memory) => {
            let (memory, dlq, most_held) = (memory.clone(), dlq.clone(), most_held.clone());
            Some(tokio::spawn(async move {
                memory
                    .wait_until(|b| {
                        most_held.fetch_max(b.unacked_count(&dlq), Ordering::SeqCst);
                        false
                    })
                    .await
            }))
        }
        Env::Amqp(..) => None,
    };
    let replayed = env
        .client()
        .dead_letters::<J>()
        .replay_where(|l| l.payload.as_ref().is_some_and(|t| t.seq % 3 == 0))
        .await
        .unwrap();
    assert_eq!(replayed, 600);
    if let Some(watcher) = watcher {
        watcher.abort();
        let most = most_held.load(Ordering::SeqCst);
        assert!((1_000..=1_001).contains(&most), "held {most} at once");
    }
    env.wait_ready(J::QUEUE, 600).await;
    let expected: Vec<u32> = (1..=LETTERS).filter(|seq| seq % 3 != 0).collect();
    env.wait_ready(&dlq, expected.len() as u32).await;
    let kept: Vec<u32> = env
        .take_all(&dlq)
        .await
        .iter()
        .map(|got| serde_json::from_slice::<Task>(&got.body).unwrap().seq)
        .collect();
    assert_eq!(kept, expected);
}

/// Browsing a quorum DLQ puts each letter back (a requeue), which RabbitMQ
/// 4 counts as a delivery; with its default delivery limit of 20 a DLQ
/// declared without its own limit would drop the letters after 20 looks (a
/// dashboard polling the queue). MemoryBroker is given RabbitMQ 4's default
/// here; RabbitMQ 3.10 has none, so there the scenario checks the declare.
pub async fn a_quorum_dlq_survives_browsing<J: Job<Payload = Task> + Clone>(env: &Env, job: J) {
    assert_eq!(J::options().retry(), 0, "scenario needs retry = 0");
    env.reset::<J>().await;
    if let Env::Memory(memory) = env {
        memory.set_default_delivery_limit(Some(20));
    }
    let tag = env.tag::<J>();
    let client = env.client();
    client
        .enqueue_all::<J>((1..=2).map(|seq| Task::new(&tag, seq, Act::FailPermanently)))
        .await
        .unwrap();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 2).await;
    running.stop().await.unwrap();
    let dead = client.dead_letters::<J>();
    // The two failed at once: their letters are in either order, the same
    // at every look.
    let mut first: Option<Vec<u32>> = None;
    for look in 1..=25 {
        let seen: Vec<u32> = dead
            .peek(10)
            .await
            .unwrap()
            .iter()
            .map(|l| l.payload.as_ref().unwrap().seq)
            .collect();
        let first = first.get_or_insert_with(|| seen.clone());
        assert_eq!(&seen, first, "look {look}");
        assert!(seen == [1, 2] || seen == [2, 1], "look {look}: {seen:?}");
        env.wait_ready(&dlq, 2).await;
    }
}

/// A quorum DLQ declared before qjob gave DLQs a delivery limit (RabbitMQ
/// refuses to add one by redeclaring): the worker starts, keeps it as it is
/// and dead-letters into it.
pub async fn a_quorum_dlq_declared_without_a_delivery_limit_is_kept<
    J: Job<Payload = Task> + Clone,
>(
    env: &Env,
    job: J,
) {
    env.reset::<J>().await;
    let dlq = J::options().dead_letter_queue();
    let before = qjob::broker::QueueSpec::new(&dlq).with_queue_type(qjob::QueueType::Quorum);
    env.broker().declare_queue(&before).await.unwrap();
    let tag = env.tag::<J>();
    env.client()
        .enqueue::<J>(Task::new(&tag, 1, Act::FailPermanently))
        .await
        .unwrap();
    let running = env.start(job);
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    assert_eq!(
        env.client()
            .dead_letters::<J>()
            .peek(5)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The DLQ deleted under a running worker: the dead letter's publish is
/// unroutable, so the worker declares the DLQ again and publishes once more,
/// holding the delivery meanwhile; the handler runs once, never in a loop.
pub async fn a_deleted_dlq_is_declared_again_without_running_the_job_again<
    J: Job<Payload = Task>,
>(
    env: &Env,
    job: J,
) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let running = env.start(job);
    // The worker's broker: its unroutable dead letter and this enqueue
    // share the publishing connection.
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 0, Act::Succeed))
        .await
        .unwrap();
    probe.wait_succeeded("the worker to run", LIMIT, 1).await;
    let dlq = J::options().dead_letter_queue();
    env.delete_queues(&[&dlq]).await;
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::FailPermanently))
        .await
        .unwrap();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        2,
        "the failed job ran once"
    );
    let dead = env.take_all(&dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(env.ready(J::QUEUE).await, 0);
}
