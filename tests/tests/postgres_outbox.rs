//! The transactional outbox on PostgreSQL and RabbitMQ: nothing from a
//! rolled-back transaction, a committed one delivered once, a relay killed
//! between the confirm and the delete, two relays on one table. Each test
//! has its own table and queue. (RabbitMQ stopped under a relay is in
//! `amqp_broker_restart`.)

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qjob::broker::{Broker, QueueSpec};
use qjob::outbox::{Outbox, Relay};
use qjob::{Client, EnqueueOptions, Job};
use qjob_tests::jobs::OutboxKillJob;
use qjob_tests::outbox::{Metrics, committed, fresh, pg_pool, pg_url, rows};
use qjob_tests::recording::Recording;
use qjob_tests::{Act, Rabbit, Task, amqp, test_job, until};
use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

const WORKER: &str = env!("CARGO_BIN_EXE_qjob-test-worker");

test_job!(outbox_commit, "qjob.test.outbox.commit");

test_job!(outbox_poll, "qjob.test.outbox.poll");

test_job!(outbox_delayed, "qjob.test.outbox.delayed");

test_job!(outbox_refused, "qjob.test.outbox.refused");

test_job!(outbox_metered, "qjob.test.outbox.metered");

test_job!(outbox_two, "qjob.test.outbox.two");

test_job!(outbox_watch, "qjob.test.outbox.watch");

test_job!(outbox_upgrade, "qjob.test.outbox.upgrade");

test_job!(outbox_covered, "qjob.test.outbox.covered");

test_job!(outbox_leave, "qjob.test.outbox.leave");

test_job!(outbox_lost, "qjob.test.outbox.lost");

test_job!(outbox_ranked, "qjob.test.outbox.ranked", priorities = 9);

test_job!(
    outbox_unique,
    "qjob.test.outbox.unique",
    unique(within = "10m")
);

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

/// A relay that polls once an hour: in a test, only a notification (or
/// the watch it takes) wakes it.
fn hourly(outbox: &Outbox, pool: &sqlx::PgPool) -> Relay {
    outbox
        .relay(pool.clone())
        .poll_interval(Duration::from_secs(3600))
}

/// Runs an hourly relay on `table` and waits until it watches.
async fn watching(outbox: &Outbox, pool: &sqlx::PgPool, table: &str) -> Running {
    let watcher = run(hourly(outbox, pool));
    until("the first relay watches", LIMIT, async || {
        watch_lock(pool, table, true).await.len() == 1
    })
    .await;
    watcher
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
    let outbox = Outbox::new(Client::new(amqp().await))
        .with_table(table)
        .unwrap();
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
    let relay = run(hourly(&outbox, &pool));

    let mut tx = pool.begin().await.unwrap();
    let rolled_back = outbox
        .enqueue::<OutboxCommitJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let first = outbox
        .enqueue::<OutboxCommitJob>(&mut tx, Task::new("outbox", 2, Act::Succeed))
        .await
        .unwrap();
    // Written, but not visible outside the transaction: nothing goes out.
    assert_eq!(rows(&pool, outbox.table()).await, 0);
    assert_eq!(rabbit.ready(queue).await, 0);
    tx.commit().await.unwrap();
    rabbit.wait_ready(queue, 1, LIMIT).await;
    until("the published row deleted", LIMIT, async || {
        rows(&pool, outbox.table()).await == 0
    })
    .await;

    // The round that published that row is over: only the notification
    // of this commit can wake the relay for the next one.
    let notified = committed::<OutboxCommitJob>(&outbox, &pool, [3])
        .await
        .remove(0);
    rabbit.wait_ready(queue, 2, LIMIT).await;
    until("the second row deleted", LIMIT, async || {
        rows(&pool, outbox.table()).await == 0
    })
    .await;
    relay.stop().await;
    let got = rabbit.take_all(queue).await;
    let ids: Vec<&str> = got.iter().filter_map(|got| got.id.as_deref()).collect();
    assert_eq!(
        ids,
        [first.as_str(), notified.as_str()],
        "each once, in order"
    );
    assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), [2, 3]);
    assert!(![first.to_string(), notified].contains(&rolled_back.to_string()));
    let stats = outbox.stats(&pool).await.unwrap();
    assert_eq!((stats.depth, stats.oldest, stats.refused), (0, None, 0));
}

