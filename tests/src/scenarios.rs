//! Worker scenarios written once and run on both brokers: on RabbitMQ in
//! `tests/amqp_worker.rs`, in memory in `tests/memory_worker.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::broker::{Broker, HeaderValue};
use qjob::{Client, Error, Job, Worker, headers};
use tokio::sync::oneshot;

use crate::{Act, Got, Probe, Task, probe};

pub use crate::env::{Env, LIMIT, Running, wait_consumers};

fn header<'a>(got: &'a Got, name: &str) -> &'a HeaderValue {
    got.headers
        .get(name)
        .unwrap_or_else(|| panic!("dead letter lacks header {name}: {:?}", got.headers))
}

/// Runs one task doing `act` until it is in the dead-letter queue; returns
/// the probe's tag and the dead letter.
async fn run_one_to_the_dlq<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
    act: Act,
) -> (String, qjob::JobId, Got) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let id = env
        .client()
        .enqueue::<J>(Task::new(&tag, 1, act))
        .await
        .unwrap();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    let mut dead = env.take_all(&dlq).await;
    assert_eq!(dead.len(), 1);
    (tag, id, dead.remove(0))
}

/// `retry = 3`: exactly 4 attempts, then one dead letter that keeps the
/// payload and says what happened.
pub async fn retries_then_dead_letters<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert_eq!(J::options().retry(), 3, "scenario needs retry = 3");
    let (tag, id, dead) = run_one_to_the_dlq(env, job, Act::Fail).await;
    let probe = probe(&tag);
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 4);
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(env.ready(J::QUEUE).await, 0);
    assert_eq!(dead.id.as_deref(), Some(id.as_str()));
    let task: Task = serde_json::from_slice(&dead.body).unwrap();
    assert_eq!((task.tag.as_str(), task.seq), (tag.as_str(), 1));
    assert_eq!(header(&dead, headers::ATTEMPTS), &HeaderValue::Int(4));
    let reason = header(&dead, headers::REASON);
    assert_eq!(reason, &HeaderValue::from("retries-exhausted"));
    let error = header(&dead, headers::ERROR);
    assert_eq!(error, &HeaderValue::from("task 1 failed"));
    assert_eq!(header(&dead, headers::QUEUE), &HeaderValue::from(J::QUEUE));
    assert!(header(&dead, headers::FAILED_AT).as_int().unwrap() > 1_700_000_000_000);
}

/// A permanent error dead-letters after one attempt, whatever `retry` says.
pub async fn permanent_error_dead_letters_at_once<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert!(J::options().retry() > 0, "scenario needs retries to skip");
    let (tag, _, dead) = run_one_to_the_dlq(env, job, Act::FailPermanently).await;
    assert_eq!(probe(&tag).attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        header(&dead, headers::REASON),
        &HeaderValue::from("permanent")
    );
    assert_eq!(header(&dead, headers::ATTEMPTS), &HeaderValue::Int(1));
    let error = header(&dead, headers::ERROR);
    assert_eq!(error, &HeaderValue::from("permanently broken"));
}

/// Raw garbage goes to the DLQ with the reason; the next good job runs.
pub async fn garbage_dead_letters_and_the_next_job_runs<J: Job<Payload = Task>>(env: &Env, job: J) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    // Declares the queues, so the raw publish is routable.
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::Succeed))
        .await
        .unwrap();
    env.publish_raw(J::QUEUE, b"\x00 this is not json").await;
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    let probe = probe(&tag);
    probe
        .wait("both good jobs", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 2
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [1, 2]);
    let dead = env.take_all(&dlq).await;
    assert_eq!(dead[0].body, b"\x00 this is not json");
    assert_eq!(
        header(&dead[0], headers::REASON),
        &HeaderValue::from("malformed")
    );
    let error = header(&dead[0], headers::ERROR).to_string();
    assert!(error.contains("does not deserialize"), "{error}");
    assert_eq!(header(&dead[0], headers::ATTEMPTS), &HeaderValue::Int(1));
}

