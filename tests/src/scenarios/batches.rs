//! `enqueue_all` of large batches: split over lanes, each queue's order
//! kept where the job has one, and a capped queue's refusals reported job
//! by job.

use std::sync::Arc;

use qjob::broker::Broker;
use qjob::{Client, Error, Job};

use crate::env::Env;
use crate::{Act, Task, test_job};

// `enqueue_all` of large batches: a job without an order to keep, the same
// on a capped queue, one partitioned and one single-active.
test_job!(spread, "qjob.test.batch.spread");
test_job!(spread_capped, "qjob.test.batch.capped", max_length = 2500);
test_job!(
    spread_partitioned,
    "qjob.test.batch.partitioned",
    partition_by = key,
    partitions = 3
);
test_job!(
    spread_capped_partitioned,
    "qjob.test.batch.capped-partitioned",
    partition_by = key,
    partitions = 2,
    max_length = 5000
);
test_job!(
    spread_capped_plain,
    "qjob.test.batch.capped-plain",
    max_length = 5000
);
test_job!(spread_sharded, "qjob.test.batch.sharded", shards = 4);
test_job!(
    spread_single_active,
    "qjob.test.batch.single-active",
    single_active = true
);

/// From a reset start, `jobs` tasks of `J` over 30 keys (`k0` … `k29`)
/// in one `enqueue_all` through a recording broker: the recording and
/// each job's outcome.
async fn enqueue_keyed<J: Job<Payload = Task>>(
    env: &Env,
    jobs: u32,
) -> (
    crate::recording::Recording<Arc<dyn Broker>>,
    Vec<Result<qjob::JobId, Error>>,
) {
    env.reset::<J>().await;
    let recording = crate::recording::Recording::new(env.broker());
    let client = Client::new(recording.clone());
    let tag = env.tag::<J>();
    let tasks = (0..jobs).map(|seq| Task {
        key: format!("k{}", seq % 30),
        ..Task::new(&tag, seq, Act::Succeed)
    });
    let results = client.enqueue_all::<J>(tasks).await.unwrap();
    (recording, results)
}

/// Whether a job's queues keep its jobs in order: partitioned or
/// single-active.
fn keeps_order(options: &qjob::JobOptions) -> bool {
    options.partitions().is_some() || options.single_active()
}

/// `enqueue_all` of a batch large enough to be split: exactly the jobs
/// whose result is `Ok` are stored, once each (on a capped queue, as many
/// as it holds). A job whose queues keep an order has each queue whole on
/// one of at most four `publish_all` calls, and each queue holds its jobs
/// in input order; any other job's batch goes out as four contiguous runs
/// at once.
pub async fn a_large_batch<J: Job<Payload = Task>>(env: &Env) {
    let jobs = 6_000;
    let (recording, results) = enqueue_keyed::<J>(env, jobs).await;
    let options = J::options();
    let ordered = keeps_order(&options);
    // Each stored job's input position (its seq), and its queue.
    let mut stored: Vec<u32> = Vec::new();
    let mut queue_of: std::collections::HashMap<String, String> = Default::default();
    for queue in options.consumed_queues() {
        let got = env.take_all(&queue).await;
        let mut last: Option<u32> = None;
        let mut last_of_key: std::collections::HashMap<String, u32> = Default::default();
        for message in got {
            let task: Task = serde_json::from_slice(&message.body).unwrap();
            let id = message.id.expect("a job has its id");
            let result = &results[task.seq as usize];
            assert_eq!(
                result.as_ref().ok().map(ToString::to_string),
                Some(id.clone()),
                "job {} stored, and its result says so with its id",
                task.seq
            );
            if ordered {
                if options.partitions().is_none() {
                    assert!(last < Some(task.seq), "{queue}: out of input order");
                }
                if let Some(before) = last_of_key.insert(task.key.clone(), task.seq) {
                    assert!(before < task.seq, "{queue}: key {} out of order", task.key);
                }
            }
            last = Some(task.seq);
            stored.push(task.seq);
            queue_of.insert(id, queue.clone());
        }
    }
    stored.sort();
    let ok: Vec<u32> = (0..jobs)
        .filter(|&seq| results[seq as usize].is_ok())
        .collect();
    assert_eq!(
        stored, ok,
        "exactly the jobs whose result is Ok are stored, once"
    );
    if options.shards() > 1 {
        for queue in options.consumed_queues() {
            let held = queue_of.values().filter(|q| **q == queue).count();
            let even = jobs as usize / usize::from(options.shards());
            assert!(
                held > even / 2,
                "{queue} holds {held} of {jobs}: shards fill evenly"
            );
        }
    }
    match options.max_length() {
        Some(cap) => {
            assert_eq!(ok.len(), cap as usize, "the capped queue is full");
            for result in results.iter().filter_map(|result| result.as_ref().err()) {
                assert!(matches!(result, Error::QueueFull { .. }), "{result:?}");
            }
        }
        None => assert_eq!(ok.len(), jobs as usize, "every job stored"),
    }
    let calls = recording.calls.lock().unwrap().clone();
    let queues = queue_of
        .values()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let lanes = if ordered { queues.min(4) } else { 4 };
    assert_eq!(calls.len(), lanes, "the batch's lanes");
    if ordered {
        for queue in queue_of.values() {
            let holding = calls
                .iter()
                .filter(|call| call.iter().any(|id| queue_of.get(id) == Some(queue)))
                .count();
            assert_eq!(holding, 1, "{queue} whole on one lane");
        }
    } else {
        let position: std::collections::HashMap<String, usize> = results
            .iter()
            .enumerate()
            .filter_map(|(seq, result)| Some((result.as_ref().ok()?.to_string(), seq)))
            .collect();
        for call in &calls {
            let seqs: Vec<usize> = call
                .iter()
                .filter_map(|id| position.get(id).copied())
                .collect();
            assert!(
                seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
                "each lane a contiguous run"
            );
        }
    }
    if let Env::Amqp(..) = env {
        // In memory a publish never waits: each lane ends before the next
        // is polled.
        assert_eq!(
            recording.most_at_once(),
            calls.len(),
            "the lanes run at once"
        );
    }
}

