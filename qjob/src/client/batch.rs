//! The client side of batches: the store their members are counted in,
//! and the count itself, taken just before the members are published.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::Client;
use crate::Error;
use crate::batch::ledger::{CLOSER, gone, signed, uncount};
use crate::broker::Sent;
use crate::store::{BatchUpdate, Store};

impl Client {
    /// The store, which batches need.
    pub(crate) fn batch_store(&self) -> Result<Arc<dyn Store>, Error> {
        self.store
            .clone()
            .ok_or_else(|| Error::Config("batches need a store: Client::with_store".into()))
    }

    /// This client, enqueueing members of batch `batch`.
    pub(crate) fn in_batch(&self, batch: &str) -> Self {
        Self {
            batch: Some(batch.into()),
            ..self.clone()
        }
    }
}

/// Members of a batch counted for one publish ([`count`]). A task of its
/// own keeps the count, so that an enqueue dropped at any point, even
/// while the count is being written, leaves counted only the members that
/// went out.
pub(crate) struct Counted {
    /// To the task: how many of the members were not stored, and where
    /// to say they were taken back. Dropped unsent, the publish was
    /// abandoned.
    settled: oneshot::Sender<(usize, oneshot::Sender<()>)>,
}

impl Counted {
    /// After the publish: takes back the `not_stored` members, and waits
    /// until the store has that, so that a close right after sees it.
    pub(crate) async fn settle(self, not_stored: usize) {
        let (done, taken_back) = oneshot::channel();
        if self.settled.send((not_stored, done)).is_ok() {
            let _ = taken_back.await;
        }
    }
}

/// Counts `members` in batch `batch` just before they are published on
/// lanes that `sent` track. If the returned [`Counted`] is dropped before
/// it is settled, the members that did not go out are taken back (those
/// that did may be stored, and stay counted); if this is dropped while
/// counting, all of them are, once counted.
///
/// # Errors
///
/// [`Error::Config`] if the batch is closed, [`Error::Store`] if the
/// store failed or has no such batch: nothing was counted then, unless
/// the store counted them and its answer did not come in time (they stay
/// counted: see the batches guide's limits).
pub(crate) async fn count(
    client: &Client,
    batch: &str,
    members: usize,
    sent: Vec<Arc<Sent>>,
) -> Result<Counted, Error> {
    let store = client.batch_store()?;
    let broker = client.shared_broker();
    let batch = batch.to_owned();
    let (counted_tx, counted) = oneshot::channel();
    let (settled, settle) = oneshot::channel::<(usize, oneshot::Sender<()>)>();
    tokio::spawn(async move {
        let added = store
            .batch_update(&batch, BatchUpdate::Add(signed(members)), CLOSER)
            .await
            .and_then(|counts| counts.map(drop).ok_or_else(|| gone(&batch)));
        let added_ok = added.is_ok();
        if counted_tx.send(added).is_err() {
            // Dropped while counting: nothing went out.
            if added_ok {
                uncount(&*broker, &*store, &batch, members).await;
            }
            return;
        }
        if !added_ok {
            return;
        }
        match settle.await {
            Ok((not_stored, done)) => {
                uncount(&*broker, &*store, &batch, not_stored).await;
                let _ = done.send(());
            }
            // Dropped mid-publish: what went out may be stored.
            Err(_) => {
                let went_out: usize = sent.iter().map(|lane| lane.count()).sum();
                uncount(&*broker, &*store, &batch, members.saturating_sub(went_out)).await;
            }
        }
    });
    match counted.await {
        Ok(Ok(())) => Ok(Counted { settled }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::Store {
            operation: "count batch members".into(),
            message: "the counting task ended without an answer".into(),
        }),
    }
}