/// A panicking handler is a failed attempt: retried, and the worker lives on.
pub async fn panic_is_a_failed_attempt<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert!(J::options().retry() >= 1);
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::PanicBefore(2)))
        .await
        .unwrap();
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let running = env.start(job);
    let probe = probe(&tag);
    probe
        .wait("both jobs to succeed", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 2
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
    assert_eq!(env.ready(J::QUEUE).await, 0);
}

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
        .wait("every job to succeed", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == jobs
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(
        probe.max_in_flight.load(Ordering::SeqCst),
        options.concurrency()
    );
    let mut done = probe.done.lock().unwrap().clone();
    done.sort();
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

/// A handler that panics on every attempt ends in the DLQ like any failure,
/// with the panic's message; the worker keeps running.
pub async fn panicking_to_the_end_dead_letters<J: Job<Payload = Task>>(env: &Env, job: J) {
    let attempts = J::options().max_attempts();
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::PanicBefore(u32::MAX)))
        .await
        .unwrap();
    let running = env.start(job);
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let probe = probe(&tag);
    probe
        .wait("the next job to run", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(probe.attempts.load(Ordering::SeqCst), attempts + 1);
    let dead = env.take_all(&dlq).await;
    assert_eq!(
        header(&dead[0], headers::ATTEMPTS),
        &HeaderValue::Int(attempts.into())
    );
    let error = header(&dead[0], headers::ERROR).to_string();
    assert_eq!(error, "handler panicked: task 1 panics on attempt 2");
}

/// A handler over its `timeout` is cancelled and counts as a failed attempt.
pub async fn a_timeout_is_a_failed_attempt<J: Job<Payload = Task>>(env: &Env, job: J) {
    let timeout = J::options().timeout().expect("scenario needs a timeout");
    assert_eq!(J::options().retry(), 0, "scenario needs retry = 0");
    let (tag, _, dead) = run_one_to_the_dlq(env, job, Act::Block).await;
    let probe = probe(&tag);
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 1);
    let in_flight = probe.in_flight.load(Ordering::SeqCst);
    assert_eq!(in_flight, 0, "the handler was cancelled");
    let error = header(&dead, headers::ERROR).to_string();
    assert_eq!(error, format!("handler timed out after {timeout:?}"));
}

/// A retry waits its backoff in the job's delay queue on the broker, then
/// comes back: attempts are spaced by the backoff, and the dead letter
/// comes after the last.
pub async fn retries_wait_their_backoff_in_a_delay_queue<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
) {
    let qjob::Backoff::Fixed(delay) = J::options().backoff() else {
        panic!("scenario needs a fixed backoff");
    };
    let delay_queue = format!("{}.delay.{}ms", J::QUEUE, delay.as_millis());
    env.reset::<J>().await;
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    env.client()
        .enqueue::<J>(Task::new(&tag, 1, Act::Fail))
        .await
        .unwrap();
    let running = env.start(job);
    env.wait_ready(&delay_queue, 1).await;
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    let probe = probe(&tag);
    let times = probe.attempt_times.lock().unwrap().clone();
    assert_eq!(times.len(), 3);
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= delay, "attempts {gap:?} apart, backoff {delay:?}");
        assert!(gap < Duration::from_secs(4), "attempts {gap:?} apart");
    }
    let dead = env.take_all(&dlq).await;
    assert_eq!(header(&dead[0], headers::ATTEMPTS), &HeaderValue::Int(3));
    assert_eq!(env.ready(&delay_queue).await, 0);
}

/// While a retry waits out its backoff, it holds no prefetch slot: with
/// prefetch 1, the jobs behind it all run before it comes back.
pub async fn a_retry_in_backoff_holds_no_prefetch_slot<J: Job<Payload = Task>>(env: &Env, job: J) {
    assert_eq!(J::options().prefetch(), 1, "scenario needs prefetch = 1");
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    let others = 20;
    client
        .enqueue_all::<J>((1..=others).map(|seq| Task::new(&tag, seq, Act::Succeed)))
        .await
        .unwrap();
    let running = env.start(job);
    let probe = probe(&tag);
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == others + 1
        })
        .await;
    running.stop().await.unwrap();
    let done = probe.done.lock().unwrap().clone();
    assert_eq!(
        done.last(),
        Some(&0),
        "the retried job came back last: {done:?}"
    );
    assert_eq!(done.len() as u32, others + 1);
}

