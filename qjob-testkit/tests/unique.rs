//! Unique jobs on virtual time: the lock's window passes in milliseconds.

use std::time::Duration;

use qjob::store::MemoryStore;
use qjob::{Enqueued, JobContext, JobError, job};
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
