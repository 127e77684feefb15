//! The time bound on every broker operation but publishing, and what
//! lapin's answer to an ack or a reject means.

use std::future::Future;
use std::time::Duration;

use crate::Error;

/// How long an operation other than a publish (ack, reject, declare,
/// consume, cancel, close) may take: lapin does not always fail the
/// operations of a channel whose connection died, and a hung ack would hold
/// a handler slot forever.
pub(super) const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// `operation`, failing with [`Error::Timeout`] after [`OPERATION_TIMEOUT`].
pub(super) async fn bounded<T>(
    operation: impl FnOnce() -> String,
    future: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(OPERATION_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                operation: operation(),
                after: OPERATION_TIMEOUT,
            })
        })
}

/// lapin answers `false` when the delivery's channel is gone (the broker
/// requeues the message then) or it was settled before.
pub(super) fn settled(sent: Result<bool, lapin::Error>, operation: &str) -> Result<(), Error> {
    if sent.map_err(|e| Error::broker(operation, e))? {
        Ok(())
    } else {
        Err(Error::broker(
            operation,
            "the delivery's channel is closed or the delivery was already settled",
        ))
    }
}
