//! Tests that run a worker in a child process and kill it. They run in their
//! own binary, one at a time, so that no other test shares their queue.

use std::process::Stdio;
use std::sync::atomic::Ordering;

use qjob::Job;
use qjob_tests::scenarios::{Env, LIMIT};
use qjob_tests::{
    Act, Rabbit, Task, consumer_prefetch, eventually, probe, queue_messages, test_job,
};
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

#[tokio::test]
async fn partitioned_order_holds_when_the_active_worker_is_killed() {
    use qjob_tests::jobs::OrderedKillJob;
    use qjob_tests::{ANNOUNCE, consumer_activity};
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    let queues: Vec<String> = (0..=4)
        .map(|i| format!("{}.p{i}", OrderedKillJob::QUEUE))
        .chain([OrderedKillJob::options().dead_letter_queue()])
        .collect();
    env.delete_queues(&queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let prefix = format!("{}.p", OrderedKillJob::QUEUE);

    // The child subscribes first, so it is the active consumer everywhere;
    // this process's worker is the standby.
    let mut child = tokio::process::Command::new(WORKER)
        .arg("ordered")
        .env(ANNOUNCE, "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        "the child's consumers",
        LIMIT,
        || consumer_activity(&prefix),
        |c| c.len() == 4,
    )
    .await;
    let standby = env.start(OrderedKillJob);
    eventually(
        "the standby consumers",
        LIMIT,
        || consumer_activity(&prefix),
        |c| c.len() == 8,
    )
    .await;

    let tag = env.tag::<OrderedKillJob>();
    let (keys, per_key) = (12u32, 40u32);
    let tasks = (0..per_key).flat_map(|n| {
        let tag = tag.clone();
        (0..keys).map(move |k| {
            let work = Act::Work {
                sleep_ms: u64::from(2 + (n * 7 + k * 3) % 4),
                fail_first: (n + k) % 9 == 4,
            };
            Task::keyed(&tag, &format!("customer-{k}"), k * 1000 + n, work)
        })
    });
    let results = env
        .client()
        .enqueue_all::<OrderedKillJob>(tasks)
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));

    // Let the child finish some, then SIGKILL it mid-run.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut child_done = Vec::new();
    while child_done.len() < 150 {
        let line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("the child makes progress")
            .unwrap()
            .expect("the child is running");
        child_done.push(line.strip_prefix("done ").unwrap().parse::<u32>().unwrap());
    }
    child.kill().await.unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        child_done.push(line.strip_prefix("done ").unwrap().parse::<u32>().unwrap());
    }

    let probe = probe(&tag);
    let total = keys * per_key;
    probe
        .wait("the standby to finish the rest", LIMIT, |p| {
            let mut all: Vec<u32> = p.done.lock().unwrap().clone();
            all.extend(&child_done);
            all.sort();
            all.dedup();
            all.len() == total as usize
        })
        .await;
    standby.stop().await.unwrap();
    let parent_done = probe.done.lock().unwrap().clone();
    assert!(!parent_done.is_empty() && child_done.len() < total as usize);
    for k in 0..keys {
        // What the child finished, then what the standby finished: in order,
        // the only repeat being a job finished but not acked at the kill.
        let of_key = |done: &[u32]| -> Vec<u32> {
            done.iter()
                .filter(|s| *s / 1000 == k)
                .map(|s| s % 1000)
                .collect()
        };
        let mut merged = of_key(&child_done);
        merged.extend(of_key(&parent_done));
        assert!(
            merged.windows(2).all(|w| w[0] <= w[1]),
            "key {k} out of order: {merged:?}"
        );
        let repeats = merged.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(repeats <= 1, "key {k}: {merged:?}");
        merged.dedup();
        assert_eq!(
            merged,
            (0..per_key).collect::<Vec<_>>(),
            "key {k} lost jobs"
        );
    }
    assert_eq!(
        env.ready(&OrderedKillJob::options().dead_letter_queue())
            .await,
        0
    );
}

