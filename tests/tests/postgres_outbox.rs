//! The transactional outbox on PostgreSQL and RabbitMQ: nothing from a
//! rolled-back transaction, a committed one delivered once, a relay killed
//! between the confirm and the delete, two relays on one table. Each test
//! has its own table and queue. (RabbitMQ stopped under a relay is in
//! `amqp_broker_restart`.)

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use qjob::Client;
use qjob::broker::{Broker, QueueSpec};
use qjob::outbox::{Outbox, Relay};
use qjob_tests::jobs::OutboxKillJob;
use qjob_tests::outbox::{Metrics, Recording, fresh, pg_pool, rows};
use qjob_tests::{Act, Rabbit, Task, amqp, until};
use tokio::sync::oneshot;

const WORKER: &str = env!("CARGO_BIN_EXE_qjob-test-worker");

#[qjob::job(queue = "qjob.test.outbox.commit")]
async fn outbox_commit(task: Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    qjob_tests::run_task(task, ctx).await
}

#[qjob::job(queue = "qjob.test.outbox.poll")]
async fn outbox_poll(task: Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    qjob_tests::run_task(task, ctx).await
}

#[qjob::job(queue = "qjob.test.outbox.delayed")]
async fn outbox_delayed(task: Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    qjob_tests::run_task(task, ctx).await
}

#[qjob::job(queue = "qjob.test.outbox.refused")]
async fn outbox_refused(task: Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    qjob_tests::run_task(task, ctx).await
}

#[qjob::job(queue = "qjob.test.outbox.metered")]
async fn outbox_metered(task: Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    qjob_tests::run_task(task, ctx).await
}

#[qjob::job(queue = "qjob.test.outbox.two")]
async fn outbox_two(task: Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    qjob_tests::run_task(task, ctx).await
}

#[qjob::job(queue = "qjob.test.outbox.unique", unique(within = "10m"))]
async fn outbox_unique(task: Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
    qjob_tests::run_task(task, ctx).await
}

const LIMIT: Duration = Duration::from_secs(20);

/// A relay running in this process until the test stops it.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), qjob::Error>>,
}

