//! The worker scenarios on RabbitMQ: every settlement path on the real broker.

use std::sync::atomic::Ordering;

use qjob::Job;
use qjob_tests::jobs::PrefetchJob;
use qjob_tests::scenarios::{Env, LIMIT};
use qjob_tests::{Act, Task, probe, test_job};

qjob_tests::worker_tests!(Env::amqp().await);

#[tokio::test]
async fn prefetch_is_set_per_consumer_on_the_broker() {
    let env = Env::amqp().await;
    env.reset::<PrefetchJob>().await;
    let running = env.start(PrefetchJob);
    let prefetch = qjob_tests::eventually(
        "the consumer to appear",
        LIMIT,
        || qjob_tests::consumer_prefetch(PrefetchJob::QUEUE),
        |seen| !seen.is_empty(),
    )
    .await;
    assert_eq!(prefetch, [7]);
    running.stop().await.unwrap();
}

/// With two workers each queue of `J` shows one active consumer and one
/// standby; when the active worker stops, the standby takes over every
/// queue and drains it.
async fn single_active_consumers_fail_over<J: qjob::Job<Payload = qjob_tests::Task> + Clone>(
    job: J,
    queues: &[String],
) {
    let env = Env::amqp().await;
    let mut all: Vec<&str> = queues.iter().map(String::as_str).collect();
    let beyond = format!("{}.p{}", J::QUEUE, queues.len());
    all.push(&beyond);
    env.delete_queues(&all).await;
    let activity = || {
        let mut seen = qjob_tests::consumer_activity(J::QUEUE);
        seen.retain(|(queue, _)| queues.contains(queue));
        seen
    };
    let first = env.start(job.clone());
    qjob_tests::eventually("the first worker", LIMIT, activity, |c| {
        c.len() == queues.len()
    })
    .await;
    let other = env.another().await;
    let second = other.start(job);
    let both = qjob_tests::eventually("the standby", LIMIT, activity, |c| {
        c.len() == 2 * queues.len()
    })
    .await;
    for queue in queues {
        let active: Vec<bool> = both
            .iter()
            .filter(|(q, _)| q == queue)
            .map(|(_, a)| *a)
            .collect();
        assert_eq!(active.len(), 2, "{queue}: {both:?}");
        assert_eq!(
            active.iter().filter(|a| **a).count(),
            1,
            "{queue}: {both:?}"
        );
    }
    let stopped = std::time::Instant::now();
    first.stop().await.unwrap();
    qjob_tests::eventually("the standby to take over", LIMIT, activity, |c| {
        c.len() == queues.len() && c.iter().all(|(_, active)| *active)
    })
    .await;
    println!(
        "{}: the standby was active {:?} after the active worker stopped",
        J::QUEUE,
        stopped.elapsed()
    );
    let tag = env.tag::<J>();
    let tasks = (0..30).map(|n| {
        qjob_tests::Task::keyed(&tag, &format!("k{}", n % 5), n, qjob_tests::Act::Succeed)
    });
    env.client().enqueue_all::<J>(tasks).await.unwrap();
    let probe = qjob_tests::probe(&tag);
    probe
        .wait("the standby to drain", LIMIT, |p| {
            p.succeeded.load(std::sync::atomic::Ordering::SeqCst) == 30
        })
        .await;
    second.stop().await.unwrap();
}

#[tokio::test]
async fn each_partition_queue_has_one_active_consumer_and_fails_over() {
    use qjob_tests::jobs::SacJob;
    let queues: Vec<String> = (0..3).map(|i| format!("{}.p{i}", SacJob::QUEUE)).collect();
    single_active_consumers_fail_over(SacJob, &queues).await;
}

#[tokio::test]
async fn a_single_active_queue_has_one_active_consumer_and_fails_over() {
    use qjob_tests::jobs::SingleActiveJob;
    single_active_consumers_fail_over(SingleActiveJob, &[SingleActiveJob::QUEUE.to_owned()]).await;
}