/// A job that kills its worker every time (a poison message) is redelivered
/// to the next worker only up to the queue's delivery limit, then RabbitMQ
/// moves it to the DLQ, where it reads as `delivery-limit`; the job behind
/// it runs.
#[tokio::test]
async fn a_job_that_kills_its_worker_stops_at_the_delivery_limit() {
    use qjob_tests::jobs::{POISON_EXIT, PoisonJob};
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    env.reset::<PoisonJob>().await;
    let tag = env.tag::<PoisonJob>();
    let client = env.client();
    for seq in [0, 1] {
        client
            .enqueue::<PoisonJob>(Task::new(&tag, seq, Act::Succeed))
            .await
            .unwrap();
    }
    let mut crashes = 0;
    'workers: for _ in 0..6 {
        let mut child = tokio::process::Command::new(WORKER)
            .arg("poison")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = tokio::time::timeout(LIMIT, lines.next_line())
                .await
                .expect("the child reports")
                .unwrap();
            match line.as_deref() {
                Some("started 0") => {
                    let status = tokio::time::timeout(LIMIT, child.wait())
                        .await
                        .expect("the child exits")
                        .unwrap();
                    assert_eq!(status.code(), Some(POISON_EXIT));
                    crashes += 1;
                    continue 'workers;
                }
                Some("done 1") => {
                    // Acked: the queue is empty, nothing unsettled.
                    eventually(
                        "the last job acked",
                        LIMIT,
                        || queue_messages(PoisonJob::QUEUE),
                        |n| *n == 0,
                    )
                    .await;
                    child.kill().await.unwrap();
                    break 'workers;
                }
                Some(_) => {}
                None => panic!("the child stopped without running a job"),
            }
        }
    }
    // The first delivery, then one per return up to the limit of 2.
    assert_eq!(crashes, 3);
    let dead = client.dead_letters::<PoisonJob>().peek(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "delivery-limit");
    assert_eq!(dead[0].payload.as_ref().map(|task| task.seq), Some(0));
    assert_eq!(queue_messages(PoisonJob::QUEUE), 0);
}