/// Sessions waiting for `table`'s watch lock (a relay turning idle).
async fn watch_waiters(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND objid = (hashtext('qjob-outbox-watch:' || $1) & 2147483647)::oid",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The notifications on `channel` committed before a marker sent now:
/// read up to the marker (notifications arrive in commit order).
async fn notifications_before_marker(
    listener: &mut sqlx::postgres::PgListener,
    pool: &sqlx::PgPool,
    channel: &str,
) -> usize {
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(channel)
        .execute(pool)
        .await
        .unwrap();
    let mut before = 0;
    loop {
        let notification = tokio::time::timeout(LIMIT, listener.recv())
            .await
            .expect("the marker comes")
            .unwrap();
        if notification.payload() == "marker" {
            return before;
        }
        before += 1;
    }
}

#[tokio::test]
async fn a_row_written_while_the_relay_turns_idle_goes_out_without_a_notification() {
    let queue = "qjob.test.outbox.watch";
    let table = "qjob_test_outbox_watch";
    let (outbox, pool, rabbit) = setup(table, queue).await;
    let mut listener = sqlx::postgres::PgListener::connect(&qjob_tests::outbox::pg_url())
        .await
        .unwrap();
    listener.listen(table).await.unwrap();

    // No relay watches: the row is written without a notification, and
    // its transaction holds the watch lock shared until it ends.
    let mut tx = pool.begin().await.unwrap();
    let id = outbox
        .enqueue::<OutboxWatchJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    // A relay that only a notification would wake before an hour: its
    // first claim finds nothing (the row is not committed), and it turns
    // idle, waiting for the lock behind the open transaction.
    let relay = run(hourly(&outbox, &pool));
    until("the relay waits for the watch lock", LIMIT, async || {
        watch_waiters(&pool, table).await > 0
    })
    .await;
    tx.commit().await.unwrap();
    // Its last claim, once the lock is its, finds the row.
    rabbit.wait_ready(queue, 1, LIMIT).await;
    assert_eq!(
        notifications_before_marker(&mut listener, &pool, table).await,
        0,
        "the commit notified no one"
    );

    // Watching now: the next commit notifies, and wakes it.
    let notified = committed::<OutboxWatchJob>(&outbox, &pool, [2])
        .await
        .remove(0);
    rabbit.wait_ready(queue, 2, LIMIT).await;
    assert_eq!(
        notifications_before_marker(&mut listener, &pool, table).await,
        1
    );
    relay.stop().await;
    let ids: Vec<String> = rabbit.take_ids(queue).await;
    assert_eq!(ids, [id.to_string(), notified]);
}

/// The sessions holding (`granted`) or waiting for `table`'s watch lock.
async fn watch_lock(pool: &sqlx::PgPool, table: &str, granted: bool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted = $2 \
         AND objid = (hashtext('qjob-outbox-watch:' || $1) & 2147483647)::oid",
    )
    .bind(table)
    .bind(granted)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The database's clock, in seconds since the epoch.
async fn db_now(pool: &sqlx::PgPool) -> f64 {
    sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether a relay turned idle on `table` since `since` (the database's
/// clock) finding another relay watching: its wait for the watch lock
/// timed out, it asked who holds the lock, and its listener is idle since.
async fn covered_since(pool: &sqlx::PgPool, table: &str, since: f64) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE state = 'idle' \
         AND query LIKE 'SELECT EXISTS (SELECT 1 FROM pg_locks%' \
         AND strpos(query, 'qjob-outbox-watch:' || $1 || '''') > 0 \
         AND extract(epoch FROM state_change) > $2)",
    )
    .bind(table)
    .bind(since)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn with_one_relay_watching_another_turns_idle_and_rows_committed_meanwhile_go_out_once() {
    let queue = "qjob.test.outbox.covered";
    let table = "qjob_test_outbox_covered";
    let (outbox, pool, rabbit) = setup(table, queue).await;
    let watcher = watching(&outbox, &pool, table).await;

    // Written while the first relay watches: its commit will notify.
    let mut tx = pool.begin().await.unwrap();
    let mut ids = vec![
        outbox
            .enqueue::<OutboxCoveredJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
            .await
            .unwrap()
            .to_string(),
    ];
    // The second relay finds nothing (the row is not committed), and
    // turns idle: it waits for the lock behind the watching relay...
    let since = db_now(&pool).await;
    let other = run(hourly(&outbox, &pool));
    until(
        "the second relay waits for the watch lock",
        LIMIT,
        async || !watch_lock(&pool, table, false).await.is_empty(),
    )
    .await;
    // ...a row committed meanwhile...
    ids.extend(committed::<OutboxCoveredJob>(&outbox, &pool, [2]).await);
    // ...and, its wait timed out, finds the first relay watching.
    until("the second relay idle, covered", LIMIT, async || {
        covered_since(&pool, table, since).await
    })
    .await;
    tx.commit().await.unwrap();
    // Then commits from many producers at once: some rounds find more
    // than one row, and a relay stops watching while they do.
    let producers: Vec<_> = (3..=20)
        .map(|seq| {
            let (outbox, pool) = (outbox.clone(), pool.clone());
            tokio::spawn(async move {
                committed::<OutboxCoveredJob>(&outbox, &pool, [seq])
                    .await
                    .remove(0)
            })
        })
        .collect();
    for producer in producers {
        ids.push(producer.await.unwrap());
    }
    rabbit.wait_ready(queue, 20, LIMIT).await;
    until("every row deleted", LIMIT, async || {
        rows(&pool, table).await == 0
    })
    .await;
    until("a relay watches again", LIMIT, async || {
        watch_lock(&pool, table, true).await.len() == 1
    })
    .await;
    watcher.stop().await;
    other.stop().await;
    let mut got: Vec<String> = rabbit.take_ids(queue).await;
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every row once");
}

#[tokio::test]
async fn a_relay_that_stops_watching_for_good_wakes_the_relay_it_covered() {
    let queue = "qjob.test.outbox.leave";
    let table = "qjob_test_outbox_leave";
    let (outbox, pool, rabbit) = setup(table, queue).await;
    let watcher = watching(&outbox, &pool, table).await;
    let since = db_now(&pool).await;
    let other = run(hourly(&outbox, &pool));
    until("the second relay idle, covered", LIMIT, async || {
        covered_since(&pool, table, since).await
    })
    .await;

    // No relay watches once the first stops: commits would not notify,
    // and the second relay would wait for its poll.
    watcher.stop().await;
    let id = committed::<OutboxLeaveJob>(&outbox, &pool, [1])
        .await
        .remove(0);
    rabbit.wait_ready(queue, 1, LIMIT).await;
    until("the second relay watches", LIMIT, async || {
        watch_lock(&pool, table, true).await.len() == 1
    })
    .await;
    other.stop().await;
    let got: Vec<String> = rabbit.take_ids(queue).await;
    assert_eq!(got, [id]);
}

#[tokio::test]
async fn a_relay_whose_listener_is_lost_while_it_turns_idle_listens_and_watches_again_at_once() {
    let queue = "qjob.test.outbox.lost";
    let table = "qjob_test_outbox_lost";
    let (outbox, pool, rabbit) = setup(table, queue).await;
    // No relay watches: the row is written without a notification.
    let mut tx = pool.begin().await.unwrap();
    let first = outbox
        .enqueue::<OutboxLostJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap()
        .to_string();
    let relay = run(hourly(&outbox, &pool));
    let mut waiting = Vec::new();
    until("the relay waits for the watch lock", LIMIT, async || {
        waiting = watch_lock(&pool, table, false).await;
        !waiting.is_empty()
    })
    .await;
    // Its listener's connection ends while it waits (the lock with it).
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(waiting[0])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(terminated);
    tx.commit().await.unwrap();
    rabbit.wait_ready(queue, 1, LIMIT).await;
    // Listening on a new connection, and watching: commits wake it.
    until("the relay watches again", LIMIT, async || {
        watch_lock(&pool, table, true).await.len() == 1
    })
    .await;
    assert_ne!(watch_lock(&pool, table, true).await, waiting);
    let second = committed::<OutboxLostJob>(&outbox, &pool, [2])
        .await
        .remove(0);
    rabbit.wait_ready(queue, 2, LIMIT).await;
    relay.stop().await;
    let got: Vec<String> = rabbit.take_ids(queue).await;
    assert_eq!(got, [first, second]);
}

/// A table with the trigger of a qjob before the watch lock: every
/// commit notified.
#[tokio::test]
async fn migrate_upgrades_a_trigger_that_notified_every_commit() {
    let queue = "qjob.test.outbox.upgrade";
    let table = "qjob_test_outbox_upgrade";
    let (outbox, pool, rabbit) = setup(table, queue).await;
    sqlx::raw_sql(&format!(
        r#"CREATE OR REPLACE FUNCTION "{table}_notify"() RETURNS trigger
           LANGUAGE plpgsql AS $$
           BEGIN
               PERFORM pg_notify('{table}', '');
               RETURN NULL;
           END
           $$;"#
    ))
    .execute(&pool)
    .await
    .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(&qjob_tests::outbox::pg_url())
        .await
        .unwrap();
    listener.listen(table).await.unwrap();
    committed::<OutboxUpgradeJob>(&outbox, &pool, [1]).await;
    assert_eq!(
        notifications_before_marker(&mut listener, &pool, table).await,
        1,
        "the old trigger notifies with no relay watching"
    );

    outbox.migrate(&pool).await.unwrap();
    committed::<OutboxUpgradeJob>(&outbox, &pool, [2]).await;
    assert_eq!(
        notifications_before_marker(&mut listener, &pool, table).await,
        0,
        "no relay watches: no notification"
    );
    // A relay publishes both, and once it watches, a commit wakes it.
    let relay = run(hourly(&outbox, &pool));
    rabbit.wait_ready(queue, 2, LIMIT).await;
    until("the relay watches", LIMIT, async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND mode = 'ExclusiveLock' \
             AND objid = (hashtext('qjob-outbox-watch:' || $1) & 2147483647)::oid)",
        )
        .bind(table)
        .fetch_one(&pool)
        .await
        .unwrap()
    })
    .await;
    committed::<OutboxUpgradeJob>(&outbox, &pool, [3]).await;
    rabbit.wait_ready(queue, 3, LIMIT).await;
    relay.stop().await;
    let seqs: Vec<u32> = rabbit.take_all(queue).await.iter().map(seq_of).collect();
    assert_eq!(seqs, [1, 2, 3]);
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
    let id = committed::<OutboxPollJob>(&outbox, &pool, [1])
        .await
        .remove(0);
    rabbit.wait_ready(queue, 1, LIMIT).await;
    relay.stop().await;
    let got = rabbit.take_all(queue).await;
    assert_eq!(got[0].id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn a_delayed_job_waits_its_delay_counted_from_the_enqueue() {
    let queue = "qjob.test.outbox.delayed";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_delayed", queue).await;
    let delay = Duration::from_secs(2);
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
    rabbit.wait_ready(queue, 1, LIMIT).await;
    let waited = enqueued.elapsed();
    // Due at 2 s: a relay that waited the whole delay from its own start
    // would deliver it after 3 s.
    assert!(
        waited >= delay - Duration::from_millis(50) && waited < delay + Duration::from_millis(700),
        "due {delay:?} after the enqueue, came after {waited:?}"
    );
    assert_eq!(rows(&pool, outbox.table()).await, 0);
    let got = rabbit.take_all(queue).await;
    assert_eq!(got[0].id.as_deref(), Some(id.as_str()));

    // Jobs due at the same time arrive in the order written (one delay
    // queue, published in order).
    let due = std::time::SystemTime::now() + Duration::from_millis(500);
    let mut tx = pool.begin().await.unwrap();
    for seq in 0..50 {
        outbox
            .enqueue_at::<OutboxDelayedJob>(&mut tx, Task::new("outbox", seq, Act::Succeed), due)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    rabbit.wait_ready(queue, 50, LIMIT).await;
    relay.stop().await;
    let seqs: Vec<u32> = rabbit.take_all(queue).await.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_row_the_broker_refuses_waits_with_its_reason_and_goes_out_once_its_queue_exists() {
    let queue = "qjob.test.outbox.refused";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_refused", queue).await;
    // A relay of another process's outbox (the same table): it does not
    // know the job type, so it cannot declare its queue.
    let elsewhere = Outbox::new(Client::new(amqp().await))
        .with_table(outbox.table())
        .unwrap();
    let relay = run(elsewhere
        .relay(pool.clone())
        .poll_interval(Duration::from_millis(100)));
    // One job due at once, one delayed: published into its delay queue,
    // the delayed one would be dropped when due (its queue is missing).
    let mut tx = pool.begin().await.unwrap();
    let now = outbox
        .enqueue::<OutboxRefusedJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    let later = outbox
        .enqueue_in::<OutboxRefusedJob>(
            &mut tx,
            Task::new("outbox", 2, Act::Succeed),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    until("both rows refused", LIMIT, async || {
        outbox.stats(&pool).await.unwrap().refused == 2
    })
    .await;
    let refusals: Vec<(i32, String)> = sqlx::query_as(&format!(
        "SELECT attempts, last_error FROM {} ORDER BY seq",
        outbox.table()
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(refusals.iter().all(|(attempts, _)| *attempts >= 1));
    assert!(refusals[0].1.contains("unroutable"), "{}", refusals[0].1);
    assert!(
        refusals[1].1.contains("does not exist"),
        "{}",
        refusals[1].1
    );
    assert_eq!(outbox.stats(&pool).await.unwrap().depth, 2, "they wait");

    amqp()
        .await
        .declare_queue(&QueueSpec::new(queue))
        .await
        .unwrap();
    rabbit.wait_ready(queue, 2, LIMIT).await;
    until("the rows deleted", LIMIT, async || {
        rows(&pool, outbox.table()).await == 0
    })
    .await;
    relay.stop().await;
    let got = rabbit.take_all(queue).await;
    let ids: HashSet<&str> = got.iter().filter_map(|got| got.id.as_deref()).collect();
    assert_eq!(ids, HashSet::from([now.as_str(), later.as_str()]));
}

test_job!(outbox_mismatch, "qjob.test.outbox.mismatch");

test_job!(outbox_beside, "qjob.test.outbox.beside");

#[tokio::test]
async fn a_job_type_whose_queues_cannot_be_declared_holds_back_only_its_rows() {
    let (outbox, pool, rabbit) =
        setup("qjob_test_outbox_mismatch", "qjob.test.outbox.mismatch").await;
    rabbit.delete(&["qjob.test.outbox.beside"]).await;
    // Declared by someone else with other arguments.
    amqp()
        .await
        .declare_queue(&QueueSpec::new("qjob.test.outbox.mismatch").with_max_length(5))
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue::<OutboxMismatchJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    let beside = outbox
        .enqueue::<OutboxBesideJob>(&mut tx, Task::new("outbox", 2, Act::Succeed))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relay = run(outbox.relay(pool.clone()));
    rabbit.wait_ready("qjob.test.outbox.beside", 1, LIMIT).await;
    until("the other row refused", LIMIT, async || {
        outbox.stats(&pool).await.unwrap().refused == 1
    })
    .await;
    relay.stop().await;
    let error: String = sqlx::query_scalar(&format!("SELECT last_error FROM {}", outbox.table()))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(error.contains("qjob.test.outbox.mismatch"), "{error}");
    assert_eq!(rabbit.ready("qjob.test.outbox.mismatch").await, 0);
    let got = rabbit.take_all("qjob.test.outbox.beside").await;
    assert_eq!(got[0].id.as_deref(), Some(beside.as_str()));
    rabbit.delete(&["qjob.test.outbox.mismatch"]).await;
}

#[tokio::test]
async fn a_relay_stops_between_rounds_while_rows_remain() {
    let queue = "qjob.test.outbox.stop";
    let (outbox, pool, rabbit) = setup("qjob_test_outbox_stop", queue).await;
    committed::<OutboxStopJob>(&outbox, &pool, 0..2000).await;
    // One row a round: full batches, one after the other.
    let relay = run(outbox.relay(pool.clone()).batch_size(1));
    until("a few rows published", LIMIT, async || {
        rabbit.ready(queue).await >= 10
    })
    .await;
    relay.stop().await;
    let left = rows(&pool, outbox.table()).await;
    let published = rabbit.ready(queue).await;
    assert!(left > 0, "the relay ran until the table was empty");
    assert_eq!(
        i64::from(published) + left,
        2000,
        "every row published or waiting"
    );
}

test_job!(outbox_stop, "qjob.test.outbox.stop");

#[tokio::test]
async fn bad_input_is_a_clear_error_and_writes_nothing() {
    let pool = pg_pool().await;
    let outbox = Outbox::new(Client::new(amqp().await))
        .with_table("qjob_test_outbox_refusals")
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
    assert_eq!(rows(&pool, outbox.table()).await, 0);

    // A table named with a reserved word works (names are quoted).
    let reserved = Outbox::new(Client::new(amqp().await))
        .with_table("user")
        .unwrap();
    fresh(&pool, &reserved).await;
    let mut tx = pool.begin().await.unwrap();
    reserved
        .enqueue::<OutboxUniqueJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap_err();
    reserved
        .enqueue::<OutboxRefusedJob>(&mut tx, Task::new("outbox", 1, Act::Succeed))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(reserved.stats(&pool).await.unwrap().depth, 1);
    sqlx::raw_sql(r#"DROP TABLE "user"; DROP FUNCTION "user_notify"();"#)
        .execute(&pool)
        .await
        .unwrap();

    // A delay out of range is a clear error, before anything is written.
    let mut tx = pool.begin().await.unwrap();
    let far = outbox
        .enqueue_in::<OutboxRefusedJob>(
            &mut tx,
            Task::new("outbox", 1, Act::Succeed),
            Duration::MAX,
        )
        .await;
    assert!(matches!(far, Err(qjob::Error::Config(_))), "{far:?}");
    let far = outbox
        .enqueue_at::<OutboxRefusedJob>(
            &mut tx,
            Task::new("outbox", 1, Act::Succeed),
            std::time::UNIX_EPOCH + Duration::from_secs(400_000_000_000),
        )
        .await;
    assert!(matches!(far, Err(qjob::Error::Config(_))), "{far:?}");
    // The transaction is still good.
    tx.commit().await.unwrap();
    assert_eq!(rows(&pool, outbox.table()).await, 0);

    // A relay of a table that was never created fails at once.
    let missing = Outbox::new(Client::new(amqp().await))
        .with_table("qjob_test_outbox_missing")
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

/// A row keeps its job's priority, at once or delayed, and the relay
/// publishes the job with it. A table made before the column existed is
/// a clear error to a producer writing a priority and to the relay until
/// `migrate` adds it; a producer writing none writes to it.
#[tokio::test]
async fn a_row_keeps_its_priority_and_an_older_table_is_migrated_for_it() {
    let queue = "qjob.test.outbox.ranked";
    let (outbox, pool, _rabbit) = setup("qjob_test_outbox_ranked", queue).await;
    let table = outbox.table().to_owned();
    let task = |seq| Task::new("outbox", seq, Act::Succeed);
    let priority = |n| EnqueueOptions::new().priority(n);

    // As an older qjob made it.
    sqlx::raw_sql(&format!(r#"ALTER TABLE "{table}" DROP COLUMN priority"#))
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let old = outbox
        .enqueue_with::<OutboxRankedJob>(&mut tx, task(0), priority(7))
        .await
        .unwrap_err();
    assert!(
        matches!(old, qjob::Error::Database { .. }) && old.to_string().contains("Outbox::migrate"),
        "{old}"
    );
    tx.rollback().await.unwrap();
    // A job without a priority is written to it still: producers upgraded
    // before the migration ran keep working.
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue::<OutboxRankedJob>(&mut tx, task(0))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let relay = outbox.relay(pool.clone()).run_until(std::future::pending());
    let old = relay.await.unwrap_err();
    assert!(old.to_string().contains("Outbox::migrate"), "{old}");
    outbox.migrate(&pool).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let above = outbox
        .enqueue_with::<OutboxRankedJob>(&mut tx, task(0), priority(10))
        .await;
    assert!(matches!(above, Err(qjob::Error::Config(_))), "{above:?}");
    outbox
        .enqueue_with::<OutboxRankedJob>(&mut tx, task(1), priority(7))
        .await
        .unwrap();
    let later = priority(3).delay(Duration::from_millis(300));
    outbox
        .enqueue_with::<OutboxRankedJob>(&mut tx, task(2), later)
        .await
        .unwrap();
    outbox
        .enqueue::<OutboxRankedJob>(&mut tx, task(3))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let kept: Vec<Option<i16>> =
        sqlx::query_scalar(&format!(r#"SELECT priority FROM "{table}" ORDER BY seq"#))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(kept, [Some(7), Some(3), None]);

    let relay = run(outbox.relay(pool.clone()));
    let broker = amqp().await;
    until("the three jobs published", LIMIT, async || {
        broker
            .queue_stats(queue)
            .await
            .unwrap()
            .is_some_and(|stats| stats.messages == 3)
    })
    .await;
    relay.stop().await;
    // A priority queue: the highest first.
    let mut got = Vec::new();
    while let Some(delivery) = broker.get(queue).await.unwrap() {
        let seq = serde_json::from_slice::<Task>(&delivery.message.body)
            .unwrap()
            .seq;
        got.push((seq, delivery.message.priority));
        delivery.acker.ack().await.unwrap();
    }
    assert_eq!(got, [(1, Some(7)), (2, Some(3)), (3, None)]);
}

/// Whether a PostgreSQL backend waits on a lock to delete from `table`.
async fn delete_waits(pool: &sqlx::PgPool, table: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND query LIKE $1",
    )
    .bind(format!(r#"DELETE FROM "{table}" %"#))
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
    let ids = committed::<OutboxKillJob>(&outbox, &pool, 0..jobs).await;

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
        let seqs = chunk * 100..(chunk + 1) * 100;
        let ids = committed::<OutboxTwoJob>(&outbox, &pool, seqs.clone()).await;
        seq_of_id.extend(ids.into_iter().zip(seqs));
    }
    // Two relays, each with its own connection, recording what it publishes.
    let broker = amqp().await;
    let recorders = [Recording::new(broker.clone()), Recording::new(amqp().await)];
    let relays: Vec<Running> = recorders
        .iter()
        .map(|recorder| {
            let outbox = Outbox::new(Client::new(recorder.clone()))
                .with_table(outbox.table())
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
        rows(&pool, outbox.table()).await == 0
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
    committed::<OutboxMeteredJob>(&outbox, &pool, 0..3).await;
    // Its queue missing, and unknown to the relay: the rows are refused.
    let elsewhere = Outbox::new(Client::new(amqp().await))
        .with_table(outbox.table())
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

test_job!(outbox_outage, "qjob.test.outbox.outage");

/// The wait and the share of PostgreSQL's notification queue in use,
/// seen from the relay's listener connection (by its application name).
async fn listener_state(pool: &sqlx::PgPool, application: &str) -> (Option<String>, f64) {
    sqlx::query_as(
        "SELECT (SELECT wait_event FROM pg_stat_activity \
                 WHERE application_name = $1 AND query ILIKE 'LISTEN%' LIMIT 1), \
                pg_notification_queue_usage()",
    )
    .bind(application)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_relay_backing_off_from_a_broker_outage_keeps_reading_its_notifications() {
    let application = "qjob_test_outbox_outage";
    let options: sqlx::postgres::PgConnectOptions = qjob_tests::outbox::pg_url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.application_name(application))
        .await
        .unwrap();
    // The outage: every publish fails, so every round fails and the relay
    // backs off (up to 5 s a round).
    let broker = qjob_testkit::MemoryBroker::new();
    broker.block_publishes("the test's outage");
    let outbox = Outbox::new(Client::new(broker.clone()))
        .with_table(application)
        .unwrap();
    fresh(&pool, &outbox).await;
    committed::<OutboxOutageJob>(&outbox, &pool, [0]).await;
    let relay = run(hourly(&outbox, &pool));
    until("the relay listening", LIMIT, async || {
        listener_state(&pool, application).await.0.is_some()
    })
    .await;
    // Commits go on during the outage, each with its notification; and,
    // as many commits' worth, notifications of 8 kB (more than the
    // sockets between PostgreSQL and the relay hold).
    for seq in 1..=100 {
        committed::<OutboxOutageJob>(&outbox, &pool, [seq]).await;
    }
    let notifications = 6_000;
    for _ in 0..notifications / 100 {
        sqlx::query(
            "SELECT count(pg_notify($1, i || repeat('x', 7900))) FROM generate_series(1, 100) i",
        )
        .bind(outbox.table())
        .execute(&pool)
        .await
        .unwrap();
    }
    let (wait, pushed) = listener_state(&pool, application).await;
    // Read while the relay fails: the queue empties again, and the
    // listener's backend does not wait on the relay to read.
    let started = Instant::now();
    let (mut wait, mut usage) = (wait, pushed);
    while started.elapsed() < Duration::from_secs(10)
        && (wait.as_deref() == Some("ClientWrite") || usage > 0.0)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (wait, usage) = listener_state(&pool, application).await;
    }
    assert!(
        broker.ready_count(OutboxOutageJob::QUEUE) == 0 && rows(&pool, application).await == 101,
        "the outage held"
    );
    relay.stop().await;
    println!("notification queue usage: {pushed} right after, {usage} at the end");
    assert!(
        wait.as_deref() != Some("ClientWrite") && usage < 0.0005,
        "{notifications} notifications during the outage: the listener's backend waits on {wait:?}, \
         notification queue usage {usage} ({pushed} right after them)"
    );
}

test_job!(outbox_stalled, "qjob.test.outbox.stalled");

/// A TCP proxy to the test database that can stall one connection's
/// answers: the server's bytes stop reaching the client while the
/// connection stays open, as when a server stops answering.
struct Stalling {
    port: u16,
    /// Each connection's stall switch, by its port on the server's side.
    switches: Arc<Mutex<HashMap<u16, watch::Sender<bool>>>>,
}

impl Stalling {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let options = PgConnectOptions::from_str(&pg_url()).unwrap();
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let switches = Arc::new(Mutex::new(HashMap::new()));
        let registered = switches.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                let (switch, stalled) = watch::channel(false);
                let local = upstream.local_addr().unwrap().port();
                registered.lock().unwrap().insert(local, switch);
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = upstream.into_split();
                let (_, running) = watch::channel(false);
                tokio::spawn(pump(from_client, to_server, running.clone()));
                tokio::spawn(pump(from_server, to_client, stalled));
            }
        });
        Self { port, switches }
    }

    /// A pool whose connections go through the proxy.
    async fn pool(&self) -> sqlx::PgPool {
        let options = PgConnectOptions::from_str(&pg_url())
            .unwrap()
            .host("127.0.0.1")
            .port(self.port);
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap()
    }

    /// Stalls the answers of the session `pid` (read through `pool`).
    async fn stall(&self, pool: &sqlx::PgPool, pid: i32) {
        let port: i32 =
            sqlx::query_scalar("SELECT client_port FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_one(pool)
                .await
                .unwrap();
        let port = u16::try_from(port).unwrap();
        let switches = self.switches.lock().unwrap();
        let switch = switches.get(&port).expect("a session of the proxy");
        switch.send(true).unwrap();
    }
}

/// Copies `from` to `to`, holding what it read while `stalled`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                if stalled.wait_for(|stalled| !stalled).await.is_err()
                    || to.write_all(&buffer[..read]).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A relay whose listening connection stops answering as it leaves its
/// watch gives up on it within the bound (5 s), listens and watches on a
/// new one; stopped while it waits for such an answer, it stops within
/// the bound too.
#[tokio::test]
async fn a_relay_whose_listener_stops_answering_listens_again_and_stops_within_the_bound() {
    let queue = "qjob.test.outbox.stalled";
    let table = "qjob_test_outbox_stalled";
    let (outbox, pool, rabbit) = setup(table, queue).await;
    let proxy = Stalling::start().await;
    let proxied = proxy.pool().await;
    let relay = run(outbox
        .relay(proxied.clone())
        .poll_interval(Duration::from_millis(500)));
    until("the relay watches", LIMIT, async || {
        watch_lock(&pool, table, true).await.len() == 1
    })
    .await;
    let first = watch_lock(&pool, table, true).await;
    proxy.stall(&pool, first[0]).await;
    // Two rows at once: the poll's round claims both, and the relay leaves
    // its watch, on a listener that no longer answers.
    let mut ids = committed::<OutboxStalledJob>(&outbox, &pool, [1, 2]).await;
    rabbit.wait_ready(queue, 2, LIMIT).await;
    until("the relay watches on a new listener", LIMIT, async || {
        let holders = watch_lock(&pool, table, true).await;
        holders.len() == 1 && holders != first
    })
    .await;
    let second = watch_lock(&pool, table, true).await;

    // The same again, and the relay is told to stop while it waits for
    // the answer.
    proxy.stall(&pool, second[0]).await;
    ids.extend(committed::<OutboxStalledJob>(&outbox, &pool, [3, 4]).await);
    rabbit.wait_ready(queue, 4, LIMIT).await;
    until("every row deleted", LIMIT, async || {
        rows(&pool, table).await == 0
    })
    .await;
    let asked = Instant::now();
    let _ = relay.stop.send(());
    tokio::time::timeout(Duration::from_secs(8), relay.task)
        .await
        .expect("the relay stops within the listener's bound (5 s) and its leave (1 s)")
        .unwrap()
        .unwrap();
    println!("stopped after {:?}", asked.elapsed());
    let got: Vec<String> = rabbit.take_ids(queue).await;
    assert_eq!(got, ids);
}
