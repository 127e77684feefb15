//! Waits on observable state, failing the test at a time limit.

use std::time::Duration;

/// Waits until `done` holds (checked every 20 ms), failing the test after
/// `limit`: the one wait on observable state the test crates share.
pub async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 25 ms until it holds, failing after `limit`.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = check();
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