/// `enqueue_in` holds the job on the broker for its delay, then it runs.
pub async fn a_delayed_job_runs_after_its_delay<J: Job<Payload = Task>>(env: &Env, job: J) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let running = env.start(job);
    let delay = Duration::from_secs(3);
    let enqueued = tokio::time::Instant::now();
    env.client()
        .enqueue_in::<J>(Task::new(&tag, 1, Act::Succeed), delay)
        .await
        .unwrap();
    env.client()
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let probe = probe(&tag);
    probe
        .wait("both jobs", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 2
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [2, 1]);
    let times = probe.attempt_times.lock().unwrap().clone();
    let waited = times[1] - enqueued;
    assert!(waited >= delay, "ran after {waited:?}");
    assert!(waited < Duration::from_secs(5), "ran after {waited:?}");
}

/// A retry waiting in its delay queue when the worker stops still happens,
/// on the next worker: nothing about it was in the first worker's memory.
pub async fn a_retry_survives_a_worker_restart<J: Job<Payload = Task> + Clone>(env: &Env, job: J) {
    let qjob::Backoff::Fixed(delay) = J::options().backoff() else {
        panic!("scenario needs a fixed backoff");
    };
    let delay_queue = format!("{}.delay.{}ms", J::QUEUE, delay.as_millis());
    env.reset::<J>().await;
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    env.client()
        .enqueue::<J>(Task::new(&tag, 1, Act::FailFirst))
        .await
        .unwrap();
    let first = env.start(job.clone());
    env.wait_ready(&delay_queue, 1).await;
    first.stop().await.unwrap();
    let second = env.start(job);
    let probe = probe(&tag);
    probe
        .wait("the retry on the new worker", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    second.stop().await.unwrap();
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 2]);
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}

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
    probe
        .wait("the replayed job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    assert_eq!(
        seqs(&dead.peek(10).await.unwrap()),
        [1, 3],
        "the rest keep their order"
    );
    assert_eq!(dead.replay_all().await.unwrap(), 2);
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 3
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(dead.count().await.unwrap(), 0);
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 1, 1, 1, 1, 1]);
    let mut done = probe.done.lock().unwrap().clone();
    done.sort();
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
        let message = qjob::broker::Message {
            id: Some(format!("{tag}-{seq}")),
            body,
            ..Default::default()
        };
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

