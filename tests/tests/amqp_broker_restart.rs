//! The broker itself misbehaves: it stops and starts in the middle of a run
//! (`rabbitmqctl stop_app` / `start_app`), or raises a memory alarm. Its
//! own binary, one test at a time: no other test runs meanwhile.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use qjob_tests::scenarios::{Env, LIMIT};
use qjob_tests::{Act, Task, probe, rabbitmqctl, rabbitmqctl_ok, test_job};

test_job!(
    restart_chaos,
    "qjob.test.broker-restart",
    prefetch = 20,
    concurrency = 8,
    retry = 3
);

/// Starts the broker again however the test ends.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["start_app"]);
        let _ = rabbitmqctl(&["await_startup", "--timeout", "120"]);
    }
}

/// One test at a time: each disturbs the whole broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_broker_restart_mid_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    env.reset::<RestartChaosJob>().await;
    let tag = env.tag::<RestartChaosJob>();
    let jobs = 400;
    let client = env.client();
    let results = client
        .enqueue_all::<RestartChaosJob>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Sleep(5))))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let running = env.start(RestartChaosJob);
    let probe = probe(&tag);
    probe
        .wait("a first batch", LIMIT, |p| {
            p.succeeded.load(std::sync::atomic::Ordering::SeqCst) >= 100
        })
        .await;

    let restart = Restart;
    rabbitmqctl_ok(&["stop_app"]);
    // While the broker is down, publishing fails at once, with an error.
    let started = Instant::now();
    let during = client
        .enqueue::<RestartChaosJob>(Task::new(&tag, jobs, Act::Sleep(5)))
        .await;
    assert!(during.is_err(), "{during:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(restart);

    // The worker reconnects, redeclares, resubscribes and finishes.
    probe
        .wait(
            "every job after the restart",
            Duration::from_secs(60),
            |p| {
                let done: BTreeSet<u32> = p.done.lock().unwrap().iter().copied().collect();
                done.len() == jobs as usize
            },
        )
        .await;
    running.stop().await.unwrap();
    let done = probe.done.lock().unwrap().clone();
    let distinct: BTreeSet<u32> = done.iter().copied().collect();
    assert_eq!(distinct, (0..jobs).collect());
    println!(
        "{jobs} jobs: {} handler completions ({} run again after the restart), none lost",
        done.len(),
        done.len() - jobs as usize
    );
    let after = Env::amqp().await;
    assert_eq!(after.ready("qjob.test.broker-restart").await, 0);
    assert_eq!(after.ready("qjob.test.broker-restart.dlq").await, 0);
    // And the client publishes again.
    client
        .enqueue::<RestartChaosJob>(Task::new("after-restart", 0, Act::Succeed))
        .await
        .unwrap();
}

/// Puts the memory watermark back however the test ends.
struct Watermark;

