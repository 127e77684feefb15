//! qjob on a 3-node RabbitMQ cluster (the one `QJOB_CLUSTER_SCRIPT` runs,
//! `scripts/cluster` by default; started here if it is not running):
//! quorum retries, the loss of a node, per-key order through a node
//! restart, and partition leaders spread over the nodes.
//! Workers run in child processes, each connected to its own node. One
//! test at a time: they stop nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qjob::{Client, Job};
use qjob_tests::cluster::{self, Revive};
use qjob_tests::jobs::{ClusterOrderedJob, ClusterRetryJob};
use qjob_tests::{ANNOUNCE, Act, Rabbit, Task, eventually, micros_since_epoch};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WORKER: &str = env!("CARGO_BIN_EXE_qjob-test-worker");

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A job finished by a worker process: its sequence number and when, in
/// µs since the epoch by the process's clock.
type Done = (u32, u128);

/// What a worker process reports of one finished job: its sequence number,
/// when it finished and when its handler started.
type Report = (u32, u128, u128);

/// A worker process connected to one node, failing over to the others, and
/// what it reports finishing.
struct WorkerProcess {
    _child: Child,
    done: Arc<Mutex<Vec<Report>>>,
    /// When its consumers all came up (`true`) or one went down.
    consuming: Arc<Mutex<Vec<(bool, u128)>>>,
}

impl WorkerProcess {
    fn spawn(mode: &str, node: usize) -> Self {
        let mut child = Command::new(WORKER)
            .arg(mode)
            .env(ANNOUNCE, "stamped")
            .env("QJOB_CLUSTER_URLS", cluster::urls_from(node).join(","))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let done = Arc::new(Mutex::new(Vec::new()));
        let consuming = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (sink, changes) = (done.clone(), consuming.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(change) = line.strip_prefix("consuming ") {
                    let mut words = change.split_whitespace();
                    let up = words.next() == Some("true");
                    if let Some(at) = words.next().and_then(|w| w.parse().ok()) {
                        changes.lock().unwrap().push((up, at));
                    }
                    continue;
                }
                let mut words = line.split_whitespace().skip(1);
                let mut number = || words.next().and_then(|w| w.parse::<u128>().ok());
                if let (Some(seq), Some(at), Some(started)) = (number(), number(), number()) {
                    sink.lock().unwrap().push((seq as u32, at, started));
                }
            }
        });
        Self {
            _child: child,
            done,
            consuming,
        }
    }

    fn done(&self) -> Vec<Done> {
        let reports = self.done.lock().unwrap();
        reports.iter().map(|(seq, at, _)| (*seq, *at)).collect()
    }

    /// When this process's consumers were all up again after `since` (µs),
    /// having gone down.
    fn resubscribed_after(&self, since: u128) -> Option<u128> {
        let changes = self.consuming.lock().unwrap();
        let went_down = changes.iter().any(|(up, at)| !up && *at > since);
        let up_again = changes
            .iter()
            .filter(|(up, at)| *up && *at > since)
            .map(|(_, at)| *at)
            .max();
        up_again.filter(|_| went_down)
    }

    /// When this process first started a handler after `since` (µs), for
    /// a job it then finished.
    fn first_started_after(&self, since: u128) -> Option<u128> {
        let reports = self.done.lock().unwrap();
        reports
            .iter()
            .map(|(_, _, started)| *started)
            .filter(|started| *started > since)
            .min()
    }
}

/// Everything both processes finished, in the order they finished it.
fn merged(workers: &[&WorkerProcess]) -> Vec<Done> {
    let mut all: Vec<Done> = workers.iter().flat_map(|w| w.done()).collect();
    all.sort_by_key(|(_, at)| *at);
    all
}

fn distinct(done: &[Done]) -> BTreeSet<u32> {
    done.iter().map(|(seq, _)| *seq).collect()
}

/// The jobs of `0..jobs` not in `done`.
fn missing(done: &[Done], jobs: u32) -> Vec<u32> {
    let done = distinct(done);
    (0..jobs).filter(|seq| !done.contains(seq)).collect()
}

/// Starts the cluster and removes what earlier runs left of `queues`.
async fn fresh(queues: &[String]) {
    cluster::ensure_started();
    let rabbit = Rabbit::connect_to(&cluster::url(1)).await;
    rabbit
        .delete(&queues.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
}

/// Enqueues `tasks`, publishing again whatever fails (a publish in flight
/// when a node is lost); returns how many publishes failed.
async fn enqueue_all_surely<J: Job<Payload = Task>>(client: &Client, tasks: Vec<Task>) -> usize {
    let mut failed = 0;
    let mut pending = tasks;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "could not enqueue {pending:?}");
        let results: Vec<bool> = match client.enqueue_all::<J>(pending.clone()).await {
            Ok(results) => results.iter().map(Result::is_ok).collect(),
            Err(_) => vec![false; pending.len()],
        };
        let retry: Vec<Task> = pending
            .into_iter()
            .zip(results)
            .filter_map(|(task, published)| (!published).then_some(task))
            .collect();
        failed += retry.len();
        if !retry.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pending = retry;
    }
    failed
}