/// A job that switched from classic to quorum while its classic delay
/// queue still exists: its delayed jobs use a quorum delay queue of their
/// own. Before, both types shared the name and RabbitMQ refused the
/// redeclare (`PRECONDITION_FAILED`), so the delayed enqueue failed (and a
/// worker's deferral was retried without end).
pub async fn a_delay_queue_of_the_other_type_is_not_in_the_way<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
) {
    assert_eq!(J::options().queue_type(), qjob::QueueType::Quorum);
    env.reset::<J>().await;
    let classic = format!("{}.delay.1000ms", J::QUEUE);
    let quorum = format!("{classic}.quorum");
    env.delete_queues(&[&classic, &quorum]).await;
    let broker = env.broker();
    // What the job's classic version declared.
    let left = qjob::broker::QueueSpec::new(&classic)
        .with_message_ttl(Duration::from_secs(1))
        .with_dead_letter_to(J::QUEUE)
        .with_expires(Duration::from_secs(601));
    broker.declare_queue(&left).await.unwrap();
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let running = env.start(job);
    env.client()
        .enqueue_in::<J>(Task::new(&tag, 1, Act::Succeed), Duration::from_secs(1))
        .await
        .unwrap();
    probe
        .wait("the delayed job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    running.stop().await.unwrap();
    env.delete_queues(&[&classic, &quorum]).await;
}

/// Partitioned ordering across two workers on their own connections: 12
/// keys × 40 jobs with varied handler times, some failing once, complete
/// each key's jobs in publish order, none lost, none dead-lettered.
pub async fn partitioned_keys_complete_in_publish_order_across_two_workers<
    J: Job<Payload = Task> + Clone,
>(
    env: &Env,
    job: J,
) {
    assert!(
        J::options().partitions().is_some(),
        "scenario needs partitions"
    );
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let (keys, per_key) = (12u32, 40u32);
    let tasks = (0..per_key).flat_map(|n| {
        let tag = tag.clone();
        (0..keys).map(move |k| {
            let work = Act::Work {
                sleep_ms: u64::from((n * 7 + k * 3) % 6),
                fail_first: (n + k) % 9 == 4,
            };
            Task::keyed(&tag, &format!("customer-{k}"), k * 1000 + n, work)
        })
    });
    let results = env.client().enqueue_all::<J>(tasks).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let other = env.another().await;
    let first = env.start(job.clone());
    let second = other.start(job);
    let probe = probe(&tag);
    let total = keys * per_key;
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == total
        })
        .await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    let done = probe.done.lock().unwrap().clone();
    assert_eq!(done.len() as u32, total, "each job succeeded once");
    for k in 0..keys {
        let order: Vec<u32> = done
            .iter()
            .filter(|s| *s / 1000 == k)
            .map(|s| s % 1000)
            .collect();
        assert_eq!(
            order,
            (0..per_key).collect::<Vec<_>>(),
            "key {k} out of order"
        );
    }
    assert!(
        probe.attempts.load(Ordering::SeqCst) > total,
        "some jobs were retried"
    );
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}

/// A job failing every time trips its breaker after `min_attempts`: it
/// stops being called (in-flight attempts finish), at most a probe runs
/// while open, nothing is dead-lettered because of it, and once the
/// downstream recovers a probe succeeds and the queue drains.
pub async fn an_open_breaker_stops_calls_until_a_probe_succeeds<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
) {
    let breaker = J::options()
        .circuit_breaker()
        .expect("scenario needs a breaker");
    let concurrency = J::options().concurrency() as u32;
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let jobs = 20;
    env.client()
        .enqueue_all::<J>((0..jobs).map(|seq| Task::new(&tag, seq, Act::FailUntilReleased)))
        .await
        .unwrap();
    let running = env.start(job);
    let probe = probe(&tag);
    probe
        .wait("the minimum attempts", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) >= breaker.min_attempts
        })
        .await;
    // Attempts already admitted finish; then the breaker is open.
    probe
        .wait("admitted attempts to finish", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
    let tripped = probe.attempts.load(Ordering::SeqCst);
    assert!(
        tripped <= breaker.min_attempts + 2 * concurrency,
        "{tripped} attempts before the breaker held"
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let while_open = probe.attempts.load(Ordering::SeqCst) - tripped;
    assert!(while_open <= 2, "{while_open} calls while open");
    probe.release();
    probe
        .wait("the queue to drain after recovery", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == jobs
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}

/// `max_length = 5`: of 8 enqueues, 5 are confirmed and 3 get
/// `Error::QueueFull`, never a silent drop.
pub async fn a_full_queue_is_an_error_for_the_producer<J: Job<Payload = Task>>(env: &Env, _job: J) {
    let max = J::options()
        .max_length()
        .expect("scenario needs max_length");
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let client = env.client();
    let mut results = Vec::new();
    for seq in 0..max + 3 {
        results.push(
            client
                .enqueue::<J>(Task::new(&tag, seq, Act::Succeed))
                .await,
        );
    }
    let confirmed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(confirmed, max as usize);
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(error, Error::QueueFull { queue, max_length } if queue == J::QUEUE && *max_length == max),
            "{error:?}"
        );
        assert!(error.to_string().contains("is full"), "{error}");
    }
    assert_eq!(env.ready(J::QUEUE).await, max);
}