/// Deploys that change `shards` while the old processes still run:
/// nothing is refused, nothing lost, nothing strands.
///
/// Raising: an unsharded worker leaves the new shards' jobs waiting until
/// a sharded worker comes; an unsharded producer's jobs go to the work
/// queue, which both consume. Lowering: an unsharded worker that starts
/// while the extra shards exist consumes them, an old producer's jobs in
/// them included; once they are deleted, it lets them go (and does not
/// declare them again) and stays ready.
#[tokio::test]
async fn deploys_that_change_shards_lose_nothing() {
    use qjob_tests::jobs::{MoreShardsJob, UnshardedJob};
    let env = Env::amqp().await;
    env.reset::<MoreShardsJob>().await;
    let tag = "amqp:shard-deploy";
    let probe = probe(tag);
    let shards = MoreShardsJob::options().consumed_queues();
    let tasks = |range: std::ops::Range<u32>| range.map(|seq| Task::new(tag, seq, Act::Succeed));
    let all_stored = |results: Vec<Result<qjob::JobId, qjob::Error>>| {
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    };
    let handled = |count: u32| {
        probe.wait("the jobs handled", LIMIT, move |p| {
            p.succeeded.load(Ordering::SeqCst) == count
        })
    };

    // Raising: the old worker runs, the new producer spreads.
    let old = env.start(UnshardedJob);
    qjob_tests::scenarios::wait_consumers(&env, UnshardedJob::QUEUE, 1).await;
    all_stored(
        env.client()
            .enqueue_all::<MoreShardsJob>(tasks(0..300))
            .await
            .unwrap(),
    );
    all_stored(
        env.client()
            .enqueue_all::<UnshardedJob>(tasks(300..400))
            .await
            .unwrap(),
    );
    let mut waiting = 0;
    for shard in &shards[1..] {
        let held = env.ready(shard).await;
        assert!(held > 0, "{shard} holds jobs the old worker does not take");
        waiting += held;
    }
    handled(400 - waiting).await;
    let new = env.start(MoreShardsJob);
    handled(400).await;
    old.stop().await.unwrap();
    new.stop().await.unwrap();

    // Lowering: an old producer still spreads; the new worker finds the
    // extra shards at its start and consumes them.
    all_stored(
        env.client()
            .enqueue_all::<MoreShardsJob>(tasks(400..700))
            .await
            .unwrap(),
    );
    let worker = qjob::Worker::builder(env.broker())
        .register(UnshardedJob)
        .build();
    let health = worker.health();
    let lowered = env.run(worker);
    handled(700).await;
    for shard in &shards[1..] {
        assert_eq!(env.ready(shard).await, 0, "{shard} drained");
    }
    // Deleted once empty: the worker lets them go and stays ready.
    env.delete_queues(&shards[1..].iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let report = qjob_tests::eventually(
        "the worker to let the deleted shards go",
        LIMIT,
        || health.report(),
        |report| report.consumers.keys().eq([UnshardedJob::QUEUE]),
    )
    .await;
    assert!(report.is_ready(), "{report:?}");
    all_stored(
        env.client()
            .enqueue_all::<UnshardedJob>(tasks(700..750))
            .await
            .unwrap(),
    );
    handled(750).await;
    lowered.stop().await.unwrap();
    for shard in &shards[1..] {
        let found = env.broker().queue_stats(shard).await.unwrap();
        assert!(found.is_none(), "{shard} not declared again");
    }
    let mut done = probe.done.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, (0..750).collect::<Vec<_>>(), "each job once");
}

/// Shards keep no order: with partitions or single-active, a clear error
/// before anything is declared (`#[job]` refuses them at compile time; a
/// job written by hand gets here).
#[tokio::test]
async fn shards_with_an_order_to_keep_are_a_clear_error() {
    struct Ordered;
    impl Job for Ordered {
        type Payload = Task;
        const NAME: &'static str = "ordered-shards";
        const QUEUE: &'static str = "qjob.test.ordered-shards";
        fn options() -> qjob::JobOptions {
            qjob::JobOptions::new(Self::QUEUE)
                .with_shards(2)
                .with_single_active(true)
        }
        async fn perform(&self, _: Task, _: qjob::JobContext) -> Result<(), qjob::JobError> {
            Ok(())
        }
    }
    let env = Env::amqp().await;
    env.reset::<Ordered>().await;
    let error = env
        .client()
        .enqueue::<Ordered>(Task::new("ordered-shards", 1, Act::Succeed))
        .await
        .unwrap_err();
    assert!(matches!(error, qjob::Error::Config(_)), "{error:?}");
    assert!(
        error.to_string().contains("sharded and single-active"),
        "{error}"
    );
    assert!(
        env.broker()
            .queue_stats(Ordered::QUEUE)
            .await
            .unwrap()
            .is_none(),
        "nothing declared"
    );
}

