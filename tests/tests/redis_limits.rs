//! Limits shared by worker processes, on RabbitMQ and Redis: three worker
//! processes (`qjob-test-worker limits`), one of them SIGKILLed while it
//! holds permits. One test at a time: they share the children's queues.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use qjob::store::{RedisStore, Store};
use qjob_tests::limits::{GloballyLimitedJob, GloballyRatedJob, Limited, RatedPerKeyJob};
use qjob_tests::scenarios::Env;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const WORKER: &str = env!("CARGO_BIN_EXE_qjob-test-worker");

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A start or an end a child printed.
#[derive(Debug, Clone)]
struct Event {
    child: usize,
    kind: String,
    start: bool,
    seq: u32,
    micros: u128,
    key: String,
}

/// Three worker processes sharing a store under `prefix`, their events
/// merged as they come.
struct Children {
    children: Vec<tokio::process::Child>,
    events: mpsc::UnboundedReceiver<Event>,
    seen: Vec<Event>,
}

impl Children {
    fn start(prefix: &str, lease: Duration) -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        let children = (0..3)
            .map(|child| {
                let mut process = tokio::process::Command::new(WORKER)
                    .arg("limits")
                    .env("QJOB_TEST_REDIS_PREFIX", prefix)
                    .env("QJOB_TEST_PERMIT_LEASE_MS", lease.as_millis().to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap();
                let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
                let sender = sender.clone();
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        let parts: Vec<&str> = line.split(' ').collect();
                        let [kind, event, seq, micros, key] = parts[..] else {
                            panic!("an unexpected line from a child: {line}");
                        };
                        let _ = sender.send(Event {
                            child,
                            kind: kind.to_owned(),
                            start: event == "start",
                            seq: seq.parse().unwrap(),
                            micros: micros.parse().unwrap(),
                            key: key.to_owned(),
                        });
                    }
                });
                process
            })
            .collect();
        Self {
            children,
            events,
            seen: Vec::new(),
        }
    }

    /// Reads events until `done` holds of those seen, within `limit`.
    async fn until(&mut self, what: &str, limit: Duration, done: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => self.seen.push(event),
                Ok(None) => panic!("the children's output ended before {what}"),
                Err(_) => {
                    let first = self.seen.first().map_or(0, |e| e.micros);
                    let mut per_second = BTreeMap::new();
                    for e in self.seen.iter().filter(|e| e.start) {
                        *per_second
                            .entry(((e.micros - first) / 1_000_000, e.child))
                            .or_insert(0) += 1;
                    }
                    panic!(
                        "{what}: not within {limit:?} ({} events; starts by second and process: {per_second:?})",
                        self.seen.len()
                    )
                }
            }
        }
    }

    /// Stops the children still running (their stdin closes).
    async fn stop(mut self) {
        for child in &mut self.children {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.shutdown().await;
            }
        }
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
    }
}

fn ended(events: &[Event], kind: &str) -> std::collections::BTreeSet<u32> {
    events
        .iter()
        .filter(|e| e.kind == kind && !e.start)
        .map(|e| e.seq)
        .collect()
}

/// The children's queues emptied, and a key prefix of this run's own.
async fn fresh() -> (Env, String) {
    let env = Env::amqp().await;
    env.reset::<GloballyLimitedJob>().await;
    env.reset::<GloballyRatedJob>().await;
    env.reset::<RatedPerKeyJob>().await;
    let prefix = format!("qjob-test-limits:{}:", uuid::Uuid::now_v7().simple());
    (env, prefix)
}