/// A capped queue's retries wait in the worker, not in a delay queue:
/// RabbitMQ drops a message that a delay queue moves into a full queue. The
/// queue stays full through the backoff (the producer is told), no delay
/// queue exists, and every job runs to success. Delayed enqueues into a
/// capped queue are refused for the same reason.
pub async fn a_capped_queue_retries_in_place_while_full<J: Job<Payload = Task>>(env: &Env, job: J) {
    let options = J::options();
    assert_eq!(
        options.max_length(),
        Some(2),
        "scenario needs max_length = 2"
    );
    assert_eq!(options.prefetch(), 1, "scenario needs prefetch = 1");
    env.reset::<J>().await;
    let delay_queue = format!("{}.delay.1000ms", J::QUEUE);
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let client = env.client();
    let refused = client
        .enqueue_in::<J>(Task::new(&tag, 9, Act::Succeed), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Config(text) if text.contains("capped")),
        "{refused:?}"
    );
    client
        .enqueue::<J>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::Succeed))
        .await
        .unwrap();
    let running = env.start(job);
    probe
        .wait("the first attempt of task 0", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 1
        })
        .await;
    // Task 0 waits out its backoff holding the only prefetch slot: the
    // queue fills up and stays full.
    client
        .enqueue::<J>(Task::new(&tag, 2, Act::Succeed))
        .await
        .unwrap();
    let full = client
        .enqueue::<J>(Task::new(&tag, 3, Act::Succeed))
        .await
        .unwrap_err();
    assert!(matches!(full, Error::QueueFull { .. }), "{full:?}");
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 3
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [0, 1, 2]);
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 2, 1, 1]);
    assert_eq!(env.ready(J::QUEUE).await, 0);
    assert_absent(
        env,
        &delay_queue,
        "a capped job's retry went through a delay queue",
    )
    .await;
}

/// Fails with `why` if `queue` exists.
async fn assert_absent(env: &Env, queue: &str, why: &str) {
    let stats = env.broker().queue_stats(queue).await.unwrap();
    assert!(stats.is_none(), "{why}: {queue} exists");
}

/// A quorum job's retry waits in its worker, holding the delivery, never in
/// a delay queue: RabbitMQ's dead-lettering back into a quorum queue is at
/// most once. The held delivery stays unacked on the broker through the
/// backoff, and a job behind it still runs meanwhile.
pub async fn a_quorum_job_retries_in_place<J: Job<Payload = Task>>(env: &Env, job: J) {
    let options = J::options();
    assert_eq!(options.queue_type(), qjob::QueueType::Quorum);
    assert_eq!(
        options.backoff(),
        qjob::Backoff::Fixed(Duration::from_secs(1))
    );
    env.reset::<J>().await;
    let delay_queue = format!("{}.delay.1000ms.quorum", J::QUEUE);
    env.delete_queues(&[&delay_queue]).await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let client = env.client();
    client
        .enqueue::<J>(Task::new(&tag, 0, Act::FailFirst))
        .await
        .unwrap();
    let running = env.start(job);
    probe
        .wait("the first attempt", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 1
        })
        .await;
    client
        .enqueue::<J>(Task::new(&tag, 1, Act::Succeed))
        .await
        .unwrap();
    probe
        .wait("the job behind the retry", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    assert_eq!(*probe.done.lock().unwrap(), [1], "task 0 is still waiting");
    probe
        .wait("the retry", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 2
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 1, 2]);
    assert_eq!(env.ready(J::QUEUE).await, 0);
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
    assert_absent(
        env,
        &delay_queue,
        "a quorum job's retry went through a delay queue",
    )
    .await;
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
    probe
        .wait("every job of the key", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 3
        })
        .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [0, 1, 2]);
    assert_eq!(env.ready(&format!("{}.p0", J::QUEUE)).await, 0);
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
    probe
        .wait("the worker to run", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
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

/// A graceful stop of the active worker of a partition hands the partition
/// over only once nothing of it runs there: the standby takes the key's
/// next jobs after the running one finished, in publish order, and the
/// key's jobs never overlap in time (a rolling deploy keeps per-key order).
pub async fn a_graceful_stop_hands_a_partition_over_in_order<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
) {
    let options = J::options();
    assert_eq!(
        options.partitions(),
        Some(1),
        "scenario needs one partition"
    );
    assert_eq!(options.prefetch(), 2, "scenario needs prefetch = 2");
    let partition = format!("{}.p0", J::QUEUE);
    let beyond = format!("{}.p1", J::QUEUE);
    let dlq = options.dead_letter_queue();
    env.delete_queues(&[&partition, &beyond, &dlq]).await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let active = env.start(job.clone());
    wait_consumers(env, &partition, 1).await;
    let other = env.another().await;
    let standby = other.start(job);
    wait_consumers(env, &partition, 2).await;
    let client = env.client();
    let acts = [(1, Act::Sleep(1500)), (2, Act::Succeed), (3, Act::Succeed)];
    for (seq, act) in acts {
        client
            .enqueue::<J>(Task::keyed(&tag, "one-key", seq, act))
            .await
            .unwrap();
    }
    probe
        .wait("job 1 to run", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    let stopping = active.signal();
    client
        .enqueue::<J>(Task::keyed(&tag, "one-key", 4, Act::Succeed))
        .await
        .unwrap();
    stopping.await.unwrap().unwrap();
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 4
        })
        .await;
    standby.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(
        probe.max_in_flight.load(Ordering::SeqCst),
        1,
        "a key's jobs overlapped"
    );
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 4, "none ran twice");
}

