//! Tests that run a worker in a child process and kill it. They run in their
//! own binary, one at a time, so that no other test shares their queue.

use std::process::Stdio;
use std::sync::atomic::Ordering;

use qjob::Job;
use qjob_tests::scenarios::{Env, LIMIT};
use qjob_tests::{Act, Rabbit, Task, consumer_prefetch, eventually, probe, test_job};
use tokio::io::{AsyncBufReadExt, BufReader};

// The same queue as the child's job, handled here by `run_task`.
test_job!(process_kill, "qjob.test.process.kill");

const WORKER: &str = env!("CARGO_BIN_EXE_qjob-test-worker");
const PREFETCH_VAR: &str = "QJOB_QJOB_TEST_PROCESS_KILL_PREFETCH";
const CONCURRENCY_VAR: &str = "QJOB_QJOB_TEST_PROCESS_KILL_CONCURRENCY";

/// The tests here share the child's queue: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn killing_a_worker_mid_handler_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let rabbit = Rabbit::connect().await;
    let queue = ProcessKillJob::QUEUE;
    let env = Env::amqp().await;
    env.reset::<ProcessKillJob>().await;
    let tag = env.tag::<ProcessKillJob>();
    let jobs = 10;
    let ids = env
        .client()
        .enqueue_all::<ProcessKillJob>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Succeed)))
        .await
        .unwrap();
    assert!(ids.iter().all(Result::is_ok));

    // The environment overrides the attribute's prefetch 10 and concurrency 4.
    let mut child = tokio::process::Command::new(WORKER)
        .env(PREFETCH_VAR, "3")
        .env(CONCURRENCY_VAR, "2")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("the child starts its handlers")
            .unwrap()
            .expect("the child is running");
        assert!(line.starts_with("started "), "{line}");
    }
    assert_eq!(consumer_prefetch(queue), [3]);
    rabbit.wait_ready(queue, jobs - 3, LIMIT).await;

    child.kill().await.unwrap(); // SIGKILL, mid-handler
    rabbit.wait_ready(queue, jobs, LIMIT).await;

    let running = env.start(ProcessKillJob);
    let probe = probe(&tag);
    probe
        .wait("every job to run", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == jobs
        })
        .await;
    running.stop().await.unwrap();
    let mut done = probe.done.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, (0..jobs).collect::<Vec<_>>());
    assert_eq!(rabbit.ready(queue).await, 0);
    assert_eq!(
        rabbit
            .ready(&ProcessKillJob::options().dead_letter_queue())
            .await,
        0
    );
}

#[tokio::test]
async fn a_malformed_override_stops_the_worker_at_start_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let output = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new(WORKER)
            .env(PREFETCH_VAR, "lots")
            .output(),
    )
    .await
    .expect("the child exits at once")
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(PREFETCH_VAR), "{stderr}");
    assert!(stderr.contains("\"lots\""), "{stderr}");
    let prefetch = eventually(
        "no consumer left behind",
        LIMIT,
        || consumer_prefetch(ProcessKillJob::QUEUE),
        Vec::is_empty,
    )
    .await;
    assert!(prefetch.is_empty());
}
