//! Batches on the in-memory store and broker: the callback runs once,
//! with the members' outcomes, however the members ended.

use std::time::Duration;

use qjob::batch::BatchDone;
use qjob::store::MemoryStore;
use qjob::{Job, JobContext, JobError, job};
use qjob_testkit::TestKit;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Part {
    n: u32,
    fail: bool,
}

fn parts(count: u32, failing: impl Fn(u32) -> bool) -> Vec<Part> {
    (0..count)
        .map(|n| Part {
            n,
            fail: failing(n),
        })
        .collect()
}

#[job(queue = "kit.batch.part", retry = 2, backoff = fixed("1s"), concurrency = 2)]
async fn part(part: Part, _ctx: JobContext) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    if part.fail {
        return Err(JobError::msg("part failed"));
    }
    Ok(())
}

#[job(queue = "kit.batch.done")]
async fn done(_done: BatchDone, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// A batch with `DoneJob` for its callback (only on success, or not).
async fn open_batch(kit: &TestKit, only_on_success: bool) -> qjob::batch::Batch {
    let builder = kit.client().batch();
    let builder = match only_on_success {
        true => builder.on_success::<DoneJob>(),
        false => builder.on_complete::<DoneJob>(),
    };
    builder.open().await.unwrap()
}

async fn progress_of(kit: &TestKit, batch: &str) -> qjob::batch::BatchProgress {
    kit.client().batch_progress(batch).await.unwrap().unwrap()
}

fn kit() -> TestKit {
    TestKit::new()
        .register(PartJob)
        .register(DoneJob)
        .store(MemoryStore::new())
}

#[tokio::test(start_paused = true)]
async fn the_callback_runs_once_with_the_members_outcomes() {
    let mut kit = kit();
    let batch = kit
        .client()
        .batch()
        .on_complete::<DoneJob>()
        .data(serde_json::json!({ "report": 7 }))
        .open()
        .await
        .unwrap();
    let results = batch
        .enqueue_all::<PartJob>(parts(20, |n| n % 10 == 3))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let progress = batch.close().await.unwrap();
    assert_eq!((progress.total, progress.pending), (20, 20));
    kit.run_until_idle().await;

    let callbacks = kit.succeeded::<DoneJob>();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    let done = &callbacks[0];
    assert_eq!(done.batch, batch.id());
    assert_eq!(
        (done.total, done.succeeded, done.dead_lettered),
        (20, 18, 2)
    );
    assert_eq!(done.data["report"], 7);
    assert_eq!(
        kit.attempts::<DoneJob>()[0].job_id,
        qjob::batch::callback_id(batch.id())
    );
    let progress = progress_of(&kit, batch.id()).await;
    assert_eq!(
        (
            progress.total,
            progress.pending,
            progress.succeeded,
            progress.failed
        ),
        (20, 0, 18, 2)
    );
    assert!(progress.closed && progress.callback_enqueued);
}

#[tokio::test(start_paused = true)]
async fn members_added_while_open_count_and_the_callback_waits_for_the_close() {
    let mut kit = kit();
    let batch = open_batch(&kit, false).await;
    batch
        .enqueue::<PartJob>(Part { n: 0, fail: false })
        .await
        .unwrap();
    kit.run_until_idle().await;
    assert!(
        kit.succeeded::<DoneJob>().is_empty(),
        "open: no callback yet"
    );
    let progress = progress_of(&kit, batch.id()).await;
    assert_eq!(
        (progress.total, progress.pending, progress.closed),
        (1, 0, false)
    );
    batch
        .enqueue_all::<PartJob>(parts(4, |_| false))
        .await
        .unwrap();
    // Closing once every member finished enqueues the callback at once.
    kit.run_until_idle().await;
    let progress = batch.close().await.unwrap();
    assert!(progress.callback_enqueued);
    kit.run_until_idle().await;
    let callbacks = kit.succeeded::<DoneJob>();
    assert_eq!(callbacks.len(), 1);
    assert_eq!((callbacks[0].total, callbacks[0].succeeded), (5, 5));
    let error = batch
        .enqueue::<PartJob>(Part { n: 9, fail: false })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("closed"), "{error}");
    // Closing again, by id from any client, changes nothing.
    let progress = kit.client().close_batch(batch.id()).await.unwrap();
    assert!(progress.closed && progress.callback_enqueued);
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<DoneJob>().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_callback_only_on_success_does_not_run_when_a_member_failed() {
    let mut kit = kit();
    let failing = open_batch(&kit, true).await;
    failing
        .enqueue_all::<PartJob>(parts(5, |n| n == 2))
        .await
        .unwrap();
    failing.close().await.unwrap();
    let fine = open_batch(&kit, true).await;
    fine.enqueue_all::<PartJob>(parts(5, |_| false))
        .await
        .unwrap();
    fine.close().await.unwrap();
    kit.run_until_idle().await;
    let callbacks = kit.succeeded::<DoneJob>();
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].batch, fine.id());
    let progress = progress_of(&kit, failing.id()).await;
    assert_eq!((progress.failed, progress.pending), (1, 0));
    assert!(progress.callback_enqueued, "found not due");
}

