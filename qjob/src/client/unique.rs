//! Unique jobs: the lock taken before the publish, and given back when
//! the job was not stored (or its enqueue was dropped before it went out).

use std::future::Future;
use std::sync::Arc;

use super::message::maybe_stored;
use super::{Client, Enqueued};
use crate::Error;
use crate::broker::Sent;
use crate::store::Store;
use crate::{Job, JobId};

/// Gives a unique job's lock back when dropped, unless disarmed (its
/// `store` taken) or its job's message went out: from a task of its own,
/// so that an enqueue dropped before its publish sent anything still
/// frees it, and one dropped after keeps the lock of a job that may exist.
pub(super) struct Unlock {
    store: Option<Arc<dyn Store>>,
    key: String,
    owner: String,
    /// The publish of the job's message, and its place in it.
    sent: Option<(Arc<Sent>, usize)>,
}

impl Unlock {
    /// Keeps the lock, once dropped, if message `position` of the publish
    /// `sent` tracks went out.
    pub(super) fn kept_once_sent(&mut self, sent: &Arc<Sent>, position: usize) {
        self.sent = Some((Arc::clone(sent), position));
    }
}

impl Drop for Unlock {
    fn drop(&mut self) {
        if let Some((sent, position)) = &self.sent
            && sent.count() > *position
        {
            return;
        }
        let Some(store) = self.store.take() else {
            return;
        };
        let (key, owner) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // If this fails, the lock expires at the end of its window.
                let _ = store.release(&key, &owner).await;
            });
        }
    }
}

impl Unlock {
    /// Gives the lock back and waits until the store has it, so that the
    /// caller's next enqueue of the key finds it free. Armed until the
    /// store answered: dropped before, it gives the lock back from a task.
    pub(super) async fn release(mut self) {
        if let Some(store) = self.store.clone() {
            // If this fails, the lock expires at the end of its window.
            let _ = store.release(&self.key, &self.owner).await;
        }
        self.store = None;
    }
}

/// Whether a unique job may publish: its lock, taken (`None` if the job is
/// not unique), or the job that holds it.
pub(super) enum Claim {
    Free(Option<Unlock>),
    Held(JobId),
}

/// After a unique job's publish: its lock stays if the job was, or may
/// have been, stored (a timeout, a lost connection after the message went
/// out: it expires at the end of its window if the job never comes);
/// otherwise, and when the message never went out (a delay queue's
/// declare that timed out), the guard is returned, to [`Unlock::release`].
pub(super) fn unless_stored(guard: Option<Unlock>, outcome: &Result<(), Error>) -> Option<Unlock> {
    let mut guard = guard?;
    let went_out = guard
        .sent
        .as_ref()
        .is_none_or(|(sent, position)| sent.count() > *position);
    let stored = match outcome {
        Ok(()) => true,
        Err(error) => maybe_stored(error) && went_out,
    };
    if stored {
        guard.store = None;
        return None;
    }
    // Not stored: the lock goes back even if the enqueue is dropped now,
    // whether or not the message went out.
    guard.sent = None;
    Some(guard)
}

impl Client {
    /// Runs `publish` for job `id`, under lock `lock` if the job is unique:
    /// not at all if another job holds the lock. `publish` marks the
    /// [`Sent`] it is given when the message goes out: dropped from then
    /// on, this keeps the lock (the job may exist); dropped before, it
    /// gives it back.
    pub(super) async fn locked<J: Job, F>(
        &self,
        lock: Option<String>,
        id: JobId,
        publish: impl FnOnce(Arc<Sent>) -> F,
    ) -> Result<Enqueued, Error>
    where
        F: Future<Output = Result<(), Error>>,
    {
        let mut guard = match self.claim::<J>(lock, &id).await? {
            Claim::Held(holder) => return Ok(Enqueued::Duplicate(holder)),
            Claim::Free(guard) => guard,
        };
        let sent = Arc::new(Sent::new());
        if let Some(guard) = &mut guard {
            guard.kept_once_sent(&sent, 0);
        }
        let outcome = publish(sent).await;
        if let Some(guard) = unless_stored(guard, &outcome) {
            guard.release().await;
        }
        outcome.map(|()| Enqueued::New(id))
    }

    /// Takes lock `lock` for job `id` if the job is unique. A publish that
    /// failed before anything was stored gives the lock back through the
    /// guard (see [`unless_stored`]), as does one abandoned (its future
    /// dropped) before its message went out (see [`Unlock`]).
    pub(super) async fn claim<J: Job>(
        &self,
        lock: Option<String>,
        id: &JobId,
    ) -> Result<Claim, Error> {
        let (Some(key), Some(unique)) = (lock, J::options().unique()) else {
            return Ok(Claim::Free(None));
        };
        let Some(store) = self.store.clone() else {
            return Err(Error::Config(format!(
                "job {} is unique: the client needs a store (Client::with_store)",
                J::NAME
            )));
        };
        // Given back if this is dropped before the publish was sent (or
        // if the store failed after taking it).
        let mut guard = Unlock {
            store: Some(store.clone()),
            key: key.clone(),
            owner: id.to_string(),
            sent: None,
        };
        if let Some(holder) = store.acquire(&key, id.as_str(), unique.within).await? {
            guard.store = None;
            return Ok(Claim::Held(JobId::from(holder)));
        }
        Ok(Claim::Free(Some(guard)))
    }
}
