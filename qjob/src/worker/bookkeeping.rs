//! The bookkeeping around an attempt and its settlement: a unique job's
//! lock freed, the inbox of jobs done, a batch member counted, observers
//! told.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::batch;
use crate::broker::{Delivery, Message};
use crate::policy::backoff;
use crate::store::{BatchUpdate, Store};
use crate::worker::handler::Handler;
use crate::worker::observer::{AttemptEvent, AttemptOutcome};
use crate::{JobId, UniqueUntil, headers};

impl Handler {
    /// The store and name of this delivery's unique lock (its
    /// `qjob-unique-key` header, as the producer took it), if the job frees
    /// it at one of `at`.
    pub(super) fn unique_lock(
        &self,
        message: &Message,
        at: &[UniqueUntil],
    ) -> Option<(Arc<dyn Store>, String)> {
        let unique = self
            .unique
            .as_ref()
            .filter(|unique| at.contains(&unique.until))?;
        let key = message.headers.get(headers::UNIQUE_KEY)?.as_str()?;
        Some((unique.store.clone(), key.to_owned()))
    }

    /// The inbox's key of job `job_id`.
    pub(super) fn inbox_key(&self, job_id: &JobId) -> String {
        format!("inbox:{}:{job_id}", self.job.options().queue())
    }

    /// Whether the inbox says job `job_id` succeeded already. A store that
    /// cannot be reached cannot say: the job runs (at least once), and the
    /// warning says a duplicate may run.
    pub(super) async fn already_done(&self, job_id: &JobId) -> bool {
        let Some(inbox) = &self.inbox else {
            return false;
        };
        match inbox.store.holder(&self.inbox_key(job_id)).await {
            Ok(done) => done.is_some(),
            Err(error) => {
                tracing::warn!(queue = self.routes.queue.name.as_str(), %job_id, %error, "the inbox cannot be read: running the job, which may be a duplicate");
                false
            }
        }
    }

    /// Records in the inbox that job `job_id` succeeded (before its ack:
    /// a redelivery after a crash in between is then known as done).
    pub(super) async fn mark_done(&self, job_id: &JobId) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        let key = self.inbox_key(job_id);
        if let Err(error) = inbox
            .store
            .acquire(&key, job_id.as_str(), inbox.window)
            .await
        {
            tracing::warn!(queue = self.routes.queue.name.as_str(), %job_id, %error, "could not record the job as done in the inbox: a duplicate delivery of it would run");
        }
    }

    /// Counts member `job_id` as finished in `batch`, and enqueues the
    /// batch's callback if this completed it; tried again while the store
    /// or the broker fails, as long as the delivery's channel is open.
    /// `false` if the channel closed first (the broker redelivers the
    /// member, which is counted then).
    pub(super) async fn count_in_batch(
        &self,
        delivery: &Delivery,
        batch: &str,
        job_id: &JobId,
        succeeded: bool,
    ) -> bool {
        let queue = self.routes.queue.name.as_str();
        let Some(store) = &self.batches else {
            tracing::error!(queue, %job_id, batch, "a batch member, but the worker has no store (WorkerBuilder::store): the batch will not complete");
            self.health
                .error(format!("batch {batch}: the worker has no store"));
            return true;
        };
        // Held while trying, within the hold budget (the broker's consumer
        // timeout would take back every delivery of the channel).
        let started = Instant::now();
        let budget = self.hold_budget.unwrap_or(Duration::from_secs(600));
        let mut failures: u32 = 0;
        loop {
            if !delivery.acker.is_open() {
                self.left_to_broker();
                return false;
            }
            let member = job_id.as_str();
            let update = BatchUpdate::Finish { member, succeeded };
            let counted = match store.batch_update(batch, update, member).await {
                Ok(Some(counts)) => batch::fire(&*self.broker, &**store, batch, counts, member)
                    .await
                    .map(drop),
                Ok(None) => {
                    tracing::warn!(queue, %job_id, batch, "the batch is gone from the store (expired?): the member is not counted");
                    Ok(())
                }
                Err(error) => Err(error),
            };
            let Err(error) = counted else {
                return true;
            };
            failures = failures.saturating_add(1);
            let wait = backoff::retry_delay(failures, Duration::from_secs(5));
            self.health.error(&error);
            if started.elapsed() + wait >= budget {
                tracing::warn!(queue, %job_id, batch, %error, "could not count a batch member within the hold budget; it goes back to the queue");
                let _ = delivery.acker.reject(true).await;
                return false;
            }
            tracing::warn!(queue, %job_id, batch, %error, retry_in = ?wait, "could not count a batch member; holding it and trying again");
            tokio::time::sleep(wait).await;
        }
    }

    /// Frees a lock; a failure is logged: the lock then expires at the end
    /// of its window.
    pub(super) async fn release(&self, store: &dyn Store, key: &str, job_id: &JobId) {
        if let Err(error) = store.release(key, job_id.as_str()).await {
            tracing::warn!(queue = self.routes.queue.name.as_str(), %job_id, %error, "could not free the unique job's lock; it expires at the end of its window");
        }
    }

    pub(super) fn report(
        &self,
        delivery: &Delivery,
        attempt: u32,
        job_id: &JobId,
        outcome: &AttemptOutcome,
    ) {
        if !self.observers.is_empty() {
            self.notify(
                &delivery.message.body,
                delivery.redelivered,
                attempt,
                job_id,
                outcome,
            );
        }
    }

    pub(super) fn notify(
        &self,
        payload: &[u8],
        redelivered: bool,
        attempt: u32,
        job_id: &JobId,
        outcome: &AttemptOutcome,
    ) {
        let event = AttemptEvent {
            job: self.job.name(),
            queue: &self.routes.queue.name,
            job_id,
            attempt,
            redelivered,
            payload,
            outcome,
        };
        for observer in self.observers.iter() {
            // An observer is user code: its panic must not skip what follows
            // (a held delivery's settlement, a lane's release).
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                observer.attempt_settled(&event)
            }));
            if told.is_err() {
                tracing::error!(queue = self.routes.queue.name.as_str(), %job_id, "an observer panicked; ignored");
            }
        }
    }
}
