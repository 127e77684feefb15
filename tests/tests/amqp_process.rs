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

/// Starts a worker process carrying the per-second schedule of
/// `ScheduleTickJob`; it stops when its stdin closes.
fn schedule_worker() -> tokio::process::Child {
    tokio::process::Command::new(WORKER)
        .arg("schedule")
        .env("QJOB_TEST_HEARTBEAT_MS", "200")
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The pid of the live worker among `workers` that leads `schedule`.
fn leader_of(workers: &[qjob::admin::WorkerView], schedule: &str) -> Option<u32> {
    workers
        .iter()
        .find(|w| w.alive && w.status.schedules.get(schedule).is_some_and(|s| s.leader))
        .map(|w| w.status.pid)
}

/// Three processes carry a per-second schedule for 30 s and the leader is
/// SIGKILLed half-way: each tick is enqueued once, the next leader takes
/// over within seconds, and a tick missed meanwhile is fired late (the
/// latest one, the default policy) or not at all, never twice.
#[tokio::test]
async fn a_schedule_on_three_processes_fires_each_tick_once_across_a_leader_kill() {
    use qjob_tests::jobs::ScheduleTickJob;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let _serial = SERIAL.lock().await;
    let schedule = ScheduleTickJob::NAME;
    let lease_queue = format!("{}{schedule}", qjob::schedule::LEASE_QUEUE_PREFIX);
    let rabbit = Rabbit::connect().await;
    rabbit.delete(&[&lease_queue, ScheduleTickJob::QUEUE]).await;
    let admin = qjob::admin::Admin::connect(qjob_tests::amqp().await)
        .await
        .unwrap();
    let mut children: Vec<_> = (0..3).map(|_| schedule_worker()).collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id().unwrap()).collect();
    let started = tokio::time::Instant::now();
    let workers = eventually(
        "three processes, one leading",
        LIMIT,
        || workers_among(&admin, &pids),
        |w| w.len() == 3 && leader_of(w, schedule).is_some(),
    )
    .await;
    let first = leader_of(&workers, schedule).unwrap();

    // The schedule runs for 12 s; then its leader is killed half-way between
    // two ticks (a tick fires as its second starts, so the kill cannot fall
    // between a tick's job and its new lease: see docs/periodic.md).
    tokio::time::sleep_until(started + Duration::from_secs(12)).await;
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    let to_half = (1500 - u64::from(into_second)) % 1000;
    tokio::time::sleep(Duration::from_millis(to_half)).await;
    let index = pids.iter().position(|pid| *pid == first).unwrap();
    children[index].kill().await.unwrap();
    let killed_at = SystemTime::now();
    let workers = eventually(
        "another process leading",
        LIMIT,
        || workers_among(&admin, &pids),
        |w| leader_of(w, schedule).is_some_and(|pid| pid != first),
    )
    .await;
    let took_over = killed_at.elapsed().unwrap();
    assert!(took_over < Duration::from_secs(5), "took {took_over:?}");
    assert!(leader_of(&workers, schedule).is_some());

    tokio::time::sleep_until(started + Duration::from_secs(30)).await;
    for (i, child) in children.iter_mut().enumerate() {
        if i != index {
            drop(child.stdin.take());
            assert!(child.wait().await.unwrap().success());
        }
    }

    let ids: Vec<String> = rabbit
        .take_all(ScheduleTickJob::QUEUE)
        .await
        .into_iter()
        .map(|got| got.id.unwrap())
        .collect();
    let ticks: Vec<SystemTime> = ids
        .iter()
        .map(|id| {
            let at = id.strip_prefix(&format!("{schedule}@")).unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
            UNIX_EPOCH + Duration::from_millis(at.timestamp_millis() as u64)
        })
        .collect();
    let mut sorted = ticks.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ticks.len(), "a tick enqueued twice: {ids:?}");
    assert_eq!(sorted, ticks, "ticks enqueued in order: {ids:?}");
    assert!(ticks.len() >= 25, "{} ticks in 30 s: {ids:?}", ticks.len());
    // Every second has its tick, except those missed between the kill and
    // the takeover, the latest of which fires late.
    let missed_from = killed_at - Duration::from_secs(1);
    let missed_until = killed_at + took_over;
    for pair in ticks.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(
            gap == Duration::from_secs(1)
                || (pair[0] >= missed_from && pair[1] <= missed_until + Duration::from_secs(1)),
            "a gap of {gap:?} after {:?} (killed at {killed_at:?}, {took_over:?} to take over): {ids:?}",
            pair[0]
        );
    }
    assert!(ticks.first().unwrap() < &killed_at && ticks.last().unwrap() > &killed_at);
}

