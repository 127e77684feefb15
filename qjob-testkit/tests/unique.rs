//! Unique jobs on virtual time: the lock's window passes in milliseconds.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use qjob::store::MemoryStore;
use qjob::{Enqueued, Job, JobContext, JobError, job};
use qjob_testkit::TestKit;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Digest {
    account: String,
}

#[job(queue = "kit.unique.digest", unique(key = account, within = "10m", until = "expired"))]
async fn digest(_digest: Digest, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn digest_of(account: &str) -> Digest {
    Digest {
        account: account.into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_is_taken_for_its_window_then_free_again() {
    let mut kit = TestKit::new().register(DigestJob).store(MemoryStore::new());
    let client = kit.client().clone();
    let first = client
        .enqueue_unique::<DigestJob>(digest_of("a"))
        .await
        .unwrap();
    assert!(!first.is_duplicate());
    let other = client
        .enqueue_unique::<DigestJob>(digest_of("b"))
        .await
        .unwrap();
    assert!(!other.is_duplicate(), "another key");
    kit.run_until_idle().await;
    // Run, but the window (`until = "expired"`) still holds the key.
    tokio::time::sleep(Duration::from_secs(9 * 60)).await;
    let again = client
        .enqueue_unique::<DigestJob>(digest_of("a"))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(first.id().clone()));
    tokio::time::sleep(Duration::from_secs(61)).await;
    let later = client
        .enqueue_unique::<DigestJob>(digest_of("a"))
        .await
        .unwrap();
    assert!(!later.is_duplicate(), "the window passed");
    kit.run_until_idle().await;
    assert_eq!(kit.succeeded::<DigestJob>().len(), 3);
}

/// How long a caller waits for an enqueue before it gives up on it (a
/// request timeout).
const GIVE_UP: Duration = Duration::from_millis(100);

/// Lets the tasks a dropped enqueue spawned (to give locks back) run.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// The job in `queue` of each key, by the key.
fn stored_by_key(kit: &TestKit, queue: &str) -> HashMap<String, Vec<String>> {
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for message in kit.broker().messages(queue) {
        let digest: Digest = serde_json::from_slice(&message.body).unwrap();
        by_key
            .entry(digest.account)
            .or_default()
            .push(message.id.unwrap());
    }
    by_key
}

/// An enqueue whose message was stored but whose confirm never came,
/// given up by its caller: the job exists, so its key stays taken.
#[tokio::test(start_paused = true)]
async fn an_enqueue_given_up_after_its_message_went_out_keeps_the_key() {
    let kit = TestKit::new().register(DigestJob).store(MemoryStore::new());
    let client = kit.client().clone();
    kit.broker().lose_next_confirm_to(DigestJob::QUEUE);
    let given_up = tokio::time::timeout(GIVE_UP, client.enqueue::<DigestJob>(digest_of("a"))).await;
    assert!(given_up.is_err(), "no confirm: {given_up:?}");
    settle().await;
    let again = client
        .enqueue_unique::<DigestJob>(digest_of("a"))
        .await
        .unwrap();
    let stored = stored_by_key(&kit, DigestJob::QUEUE);
    assert_eq!(
        (again.is_duplicate(), stored["a"].len()),
        (true, 1),
        "{again:?}; jobs of the key in the queue: {stored:?}"
    );
    assert_eq!(again.id().as_str(), stored["a"][0]);
}

/// An enqueue given up while its publish waits to go out (a hung
/// connection): nothing was sent, so its key is free again.
#[tokio::test(start_paused = true)]
async fn an_enqueue_given_up_before_its_message_went_out_frees_the_key() {
    let store = MemoryStore::new();
    let kit = TestKit::new().register(DigestJob).store(store.clone());
    kit.broker().hang_publishes_to(DigestJob::QUEUE);
    let given_up =
        tokio::time::timeout(GIVE_UP, kit.client().enqueue::<DigestJob>(digest_of("a"))).await;
    assert!(given_up.is_err(), "the publish hangs: {given_up:?}");
    settle().await;
    let key = format!("unique:{}:\"a\"", DigestJob::QUEUE);
    assert_eq!(store.held(&key), None);
    assert_eq!(kit.broker().ready_count(DigestJob::QUEUE), 0);
}

/// The same for a delayed job, whose message waits in a delay queue.
#[tokio::test(start_paused = true)]
async fn a_delayed_enqueue_given_up_after_its_message_went_out_keeps_the_key() {
    let kit = TestKit::new().register(DigestJob).store(MemoryStore::new());
    let client = kit.client().clone();
    let delay = Duration::from_secs(60);
    let delay_queue = format!("{}.delay.60000ms", DigestJob::QUEUE);
    kit.broker().lose_next_confirm_to(&delay_queue);
    let given_up = tokio::time::timeout(
        GIVE_UP,
        client.enqueue_in::<DigestJob>(digest_of("a"), delay),
    )
    .await;
    assert!(given_up.is_err(), "no confirm: {given_up:?}");
    settle().await;
    let again = client
        .enqueue_unique::<DigestJob>(digest_of("a"))
        .await
        .unwrap();
    assert!(
        again.is_duplicate(),
        "{again:?}; {} job(s) of the key waiting, {} ready",
        kit.broker().ready_count(&delay_queue),
        kit.broker().ready_count(DigestJob::QUEUE)
    );
    assert_eq!(kit.broker().ready_count(DigestJob::QUEUE), 0);
}

/// An `enqueue_all` given up while one of its channels waits for a
/// confirm (after its first message was stored) and the other has had
/// all of its jobs confirmed: the keys of the jobs stored stay taken, and
/// only those of the jobs never sent are free.
#[tokio::test(start_paused = true)]
async fn an_enqueue_all_given_up_keeps_the_keys_of_the_jobs_sent_only() {
    let kit = TestKit::new().register(DigestJob).store(MemoryStore::new());
    let client = kit.client().clone();
    // Two channels of 1 024 jobs each.
    let keys: Vec<String> = (0..2048).map(|n| format!("account-{n}")).collect();
    kit.broker().lose_next_confirm_to(DigestJob::QUEUE);
    let given_up = tokio::time::timeout(
        GIVE_UP,
        client.enqueue_all::<DigestJob>(keys.iter().map(|key| digest_of(key))),
    )
    .await;
    assert!(given_up.is_err(), "no confirm: {given_up:?}");
    settle().await;
    let stored = stored_by_key(&kit, DigestJob::QUEUE);
    // One channel's jobs all confirmed, the other's first stored.
    assert_eq!(stored.len(), 1025);
    let (mut kept, mut freed) = (0, 0);
    for key in &keys {
        let again = client
            .enqueue_unique::<DigestJob>(digest_of(key))
            .await
            .unwrap();
        match (stored.get(key), &again) {
            (Some(jobs), Enqueued::Duplicate(holder)) if jobs == &[holder.to_string()] => {
                kept += 1;
            }
            (None, Enqueued::New(_)) => freed += 1,
            _ => {}
        }
    }
    assert_eq!(
        (kept, freed),
        (1025, 1023),
        "keys of stored jobs still taken, keys of jobs never sent free"
    );
}

/// A delayed enqueue whose delay queue could not be declared (a timeout)
/// sent nothing: its key is free again. A timeout used to count as "may
/// have been stored" whatever failed, and the key stayed held for its
/// window by a job that never existed.
#[tokio::test(start_paused = true)]
async fn a_delayed_enqueue_that_sent_nothing_frees_its_key() {
    let memory = qjob_testkit::MemoryBroker::new();
    let broker = common::Faulty {
        declares_time_out: Some(".delay."),
        ..common::Faulty::new(memory.clone())
    };
    let client = qjob::Client::new(broker).with_store(MemoryStore::new());
    let error = client
        .enqueue_in::<DigestJob>(digest_of("a"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(error, qjob::Error::Timeout { .. }), "{error}");
    assert_eq!(memory.ready_count(DigestJob::QUEUE), 0, "nothing was sent");
    let again = client
        .enqueue_unique::<DigestJob>(digest_of("a"))
        .await
        .unwrap();
    assert!(!again.is_duplicate(), "{again:?}");
}
