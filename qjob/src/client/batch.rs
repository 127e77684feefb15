//! The client side of batches: starting one, reading and closing one by
//! its id, and the store its members are counted in.

use std::sync::Arc;

use super::Client;
use crate::Error;
use crate::store::Store;

impl Client {
    /// Starts a batch: jobs enqueued through it are its members, and its
    /// callback job runs once they have all finished (see
    /// [`crate::docs::batches`]). Needs a store ([`Client::with_store`]).
    pub fn batch(&self) -> crate::batch::BatchBuilder {
        crate::batch::BatchBuilder::new(self.clone())
    }

    /// The progress of batch `batch` (by its id), or `None` if the store
    /// knows no such batch (never created, or expired).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without a store; [`Error::Store`] if it failed.
    pub async fn batch_progress(
        &self,
        batch: &str,
    ) -> Result<Option<crate::batch::BatchProgress>, Error> {
        crate::batch::progress(&*self.batch_store()?, batch).await
    }

    /// Closes batch `batch` by its id, as [`crate::batch::Batch::close`]
    /// does: from any process, and again to enqueue a callback that a
    /// close which failed (or died) had claimed.
    ///
    /// # Errors
    ///
    /// As [`crate::batch::Batch::close`]; [`Error::Store`] if there is no
    /// such batch.
    pub async fn close_batch(&self, batch: &str) -> Result<crate::batch::BatchProgress, Error> {
        crate::batch::close(self, &*self.batch_store()?, batch).await
    }

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
