//! Checks that several scenario topics share.

use qjob::broker::HeaderValue;

use crate::Got;
use crate::env::Env;

pub(super) fn header<'a>(got: &'a Got, name: &str) -> &'a HeaderValue {
    got.headers
        .get(name)
        .unwrap_or_else(|| panic!("dead letter lacks header {name}: {:?}", got.headers))
}

/// Fails with `why` if `queue` exists.
pub(super) async fn assert_absent(env: &Env, queue: &str, why: &str) {
    let stats = env.broker().queue_stats(queue).await.unwrap();
    assert!(stats.is_none(), "{why}: {queue} exists");
}