/// Starts a worker process for the batch test; it stops when its stdin
/// closes.
fn batch_worker(prefix: &str) -> tokio::process::Child {
    tokio::process::Command::new(WORKER)
        .arg("batch")
        .env("QJOB_TEST_REDIS_PREFIX", prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The `callback …` lines a worker process printed, until its stdout
/// closed or `enough` lines came.
async fn callbacks(child: &mut tokio::process::Child, enough: usize) -> Vec<String> {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < enough {
        match tokio::time::timeout(LIMIT, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with("callback ") => seen.push(line),
            Ok(Ok(Some(_))) => {}
            Ok(_) => break,
            Err(_) => panic!("no callback within {LIMIT:?}"),
        }
    }
    seen
}

/// 1 000 members, 5 % dead-lettered, counted in Redis; the worker is
/// SIGKILLed with the batch part done and another takes over: the callback
/// runs once, with the right counts, and each member is counted once.
#[tokio::test]
async fn a_batch_completes_once_across_a_killed_worker() {
    use qjob_tests::jobs::{BatchDoneJob, BatchPart, BatchPartJob};
    let _serial = SERIAL.lock().await;
    let rabbit = Rabbit::connect().await;
    rabbit
        .delete(&[
            BatchPartJob::QUEUE,
            &BatchPartJob::options().dead_letter_queue(),
            BatchDoneJob::QUEUE,
            &BatchDoneJob::options().dead_letter_queue(),
        ])
        .await;
    let prefix = format!("qjob-test:{}:", uuid::Uuid::now_v7().simple());
    let url = std::env::var("QJOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let store = qjob::store::RedisStore::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("this test needs Redis ({url}): {error}"))
        .with_prefix(prefix.clone());
    let client = qjob::Client::new(qjob_tests::amqp().await).with_store(store);
    let batch = client
        .batch()
        .on_complete::<BatchDoneJob>()
        .open()
        .await
        .unwrap();
    let parts = (0..1000).map(|n| BatchPart {
        n,
        fail: n % 20 == 7,
    });
    let results = batch.enqueue_all::<BatchPartJob>(parts).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    batch.close().await.unwrap();

    let mut first = batch_worker(&prefix);
    let finished = || async {
        let progress = client.batch_progress(batch.id()).await.unwrap().unwrap();
        progress.succeeded + progress.failed
    };
    qjob_tests::until("a part of the batch done", LIMIT, async || {
        finished().await >= 300
    })
    .await;
    first.kill().await.unwrap();
    let done_at_kill = finished().await;
    assert!(done_at_kill < 1000, "killed after the batch was done");

    let mut second = batch_worker(&prefix);
    let seen = callbacks(&mut second, 1).await;
    let expected = format!("callback {} 1000 950 50", batch.id());
    assert_eq!(seen, [expected]);
    drop(second.stdin.take());
    assert!(second.wait().await.unwrap().success());
    // The killed worker never ran it (it died before the batch was done),
    // and the survivor ran it once.
    assert!(callbacks(&mut first, 1).await.is_empty());
    let progress = client.batch_progress(batch.id()).await.unwrap().unwrap();
    assert_eq!(
        (
            progress.total,
            progress.pending,
            progress.succeeded,
            progress.failed
        ),
        (1000, 0, 950, 50)
    );
    assert!(progress.callback_enqueued);
    assert_eq!(queue_messages(BatchPartJob::QUEUE), 0);
    // A failing member dead-lettered by the killed worker but not acked
    // runs again and leaves a second letter (at-least-once): 50 members,
    // perhaps a letter more, counted once in the batch all the same.
    let letters = rabbit
        .take_all(&BatchPartJob::options().dead_letter_queue())
        .await;
    let ids: std::collections::BTreeSet<String> =
        letters.iter().filter_map(|got| got.id.clone()).collect();
    assert_eq!(ids.len(), 50, "{} letters", letters.len());
    assert_eq!(queue_messages(BatchDoneJob::QUEUE), 0);
}