async fn store(prefix: &str) -> RedisStore {
    let url =
        std::env::var("QJOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    RedisStore::connect(&url).await.unwrap().with_prefix(prefix)
}

/// Global concurrency 5 over three processes of concurrency 10: never
/// more than 5 handlers at once, counted at every start and end, and 5
/// reached; a process SIGKILLed while it holds permits gives them back
/// when their lease (3 s) runs out, and the others reach 5 again within
/// the lease (plus a second for the polls and the output). More jobs are
/// enqueued at the kill, so that the survivors have work past the lease.
#[tokio::test]
async fn global_concurrency_holds_across_processes_and_comes_back_after_a_kill() {
    let _serial = SERIAL.lock().await;
    let (env, prefix) = fresh().await;
    let lease = Duration::from_secs(3);
    let jobs = 400;
    let results = env
        .client()
        .enqueue_all::<GloballyLimitedJob>((0..jobs).map(|seq| Limited::new(seq, "-", 100)))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let mut children = Children::start(&prefix, lease);
    // Child 0 runs handlers, and 5 run at once somewhere.
    children
        .until(
            "child 0 to run 10 jobs",
            Duration::from_secs(30),
            |events| events.iter().filter(|e| e.child == 0 && !e.start).count() >= 10,
        )
        .await;
    children
        .until(
            "a start of child 0 not ended",
            Duration::from_secs(10),
            |events| !running(events, 0).is_empty(),
        )
        .await;
    children.children[0].kill().await.unwrap();
    let killed_at = qjob_tests::micros_since_epoch();
    // Work enough for the survivors after the lease runs out, however
    // much of the first batch they ran while child 0 came up: 300 jobs of
    // 100 ms are 6 s at 5 at once, twice the lease.
    let more = 300;
    let results = env
        .client()
        .enqueue_all::<GloballyLimitedJob>(
            (jobs..jobs + more).map(|seq| Limited::new(seq, "-", 100)),
        )
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    children
        .until("every job to end", Duration::from_secs(90), |events| {
            ended(events, "global").len() == (jobs + more) as usize
        })
        .await;
    let seen = children.seen.clone();
    children.stop().await;
    // What child 0 had printed before it died, read by now.
    let held = running(&seen, 0);

    // Concurrency over time, child 0's last starts ending at the kill.
    let mut changes: Vec<(u128, i32, usize)> = Vec::new();
    for event in seen.iter().filter(|e| e.kind == "global") {
        changes.push((event.micros, if event.start { 1 } else { -1 }, event.child));
    }
    changes.extend(held.iter().map(|_| (killed_at, -1, 0)));
    // At one instant, ends before starts.
    changes.sort_by_key(|(at, change, _)| (*at, *change));
    let (mut now, mut most_before_kill, mut back_at) = (0i32, 0i32, None);
    for (at, change, _) in &changes {
        now += change;
        assert!(now <= 5, "{now} handlers at once, at {at}");
        if *at < killed_at {
            most_before_kill = most_before_kill.max(now);
        } else if now == 5 && back_at.is_none() {
            back_at = Some(*at);
        }
    }
    assert_eq!(
        most_before_kill, 5,
        "5 handlers ran at once before the kill"
    );
    let back_at = back_at.expect("5 handlers ran at once again after the kill");
    let back_after = Duration::from_micros((back_at - killed_at) as u64);
    println!(
        "held by the killed process: {}; 5 again after {back_after:?}",
        held.len()
    );
    assert!(
        back_after <= lease + Duration::from_secs(1),
        "{back_after:?}"
    );
    // Every permit is back: the survivors freed theirs, the killed one's ran out.
    let store = store(&prefix).await;
    let permits = store.permits("job:qjob.test.limits.global").await.unwrap();
    assert!(permits.holders.is_empty(), "{permits:?}");
}

/// The starts of `child` not ended yet.
fn running(events: &[Event], child: usize) -> Vec<u32> {
    let mut open = BTreeMap::new();
    for event in events
        .iter()
        .filter(|e| e.child == child && e.kind == "global")
    {
        *open.entry(event.seq).or_insert(0i32) += if event.start { 1 } else { -1 };
    }
    open.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(seq, _)| seq)
        .collect()
}

/// A global rate of 100/s over three processes: 3 000 starts in 30 s,
/// within 10 %.
#[tokio::test]
async fn a_global_rate_holds_across_processes() {
    let _serial = SERIAL.lock().await;
    let (env, prefix) = fresh().await;
    let results = env
        .client()
        .enqueue_all::<GloballyRatedJob>((0..4000).map(|seq| Limited::new(seq, "-", 0)))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let mut children = Children::start(&prefix, Duration::from_secs(15));
    children
        .until("the first start", Duration::from_secs(30), |events| {
            !events.is_empty()
        })
        .await;
    let first = children.seen[0].micros;
    let window = 30_000_000;
    children
        .until("30 s of starts", Duration::from_secs(60), |events| {
            events.last().is_some_and(|e| e.micros >= first + window)
        })
        .await;
    let seen = children.seen.clone();
    children.stop().await;
    let starts = seen
        .iter()
        .filter(|e| e.kind == "rate" && e.start && e.micros < first + window)
        .count();
    let by_child: Vec<usize> = (0..3)
        .map(|child| seen.iter().filter(|e| e.child == child && e.start).count())
        .collect();
    println!("{starts} starts in 30 s, by process {by_child:?}");
    assert!((2700..=3300).contains(&starts), "{starts} starts in 30 s");
    assert!(
        by_child.iter().all(|n| *n > 0),
        "every process started jobs: {by_child:?}"
    );
    let _ = env.delete_queues(&["qjob.test.limits.rate"]).await;
}

/// A rate of 5/s per key, for 10 keys over three processes: each key's
/// starts 200 ms apart (less the output's jitter), all keys at once.
#[tokio::test]
async fn a_rate_per_key_holds_across_processes() {
    let _serial = SERIAL.lock().await;
    let (env, prefix) = fresh().await;
    let per_key = 25;
    let jobs = (0..per_key * 10).map(|seq| Limited::new(seq, format!("customer-{}", seq % 10), 0));
    let results = env
        .client()
        .enqueue_all::<RatedPerKeyJob>(jobs)
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let mut children = Children::start(&prefix, Duration::from_secs(15));
    children
        .until("every job to end", Duration::from_secs(60), |events| {
            ended(events, "key").len() == (per_key * 10) as usize
        })
        .await;
    let seen = children.seen.clone();
    children.stop().await;
    let first = seen.iter().map(|e| e.micros).min().unwrap();
    let last = seen.iter().map(|e| e.micros).max().unwrap();
    for key in 0..10 {
        let key = format!("customer-{key}");
        let mut starts: Vec<u128> = seen
            .iter()
            .filter(|e| e.start && e.key == key)
            .map(|e| e.micros)
            .collect();
        starts.sort();
        assert_eq!(starts.len(), per_key as usize, "{key}");
        for pair in starts.windows(2) {
            let apart = Duration::from_micros((pair[1] - pair[0]) as u64);
            assert!(
                apart >= Duration::from_millis(150),
                "{key}: two starts {apart:?} apart"
            );
        }
    }
    // 25 per key at 5/s: 4.8 s, the keys side by side.
    let took = Duration::from_micros((last - first) as u64);
    assert!(took >= Duration::from_millis(4700), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