fn run(relay: Relay) -> Running {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// An outbox in `table`, fresh, publishing through RabbitMQ; `queue`
/// deleted so the test starts from nothing.
async fn setup(table: &str, queue: &str) -> (Outbox, sqlx::PgPool, Rabbit) {
    let rabbit = Rabbit::connect().await;
    rabbit.delete(&[queue]).await;
    let pool = pg_pool().await;
    let outbox = Outbox::new(Client::new(amqp().await)).table(table).unwrap();
    fresh(&pool, &outbox).await;
    (outbox, pool, rabbit)
}

fn seq_of(got: &qjob_tests::Got) -> u32 {
    serde_json::from_slice::<Task>(&got.body).unwrap().seq
}

#[tokio::test]
async fn a_rolled_back_transaction_enqueues_nothing_and_a_committed_one_is_delivered_once() {
    let queue = "qjob.test.outbox.commit";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_commit", queue).await;
    // A poll far longer than the test: only a commit's notification wakes
    // the relay.
    let relay = run(outbox
        .relay(pool.clone())
        .poll_interval(Duration::from_secs(3600)));

    let mut tx = pool.begin().await.unwrap();
    let rolled_back = outbox
        .enqueue::<OutboxCommitJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let committed = outbox
        .enqueue::<OutboxCommitJob>(&mut tx, Task::new("outbox", 2, Act::Succeed))
        .await
        .unwrap();
    // Written, but not visible outside the transaction: nothing goes out.
    assert_eq!(rows(&pool, outbox.table_name()).await, 0);
    assert_eq!(rabbit.ready(queue).await, 0);
    tx.commit().await.unwrap();

    rabbit.wait_ready(queue, 1, LIMIT).await;
    until("the published row deleted", LIMIT, async || {
        rows(&pool, outbox.table_name()).await == 0
    })
    .await;
    relay.stop().await;
    let got = rabbit.take_all(queue).await;
    assert_eq!(got.len(), 1, "one message: the committed job, once");
    assert_eq!(got[0].id.as_deref(), Some(committed.as_str()));
    assert_eq!(seq_of(&got[0]), 2);
    assert_ne!(rolled_back, committed);
    let stats = outbox.stats(&pool).await.unwrap();
    assert_eq!((stats.depth, stats.oldest, stats.refused), (0, None, 0));
}

#[tokio::test]
async fn without_notifications_the_poll_finds_the_rows() {
    let queue = "qjob.test.outbox.poll";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_poll", queue).await;
    // Migrated again without notifications: the trigger goes.
    let outbox = outbox.notify(false);
    outbox.migrate(&pool).await.unwrap();
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'qjob_test_outbox_poll_notify'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, 0);
    let relay = run(outbox
        .relay(pool.clone())
        .poll_interval(Duration::from_millis(100)));
    let mut tx = pool.begin().await.unwrap();
    let id = outbox
        .enqueue::<OutboxPollJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rabbit.wait_ready(queue, 1, LIMIT).await;
    relay.stop().await;
    let got = rabbit.take_all(queue).await;
    assert_eq!(got[0].id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn a_delayed_job_waits_its_delay_counted_from_the_enqueue() {
    let queue = "qjob.test.outbox.delayed";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_delayed", queue).await;
    let delay = Duration::from_millis(1500);
    let mut tx = pool.begin().await.unwrap();
    let enqueued = Instant::now();
    let id = outbox
        .enqueue_in::<OutboxDelayedJob>(&mut tx, Task::new("outbox", 1, Act::Succeed), delay)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The relay starts late: what is left of the delay is what it waits.
    until("half the delay", LIMIT, async || {
        enqueued.elapsed() >= delay / 2
    })
    .await;
    let relay = run(outbox.relay(pool.clone()));
    until(
        "the row published into its delay queue",
        LIMIT,
        async || rows(&pool, outbox.table_name()).await == 0,
    )
    .await;
    assert_eq!(rabbit.ready(queue).await, 0, "not due yet");
    rabbit.wait_ready(queue, 1, LIMIT).await;
    let waited = enqueued.elapsed();
    assert!(
        waited >= delay - Duration::from_millis(50) && waited < delay + Duration::from_secs(5),
        "due {delay:?} after the enqueue, came after {waited:?}"
    );
    relay.stop().await;
    let got = rabbit.take_all(queue).await;
    assert_eq!(got[0].id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn a_row_the_broker_refuses_waits_with_its_reason_and_goes_out_once_its_queue_exists() {
    let queue = "qjob.test.outbox.refused";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_refused", queue).await;
    // A relay of another process's outbox (the same table): it does not
    // know the job type, so it cannot declare its queue.
    let elsewhere = Outbox::new(Client::new(amqp().await))
        .table(outbox.table_name())
        .unwrap();
    let relay = run(elsewhere
        .relay(pool.clone())
        .poll_interval(Duration::from_millis(100)));
    let mut tx = pool.begin().await.unwrap();
    let id = outbox
        .enqueue::<OutboxRefusedJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    until("the row refused", LIMIT, async || {
        outbox.stats(&pool).await.unwrap().refused == 1
    })
    .await;
    let (attempts, error): (i32, String) = sqlx::query_as(&format!(
        "SELECT attempts, last_error FROM {}",
        outbox.table_name()
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(attempts >= 1);
    assert!(error.contains("unroutable"), "{error}");
    assert_eq!(outbox.stats(&pool).await.unwrap().depth, 1, "it waits");

    amqp()
        .await
        .declare_queue(&QueueSpec::new(queue))
        .await
        .unwrap();
    rabbit.wait_ready(queue, 1, LIMIT).await;
    until("the row deleted", LIMIT, async || {
        rows(&pool, outbox.table_name()).await == 0
    })
    .await;
    relay.stop().await;
    let got = rabbit.take_all(queue).await;
    assert_eq!(got[0].id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn bad_input_is_a_clear_error_and_writes_nothing() {
    let pool = pg_pool().await;
    let outbox = Outbox::new(Client::new(amqp().await))
        .table("qjob_test_outbox_refusals")
        .unwrap();
    fresh(&pool, &outbox).await;
    let mut tx = pool.begin().await.unwrap();
    let unique = outbox
        .enqueue::<OutboxUniqueJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await;
    assert!(
        matches!(&unique, Err(qjob::Error::Config(reason)) if reason.contains("unique")),
        "{unique:?}"
    );
    tx.commit().await.unwrap();
    assert_eq!(rows(&pool, outbox.table_name()).await, 0);

    // A relay of a table that was never created fails at once.
    let missing = Outbox::new(Client::new(amqp().await))
        .table("qjob_test_outbox_missing")
        .unwrap();
    let error = missing
        .relay(pool.clone())
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(error, qjob::Error::Database { .. })
            && error.to_string().contains("qjob_test_outbox_missing"),
        "{error}"
    );
}

/// Whether a PostgreSQL backend waits on a lock to delete from `table`.
async fn delete_waits(pool: &sqlx::PgPool, table: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND query LIKE $1",
    )
    .bind(format!("DELETE FROM {table} %"))
    .fetch_one(pool)
    .await
    .unwrap()
        > 0
}

#[tokio::test]
async fn a_relay_killed_between_confirm_and_delete_loses_nothing_and_repeats_the_same_ids() {
    let queue = "qjob.test.outbox.kill";
    let table = "qjob_test_outbox_kill";
    let (outbox, pool, rabbit) = setup(table, queue).await;
    let jobs = 200;
    let mut ids = Vec::new();
    let mut tx = pool.begin().await.unwrap();
    for seq in 0..jobs {
        ids.push(
            outbox
                .enqueue::<OutboxKillJob>(&mut tx, Task::new("outbox-kill", seq, Act::Succeed))
                .await
                .unwrap()
                .to_string(),
        );
    }
    tx.commit().await.unwrap();

    // The table locked against deletes (not against claims): the relay
    // publishes, gets its confirms, and waits to delete.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {table} IN SHARE MODE"))
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut relay = tokio::process::Command::new(WORKER)
        .arg("relay")
        .env("QJOB_TEST_OUTBOX_TABLE", table)
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    rabbit.wait_ready(queue, jobs, LIMIT).await;
    until("the relay waiting to delete", LIMIT, async || {
        delete_waits(&pool, table).await
    })
    .await;
    relay.start_kill().unwrap();
    relay.wait().await.unwrap();
    lock.rollback().await.unwrap();
    assert_eq!(
        rows(&pool, table).await,
        i64::from(jobs),
        "every row is still there"
    );

    // Another relay publishes them again, with the same ids.
    let again = run(outbox.relay(pool.clone()));
    rabbit.wait_ready(queue, 2 * jobs, LIMIT).await;
    until("the rows deleted", LIMIT, async || {
        rows(&pool, table).await == 0
    })
    .await;
    again.stop().await;
    let got = rabbit.take_all(queue).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for got in &got {
        *counts.entry(got.id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), jobs as usize);
    for id in &ids {
        assert_eq!(
            counts.get(id),
            Some(&2),
            "job {id}: once before the kill, once after"
        );
    }
    // And in order, each time: seq 0..jobs, then 0..jobs again.
    let seqs: Vec<u32> = got.iter().map(seq_of).collect();
    let expected: Vec<u32> = (0..jobs).chain(0..jobs).collect();
    assert_eq!(seqs, expected);
}

#[tokio::test]
async fn two_relays_publish_ten_thousand_rows_once_each_in_order_per_relay() {
    let queue = "qjob.test.outbox.two";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_two", queue).await;
    let jobs: u32 = 10_000;
    let mut seq_of_id: HashMap<String, u32> = HashMap::new();
    // In 100 transactions of 100 jobs, committed in order.
    for chunk in 0..jobs / 100 {
        let mut tx = pool.begin().await.unwrap();
        for seq in chunk * 100..(chunk + 1) * 100 {
            let id = outbox
                .enqueue::<OutboxTwoJob>(&mut tx, Task::new("outbox-two", seq, Act::Succeed))
                .await
                .unwrap();
            seq_of_id.insert(id.to_string(), seq);
        }
        tx.commit().await.unwrap();
    }
    // Two relays, each with its own connection, recording what it publishes.
    let broker = amqp().await;
    let recorders = [Recording::new(broker.clone()), Recording::new(amqp().await)];
    let relays: Vec<Running> = recorders
        .iter()
        .map(|recorder| {
            let outbox = Outbox::new(Client::new(recorder.clone()))
                .table(outbox.table_name())
                .unwrap();
            run(outbox
                .relay(pool.clone())
                .batch_size(100)
                .job::<OutboxTwoJob>())
        })
        .collect();
    rabbit
        .wait_ready(queue, jobs, Duration::from_secs(60))
        .await;
    until("every row deleted", LIMIT, async || {
        rows(&pool, outbox.table_name()).await == 0
    })
    .await;
    for relay in relays {
        relay.stop().await;
    }

    let mut everything = HashSet::new();
    for (relay, recorder) in recorders.iter().enumerate() {
        let seqs: Vec<u32> = recorder.ids().iter().map(|id| seq_of_id[id]).collect();
        assert!(!seqs.is_empty(), "relay {relay} published nothing");
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "relay {relay} published out of commit order"
        );
        for seq in seqs {
            assert!(everything.insert(seq), "job {seq} published twice");
        }
        println!("relay {relay} published {} jobs", recorder.ids().len());
    }
    assert_eq!(everything.len(), jobs as usize);
    let got = rabbit.take_all(queue).await;
    let delivered: HashSet<u32> = got.iter().map(seq_of).collect();
    assert_eq!(got.len(), jobs as usize, "each once");
    assert_eq!(delivered, (0..jobs).collect());
}

#[tokio::test]
async fn the_relay_reports_depth_age_and_what_it_published_and_refused() {
    let metrics = Metrics::installed();
    let queue = "qjob.test.outbox.metered";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_metered", queue).await;
    let label = |name: &str| format!("{name}{{table=qjob_test_outbox_metered}}");
    let mut tx = pool.begin().await.unwrap();
    for seq in 0..3 {
        outbox
            .enqueue::<OutboxMeteredJob>(&mut tx, Task::new("outbox", seq, Act::Succeed))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    // Its queue missing, and unknown to the relay: the rows are refused.
    let elsewhere = Outbox::new(Client::new(amqp().await))
        .table(outbox.table_name())
        .unwrap();
    let relay = run(elsewhere
        .relay(pool.clone())
        .poll_interval(Duration::from_millis(50)));
    until(
        "three refusals counted, three rows waiting",
        LIMIT,
        async || {
            metrics.counter(&label("qjob_outbox_refused_total")) >= 3
                && metrics.gauge(&label("qjob_outbox_depth")) == Some(3.0)
        },
    )
    .await;
    assert!(
        metrics
            .gauge(&label("qjob_outbox_oldest_age_seconds"))
            .unwrap()
            > 0.0
    );
    assert_eq!(metrics.counter(&label("qjob_outbox_published_total")), 0);

    amqp()
        .await
        .declare_queue(&QueueSpec::new(queue))
        .await
        .unwrap();
    until("three published, none waiting", LIMIT, async || {
        metrics.counter(&label("qjob_outbox_published_total")) == 3
            && metrics.gauge(&label("qjob_outbox_depth")) == Some(0.0)
    })
    .await;
    assert_eq!(
        metrics.gauge(&label("qjob_outbox_oldest_age_seconds")),
        Some(0.0)
    );
    relay.stop().await;
    assert_eq!(rabbit.take_all(queue).await.len(), 3);
}