fn retry_queues() -> Vec<String> {
    let queue = ClusterRetryJob::QUEUE;
    vec![
        queue.to_owned(),
        format!("{queue}.dlq"),
        format!("{queue}.delay.300ms"),
    ]
}

/// Task `seq` of the retry tests: one in ten fails its first attempt.
fn retry_task(seq: u32) -> Task {
    let act = if seq.is_multiple_of(10) {
        Act::FailFirst
    } else {
        Act::Work {
            sleep_ms: 1,
            fail_first: false,
        }
    };
    Task::new("cluster", seq, act)
}

/// Quorum jobs retried through a delay queue all come back on a cluster
/// (they sat in a quorum delay queue past their TTL until `x-expires`
/// deleted it, with no fault at all).
#[tokio::test]
async fn quorum_retries_all_come_back_on_a_cluster() {
    let _serial = SERIAL.lock().await;
    fresh(&retry_queues()).await;
    let jobs = 3000;
    let a = WorkerProcess::spawn("cluster-retry", 1);
    let b = WorkerProcess::spawn("cluster-retry", 2);
    let client = Client::new(cluster::broker(3).await);
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(100) {
        let tasks = chunk.iter().copied().map(retry_task).collect();
        assert_eq!(
            enqueue_all_surely::<ClusterRetryJob>(&client, tasks).await,
            0
        );
    }
    let done = eventually(
        "every job, its retries included",
        Duration::from_secs(90),
        || distinct(&merged(&[&a, &b])).len(),
        |n| *n == jobs as usize,
    )
    .await;
    let all = merged(&[&a, &b]);
    println!(
        "quorum retries on a cluster: {done} of {jobs} jobs done ({} retried), {} completions",
        jobs / 10,
        all.len()
    );
    let rabbit = Rabbit::connect_to(&cluster::url(3)).await;
    assert_eq!(
        rabbit
            .ready(&format!("{}.dlq", ClusterRetryJob::QUEUE))
            .await,
        0
    );
}

/// The node leading the work queue is killed mid-run: the workers reconnect
/// to the others, the producer publishes again what was in flight, and every
/// job ends done or dead-lettered.
#[tokio::test]
async fn losing_the_leading_node_mid_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let queue = ClusterRetryJob::QUEUE;
    fresh(&retry_queues()).await;
    let jobs = 5000u32;
    // The first publish declares the queue; its leader is the node to lose.
    let probe_client = Client::new(cluster::broker(1).await);
    probe_client
        .enqueue::<ClusterRetryJob>(retry_task(0))
        .await
        .unwrap();
    let lost = cluster::leader(queue);
    let survivor = cluster::NODES.into_iter().find(|n| *n != lost).unwrap();
    let a = WorkerProcess::spawn("cluster-retry", lost);
    let b = WorkerProcess::spawn("cluster-retry", survivor);
    // The producer is on the node to lose too.
    let client = Client::new(cluster::broker(lost).await);
    let producer = tokio::spawn(async move {
        let mut failed = 0;
        for chunk in (1..jobs).collect::<Vec<_>>().chunks(100) {
            let tasks = chunk.iter().copied().map(retry_task).collect();
            failed += enqueue_all_surely::<ClusterRetryJob>(&client, tasks).await;
        }
        failed
    });

    eventually(
        "a first part of the jobs",
        Duration::from_secs(60),
        || distinct(&merged(&[&a, &b])).len(),
        |n| *n >= 1500,
    )
    .await;
    let revive = Revive(lost);
    let killed_at = micros_since_epoch();
    cluster::kill(lost);
    // The worker on the lost node resubscribes through another node; then
    // both take new deliveries again (the work queue has a new leader).
    let resubscribed = eventually(
        "the worker on the lost node to consume again",
        Duration::from_secs(60),
        || a.resubscribed_after(killed_at),
        Option::is_some,
    )
    .await
    .unwrap();
    let started = eventually(
        "both workers to start jobs again",
        Duration::from_secs(60),
        || {
            (
                a.first_started_after(resubscribed),
                b.first_started_after(resubscribed),
            )
        },
        |(a, b)| a.is_some() && b.is_some(),
    )
    .await;
    let after_kill = |at: u128| Duration::from_micros((at - killed_at) as u64);
    let reconnected = after_kill(resubscribed);
    let resumed = after_kill(started.0.unwrap().max(started.1.unwrap()));
    cluster::restart(lost);
    drop(revive);
    let failed_publishes = producer.await.unwrap();

    // Each job fails at most once of its four attempts: every one ends
    // done, none in the DLQ.
    eventually(
        "every job done (the ones not done yet shown)",
        Duration::from_secs(90),
        || missing(&merged(&[&a, &b]), jobs),
        Vec::is_empty,
    )
    .await;
    let done = jobs;
    let rabbit = Rabbit::connect_to(&cluster::url(survivor)).await;
    let dead = rabbit.ready(&format!("{queue}.dlq")).await;
    let all = merged(&[&a, &b]);
    let twice = all.len() - distinct(&all).len();
    println!(
        "node loss: {done} of {jobs} jobs done, {dead} dead-lettered, {twice} ran twice \
         (in flight at the loss); the worker on the lost node consumed again through \
         another node {reconnected:?} after the kill, and both workers had started new \
         jobs {resumed:?} after it; {failed_publishes} publishes failed and were \
         published again"
    );
    assert_eq!(dead, 0);
    assert!(reconnected < Duration::from_secs(30), "{reconnected:?}");
    assert!(twice <= 2 * 50 + failed_publishes, "{twice} ran twice");
    assert!(
        failed_publishes <= 2 * 100,
        "{failed_publishes} publishes failed"
    );
}