impl Drop for Watermark {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

test_job!(alarmed, "qjob.test.memory-alarm", retry = 0);

/// A memory alarm: a publish already sent when it starts is confirmed once
/// it clears (never reported failed and published twice); once the client
/// knows, publishes fail at once with `Blocked`, and health shows it.
#[tokio::test]
async fn a_memory_alarm_blocks_publishing_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    env.reset::<AlarmedJob>().await;
    let client = env.client();
    client
        .enqueue::<AlarmedJob>(Task::new("alarm", 0, Act::Succeed))
        .await
        .unwrap();
    let watermark = Watermark;
    rabbitmqctl_ok(&["set_vm_memory_high_watermark", "0.0000001"]);
    // RabbitMQ tells a connection it blocks it at its first publish.
    let first = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .enqueue::<AlarmedJob>(Task::new("alarm", 1, Act::Succeed))
                .await
        }
    });
    let Env::Amqp(broker, _) = &env else {
        unreachable!()
    };
    qjob_tests::eventually(
        "the client to learn of the block",
        LIMIT,
        || broker.blocked(),
        Option::is_some,
    )
    .await;
    let health = qjob::Worker::builder(broker.clone())
        .register(AlarmedJob)
        .build()
        .health();
    assert!(health.report().blocked.is_some(), "health shows the alarm");
    let started = Instant::now();
    let again = client
        .enqueue::<AlarmedJob>(Task::new("alarm", 2, Act::Succeed))
        .await;
    assert!(
        matches!(again, Err(qjob::Error::Blocked { .. })),
        "fails fast while blocked: {again:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    drop(watermark);
    first
        .await
        .unwrap()
        .expect("the publish sent before the block is confirmed after it");
    let deadline = Instant::now() + LIMIT;
    while broker.blocked().is_some() {
        assert!(Instant::now() < deadline, "never unblocked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .enqueue::<AlarmedJob>(Task::new("alarm", 3, Act::Succeed))
        .await
        .unwrap();
    // Tasks 0, 1 and 3, each once; task 2 was never published.
    assert_eq!(env.ready("qjob.test.memory-alarm").await, 3);
}

test_job!(
    alarm_worker,
    "qjob.test.alarm-worker",
    prefetch = 20,
    concurrency = 10,
    retry = 3,
    backoff = fixed("200ms")
);

/// A memory alarm raised before the worker starts: the jobs that need no
/// publish are consumed and acked during the alarm (acks go on a connection
/// that never publishes); the retries wait, holding their deliveries,
/// without running their handlers again, and out of the prefetch window
/// (100 held with a prefetch of 20); once the alarm clears every job
/// completes.
#[tokio::test]
async fn a_worker_keeps_acking_through_a_memory_alarm_and_resumes_after_it() {
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    env.reset::<AlarmWorkerJob>().await;
    let tag = env.tag::<AlarmWorkerJob>();
    let queue = "qjob.test.alarm-worker";
    let jobs = 400u32;
    let failing = jobs / 4;
    let tasks = (0..jobs).map(|seq| {
        let act = if seq.is_multiple_of(4) {
            Act::FailFirst
        } else {
            Act::Succeed
        };
        Task::new(&tag, seq, act)
    });
    let results = env
        .client()
        .enqueue_all::<AlarmWorkerJob>(tasks)
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));

    let watermark = Watermark;
    rabbitmqctl_ok(&["set_vm_memory_high_watermark", "0.0000001"]);
    let running = env.start(AlarmWorkerJob);
    let probe = probe(&tag);
    let attempts = |p: &qjob_tests::Probe| p.attempts.load(std::sync::atomic::Ordering::SeqCst);
    let plain_done = |p: &qjob_tests::Probe| {
        let done: BTreeSet<u32> = p.done.lock().unwrap().iter().copied().collect();
        (0..jobs)
            .filter(|seq| seq % 4 != 0)
            .all(|seq| done.contains(&seq))
    };
    probe
        .wait("the jobs that need no publish", LIMIT, plain_done)
        .await;
    // Their acks reached RabbitMQ: only the failed ones are left, held by
    // the worker while their retries wait for the alarm to clear.
    qjob_tests::eventually(
        "the successes' acks to reach the broker during the alarm",
        LIMIT,
        || qjob_tests::queue_messages(queue),
        |left| *left == failing,
    )
    .await;
    let Env::Amqp(broker, _) = &env else {
        unreachable!()
    };
    assert!(broker.blocked().is_some(), "the alarm is still on");
    // No failed job ran again while its retry could not be published: a
    // retry sent before RabbitMQ said it blocks waits for its confirm, the
    // others are held and published once the alarm clears, never re-run.
    assert_eq!(attempts(&probe), jobs);
    drop(watermark);

    probe
        .wait("every job after the alarm", Duration::from_secs(60), |p| {
            let done: BTreeSet<u32> = p.done.lock().unwrap().iter().copied().collect();
            done.len() == jobs as usize
        })
        .await;
    running.stop().await.unwrap();
    assert_eq!(
        attempts(&probe),
        jobs + failing,
        "each failed job ran twice, no more"
    );
    let after = Env::amqp().await;
    assert_eq!(after.ready(queue).await, 0);
    assert_eq!(after.ready("qjob.test.alarm-worker.dlq").await, 0);
    println!(
        "memory alarm: {} of {jobs} jobs acked during it, {failing} retries held and published \
         after it, none lost, none run twice",
        jobs - failing
    );
}

test_job!(outbox_restart, "qjob.test.outbox.restart");

/// RabbitMQ stopped under a running relay: the app's transactions still
/// commit their jobs, the rows wait, and they go out when it returns.
#[tokio::test]
async fn outbox_rows_wait_while_the_broker_is_down_and_go_out_when_it_returns() {
    use qjob_tests::outbox::{fresh, pg_pool, rows};
    let _serial = SERIAL.lock().await;
    let queue = "qjob.test.outbox.restart";
    let rabbit = qjob_tests::Rabbit::connect().await;
    rabbit.delete(&[queue]).await;
    let pool = pg_pool().await;
    let outbox = qjob::outbox::Outbox::new(qjob::Client::new(qjob_tests::amqp().await))
        .with_table("qjob_test_outbox_restart")
        .unwrap();
    let table = outbox.table().to_owned();
    fresh(&pool, &outbox).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(pool.clone())
            .job::<OutboxRestartJob>()
            .run_until(async {
                let _ = stopped.await;
            }),
    );
    let mut ids = qjob_tests::outbox::committed::<OutboxRestartJob>(&outbox, &pool, 0..50).await;
    rabbit.wait_ready(queue, 50, LIMIT).await;
    drop(rabbit);

    let restart = Restart;
    rabbitmqctl_ok(&["stop_app"]);
    ids.extend(qjob_tests::outbox::committed::<OutboxRestartJob>(&outbox, &pool, 50..150).await);
    // A round while the broker is down publishes nothing and keeps every row.
    let probe = outbox.relay(pool.clone());
    qjob_tests::until(
        "a round that claims the rows and fails",
        LIMIT,
        async || {
            let round = probe.relay_once().await.unwrap();
            round.claimed > 0 && round.published == 0 && round.failed.is_some()
        },
    )
    .await;
    assert_eq!(rows(&pool, &table).await, 100);
    drop(restart);

    let rabbit = qjob_tests::Rabbit::connect().await;
    qjob_tests::until("every row published", Duration::from_secs(60), async || {
        rows(&pool, &table).await == 0
    })
    .await;
    let _ = stop.send(());
    relay.await.unwrap().unwrap();
    let got = rabbit.take_all(queue).await;
    let delivered: BTreeSet<String> = got.iter().filter_map(|got| got.id.clone()).collect();
    assert_eq!(delivered, ids.into_iter().collect::<BTreeSet<_>>());
    println!(
        "outbox across a broker restart: {} messages for 150 jobs, none lost",
        got.len()
    );
}