/// Starts a worker process running `ConsoleProcessJob` for the console
/// tests; it announces each job done, and stops when its stdin closes.
fn console_worker() -> tokio::process::Child {
    tokio::process::Command::new(WORKER)
        .arg("console")
        .env(qjob_tests::ANNOUNCE, "1")
        .env("QJOB_TEST_HEARTBEAT_MS", "200")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The workers the console sees among `pids`.
fn workers_among(admin: &qjob::admin::Admin, pids: &[u32]) -> Vec<qjob::admin::WorkerView> {
    admin
        .workers()
        .into_iter()
        .filter(|worker| pids.contains(&worker.status.pid))
        .collect()
}

#[tokio::test]
async fn the_console_sees_two_worker_processes_and_each_gone_once_stopped_or_killed() {
    use qjob::admin::{Admin, WorkerState};
    use qjob_tests::jobs::ConsoleProcessJob;
    let _serial = SERIAL.lock().await;
    let admin = Admin::connect(qjob_tests::amqp().await).await.unwrap();
    let mut stopped = console_worker();
    let mut killed = console_worker();
    let pids = [stopped.id().unwrap(), killed.id().unwrap()];
    let workers = eventually(
        "both processes' heartbeats",
        LIMIT,
        || workers_among(&admin, &pids),
        |w| w.len() == 2 && w.iter().all(|w| w.alive),
    )
    .await;
    for worker in &workers {
        assert_eq!(worker.status.jobs[0].job, ConsoleProcessJob::NAME);
        assert_eq!(worker.status.state, WorkerState::Running);
    }

    // A graceful stop says so: gone at once, as stopped.
    drop(stopped.stdin.take());
    assert!(stopped.wait().await.unwrap().success());
    let workers = eventually(
        "the stopped process gone",
        LIMIT,
        || workers_among(&admin, &pids),
        |w| w.iter().any(|w| w.status.pid == pids[0] && !w.alive),
    )
    .await;
    let gone = workers.iter().find(|w| w.status.pid == pids[0]).unwrap();
    assert_eq!(gone.status.state, WorkerState::Stopped);
    assert!(workers.iter().any(|w| w.status.pid == pids[1] && w.alive));

    // A killed one goes silent: gone after three missed heartbeats.
    killed.kill().await.unwrap();
    let workers = eventually(
        "the killed process gone",
        LIMIT,
        || workers_among(&admin, &pids),
        |w| w.iter().all(|w| !w.alive),
    )
    .await;
    let gone = workers.iter().find(|w| w.status.pid == pids[1]).unwrap();
    assert_eq!(
        gone.status.state,
        WorkerState::Running,
        "it never said goodbye"
    );
    assert!(gone.silent_for >= gone.status.interval * qjob::admin::MISSED_HEARTBEATS);
}

#[tokio::test]
async fn pause_and_resume_across_two_worker_processes_lose_and_reject_nothing() {
    use qjob::admin::Admin;
    use qjob_tests::jobs::ConsoleProcessJob;
    let _serial = SERIAL.lock().await;
    let env = Env::amqp().await;
    env.reset::<ConsoleProcessJob>().await;
    let rabbit = Rabbit::connect().await;
    let queue = ConsoleProcessJob::QUEUE;
    let admin = Admin::connect(env.broker())
        .await
        .unwrap()
        .with_reply_window(LIMIT);
    let mut children = [console_worker(), console_worker()];
    let pids: Vec<u32> = children.iter().map(|c| c.id().unwrap()).collect();
    eventually(
        "both processes' heartbeats",
        LIMIT,
        || workers_among(&admin, &pids),
        |w| w.len() == 2 && w.iter().all(|w| w.alive),
    )
    .await;
    // Every `done <seq>` line of both children.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    for child in &mut children {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(seq) = line.strip_prefix("done ") {
                    let _ = done_tx.send(seq.parse().unwrap());
                }
            }
        });
    }
    let jobs = 200u32;
    let tag = env.tag::<ConsoleProcessJob>();
    env.client()
        .enqueue_all::<ConsoleProcessJob>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Sleep(10))))
        .await
        .unwrap();
    let mut done = Vec::new();
    while done.len() < 20 {
        done.push(
            tokio::time::timeout(LIMIT, done_rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }

    let replies = admin.pause(ConsoleProcessJob::NAME).await.unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    qjob_tests::until("no consumer on the queue", LIMIT, async || {
        rabbit.consumers(queue).await == 0
    })
    .await;
    // Both paused, nothing running: what is not done is back in the queue.
    qjob_tests::console::wait_job::<ConsoleProcessJob>(&admin, "both paused, idle", |view| {
        view.paused_on == 2 && view.in_flight == 0
    })
    .await;
    while let Ok(seq) = done_rx.try_recv() {
        done.push(seq);
    }
    let paused_at = done.len() as u32;
    assert!(paused_at < jobs, "paused before the end");
    rabbit.wait_ready(queue, jobs - paused_at, LIMIT).await;
    assert_eq!(rabbit.consumers(queue).await, 0);

    let replies = admin.resume(ConsoleProcessJob::NAME).await.unwrap();
    assert_eq!(
        replies.iter().filter(|reply| reply.ok).count(),
        2,
        "{replies:?}"
    );
    while done.len() < jobs as usize {
        done.push(
            tokio::time::timeout(LIMIT, done_rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    done.sort();
    assert_eq!(
        done,
        (0..jobs).collect::<Vec<_>>(),
        "each job done once, by one process"
    );
    assert_eq!(rabbit.ready(queue).await, 0);
    assert_eq!(
        rabbit
            .ready(&ConsoleProcessJob::options().dead_letter_queue())
            .await,
        0
    );
    for child in &mut children {
        drop(child.stdin.take());
        assert!(child.wait().await.unwrap().success());
    }
    assert!(done_rx.try_recv().is_err(), "nothing ran twice");
}