fn ordered_queues() -> Vec<String> {
    let queue = ClusterOrderedJob::QUEUE;
    (0..12)
        .map(|p| format!("{queue}.p{p}"))
        .chain([format!("{queue}.dlq")])
        .collect()
}

/// A partitioned quorum job keeps every key's order while a node is killed
/// and started again under two workers.
#[tokio::test]
async fn partitioned_order_holds_through_a_node_restart() {
    let _serial = SERIAL.lock().await;
    fresh(&ordered_queues()).await;
    let (keys, per_key) = (30u32, 50u32);
    let client = Client::new(cluster::broker(1).await);
    let tasks = (0..per_key)
        .flat_map(|n| {
            (0..keys).map(move |k| {
                let work = Act::Work {
                    sleep_ms: 2,
                    fail_first: (n + k) % 13 == 5,
                };
                Task::keyed("cluster", &format!("key-{k}"), k * 1000 + n, work)
            })
        })
        .collect();
    assert_eq!(
        enqueue_all_surely::<ClusterOrderedJob>(&client, tasks).await,
        0
    );
    let a = WorkerProcess::spawn("cluster-ordered", 2);
    let b = WorkerProcess::spawn("cluster-ordered", 3);
    let total = (keys * per_key) as usize;
    eventually(
        "a first part of the jobs",
        Duration::from_secs(60),
        || distinct(&merged(&[&a, &b])).len(),
        |n| *n >= total / 4,
    )
    .await;
    let revive = Revive(2);
    cluster::kill(2);
    cluster::restart(2);
    drop(revive);
    eventually(
        "every key's jobs",
        Duration::from_secs(120),
        || distinct(&merged(&[&a, &b])).len(),
        |n| *n == total,
    )
    .await;

    let all = merged(&[&a, &b]);
    let mut violations = 0;
    for k in 0..keys {
        // The first time each job of the key finished, in publish order; a
        // job finished twice (its ack lost with the node) only repeats.
        let mut first: BTreeMap<u32, u128> = BTreeMap::new();
        for (seq, at) in all.iter().filter(|(seq, _)| seq / 1000 == k) {
            first.entry(seq % 1000).or_insert(*at);
        }
        let times: Vec<u128> = first.values().copied().collect();
        assert_eq!(first.len(), per_key as usize, "key {k} lost jobs");
        violations += times.windows(2).filter(|w| w[0] > w[1]).count();
    }
    let twice = all.len() - total;
    println!(
        "ordering on a cluster: {keys} keys x {per_key} jobs through a node kill and restart, \
         {violations} order violations, {twice} jobs finished twice"
    );
    assert_eq!(violations, 0);
}

/// The partition queues of a quorum job spread their leaders over the
/// three nodes (`x-queue-leader-locator`).
#[tokio::test]
async fn partition_leaders_spread_over_the_nodes() {
    let _serial = SERIAL.lock().await;
    fresh(&ordered_queues()).await;
    let client = Client::new(cluster::broker(1).await);
    client
        .enqueue::<ClusterOrderedJob>(Task::keyed("cluster", "key-0", 0, Act::Succeed))
        .await
        .unwrap();
    let prefix = format!("{}.p", ClusterOrderedJob::QUEUE);
    let leaders = cluster::leaders(&prefix);
    assert_eq!(leaders.len(), 12, "{leaders:?}");
    let nodes: BTreeSet<usize> = leaders.iter().map(|(_, node)| *node).collect();
    println!("partition leaders: {leaders:?}");
    assert_eq!(nodes.len(), 3, "leaders on every node: {leaders:?}");
}
