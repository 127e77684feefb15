//! What a job type says about limits shared beyond one handler: its
//! class and weight in a worker's handler budget, and the concurrency and
//! rates it keeps across every process ([`crate::docs::limits`]).

use crate::{JobOptions, RateLimit};

/// Where a job type stands when job types compete for a worker's handler
/// budget ([`crate::WorkerBuilder::max_handlers`]): a free handler goes
/// to a higher class first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum JobClass {
    /// Work that waits for the rest (reports, exports).
    Bulk,
    /// Most work.
    #[default]
    Default,
    /// Work that must not wait behind the rest (payments, logins).
    Critical,
}

impl JobClass {
    /// The class as `#[job(class = "…")]` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobClass::Bulk => "bulk",
            JobClass::Default => "default",
            JobClass::Critical => "critical",
        }
    }
}

/// A job type's limits beyond one handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) global_concurrency: Option<u32>,
    pub(crate) resource: Option<String>,
    pub(crate) global_rate: Option<RateLimit>,
    pub(crate) key_rate: Option<RateLimit>,
    pub(crate) class: JobClass,
    pub(crate) weight: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            global_concurrency: None,
            resource: None,
            global_rate: None,
            key_rate: None,
            class: JobClass::Default,
            weight: 1,
        }
    }
}

impl Limits {
    /// Whether a start needs the store: a permit or a rate to take.
    pub(crate) fn shared(&self) -> bool {
        self.global_concurrency.is_some()
            || self.resource.is_some()
            || self.global_rate.is_some()
            || self.key_rate.is_some()
    }
}

impl JobOptions {
    /// At most `handlers` of this job type run at once across every
    /// process that runs it, held as leased permits in the worker's
    /// [`crate::store::Store`] ([`crate::docs::limits`]).
    ///
    /// # Panics
    ///
    /// If `handlers` is 0 (`#[job]` rejects it at compile time).
    pub fn with_global_concurrency(mut self, handlers: u32) -> Self {
        assert!(handlers >= 1, "global concurrency must be at least 1");
        self.limits.global_concurrency = Some(handlers);
        self
    }

    /// Each handler of this job type holds a permit of the named
    /// resource, which several job types may share; its size is set on
    /// the worker ([`crate::WorkerBuilder::resource`]), across every
    /// process.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.limits.resource = Some(resource.into());
        self
    }

    /// At most `rate.count` starts of this job type per `rate.per` across
    /// every process (the rate is kept in the worker's store).
    pub fn with_global_rate(mut self, rate: RateLimit) -> Self {
        self.limits.global_rate = Some(rate);
        self
    }

    /// At most `rate.count` starts per `rate.per` for each key
    /// ([`crate::Job::rate_key`]; `#[job(rate_by = field)]`) across every
    /// process: per customer, per tenant.
    pub fn with_key_rate(mut self, rate: RateLimit) -> Self {
        self.limits.key_rate = Some(rate);
        self
    }

    /// The job type's class in a worker's handler budget.
    pub fn with_class(mut self, class: JobClass) -> Self {
        self.limits.class = class;
        self
    }

    /// The job type's weight among job types of its class in a worker's
    /// handler budget (1 by default): a free handler goes to the job type
    /// holding the fewest per unit of weight.
    ///
    /// # Panics
    ///
    /// If `weight` is 0 (`#[job]` rejects it at compile time).
    pub fn with_weight(mut self, weight: u32) -> Self {
        assert!(weight >= 1, "weight must be at least 1");
        self.limits.weight = weight;
        self
    }

    /// The most handlers across every process, if limited.
    pub fn global_concurrency(&self) -> Option<u32> {
        self.limits.global_concurrency
    }

    /// The shared resource each handler holds a permit of, if any.
    pub fn resource(&self) -> Option<&str> {
        self.limits.resource.as_deref()
    }

    /// The rate across every process, if limited.
    pub fn global_rate(&self) -> Option<RateLimit> {
        self.limits.global_rate
    }

    /// The rate per key across every process, if limited.
    pub fn key_rate(&self) -> Option<RateLimit> {
        self.limits.key_rate
    }

    /// The class in a worker's handler budget.
    pub fn class(&self) -> JobClass {
        self.limits.class
    }

    /// The weight among its class in a worker's handler budget.
    pub fn weight(&self) -> u32 {
        self.limits.weight
    }
}
