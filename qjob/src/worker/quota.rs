//! A job type's limits shared by every process: the permits of its global
//! concurrency and of the resource it uses, and its rates, kept in the
//! worker's store ([`crate::docs::limits`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::Store;
use crate::{JobId, JobOptions, RateLimit};

/// How often a start that found no permit asks again (unless a permit is
/// freed in this process first), spread by up to half again.
pub(crate) const PERMIT_POLL: Duration = Duration::from_millis(100);

/// How long a start waits before asking a store that failed again.
pub(crate) const STORE_RETRY: Duration = Duration::from_secs(1);

/// The longest a rate's wait is waited for holding the permits already
/// taken (longer, they are given back and taken again after it).
pub(crate) const RATE_HOLD: Duration = Duration::from_millis(50);

/// How long a permit lasts unless renewed, by default: a crashed
/// process's permits come back within it.
pub(crate) const DEFAULT_PERMIT_LEASE: Duration = Duration::from_secs(15);

/// A job type's shared limits.
pub(crate) struct Quota {
    store: Arc<dyn Store>,
    job: &'static str,
    /// The resources a start holds a permit of, with their size.
    resources: Vec<(String, u32)>,
    /// The rate of the whole job type, with its key in the store.
    rate: Option<(String, RateLimit)>,
    /// The rate of each key, with the prefix of its keys in the store.
    key_rate: Option<(String, RateLimit)>,
    lease: Duration,
    /// Who holds this worker's permits: its id.
    worker: String,
    next: AtomicU64,
    /// Told when a permit is freed in this process.
    freed: Notify,
    /// Why starts wait on the store, if they do (a failed call).
    problem: Mutex<Option<String>>,
    /// Starts so far, for the rate seen.
    started: AtomicU64,
}

/// The store key of a job type's global concurrency.
pub(crate) fn job_resource(queue: &str) -> String {
    format!("job:{queue}")
}

/// The store key of a named resource.
pub(crate) fn named_resource(name: &str) -> String {
    format!("resource:{name}")
}

/// What a start's try at the limits came to.
pub(crate) enum Entry {
    /// It may start, holding these permits.
    Held(Held),
    /// Not yet: ask again after this long (or once a permit is freed here).
    Wait(Duration),
}

impl Quota {
    /// The shared limits of a job type, if it has any. `sizes` gives each
    /// named resource's size (checked by the plan).
    pub(crate) fn new(
        job: &'static str,
        options: &JobOptions,
        store: Arc<dyn Store>,
        sizes: &std::collections::HashMap<String, u32>,
        worker: &str,
        lease: Duration,
    ) -> Option<Arc<Quota>> {
        if !options.limits.shared() {
            return None;
        }
        let queue = options.queue();
        let mut resources = Vec::new();
        if let Some(handlers) = options.global_concurrency() {
            resources.push((job_resource(queue), handlers));
        }
        if let Some(name) = options.resource() {
            let size = sizes.get(name).copied().unwrap_or(0);
            resources.push((named_resource(name), size));
        }
        Some(Arc::new(Quota {
            store,
            job,
            resources,
            rate: options.global_rate().map(|rate| (queue.to_owned(), rate)),
            key_rate: options
                .key_rate()
                .map(|rate| (format!("{queue}:key:"), rate)),
            lease,
            worker: worker.to_owned(),
            next: AtomicU64::new(0),
            freed: Notify::new(),
            problem: Mutex::new(None),
            started: AtomicU64::new(0),
        }))
    }

    /// Whether a start needs its payload's rate key.
    pub(crate) fn keyed(&self) -> bool {
        self.key_rate.is_some()
    }