#[tokio::test(start_paused = true)]
async fn a_worker_crash_mid_batch_counts_each_member_once() {
    let mut kit = kit();
    let batch = open_batch(&kit, false).await;
    batch
        .enqueue_all::<PartJob>(parts(30, |n| n % 10 == 0))
        .await
        .unwrap();
    batch.close().await.unwrap();
    kit.start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    kit.crash_worker().await;
    let progress = progress_of(&kit, batch.id()).await;
    assert!(
        progress.pending > 0 && progress.pending < 30,
        "{progress:?}"
    );
    kit.run_until_idle().await;
    let callbacks = kit.succeeded::<DoneJob>();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(
        (
            callbacks[0].total,
            callbacks[0].succeeded,
            callbacks[0].dead_lettered
        ),
        (30, 27, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_needs_a_callback_and_a_store() {
    let kit = kit();
    let error = kit.client().batch().open().await.unwrap_err();
    assert!(error.to_string().contains("callback"), "{error}");
    let bare = TestKit::new().register(PartJob);
    let error = bare
        .client()
        .batch()
        .on_complete::<DoneJob>()
        .open()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("store"), "{error}");
}

/// How long a caller waits for an enqueue before it gives up on it (a
/// request timeout).
const GIVE_UP: Duration = Duration::from_millis(100);

/// Members whose publish hung before anything went out, given up by their
/// caller: nothing was stored, so nothing stays counted, and the close
/// brings the callback.
#[tokio::test(start_paused = true)]
async fn members_given_up_before_they_went_out_are_not_counted() {
    let mut kit = kit();
    let batch = open_batch(&kit, false).await;
    kit.broker().hang_publishes_to(PartJob::QUEUE);
    let given_up =
        tokio::time::timeout(GIVE_UP, batch.enqueue_all::<PartJob>(parts(2, |_| false))).await;
    assert!(given_up.is_err(), "the publish hangs: {given_up:?}");
    assert_eq!(kit.broker().ready_count(PartJob::QUEUE), 0);
    batch.close().await.unwrap();
    kit.run_until_idle().await;
    let progress = progress_of(&kit, batch.id()).await;
    assert_eq!(
        (progress.total, progress.pending, progress.callback_enqueued),
        (0, 0, true),
        "{progress:?}"
    );
    let callbacks = kit.succeeded::<DoneJob>();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(callbacks[0].total, 0);
}

/// Given up after the first member was stored (its confirm lost) and
/// before the second went out: the first stays counted and runs, the
/// second is taken back, and the callback comes with the first alone.
#[tokio::test(start_paused = true)]
async fn a_member_given_up_after_it_went_out_stays_counted() {
    let mut kit = kit();
    let batch = open_batch(&kit, false).await;
    kit.broker().lose_next_confirm_to(PartJob::QUEUE);
    let given_up =
        tokio::time::timeout(GIVE_UP, batch.enqueue_all::<PartJob>(parts(2, |_| false))).await;
    assert!(given_up.is_err(), "no confirm: {given_up:?}");
    assert_eq!(kit.broker().ready_count(PartJob::QUEUE), 1);
    batch.close().await.unwrap();
    kit.run_until_idle().await;
    let progress = progress_of(&kit, batch.id()).await;
    assert_eq!(
        (
            progress.total,
            progress.pending,
            progress.succeeded,
            progress.callback_enqueued
        ),
        (1, 0, 1, true),
        "{progress:?}"
    );
    let callbacks = kit.succeeded::<DoneJob>();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!((callbacks[0].total, callbacks[0].succeeded), (1, 1));
}