#[tokio::test]
async fn fewer_partitions_than_the_queues_in_use_is_a_clear_error() {
    use qjob_tests::jobs::{FewPartitionsJob, MorePartitionsJob};
    let env = Env::amqp().await;
    let queues: Vec<String> = (0..4).map(|i| format!("qjob.test.mismatch.p{i}")).collect();
    env.delete_queues(&queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let task = || qjob_tests::Task::keyed("mismatch", "k", 1, qjob_tests::Act::Succeed);
    env.client()
        .enqueue::<MorePartitionsJob>(task())
        .await
        .unwrap();
    let error = env
        .client()
        .enqueue::<FewPartitionsJob>(task())
        .await
        .unwrap_err();
    assert!(matches!(error, qjob::Error::Config(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("2 partitions") && text.contains("qjob.test.mismatch.p2"),
        "{text}"
    );
    let worker = qjob::Worker::builder(env.broker())
        .register(FewPartitionsJob)
        .build();
    let started = worker.run_until(std::future::pending()).await;
    assert!(
        matches!(started, Err(qjob::Error::Config(_))),
        "{started:?}"
    );
}

#[tokio::test]
async fn health_shows_a_running_connected_worker() {
    use qjob_tests::jobs::HealthJob;
    let env = Env::amqp().await;
    env.reset::<HealthJob>().await;
    let worker = qjob::Worker::builder(env.broker())
        .register(HealthJob)
        .build();
    let health = worker.health();
    assert!(!health.report().is_ready());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let report = qjob_tests::eventually(
        "a ready worker",
        LIMIT,
        || health.report(),
        qjob::HealthReport::is_ready,
    )
    .await;
    assert!(report.connected && report.blocked.is_none());
    assert_eq!(report.consumers.get(HealthJob::QUEUE), Some(&true));
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert!(!health.report().running);
    // Stopped, it no longer claims a connection or a consumer.
    let report = health.report();
    assert!(!report.connected, "{report:?}");
    assert!(report.consumers.values().all(|up| !up), "{report:?}");
}

#[tokio::test]
async fn a_backlog_raises_concurrency_and_its_drain_lowers_it() {
    use qjob_tests::jobs::ScaledJob;
    use qjob_tests::{Act, Task, probe};
    use std::sync::atomic::Ordering;
    let env = Env::amqp().await;
    env.reset::<ScaledJob>().await;
    let tag = env.tag::<ScaledJob>();
    let jobs = 300;
    env.client()
        .enqueue_all::<ScaledJob>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Sleep(40))))
        .await
        .unwrap();
    let worker = qjob::Worker::builder(env.broker())
        .register(ScaledJob)
        .autoscale_interval(std::time::Duration::from_millis(200))
        .build();
    let health = worker.health();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let slots = || {
        health
            .report()
            .concurrency
            .get(ScaledJob::QUEUE)
            .copied()
            .unwrap_or(0)
    };
    // The prefetch (40, configured for 12 handlers) follows: 4 at 1.
    let prefetch = || qjob_tests::consumer_prefetch(ScaledJob::QUEUE);
    let options = ScaledJob::options();
    let scaling = options.autoscale().unwrap();
    let matched = |n| usize::from(scaling.prefetch_at(n, options.prefetch()));
    // 300 jobs of 40 ms with a 1 s latency target: about 10 handlers needed.
    qjob_tests::eventually("concurrency to rise", LIMIT, slots, |n| *n >= 5).await;
    qjob_tests::eventually("prefetch to rise", LIMIT, prefetch, |p| {
        p.len() == 1 && usize::from(p[0]) >= matched(5)
    })
    .await;
    let probe = probe(&tag);
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == jobs
        })
        .await;
    let peak = probe.max_in_flight.load(Ordering::SeqCst);
    assert!((5..=12).contains(&peak), "peak {peak} handlers");
    // Idle, the need falls: concurrency comes down, step by step, and the
    // prefetch with it.
    qjob_tests::eventually("concurrency to fall", LIMIT, slots, |n| *n <= 2).await;
    qjob_tests::eventually("prefetch to fall", LIMIT, prefetch, |p| {
        p.len() == 1 && usize::from(p[0]) == matched(slots())
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    // Replacing consumers lost and repeated nothing: each job ran once and
    // nothing is left unsettled (the worker's channels are closed).
    assert_eq!(probe.attempts.load(Ordering::SeqCst), jobs);
    let mut done = probe.done.lock().unwrap().clone();
    done.sort_unstable();
    assert_eq!(done, (0..jobs).collect::<Vec<_>>());
    assert_eq!(
        qjob_tests::Rabbit::connect()
            .await
            .ready(ScaledJob::QUEUE)
            .await,
        0
    );
}

test_job!(server_cancel, "qjob.test.server-cancel", prefetch = 5);

/// RabbitMQ cancels the consumer (`basic.cancel`) when its queue is
/// deleted: the worker notices, shows it in health, redeclares the queue,
/// resubscribes and handles new jobs.
#[tokio::test]
async fn a_queue_deleted_under_a_running_worker_is_redeclared_and_consumed_again() {
    let env = Env::amqp().await;
    env.reset::<ServerCancelJob>().await;
    let tag = env.tag::<ServerCancelJob>();
    let queue = ServerCancelJob::QUEUE;
    let worker = qjob::Worker::builder(env.broker())
        .register(ServerCancelJob)
        .build();
    let health = worker.health();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let client = env.client();
    client
        .enqueue::<ServerCancelJob>(Task::new(&tag, 0, Act::Succeed))
        .await
        .unwrap();
    let probe = probe(&tag);
    probe
        .wait("the first job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;

    env.delete_queues(&[queue]).await;
    qjob_tests::eventually(
        "health to show the cancelled consumer",
        LIMIT,
        || health.report().last_error,
        |error| {
            error
                .as_deref()
                .is_some_and(|e| e.contains("cancelled the consumer"))
        },
    )
    .await;
    // The worker declares the queue again and subscribes to it.
    qjob_tests::eventually(
        "a consumer on the redeclared queue",
        LIMIT,
        || qjob_tests::consumer_prefetch(queue),
        |consumers| consumers.len() == 1,
    )
    .await;
    assert!(health.report().is_ready(), "{:?}", health.report());
    for seq in 1..=3 {
        client
            .enqueue::<ServerCancelJob>(Task::new(&tag, seq, Act::Succeed))
            .await
            .unwrap();
    }
    probe
        .wait("the jobs after the deletion", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 4
        })
        .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// What RabbitMQ 4 requires of qjob's queues, checked on the broker: every
/// queue durable (4 refuses transient non-exclusive ones), and a quorum
/// work queue dead-letters into the DLQ (4 limits quorum deliveries to 20
/// by default and drops past the limit without a target).
#[tokio::test]
async fn queues_are_durable_and_quorum_queues_dead_letter_into_the_dlq() {
    use qjob_tests::jobs::QuorumDeclaredJob;
    let env = Env::amqp().await;
    env.reset::<QuorumDeclaredJob>().await;
    let tag = env.tag::<QuorumDeclaredJob>();
    env.client()
        .enqueue::<QuorumDeclaredJob>(Task::new(&tag, 0, Act::Succeed))
        .await
        .unwrap();
    let listing = qjob_tests::rabbitmqctl_ok(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "durable",
        "arguments",
    ]);
    let queue = QuorumDeclaredJob::QUEUE;
    let dlq = QuorumDeclaredJob::options().dead_letter_queue();
    let row = |name: &str| {
        listing
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no queue {name} in {listing}"))
            .to_owned()
    };
    for name in [queue, dlq.as_str()] {
        assert!(row(name).contains("\ttrue\t"), "{}", row(name));
    }
    let work = row(queue);
    assert!(work.contains("\"x-queue-type\",\"quorum\""), "{work}");
    assert!(
        work.contains(&format!("\"x-dead-letter-routing-key\",\"{dlq}\"")),
        "{work}"
    );
}

test_job!(
    foreign_headers,
    "qjob.test.foreign-headers",
    retry = 1,
    backoff = fixed("100ms")
);

/// A foreign producer's headers of every AMQP type survive a retry through
/// a delay queue and a dead letter, byte for byte and type for type. Before,
/// non-UTF-8 strings were made text, timestamps and narrow integers became
/// 64-bit integers, and decimals, byte arrays and void became text.
#[tokio::test]
async fn foreign_headers_of_every_type_survive_a_retry_and_the_dlq() {
    use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldTable, LongString};
    let env = Env::amqp().await;
    let Env::Amqp(_, rabbit) = &env else {
        unreachable!()
    };
    env.reset::<ForeignHeadersJob>().await;
    let tag = env.tag::<ForeignHeadersJob>();
    let values = [
        ("t", AMQPValue::Boolean(true)),
        ("b", AMQPValue::ShortShortInt(-8)),
        ("B", AMQPValue::ShortShortUInt(8)),
        ("s", AMQPValue::ShortInt(-16)),
        ("u", AMQPValue::ShortUInt(16)),
        ("I", AMQPValue::LongInt(-32)),
        ("i", AMQPValue::LongUInt(32)),
        ("l", AMQPValue::LongLongInt(-64)),
        ("f", AMQPValue::Float(0.25)),
        ("d", AMQPValue::Double(0.5)),
        (
            "D",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        ("S", AMQPValue::LongString(LongString::from("text"))),
        (
            "S-binary",
            AMQPValue::LongString(LongString::from(vec![0xff, 0x00, 0xfe])),
        ),
        (
            "A",
            AMQPValue::FieldArray(vec![AMQPValue::LongInt(1), AMQPValue::Timestamp(2)].into()),
        ),
        ("T", AMQPValue::Timestamp(1_700_000_000)),
        ("x", AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3]))),
        ("V", AMQPValue::Void),
    ];
    let mut nested = FieldTable::default();
    for (name, value) in &values {
        nested.insert((*name).into(), value.clone());
    }
    let mut table = nested.clone();
    table.insert("F".into(), AMQPValue::FieldTable(nested));
    let body = serde_json::to_vec(&Task::new(&tag, 1, Act::Fail)).unwrap();
    let properties = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id("foreign-1".into())
        .with_headers(table.clone());
    let running = env.start(ForeignHeadersJob);
    qjob_tests::scenarios::wait_consumers(&env, ForeignHeadersJob::QUEUE, 1).await;
    rabbit
        .publish_with(ForeignHeadersJob::QUEUE, &body, properties)
        .await;
    let dlq = ForeignHeadersJob::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    let probe = probe(&tag);
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        2,
        "a retry, then the DLQ"
    );
    let dead = env.take_all(&dlq).await.remove(0);
    let got = dead.table.inner();
    for (name, sent) in table.inner() {
        assert_eq!(got.get(name), Some(sent), "header {name}");
    }
}

