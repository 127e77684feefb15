//! The `qjob` binary against RabbitMQ (`QJOB_AMQP_URL`, or 127.0.0.1:5672),
//! with workers running in this process: output and exit codes.

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use qjob::broker::{Broker, QueueSpec};
use qjob::{AmqpBroker, Client, Job, JobContext, JobError, Worker, job};
use serde_json::Value;

const QJOB: &str = env!("CARGO_BIN_EXE_qjob");
const LIMIT: Duration = Duration::from_secs(20);

fn url() -> String {
    std::env::var("QJOB_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

async fn broker() -> AmqpBroker {
    AmqpBroker::connect(url())
        .await
        .unwrap_or_else(|error| panic!("these tests need RabbitMQ ({}): {error}", url()))
}

/// Runs `qjob args…` and returns its output.
async fn qjob(args: &[&str]) -> Output {
    tokio::process::Command::new(QJOB)
        .args(args)
        .args(["--wait", "600"])
        .env("QJOB_AMQP_URL", url())
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", stdout(output)))
}

/// Starts a worker for `job`, heartbeat every 100 ms; stopped when the
/// returned sender drops.
fn start<J: Job>(broker: &AmqpBroker, job: J) -> tokio::sync::oneshot::Sender<()> {
    let worker = Worker::builder(broker.clone())
        .register(job)
        .heartbeat_interval(Duration::from_millis(100))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    stop
}

/// Deletes `J`'s queues left by earlier runs (and a partition past them).
async fn reset<J: Job>() {
    qjob_tests::scenarios::Env::amqp().await.reset::<J>().await;
}

/// Waits until `done` holds, failing the test after [`LIMIT`].
async fn wait_for(what: &str, done: impl AsyncFnMut() -> bool) {
    qjob_tests::until(what, LIMIT, done).await
}

/// Waits until `check` passes on `qjob args…`'s output.
async fn until(args: &[&str], check: impl Fn(&Output) -> bool) -> Output {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let output = qjob(args).await;
        if check(&output) {
            return output;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "qjob {args:?} never passed: {} {}",
            stdout(&output),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Work {
    n: u32,
    fail: bool,
}

static SUCCEEDED: AtomicU32 = AtomicU32::new(0);
static HEALED: AtomicBool = AtomicBool::new(false);

#[job(queue = "qjob.test.cli.status", prefetch = 4, concurrency = 3)]
async fn cli_status(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    let _ = work.n;
    Ok(())
}

#[job(queue = "qjob.test.cli.schedule", cron = "0 0 * * * *")]
async fn cli_schedule(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test]
async fn status_and_workers_show_a_running_worker() {
    let broker = broker().await;
    reset::<CliStatusJob>().await;
    let _running = start(&broker, CliStatusJob);
    let _scheduling = start(&broker, CliScheduleJob);
    let output = until(&["workers"], |o| stdout(o).contains("cli_status")).await;
    assert_eq!(code(&output), 0);
    let text = stdout(&output);
    assert!(text.starts_with("WORKER  "), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    assert!(text.contains("running"), "{text}");

    let output = qjob(&["status", "--json"]).await;
    assert_eq!(code(&output), 0);
    let status = json(&output);
    assert!(status["workers"]["alive"].as_u64().unwrap() >= 1);
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job"] == "cli_status")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(job["queue"], CliStatusJob::QUEUE);
    assert_eq!(job["concurrency"], 3);
    assert_eq!(job["paused_on"], 0);

    // The schedule, with this process as its leader (once it leads).
    let leads = |o: &Output| {
        let status = json(o);
        status["schedules"].as_array().is_some_and(|schedules| {
            schedules.iter().any(|s| {
                s["name"] == "cli_schedule"
                    && s["leader"]["pid"] == std::process::id()
                    && s["cron"] == "0 0 * * * *"
                    && s["next_ms"].as_u64().is_some()
            })
        })
    };
    until(&["status", "--json"], leads).await;
    let output = qjob(&["status"]).await;
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|line| line.starts_with("cli_schedule ") && line.contains("0 0 * * * *"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("UTC"), "{line}");
    assert!(
        line.contains(&format!("(pid {})", std::process::id())),
        "{line}"
    );

    let output = qjob(&["queues"]).await;
    assert_eq!(code(&output), 0);
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|line| line.starts_with("qjob.test.cli.status "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" work "), "{line}");
}

#[job(queue = "qjob.test.cli.refused", cron = "0 0 * * * *")]
async fn cli_refused(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// A schedule refused on a worker (its lease queue has no single active
/// consumer) shows its problem in `qjob status`, as text and JSON.
#[tokio::test]
async fn status_shows_a_schedule_refused_with_its_problem() {
    let broker = broker().await;
    reset::<CliRefusedJob>().await;
    let lease_queue = format!("{}cli_refused", qjob::schedule::LEASE_QUEUE_PREFIX);
    let rabbit = qjob_tests::Rabbit::connect().await;
    rabbit.delete(&[&lease_queue]).await;
    broker
        .declare_queue(&QueueSpec::new(&lease_queue))
        .await
        .unwrap();
    let _running = start(&broker, CliRefusedJob);
    let refused = |o: &Output| {
        json(o)["schedules"].as_array().is_some_and(|schedules| {
            schedules.iter().any(|s| {
                s["name"] == "cli_refused"
                    && s["leader"].is_null()
                    && s["problem"]
                        .as_str()
                        .is_some_and(|p| p.contains("without a single active consumer"))
            })
        })
    };
    until(&["status", "--json"], refused).await;
    let text = stdout(&qjob(&["status"]).await);
    assert!(
        text.lines()
            .any(|line| line.starts_with("problem: schedule cli_refused: ")
                && line.contains("without a single active consumer")),
        "{text}"
    );
    rabbit.delete(&[&lease_queue]).await;
}

#[job(queue = "qjob.test.cli.letters", retry = 0)]
async fn cli_dlq(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    if work.fail && !HEALED.load(Ordering::SeqCst) {
        return Err(JobError::msg(format!("job {} is broken", work.n)));
    }
    SUCCEEDED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_discarded_and_purged() {
    let broker = broker().await;
    reset::<CliDlqJob>().await;
    let _running = start(&broker, CliDlqJob);
    let client = Client::new(broker.clone());
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            client
                .enqueue::<CliDlqJob>(Work { n, fail: true })
                .await
                .unwrap()
                .to_string(),
        );
    }
    let dlq = CliDlqJob::options().dead_letter_queue();
    let output = until(&["dlq", "list", CliDlqJob::QUEUE, "--json"], |o| {
        json(o)["letters"].as_array().is_some_and(|l| l.len() == 3)
    })
    .await;
    assert_eq!(json(&output)["queue"], dlq.as_str());
    // Named as the code names it, by its type: the same queue.
    let by_type = qjob(&["dlq", "list", "CliDlqJob", "--json"]).await;
    assert_eq!(
        json(&by_type)["queue"],
        dlq.as_str(),
        "{}",
        stdout(&by_type)
    );
    let letters = json(&output);
    let mut listed: Vec<&str> = letters["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|letter| letter["job_id"].as_str().unwrap())
        .collect();
    // The three failed at once: their letters come in any order.
    listed.sort_unstable();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(listed, sorted);

    let output = qjob(&["dlq", "show", &dlq, &ids[1]]).await;
    assert_eq!(code(&output), 0);
    assert!(
        stdout(&output).contains("error:     job 1 is broken"),
        "{}",
        stdout(&output)
    );
    // Times read in RFC 3339 and how long ago, beside the numbers (x-death's
    // are read the same: a unit test of `dlq.rs`).
    let shown = stdout(&output);
    let failed_at = shown
        .lines()
        .find(|line| line.starts_with("  qjob-failed-at: "))
        .unwrap_or_else(|| panic!("{shown}"));
    // `qjob-failed-at: 1796614462500 (2026-12-07T03:34:22.500Z, 0s ago)`
    let reading = failed_at
        .split_once(" (")
        .and_then(|(_, reading)| reading.strip_suffix(" ago)"))
        .unwrap_or_else(|| panic!("{failed_at}"));
    let (utc, _ago) = reading
        .split_once(", ")
        .unwrap_or_else(|| panic!("{failed_at}"));
    assert!(
        utc.len() == 24 && utc.as_bytes()[10] == b'T' && utc.ends_with('Z'),
        "{failed_at}"
    );
    // --json keeps the numbers.
    let output = qjob(&["dlq", "show", &dlq, &ids[1], "--json"]).await;
    assert!(
        json(&output)["failed_at_ms"].is_u64(),
        "{}",
        stdout(&output)
    );
    // The start of an id finds its letter when no other id starts so; one
    // that several share is refused, with the ids.
    let common = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let unique = 1 + common(&ids[1], &ids[0]).max(common(&ids[1], &ids[2]));
    let output = qjob(&["dlq", "show", &dlq, &ids[1][..unique]]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains(&format!("job id:    {}", ids[1])),
        "{}",
        stdout(&output)
    );
    let shared = common(&ids[0], &ids[1])
        .min(common(&ids[1], &ids[2]))
        .min(common(&ids[0], &ids[2]));
    let output = qjob(&["dlq", "show", &dlq, &ids[1][..shared]]).await;
    assert_eq!(
        code(&output),
        2,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("give more of the id"));
    let output = qjob(&["dlq", "show", &dlq, "no-such-job"]).await;
    assert_eq!(code(&output), 3, "not found");

    // Acting on a letter takes the start of its id only when marked so.
    let start0 = 1 + common(&ids[0], &ids[1]).max(common(&ids[0], &ids[2]));
    let output = qjob(&["dlq", "discard", "cli_dlq", &ids[0][..start0]]).await;
    assert_eq!(code(&output), 3, "not found");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("…"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let marked = format!("{}…", &ids[0][..start0]);
    let output = qjob(&["dlq", "discard", "cli_dlq", &marked]).await;
    assert_eq!(
        (code(&output), stdout(&output).trim()),
        (0, format!("discarded {} from {dlq}", ids[0]).as_str())
    );
    assert_eq!(
        code(&qjob(&["dlq", "discard", &dlq, &ids[0]]).await),
        3,
        "gone already"
    );

    HEALED.store(true, Ordering::SeqCst);
    let output = qjob(&["dlq", "replay", &dlq, &ids[1]]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for("the replayed job runs", async || {
        SUCCEEDED.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        code(&qjob(&["dlq", "replay", &dlq]).await),
        2,
        "which ones?"
    );
    let both = qjob(&["dlq", "replay", &dlq, &ids[2], "--reason", "permanent"]).await;
    assert_eq!(code(&both), 2, "one letter, or a filter");
    let output = qjob(&["dlq", "purge", &dlq]).await;
    assert_eq!(code(&output), 2, "purging asks for --yes");
    let output = qjob(&["dlq", "purge", &dlq, "--yes", "--json"]).await;
    assert_eq!(
        (code(&output), json(&output)["purged"].as_u64()),
        (0, Some(1))
    );
    assert_eq!(broker.queue_stats(&dlq).await.unwrap().unwrap().messages, 0);
    assert_eq!(
        code(&qjob(&["dlq", "list", "qjob.test.cli.nothing-here"]).await),
        3
    );
}

#[job(queue = "qjob.test.cli.control", prefetch = 2, concurrency = 1)]
async fn cli_control(work: Work, ctx: JobContext) -> Result<(), JobError> {
    let _ = work.n;
    ctx.cancelled().await;
    Err(JobError::msg("stopped"))
}

#[tokio::test]
async fn pause_resume_concurrency_and_cancel_reach_the_workers() {
    let broker = broker().await;
    reset::<CliControlJob>().await;
    let _running = start(&broker, CliControlJob);
    until(&["workers"], |o| stdout(o).contains("cli_control")).await;
    let queue = CliControlJob::QUEUE;

    let output = qjob(&["pause", "cli_control"]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains("ok: cli_control paused"),
        "{}",
        stdout(&output)
    );
    wait_for("the consumer is cancelled", async || {
        broker.queue_stats(queue).await.unwrap().unwrap().consumers == 0
    })
    .await;
    let output = qjob(&["resume", queue, "--json"]).await;
    assert_eq!(code(&output), 0);
    assert_eq!(json(&output)["replies"][0]["ok"], true);
    // By its type's name, as the code names it: the worker answers too.
    let output = qjob(&["concurrency", "CliControlJob", "4"]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains("concurrency 1 → 4"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        code(&qjob(&["concurrency", "cli_control", "0"]).await),
        2,
        "usage"
    );
    assert_eq!(
        code(&qjob(&["pause", "no-such-job"]).await),
        3,
        "nobody runs it"
    );

    let id = Client::new(broker.clone())
        .enqueue::<CliControlJob>(Work { n: 0, fail: false })
        .await
        .unwrap();
    let dlq = CliControlJob::options().dead_letter_queue();
    let output = qjob(&["cancel", id.as_str()]).await;
    assert_eq!(code(&output), 0);
    wait_for("the cancelled job is dead-lettered", async || {
        broker.queue_stats(&dlq).await.unwrap().unwrap().messages > 0
    })
    .await;
    let output = qjob(&["dlq", "list", &dlq, "--reason", "cancelled", "--json"]).await;
    assert_eq!(json(&output)["letters"][0]["job_id"], id.as_str());
}

#[job(queue = "qjob.test.cli.topology", partitions = 2, partition_by = n)]
async fn cli_topology(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    let _ = work.fail;
    Ok(())
}

#[job(queue = "qjob.test.cli.shards", shards = 2)]
async fn cli_shards(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    let _ = work.fail;
    Ok(())
}

#[tokio::test]
async fn topology_check_reports_an_extra_partition_with_its_exit_code() {
    extra_queue_is_reported(
        CliTopologyJob,
        QueueSpec::new("qjob.test.cli.topology.p2"),
        "a partition past job cli_topology's partitions",
    )
    .await;
}

#[tokio::test]
async fn topology_check_reports_an_extra_shard_with_its_exit_code() {
    // Marked as qjob marks the shards it declares (a producer with more).
    extra_queue_is_reported(
        CliShardsJob,
        QueueSpec::new("qjob.test.cli.shards.s2").with_shard_of(CliShardsJob::QUEUE),
        "a shard past job cli_shards's shards",
    )
    .await;
}

/// `qjob topology check` is clean for `job`'s worker until `extra` exists,
/// then says `problem` of it and exits 5.
async fn extra_queue_is_reported<J: Job>(job: J, spec: QueueSpec, problem: &str) {
    let extra = spec.name.clone();
    let extra = extra.as_str();
    let broker = broker().await;
    reset::<J>().await;
    let _running = start(&broker, job);
    until(&["workers"], |o| stdout(o).contains(J::NAME)).await;
    // Other tests' workers share the broker: only this job's lines count.
    let ours = |output: &Output| -> Vec<String> {
        stdout(output)
            .lines()
            .filter(|line| line.contains(J::QUEUE))
            .map(str::to_owned)
            .collect()
    };
    let output = qjob(&["topology", "check"]).await;
    assert!(ours(&output).is_empty(), "{}", stdout(&output));

    broker.declare_queue(&spec).await.unwrap();
    let output = qjob(&["topology", "check"]).await;
    assert_eq!(code(&output), 5);
    assert_eq!(
        ours(&output),
        [format!("{extra}: {problem}, 0 messages never consumed")]
    );
    qjob_tests::Rabbit::connect().await.delete(&[extra]).await;
}

#[tokio::test]
async fn a_reader_that_stops_early_is_no_failure() {
    let mut child = tokio::process::Command::new(QJOB)
        .args(["workers", "--wait", "300"])
        .env("QJOB_AMQP_URL", url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `qjob workers | head -0`
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
}

#[tokio::test]
async fn every_command_has_help_and_a_dead_broker_is_exit_code_1() {
    let commands: [&[&str]; 21] = [
        &[],
        &["status"],
        &["workers"],
        &["queues"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "replay"],
        &["dlq", "discard"],
        &["dlq", "purge"],
        &["pause"],
        &["resume"],
        &["concurrency"],
        &["cancel"],
        &["topology", "check"],
        &["running"],
        &["scheduled"],
        &["retrying"],
        &["find"],
        &["run-now"],
        &["discard"],
    ];
    for command in commands {
        let output = qjob(&[command, &["--help"]].concat()).await;
        assert_eq!(code(&output), 0, "{command:?}");
        assert!(stdout(&output).contains("Usage: qjob"), "{command:?}");
    }
    let output = tokio::process::Command::new(QJOB)
        .args(["workers", "--url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .output()
        .await
        .unwrap();
    assert_eq!(code(&output), 1);
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("qjob: "));
}

/// Opened once the test has seen the handlers hold their permits.
static LIMITED_RELEASE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[job(
    queue = "qjob.test.cli.limited",
    prefetch = 10,
    concurrency = 4,
    global_concurrency = 2,
    class = "critical"
)]
async fn cli_limited(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    let _ = work.n;
    // Each handler passes and gives the permit back for the next.
    drop(LIMITED_RELEASE.acquire().await);
    Ok(())
}

/// `qjob status` shows a job's class and its global limit with the permits
/// held, `qjob workers` the handler budget in use, and `qjob concurrency
/// --global` sets the limit for every process.
#[tokio::test]
async fn status_shows_limits_and_concurrency_sets_a_global_one() {
    let broker = broker().await;
    reset::<CliLimitedJob>().await;
    let worker = Worker::builder(broker.clone())
        .register(CliLimitedJob)
        .store(qjob::store::MemoryStore::new())
        .max_handlers(6)
        .heartbeat_interval(Duration::from_millis(100))
        .build();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let jobs = (0..4).map(|n| Work { n, fail: false });
    Client::new(broker.clone())
        .enqueue_all::<CliLimitedJob>(jobs)
        .await
        .unwrap();
    let row = |o: &Output| {
        stdout(o)
            .lines()
            .find(|line| line.starts_with("cli_limited "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let output = until(&["status"], |o| row(o).contains("critical, global 2/2")).await;
    assert_eq!(code(&output), 0);
    let output = until(&["workers"], |o| {
        stdout(o)
            .lines()
            .any(|line| line.contains("cli_limited") && line.contains(" 2/6 "))
    })
    .await;
    assert_eq!(code(&output), 0);

    let output = qjob(&["concurrency", "cli_limited", "3", "--global"]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains("cli_limited global concurrency 3, across every process"),
        "{}",
        stdout(&output)
    );
    until(&["status"], |o| row(o).contains("global 3/3")).await;
    let output = qjob(&["status", "--json"]).await;
    let status = json(&output);
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job"] == "cli_limited")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(job["class"], "critical");
    assert_eq!(job["shared_limits"]["global_concurrency"], 3);
    assert_eq!(job["shared_limits"]["holders"].as_array().unwrap().len(), 3);
    LIMITED_RELEASE.add_permits(1);
}

static WAITING_RAN: AtomicBool = AtomicBool::new(false);

#[job(
    queue = "qjob.test.cli.waiting",
    concurrency = 2,
    retry = 2,
    backoff = fixed("15m")
)]
async fn cli_waiting(work: Work, ctx: JobContext) -> Result<(), JobError> {
    match work {
        Work { n: 0, .. } => {
            ctx.cancelled().await;
            Err(JobError::msg("stopped"))
        }
        Work { fail: true, .. } => Err(JobError::msg("cli failure")),
        Work { .. } => {
            WAITING_RAN.store(true, Ordering::SeqCst);
            Ok(())
        }
    }
}

#[tokio::test]
async fn running_scheduled_retrying_find_run_now_and_discard() {
    let broker = broker().await;
    reset::<CliWaitingJob>().await;
    let queue = CliWaitingJob::QUEUE;
    let env = qjob_tests::scenarios::Env::amqp().await;
    let delay_queues = [
        format!("{queue}.delay.900000ms"),
        format!("{queue}.delay.1800000ms"),
        format!("{queue}.delay-index"),
    ];
    env.delete_queues(&delay_queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let _running = start(&broker, CliWaitingJob);
    until(&["workers"], |o| stdout(o).contains("cli_waiting")).await;
    let client = Client::new(broker.clone());
    let blocked = client
        .enqueue::<CliWaitingJob>(Work { n: 0, fail: false })
        .await
        .unwrap();
    let scheduled = client
        .enqueue_in::<CliWaitingJob>(Work { n: 1, fail: false }, Duration::from_secs(1800))
        .await
        .unwrap();
    let failing = client
        .enqueue::<CliWaitingJob>(Work { n: 2, fail: true })
        .await
        .unwrap();

    let output = until(&["running", "--job", "cli_waiting"], |o| {
        stdout(o).contains(blocked.as_str())
    })
    .await;
    assert_eq!(code(&output), 0);
    assert!(
        stdout(&output).starts_with("JOB          ID"),
        "{}",
        stdout(&output)
    );
    let output = qjob(&["running", "--job", queue, "--json"]).await;
    assert_eq!(json(&output)["running"][0]["job_id"], blocked.as_str());
    assert_eq!(json(&output)["running"][0]["attempt"], 1);

    let output = until(&["scheduled", "--job", "cli_waiting"], |o| {
        stdout(o).contains(scheduled.as_str())
    })
    .await;
    assert!(stdout(&output).contains("in 29m"), "{}", stdout(&output));
    assert!(!stdout(&output).contains(failing.as_str()), "not a retry");
    let output = until(&["retrying", "--job", "cli_waiting", "--json"], |o| {
        json(o)["delayed"][0]["job_id"] == failing.as_str()
    })
    .await;
    let retry = &json(&output)["delayed"][0];
    assert_eq!(
        (retry["attempt"].as_u64(), retry["error"].as_str()),
        (Some(2), Some("cli failure"))
    );
    assert_eq!(code(&qjob(&["scheduled", "--job", "no-such-job"]).await), 3);

    let output = qjob(&["find", scheduled.as_str()]).await;
    assert_eq!(code(&output), 0);
    assert!(
        stdout(&output).starts_with("delayed: cli_waiting attempt 1"),
        "{}",
        stdout(&output)
    );
    let output = qjob(&["find", blocked.as_str()]).await;
    assert!(
        stdout(&output).starts_with("running: cli_waiting"),
        "{}",
        stdout(&output)
    );
    assert_eq!(code(&qjob(&["find", "no-such-id"]).await), 3);

    let output = qjob(&["run-now", scheduled.as_str()]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for("the scheduled job ran", async || {
        WAITING_RAN.load(Ordering::SeqCst)
    })
    .await;
    let output = qjob(&["discard", failing.as_str()]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = until(&["find", failing.as_str(), "--json"], |o| {
        json(o)["found"][0]["place"] == "dead"
    })
    .await;
    assert_eq!(json(&output)["found"][0]["reason"], "cancelled");
    assert_eq!(
        code(&qjob(&["run-now", failing.as_str()]).await),
        3,
        "nothing waits"
    );
    assert_eq!(code(&qjob(&["cancel", blocked.as_str()]).await), 0);
}

#[job(queue = "qjob.test.cli.asyncapi", priorities = 3)]
async fn cli_asyncapi(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    let _ = work.n;
    Ok(())
}

/// The official AsyncAPI 3.0.0 schema's errors in `document` (the schema
/// vendored in `tests/fixtures/asyncapi`, checked offline).
fn asyncapi_errors(document: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/asyncapi/3.0.0.json")).unwrap();
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles offline");
    validator
        .iter_errors(document)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

#[tokio::test]
async fn asyncapi_prints_a_valid_document_without_the_password() {
    let broker = broker().await;
    reset::<CliAsyncapiJob>().await;
    let _running = start(&broker, CliAsyncapiJob);
    let output = until(&["asyncapi"], |o| stdout(o).contains(CliAsyncapiJob::QUEUE)).await;
    assert_eq!(code(&output), 0);
    let document = json(&output);
    let errors = asyncapi_errors(&document);
    assert!(errors.is_empty(), "{errors:#?}\n{document:#}");
    let channel = &document["channels"]["cli_asyncapi"];
    assert_eq!(channel["address"], CliAsyncapiJob::QUEUE);
    assert_eq!(document["info"]["title"], "qjob jobs");
    let url = url();
    let host = document["servers"]["rabbitmq"]["host"].as_str().unwrap();
    assert!(url.contains(host), "{host} is {url}'s");
    let credentials = url.split_once("://").unwrap().1.split_once('@').unwrap().0;
    assert!(
        !stdout(&output).contains(credentials),
        "{}",
        stdout(&output)
    );

    let file = std::env::temp_dir().join(format!("qjob-asyncapi-{}.json", std::process::id()));
    let path = file.to_str().unwrap();
    let output = qjob(&["asyncapi", "--output", path, "--title", "Billing"]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout(&output), "");
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(written["info"]["title"], "Billing");
    assert_eq!(
        written["channels"]["cli_asyncapi"]["address"],
        CliAsyncapiJob::QUEUE
    );
}

#[job(queue = "qjob.test.cli.fired")]
async fn cli_fired(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// `qjob schedules` lists a schedule with its leader and policy; `qjob
/// schedule fire` has the leader enqueue one tick (read back from its
/// queue, which no worker consumes), `pause` and `resume` show in the
/// list; an unknown schedule is not found (3).
#[tokio::test]
async fn schedules_are_listed_fired_paused_and_resumed() {
    use qjob::schedule::{LEASE_QUEUE_PREFIX, Missed, Schedule};

    const NAME: &str = "cli-fired";
    let broker = broker().await;
    reset::<CliFiredJob>().await;
    let lease_queue = format!("{LEASE_QUEUE_PREFIX}{NAME}");
    let rabbit = qjob_tests::Rabbit::connect().await;
    rabbit.delete(&[&lease_queue]).await;
    let hourly = Schedule::cron("0 0 * * * *")
        .unwrap()
        .with_missed(Missed::Skip)
        .named(NAME);
    let worker = Worker::builder(broker.clone())
        .schedule::<CliFiredJob>(hourly, ())
        .heartbeat_interval(Duration::from_millis(100))
        .build();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let this = |o: &Output| -> Option<Value> {
        json(o)["schedules"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == NAME)
            .cloned()
    };
    let output = until(&["schedules", "--json"], |o| {
        this(o).is_some_and(|s| s["leader"]["pid"] == std::process::id())
    })
    .await;
    assert_eq!(code(&output), 0);
    let listed = this(&output).unwrap();
    assert_eq!(listed["job"], "cli_fired");
    assert_eq!(listed["cron"], "0 0 * * * *");
    assert_eq!(listed["zone"], "UTC");
    assert_eq!(listed["missed"], "skip");
    assert_eq!(listed["paused"], false);
    assert!(listed["next_ms"].as_u64().is_some(), "{listed}");
    assert!(listed["last_fired_ms"].is_null() && listed["problem"].is_null());
    let output = qjob(&["schedules"]).await;
    assert_eq!(code(&output), 0);
    let text = stdout(&output);
    assert!(text.starts_with("SCHEDULE  "), "{text}");
    let line = text
        .lines()
        .find(|line| line.starts_with("cli-fired "))
        .unwrap_or_else(|| panic!("{text}"));
    for cell in [
        "cli_fired",
        "0 0 * * * *",
        "UTC",
        &format!("(pid {})", std::process::id()),
        " in ",
        " skip ",
        " no ",
    ] {
        assert!(line.contains(cell), "{cell:?} in {line}");
    }

    // Fire now: one job in the queue, with the tick id the reply names.
    let output = qjob(&["schedule", "fire", NAME]).await;
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert!(
        text.contains(": ok: schedule cli-fired: tick cli-fired@"),
        "{text}"
    );
    let (_, rest) = text.split_once("tick ").unwrap();
    let id = rest.split_whitespace().next().unwrap();
    wait_for("the tick in its queue", async || {
        rabbit.ready(CliFiredJob::QUEUE).await == 1
    })
    .await;
    let got = rabbit.take_all(CliFiredJob::QUEUE).await;
    assert_eq!(got[0].id.as_deref(), Some(id));

    // Pause, then resume, as the list shows them.
    let output = qjob(&["schedule", "pause", NAME, "--json"]).await;
    assert_eq!(code(&output), 0);
    let replies = json(&output)["replies"].clone();
    assert_eq!(replies[0]["ok"], true, "{replies}");
    let output = until(&["schedules", "--json"], |o| {
        this(o).is_some_and(|s| s["paused"] == true && s["paused_on"] == 1)
    })
    .await;
    assert_eq!(code(&output), 0);
    let text = stdout(&qjob(&["schedules"]).await);
    let line = text.lines().find(|l| l.starts_with("cli-fired ")).unwrap();
    assert!(line.contains(" yes"), "{line}");
    let output = qjob(&["schedule", "resume", NAME]).await;
    assert_eq!(code(&output), 0);
    assert!(stdout(&output).contains(": ok: schedule cli-fired resumed"));
    until(&["schedules", "--json"], |o| {
        this(o).is_some_and(|s| s["paused"] == false)
    })
    .await;

    // No such schedule; no name at all.
    let output = qjob(&["schedule", "fire", "no-such-schedule"]).await;
    assert_eq!(code(&output), 3);
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no running worker carries schedule \"no-such-schedule\""),
        "{output:?}"
    );
    assert_eq!(code(&qjob(&["schedule", "pause"]).await), 2);
    for command in [&["schedules"][..], &["schedule", "fire"]] {
        let output = qjob(&[command, &["--help"]].concat()).await;
        assert_eq!(code(&output), 0, "{command:?}");
    }
    rabbit.delete(&[&lease_queue, CliFiredJob::QUEUE]).await;
}

#[job(queue = "qjob.test.cli.history", prefetch = 4, concurrency = 4)]
async fn cli_history(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    if work.fail {
        return Err(JobError::permanent(JobError::msg("broken for good")));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// `qjob history`: a job's minutes with their counts and percentiles, as a
/// table and as JSON; a job nobody runs is not found (3).
#[tokio::test]
async fn history_shows_the_last_hour_per_minute() {
    let broker = broker().await;
    reset::<CliHistoryJob>().await;
    let _running = start(&broker, CliHistoryJob);
    let jobs = (0..8).map(|n| Work { n, fail: n >= 6 });
    Client::new(broker.clone())
        .enqueue_all::<CliHistoryJob>(jobs)
        .await
        .unwrap();
    let args = ["history", "--job", "cli_history", "--json"];
    let totals = |history: &Value| {
        let job = &history["jobs"][0];
        (
            job["succeeded"].as_u64(),
            job["failed"].as_u64(),
            job["dead_lettered"].as_u64(),
        )
    };
    let output = until(&args, |o| {
        code(o) == 0 && totals(&json(o)) == (Some(6), Some(2), Some(2))
    })
    .await;
    let history = json(&output);
    let jobs = history["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{history}");
    assert_eq!(jobs[0]["job"], "cli_history");
    assert_eq!(jobs[0]["queue"], CliHistoryJob::QUEUE);
    assert_eq!(jobs[0]["workers"], 1);
    let minutes = jobs[0]["minutes"].as_array().unwrap();
    assert!(matches!(minutes.len(), 1 | 2), "{history}");
    let mut sums = (0, 0, 0);
    for minute in minutes {
        assert!(
            minute["start_ms"].as_u64().unwrap() % 60_000 == 0,
            "{minute}"
        );
        assert_eq!(
            minute["runs"].as_u64(),
            Some(minute["succeeded"].as_u64().unwrap() + minute["failed"].as_u64().unwrap())
        );
        assert!(minute["p50_ms"].as_f64().unwrap() > 0.0, "{minute}");
        assert!(
            minute["p95_ms"].as_f64().unwrap() >= minute["p50_ms"].as_f64().unwrap(),
            "{minute}"
        );
        sums.0 += minute["succeeded"].as_u64().unwrap();
        sums.1 += minute["failed"].as_u64().unwrap();
        sums.2 += minute["dead_lettered"].as_u64().unwrap();
    }
    assert_eq!(sums, (6, 2, 2));

    // The table: a row per minute with activity.
    let output = qjob(&["history", "--job", CliHistoryJob::QUEUE]).await;
    assert_eq!(code(&output), 0);
    let text = stdout(&output);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split("  ").map(str::trim).collect();
    assert_eq!(
        header
            .into_iter()
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>(),
        [
            "JOB",
            "MINUTE (UTC)",
            "SUCCEEDED",
            "FAILED",
            "DEAD-LETTERED",
            "P50",
            "P95"
        ],
        "{text}"
    );
    let mut sums = (0, 0, 0);
    for line in lines {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), 7, "{text}");
        assert_eq!(cells[0], "cli_history");
        assert!(
            cells[5].ends_with("ms") && cells[6].ends_with("ms"),
            "{text}"
        );
        let number = |cell: &str| cell.parse::<u64>().unwrap();
        sums.0 += number(cells[2]);
        sums.1 += number(cells[3]);
        sums.2 += number(cells[4]);
    }
    assert_eq!(sums, (6, 2, 2), "{text}");

    // Every job type, and help.
    let output = qjob(&["history"]).await;
    assert_eq!(code(&output), 0);
    assert!(
        stdout(&output).contains("cli_history "),
        "{}",
        stdout(&output)
    );
    assert_eq!(code(&qjob(&["history", "--help"]).await), 0);
    let output = qjob(&["history", "--job", "no-such-job"]).await;
    assert_eq!(code(&output), 3, "nobody runs it");
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no running worker runs job type \"no-such-job\""),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// With no worker heard, `status` says so, and how to read a queue by its
/// name, rather than print an empty table alone. A virtual host of its
/// own, where no worker runs.
#[tokio::test]
async fn status_with_no_worker_says_none_was_heard() {
    let vhost = "qjob-test-cli-empty";
    qjob_tests::rabbitmqctl_ok(&["add_vhost", vhost]);
    qjob_tests::rabbitmqctl_ok(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]);
    let base = url();
    let (server, _) = base.rsplit_once('/').unwrap();
    let output = tokio::process::Command::new(QJOB)
        .args(["status", "--wait", "300"])
        .env("QJOB_AMQP_URL", format!("{server}/{vhost}"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert!(text.starts_with("workers: 0 alive, 0 gone\n"), "{text}");
    assert!(
        text.contains("no worker was heard within 300 ms (--wait)")
            && text.contains("qjob dlq list <queue>"),
        "{text}"
    );
}

#[job(queue = "qjob.test.cli.rate", concurrency = 2)]
async fn cli_rate(work: Work, _ctx: JobContext) -> Result<(), JobError> {
    let _ = work.n;
    Ok(())
}

/// A first look has the rate. A worker with the default heartbeat (5 s)
/// answers a `status`'s ping with one heartbeat, and `status` listens
/// 0.6 s: too short for it to hear two heartbeats half an interval apart
/// and measure a rate itself, so the rate it shows is the one the worker
/// measured (once it has run a second). Without it, the JSON's rate is null.
#[tokio::test]
async fn status_shows_the_rate_the_worker_measured_at_first_look() {
    let broker = broker().await;
    reset::<CliRateJob>().await;
    let worker = Worker::builder(broker.clone()).register(CliRateJob).build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let client = Client::new(broker.clone());
    for n in 0..5 {
        client
            .enqueue::<CliRateJob>(Work { n, fail: false })
            .await
            .unwrap();
    }
    let rate = |o: &Output| {
        json(o)["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|job| job["job"] == "cli_rate"))
            .map(|job| job["rate"].clone())
    };
    let output = until(&["status", "--json"], |o| {
        rate(o).is_some_and(|rate| rate.is_f64())
    })
    .await;
    assert!(rate(&output).unwrap().as_f64().unwrap() >= 0.0);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