/// A batch over two chunks (20 000 jobs; `enqueue_all` sends 16 384 at a
/// time) into capped queues that the first chunk fills. For a job whose
/// queues keep an order, the refusals of the first chunk stop the batch:
/// nothing of the second chunk is sent, every job of it is `NotSent`, and
/// each key's stored jobs are its first ones, in order. Any other job's
/// batch goes on: every job is sent, and the refused ones are
/// `QueueFull`. Either way exactly the jobs whose result is `Ok` are
/// stored.
pub async fn a_refusal_over_two_chunks<J: Job<Payload = Task>>(env: &Env) {
    let (jobs, chunk) = (20_000, 16_384);
    let (recording, results) = enqueue_keyed::<J>(env, jobs).await;
    let options = J::options();
    let ordered = keeps_order(&options);
    let cap = options.max_length().expect("a capped job") as usize;
    let queues = options.consumed_queues();
    let mut stored_of_key: std::collections::HashMap<String, Vec<u32>> = Default::default();
    let mut stored = Vec::new();
    for queue in &queues {
        for message in env.take_all(queue).await {
            let task: Task = serde_json::from_slice(&message.body).unwrap();
            assert_eq!(
                results[task.seq as usize]
                    .as_ref()
                    .ok()
                    .map(ToString::to_string),
                message.id,
                "job {} stored, and its result says so with its id",
                task.seq
            );
            stored.push(task.seq);
            stored_of_key.entry(task.key).or_default().push(task.seq);
        }
    }
    stored.sort();
    let ok: Vec<u32> = (0..jobs)
        .filter(|&seq| results[seq as usize].is_ok())
        .collect();
    assert_eq!(stored, ok, "exactly the jobs whose result is Ok are stored");
    assert_eq!(ok.len(), cap * queues.len(), "every queue filled");
    let sent = recording.published.lock().unwrap().len();
    for (seq, result) in results.iter().enumerate() {
        let Err(error) = result else { continue };
        if ordered && seq >= chunk {
            assert!(
                matches!(error, Error::NotSent { reason, .. } if reason.contains("was not stored")),
                "job {seq}: {error:?}"
            );
        } else {
            assert!(
                matches!(error, Error::QueueFull { .. }),
                "job {seq}: {error:?}"
            );
        }
    }
    if ordered {
        assert_eq!(sent, chunk, "nothing after the first chunk is sent");
        for (key, stored) in stored_of_key {
            let first: Vec<u32> = (0..jobs)
                .filter(|seq| format!("k{}", seq % 30) == key)
                .take(stored.len())
                .collect();
            assert_eq!(stored, first, "key {key}: its first jobs, in order");
        }
    } else {
        assert_eq!(sent, jobs as usize, "every job is sent");
    }
}