test_job!(takeover, "it.schedule.takeover");

/// A takeover on RabbitMQ: the quorum lease queue delivers both leases a
/// stopped leader left (T0, then T1) into the new leader's prefetch at
/// once. It reads both before acting, so T1 does not fire again; it used
/// to act on T0 and fire T1 a second time.
#[tokio::test]
async fn a_new_leader_reads_every_lease_before_it_fires_on_rabbitmq() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use qjob::Broker;
    use qjob::broker::QueueSpec;
    use qjob::schedule::{LEASE_QUEUE_PREFIX, Schedule};

    const PERIOD_MS: u128 = 10_000;
    let name = "it-takeover";
    let lease_queue = format!("{LEASE_QUEUE_PREFIX}{name}");
    let rabbit = qjob_tests::Rabbit::connect().await;
    rabbit.delete(&[&lease_queue, TakeoverJob::QUEUE]).await;
    let broker = qjob_tests::amqp().await;
    broker
        .declare_queue(
            &QueueSpec::new(&lease_queue)
                .with_queue_type(qjob::QueueType::Quorum)
                .with_single_active(true)
                .with_delivery_limit(1_000_000_000),
        )
        .await
        .unwrap();
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    // At least 4 s before the next tick, for the takeover.
    if now_ms() % PERIOD_MS > PERIOD_MS - 4_000 {
        let left = PERIOD_MS - now_ms() % PERIOD_MS;
        tokio::time::sleep(Duration::from_millis(left as u64 + 200)).await;
    }
    let t1 = now_ms() - now_ms() % PERIOD_MS;
    let t0 = t1 - PERIOD_MS;
    for tick in [t0, t1] {
        rabbit
            .publish_raw(
                &lease_queue,
                format!(r#"{{"format":1,"last_ms":{tick}}}"#).as_bytes(),
            )
            .await;
    }
    let tick_id = |ms: u128| {
        qjob::schedule::tick_id(name, UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
    };
    let schedule = Schedule::cron("*/10 * * * * *").unwrap().named(name);
    let worker = qjob::Worker::builder(broker)
        .schedule::<TakeoverJob>(schedule, Task::new("takeover", 0, Act::Succeed))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    // The next tick, and nothing before it.
    qjob_tests::until("the next tick", Duration::from_secs(20), async || {
        rabbit.ready(TakeoverJob::QUEUE).await >= 1
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let ids: Vec<String> = rabbit
        .take_all(TakeoverJob::QUEUE)
        .await
        .into_iter()
        .filter_map(|got| got.id)
        .collect();
    assert_eq!(ids, [tick_id(t1 + PERIOD_MS)], "{t1}");
    rabbit.delete(&[&lease_queue, TakeoverJob::QUEUE]).await;
}

test_job!(
    default_limit,
    "it.quorum.default-delivery-limit",
    queue_type = "quorum"
);

/// A quorum job's message returned to its queue unsettled again and again
/// (workers crashing while they hold it): RabbitMQ 4's default delivery
/// limit (20) dead-letters it into the job's DLQ, where qjob reads the
/// reason as `delivery-limit`; nothing is dropped. RabbitMQ 3 has no
/// default limit: it stays in the queue.
#[tokio::test]
async fn a_quorum_job_past_rabbitmq_4s_default_delivery_limit_is_dead_lettered() {
    use qjob::Broker;
    let env = Env::amqp().await;
    env.reset::<DefaultLimitJob>().await;
    let client = env.client();
    client
        .enqueue::<DefaultLimitJob>(Task::new("default-limit", 0, Act::Succeed))
        .await
        .unwrap();
    let broker = qjob_tests::amqp().await;
    let dlq = DefaultLimitJob::options().dead_letter_queue();
    let mut returned = 0;
    while let Some(delivery) = broker.get(DefaultLimitJob::QUEUE).await.unwrap() {
        delivery.acker.reject(true).await.unwrap();
        returned += 1;
        if returned == 25 {
            break;
        }
    }
    if qjob_tests::rabbitmq_major() >= 4 {
        assert_eq!(returned, 21, "delivered 21 times, then dead-lettered");
        env.wait_ready(&dlq, 1).await;
        let letters = client
            .dead_letters::<DefaultLimitJob>()
            .peek(10)
            .await
            .unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].reason, qjob::DeadReason::DeliveryLimit);
        assert_eq!(env.ready(DefaultLimitJob::QUEUE).await, 0);
    } else {
        assert_eq!(returned, 25, "no default limit on RabbitMQ 3");
        assert_eq!(env.ready(DefaultLimitJob::QUEUE).await, 1);
        assert_eq!(env.ready(&dlq).await, 0);
    }
    env.reset::<DefaultLimitJob>().await;
}

test_job!(
    held_timeout,
    "it.quorum.held-consumer-timeout",
    queue_type = "quorum",
    retry = 3,
    backoff = fixed("10s")
);

/// RabbitMQ 4's per-queue consumer timeout (a `consumer-timeout` policy,
/// here 3 s) on a job that holds its retries in place: told the timeout,
/// the worker squeezes the 10 s backoffs into the hold budget, so the job
/// makes its 4 attempts and reaches its DLQ on one delivery, which the
/// broker never takes back. RabbitMQ 3.10 has no per-queue timeout: the
/// policy is refused there.
#[tokio::test]
async fn held_retries_keep_within_rabbitmq_4s_per_queue_consumer_timeout() {
    let env = Env::amqp().await;
    env.reset::<HeldTimeoutJob>().await;
    let policy = "qjob-test-held-consumer-timeout";
    let pattern = format!("^{}$", HeldTimeoutJob::QUEUE.replace('.', "\\."));
    let set = qjob_tests::rabbitmqctl(&[
        "set_policy",
        policy,
        &pattern,
        r#"{"consumer-timeout":3000}"#,
        "--apply-to",
        "queues",
    ]);
    if qjob_tests::rabbitmq_major() < 4 {
        assert!(!set.status.success(), "3.10 took a consumer-timeout policy");
        return;
    }
    assert!(set.status.success(), "{set:?}");
    let tag = env.tag::<HeldTimeoutJob>();
    let probe = probe(&tag);
    env.client()
        .enqueue::<HeldTimeoutJob>(Task::new(&tag, 0, Act::Fail))
        .await
        .unwrap();
    let running = env.run(
        qjob::Worker::builder(env.broker())
            .register(HeldTimeoutJob)
            .broker_consumer_timeout(std::time::Duration::from_secs(3))
            .build(),
    );
    let dlq = HeldTimeoutJob::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    running.stop().await.unwrap();
    qjob_tests::rabbitmqctl_ok(&["clear_policy", policy]);
    assert_eq!(*probe.attempt_numbers.lock().unwrap(), [1, 2, 3, 4]);
    let letter = env.take_all(&dlq).await.remove(0);
    assert_eq!(
        letter.headers["qjob-attempts"],
        qjob::broker::HeaderValue::from(4)
    );
    env.reset::<HeldTimeoutJob>().await;
}

test_job!(rolling_leader, "it.schedule.rolling-leader");

/// A rolling deploy on RabbitMQ: three workers, each on a connection of
/// its own, carry a 2 s schedule; 1 s after each of 6 ticks the leader
/// stops gracefully and a new worker starts. Every tick is enqueued once.
#[tokio::test]
async fn graceful_stops_of_the_leader_fire_no_tick_twice_on_rabbitmq() {
    use std::time::Duration;

    use qjob::schedule::{LEASE_QUEUE_PREFIX, Schedule};

    let name = "it-rolling-leader";
    let lease_queue = format!("{LEASE_QUEUE_PREFIX}{name}");
    let rabbit = qjob_tests::Rabbit::connect().await;
    rabbit
        .delete(&[&lease_queue, RollingLeaderJob::QUEUE])
        .await;
    let start = async || {
        let worker = qjob::Worker::builder(qjob_tests::amqp().await)
            .schedule::<RollingLeaderJob>(
                Schedule::cron("*/2 * * * * *").unwrap().named(name),
                Task::new("rolling-leader", 0, Act::Succeed),
            )
            .build();
        let health = worker.health();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.run_until(async {
            let _ = stopped.await;
        }));
        (health, stop, running)
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(start().await);
    }
    let fired = |workers: &[(qjob::Health, _, _)]| {
        workers
            .iter()
            .filter_map(|(health, _, _)| health.report().schedules.get(name)?.last_fired)
            .max()
    };
    let mut last = None;
    for round in 0..6 {
        qjob_tests::until(
            &format!("round {round}: a tick"),
            Duration::from_secs(20),
            async || fired(&workers) > last,
        )
        .await;
        last = fired(&workers);
        // The scenario: the leader is stopped 1 s after a tick, halfway to
        // the next one of the 2 s schedule (not a wait for something).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = workers
            .iter()
            .position(|(health, _, _)| health.report().schedules[name].leader)
            .unwrap_or_else(|| panic!("round {round}: no leader"));
        let (_, stop, running) = workers.remove(leader);
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        workers.push(start().await);
    }
    for (_, stop, running) in workers {
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
    }
    let ids: Vec<String> = rabbit
        .take_all(RollingLeaderJob::QUEUE)
        .await
        .into_iter()
        .filter_map(|got| got.id)
        .collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a tick twice: {ids:?}");
    assert!(ids.len() >= 6, "{ids:?}");
    rabbit
        .delete(&[&lease_queue, RollingLeaderJob::QUEUE])
        .await;
}