/// The same on a quorum partition queue.
pub async fn a_graceful_stop_hands_a_quorum_partition_over_in_order<
    J: Job<Payload = Task> + Clone,
>(
    env: &Env,
    job: J,
) {
    assert_eq!(J::options().queue_type(), qjob::QueueType::Quorum);
    a_graceful_stop_hands_a_partition_over_in_order(env, job).await;
}

/// A rolling restart of three workers under load: each in turn stops
/// gracefully and a new one starts, while 30 keys' jobs flow. Every key
/// completes in publish order, no two jobs of a key ever run at once, and
/// nothing runs twice (a graceful stop settles what it started).
pub async fn a_rolling_restart_keeps_every_key_in_order<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
) {
    assert!(
        J::options().partitions().is_some(),
        "scenario needs partitions"
    );
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let (keys, per_key) = (30u32, 20u32);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let other = env.another().await;
        workers.push(other.start(job.clone()));
    }
    let tasks = (0..per_key).flat_map(|n| {
        let tag = tag.clone();
        (0..keys).map(move |k| {
            let work = Act::Work {
                sleep_ms: u64::from(2 + (n * 7 + k * 3) % 5),
                fail_first: (n + k) % 11 == 3,
            };
            Task::keyed(&tag, &format!("key-{k}"), k * 1000 + n, work)
        })
    });
    let results = env.client().enqueue_all::<J>(tasks).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let total = keys * per_key;
    for round in 1..=3u32 {
        probe
            .wait("jobs before the next restart", LIMIT, |p| {
                p.succeeded.load(Ordering::SeqCst) >= round * total / 5
            })
            .await;
        // The oldest worker stops gracefully; a new one takes its place.
        workers.remove(0).stop().await.unwrap();
        let other = env.another().await;
        workers.push(other.start(job.clone()));
    }
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= total
        })
        .await;
    for worker in workers {
        worker.stop().await.unwrap();
    }
    let done = probe.done.lock().unwrap().clone();
    for k in 0..keys {
        let order: Vec<u32> = done
            .iter()
            .filter(|s| *s / 1000 == k)
            .map(|s| s % 1000)
            .collect();
        assert_eq!(
            order,
            (0..per_key).collect::<Vec<_>>(),
            "key {k} out of order or run twice"
        );
    }
    assert_eq!(
        probe.key_overlaps.load(Ordering::SeqCst),
        0,
        "a key's jobs overlapped"
    );
    assert_eq!(env.ready(&J::options().dead_letter_queue()).await, 0);
}

