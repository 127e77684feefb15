//! Closing every connection on the broker in the middle of a run. This test
//! has its own binary so that it breaks no other test's connection.

use std::sync::atomic::Ordering;

use qjob_tests::scenarios::{Env, LIMIT};
use qjob_tests::{Act, Task, probe, rabbitmqctl_ok, test_job};

test_job!(
    connection_loss,
    "qjob.test.connection-loss",
    prefetch = 20,
    concurrency = 8
);

test_job!(
    dead_channel,
    "qjob.test.dead-channel",
    prefetch = 40,
    concurrency = 20
);

/// The tests of this binary close every connection: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until each of `jobs` jobs succeeded at least once.
async fn wait_every_job(probe: &qjob_tests::Probe, jobs: u32) {
    probe
        .wait("every job", LIMIT, |p| {
            let mut done = p.done.lock().unwrap().clone();
            done.sort();
            done.dedup();
            done.len() == jobs as usize
        })
        .await;
}

fn close_all_connections() {
    rabbitmqctl_ok(&["close_all_connections", "qjob connection-loss test"]);
}

#[tokio::test]
async fn the_worker_and_the_client_reconnect_after_the_broker_closes_their_connection() {
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    env.reset::<ConnectionLossJob>().await;
    let tag = env.tag::<ConnectionLossJob>();
    let jobs = 400;
    let client = env.client();
    let first = client
        .enqueue_all::<ConnectionLossJob>(
            (0..jobs / 2).map(|seq| Task::new(&tag, seq, Act::Sleep(5))),
        )
        .await
        .unwrap();
    assert!(first.iter().all(Result::is_ok));
    let running = env.start(ConnectionLossJob);
    let probe = probe(&tag);
    probe
        .wait("a first batch of jobs", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 40
        })
        .await;

    close_all_connections();

    // A publish racing the close fails with an error the caller can act
    // on; the next one reconnects. Callers retry, as this loop does.
    let mut failures = 0;
    for seq in jobs / 2..jobs {
        let task = || Task::new(&tag, seq, Act::Sleep(5));
        if let Err(error) = client.enqueue::<ConnectionLossJob>(task()).await {
            failures += 1;
            assert!(
                matches!(
                    error,
                    qjob::Error::Broker { .. } | qjob::Error::Connect { .. }
                ),
                "{error:?}"
            );
            client.enqueue::<ConnectionLossJob>(task()).await.unwrap();
        }
    }
    assert!(
        failures <= 1,
        "only a publish racing the close fails; {failures} did"
    );
    // The worker resubscribes on a new connection and finishes every job;
    // those in flight at the close run again (at-least-once).
    wait_every_job(&probe, jobs).await;
    running.stop().await.unwrap();
    let done = probe.done.lock().unwrap().clone();
    let repeats = done.len() - jobs as usize;
    println!(
        "{jobs} jobs: all succeeded, {repeats} run again after the connections closed, {failures} enqueue failed during the close and was retried"
    );
    assert!(
        repeats <= 20 + 8,
        "only unacked jobs run again, {repeats} did"
    );
    let fresh = Env::amqp().await;
    assert_eq!(fresh.ready("qjob.test.connection-loss").await, 0);
    assert_eq!(fresh.ready("qjob.test.connection-loss.dlq").await, 0);
}

/// Jobs of 1 s, prefetch 40, concurrency 20, the connection closed
/// mid-run: the 40 deliveries held at the close all come back. Those
/// buffered and not started are not started on the closed channel (they
/// could never be acked); those running finish, and their redeliveries are
/// settled with the outcome the worker remembers instead of running again.
/// A job whose ack was lost with the connection is acked again when it
/// comes back, without running: 0 ran twice here on RabbitMQ 3.10 and 4.0.
/// On 4.0, which stops reading a connection it closes before the client
/// learns of it, 20 to 39 ran twice before the worker remembered the jobs
/// it settled lately; before anything, every held delivery ran twice: 40.
#[tokio::test]
async fn jobs_buffered_on_a_closed_channel_are_not_started() {
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    env.reset::<DeadChannelJob>().await;
    let tag = env.tag::<DeadChannelJob>();
    let jobs = 200u32;
    let results = env
        .client()
        .enqueue_all::<DeadChannelJob>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Sleep(1000))))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let running = env.start(DeadChannelJob);
    let probe = probe(&tag);
    probe
        .wait("a first batch of jobs", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 60
        })
        .await;
    close_all_connections();
    wait_every_job(&probe, jobs).await;
    running.stop().await.unwrap();
    let started = probe.attempts.load(Ordering::SeqCst);
    let repeats = started - jobs;
    println!("{jobs} jobs: {repeats} started again after the connection closed");
    // A loaded machine loses more acks with the connection; never all 40.
    assert!(
        repeats <= 20 + 10,
        "only the jobs running at the close run again; {repeats} did"
    );
}