    /// Tries once to take every permit and rate a start of `job_id` needs
    /// (its rate key `key`): permits first, then the key's rate, then the
    /// job type's (a start the narrower rate refuses spends nothing of the
    /// wider). A rate that says wait at most [`RATE_HOLD`] is waited for
    /// holding the permits; a longer wait gives them back. A store that
    /// fails makes it wait too, and health says why. Dropped half-way, the
    /// permits it took (or may have taken) are freed in the background.
    pub(crate) async fn try_enter(self: &Arc<Self>, job_id: &JobId, key: Option<&str>) -> Entry {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let mut held = Held {
            quota: self.clone(),
            holder: format!("{}/{job_id}/{number}", self.worker),
            resources: Vec::new(),
            renewal: None,
        };
        for (resource, size) in &self.resources {
            // Counted before the call: a call dropped in flight may have
            // taken it (freeing a permit not held changes nothing).
            held.resources.push(resource.clone());
            match self
                .store
                .take_permit(resource, &held.holder, *size, self.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Not taken, for sure.
                    held.resources.pop();
                    self.clear_problem();
                    held.release();
                    return Entry::Wait(PERMIT_POLL);
                }
                Err(error) => return self.store_failed(held, &error),
            }
        }
        held.renew();
        let keyed = self
            .key_rate
            .as_ref()
            .zip(key)
            .map(|((prefix, rate), key)| (format!("{prefix}{key}"), *rate));
        for (rate_key, rate) in keyed.into_iter().chain(self.rate.iter().cloned()) {
            loop {
                match self.store.take_rate(&rate_key, rate).await {
                    Ok(None) => break,
                    Ok(Some(wait)) if wait <= RATE_HOLD && !held.resources.is_empty() => {
                        tokio::time::sleep(wait).await;
                    }
                    Ok(Some(wait)) => {
                        self.clear_problem();
                        held.release();
                        return Entry::Wait(wait);
                    }
                    Err(error) => return self.store_failed(held, &error),
                }
            }
        }
        self.clear_problem();
        self.started.fetch_add(1, Ordering::Relaxed);
        Entry::Held(held)
    }

    /// Waits `wait` (spread by up to half again, when polling for a
    /// permit), or until a permit is freed in this process.
    pub(crate) async fn wait(&self, wait: Duration) {
        let spread = if wait == PERMIT_POLL {
            let turn = self.next.load(Ordering::Relaxed) as u32;
            wait.mul_f64(crate::policy::backoff::jitter_for(&self.worker, turn) / 2.0)
        } else {
            Duration::ZERO
        };
        tokio::select! {
            () = tokio::time::sleep(wait + spread) => {}
            () = self.freed.notified() => {}
        }
    }

    fn store_failed(&self, held: Held, error: &crate::Error) -> Entry {
        let problem = format!(
            "job {}: its shared limits cannot be checked, so it waits: {error}",
            self.job
        );
        let first = self
            .problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(problem.clone())
            .is_none();
        if first {
            tracing::warn!(job = self.job, %error, "{problem}");
        }
        held.release();
        Entry::Wait(STORE_RETRY)
    }

    fn clear_problem(&self) {
        let was = self
            .problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if was.is_some() {
            tracing::info!(
                job = self.job,
                "the store answers again: shared limits are checked"
            );
        }
    }

    /// The resources (store keys) a start holds a permit of, with their
    /// size as built.
    pub(crate) fn resources(&self) -> &[(String, u32)] {
        &self.resources
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Why starts wait on the store now, if they do.
    pub(crate) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts that passed the limits so far.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// The permits one attempt holds: renewed every third of their lease from
/// the moment they are taken, freed when it ends ([`Held::release`]) or in
/// the background if it is dropped.
pub(crate) struct Held {
    quota: Arc<Quota>,
    holder: String,
    /// The resources it holds (or may hold) a permit of.
    resources: Vec<String>,
    renewal: Option<tokio::task::AbortHandle>,
}

impl Held {
    /// Renews the permits every third of their lease until released; a
    /// permit lost meanwhile (the store out of reach past its lease) is
    /// logged, the work goes on.
    fn renew(&mut self) {
        if self.resources.is_empty() {
            return;
        }
        let (quota, holder) = (self.quota.clone(), self.holder.clone());
        let resources = self.resources.clone();
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(quota.lease / 3).await;
                for resource in &resources {
                    let renewed = quota
                        .store
                        .renew_permit(resource, &holder, quota.lease)
                        .await;
                    match renewed {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(
                            job = quota.job,
                            resource,
                            holder,
                            "a running job's permit ran out (the store was out of reach past its lease): the limit may be passed while it runs"
                        ),
                        Err(error) => {
                            tracing::warn!(job = quota.job, resource, %error, "renewing a running job's permit failed; trying again")
                        }
                    }
                }
            }
        });
        self.renewal = Some(renewal.abort_handle());
    }

    /// Stops renewing and frees the permits in the background (a
    /// settlement does not wait on the store; a permit it cannot free runs
    /// out with its lease), then wakes a start waiting here.
    pub(crate) fn release(mut self) {
        self.free_in_background();
    }

    fn free_in_background(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if self.resources.is_empty() {
            return;
        }
        let (quota, holder) = (self.quota.clone(), std::mem::take(&mut self.holder));
        let resources = std::mem::take(&mut self.resources);
        let free = async move {
            let mut freed = false;
            for resource in &resources {
                match quota.store.free_permit(resource, &holder).await {
                    Ok(was_held) => freed |= was_held,
                    Err(error) => {
                        tracing::warn!(job = quota.job, resource, %error, "freeing a permit failed: it comes back when its lease runs out")
                    }
                }
            }
            // A start waiting here may take it (only a permit freed: a
            // wake for nothing would set the waiters polling in a loop).
            if freed {
                quota.freed.notify_one();
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(free);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.free_in_background();
    }
}