/// From a reset start, `jobs` tasks of `J` over 30 keys (`k0` … `k29`)
/// in one `enqueue_all` through a recording broker: the recording and
/// each job's outcome.
async fn enqueue_keyed<J: Job<Payload = Task>>(
    env: &Env,
    jobs: u32,
) -> (
    crate::recording::Recording<Arc<dyn Broker>>,
    Vec<Result<qjob::JobId, Error>>,
) {
    env.reset::<J>().await;
    let recording = crate::recording::Recording::new(env.broker());
    let client = Client::new(recording.clone());
    let tag = env.tag::<J>();
    let tasks = (0..jobs).map(|seq| Task {
        key: format!("k{}", seq % 30),
        ..Task::new(&tag, seq, Act::Succeed)
    });
    let results = client.enqueue_all::<J>(tasks).await.unwrap();
    (recording, results)
}

/// Whether a job's queues keep its jobs in order: partitioned or
/// single-active.
fn keeps_order(options: &qjob::JobOptions) -> bool {
    options.partitions().is_some() || options.single_active()
}

/// `enqueue_all` of a batch large enough to be split: exactly the jobs
/// whose result is `Ok` are stored, once each (on a capped queue, as many
/// as it holds). A job whose queues keep an order has each queue whole on
/// one of at most four `publish_all` calls, and each queue holds its jobs
/// in input order; any other job's batch goes out as four contiguous runs
/// at once.
pub async fn a_large_batch<J: Job<Payload = Task>>(env: &Env) {
    let jobs = 6_000;
    let (recording, results) = enqueue_keyed::<J>(env, jobs).await;
    let options = J::options();
    let ordered = keeps_order(&options);
    // Each stored job's input position (its seq), and its queue.
    let mut stored: Vec<u32> = Vec::new();
    let mut queue_of: std::collections::HashMap<String, String> = Default::default();
    for queue in options.consumed_queues() {
        let got = env.take_all(&queue).await;
        let mut last: Option<u32> = None;
        let mut last_of_key: std::collections::HashMap<String, u32> = Default::default();
        for message in got {
            let task: Task = serde_json::from_slice(&message.body).unwrap();
            let id = message.id.expect("a job has its id");
            let result = &results[task.seq as usize];
            assert_eq!(
                result.as_ref().ok().map(ToString::to_string),
                Some(id.clone()),
                "job {} stored, and its result says so with its id",
                task.seq
            );
            if ordered {
                if options.partitions().is_none() {
                    assert!(last < Some(task.seq), "{queue}: out of input order");
                }
                if let Some(before) = last_of_key.insert(task.key.clone(), task.seq) {
                    assert!(before < task.seq, "{queue}: key {} out of order", task.key);
                }
            }
            last = Some(task.seq);
            stored.push(task.seq);
            queue_of.insert(id, queue.clone());
        }
    }
    stored.sort();
    let ok: Vec<u32> = (0..jobs)
        .filter(|&seq| results[seq as usize].is_ok())
        .collect();
    assert_eq!(
        stored, ok,
        "exactly the jobs whose result is Ok are stored, once"
    );
    if options.shards() > 1 {
        for queue in options.consumed_queues() {
            let held = queue_of.values().filter(|q| **q == queue).count();
            let even = jobs as usize / usize::from(options.shards());
            assert!(
                held > even / 2,
                "{queue} holds {held} of {jobs}: shards fill evenly"
            );
        }
    }
    match options.max_length() {
        Some(cap) => {
            assert_eq!(ok.len(), cap as usize, "the capped queue is full");
            for result in results.iter().filter_map(|result| result.as_ref().err()) {
                assert!(matches!(result, Error::QueueFull { .. }), "{result:?}");
            }
        }
        None => assert_eq!(ok.len(), jobs as usize, "every job stored"),
    }
    let calls = recording.calls.lock().unwrap().clone();
    let queues = queue_of
        .values()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let lanes = if ordered { queues.min(4) } else { 4 };
    assert_eq!(calls.len(), lanes, "the batch's lanes");
    if ordered {
        for queue in queue_of.values() {
            let holding = calls
                .iter()
                .filter(|call| call.iter().any(|id| queue_of.get(id) == Some(queue)))
                .count();
            assert_eq!(holding, 1, "{queue} whole on one lane");
        }
    } else {
        let position: std::collections::HashMap<String, usize> = results
            .iter()
            .enumerate()
            .filter_map(|(seq, result)| Some((result.as_ref().ok()?.to_string(), seq)))
            .collect();
        for call in &calls {
            let seqs: Vec<usize> = call
                .iter()
                .filter_map(|id| position.get(id).copied())
                .collect();
            assert!(
                seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
                "each lane a contiguous run"
            );
        }
    }
    if let Env::Amqp(..) = env {
        // In memory a publish never waits: each lane ends before the next
        // is polled.
        assert_eq!(
            recording.most_at_once(),
            calls.len(),
            "the lanes run at once"
        );
    }
}

/// A batch over two chunks (20 000 jobs; `enqueue_all` sends 16 384 at a
/// time) into capped queues that the first chunk fills. For a job whose
/// queues keep an order, the refusals of the first chunk stop the batch:
/// nothing of the second chunk is sent, every job of it is `NotSent`, and
/// each key's stored jobs are its first ones, in order. Any other job's
/// batch goes on: every job is sent, and the refused ones are
/// `QueueFull`. Either way exactly the jobs whose result is `Ok` are
/// stored.
pub async fn a_refusal_over_two_chunks<J: Job<Payload = Task>>(env: &Env) {
    let (jobs, chunk) = (20_000, 16_384);
    let (recording, results) = enqueue_keyed::<J>(env, jobs).await;
    let options = J::options();
    let ordered = keeps_order(&options);
    let cap = options.max_length().expect("a capped job") as usize;
    let queues = options.consumed_queues();
    let mut stored_of_key: std::collections::HashMap<String, Vec<u32>> = Default::default();
    let mut stored = Vec::new();
    for queue in &queues {
        for message in env.take_all(queue).await {
            let task: Task = serde_json::from_slice(&message.body).unwrap();
            assert_eq!(
                results[task.seq as usize]
                    .as_ref()
                    .ok()
                    .map(ToString::to_string),
                message.id,
                "job {} stored, and its result says so with its id",
                task.seq
            );
            stored.push(task.seq);
            stored_of_key.entry(task.key).or_default().push(task.seq);
        }
    }
    stored.sort();
    let ok: Vec<u32> = (0..jobs)
        .filter(|&seq| results[seq as usize].is_ok())
        .collect();
    assert_eq!(stored, ok, "exactly the jobs whose result is Ok are stored");
    assert_eq!(ok.len(), cap * queues.len(), "every queue filled");
    let sent = recording.published.lock().unwrap().len();
    for (seq, result) in results.iter().enumerate() {
        let Err(error) = result else { continue };
        if ordered && seq >= chunk {
            assert!(
                matches!(error, Error::NotSent { reason, .. } if reason.contains("was not stored")),
                "job {seq}: {error:?}"
            );
        } else {
            assert!(
                matches!(error, Error::QueueFull { .. }),
                "job {seq}: {error:?}"
            );
        }
    }
    if ordered {
        assert_eq!(sent, chunk, "nothing after the first chunk is sent");
        for (key, stored) in stored_of_key {
            let first: Vec<u32> = (0..jobs)
                .filter(|seq| format!("k{}", seq % 30) == key)
                .take(stored.len())
                .collect();
            assert_eq!(stored, first, "key {key}: its first jobs, in order");
        }
    } else {
        assert_eq!(sent, jobs as usize, "every job is sent");
    }
}

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
