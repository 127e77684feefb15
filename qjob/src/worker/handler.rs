//! One delivery, from its envelope to its settlement: run the handler,
//! decide, settle on the broker, tell the observers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tracing::{Instrument, Span, field};

use crate::broker::{Broker, Delivery};
use crate::headers::Envelope;
use crate::policy::backoff::{self, BackoffPolicy};
use crate::store::Store;
use crate::worker::budget::InBudget;
use crate::worker::cancellations::{Cancellations, Doing};
use crate::worker::decide::{self, Action, Attempt};
use crate::worker::gate::Gate;
use crate::worker::halt::{Halt, Retries};
use crate::worker::health::Health;
use crate::worker::held::{self, Attempts, Hold, Running, Seen};
use crate::worker::metrics::JobMetrics;
use crate::worker::observer::{AttemptOutcome, Observer};
use crate::worker::quota::Quota;
use crate::worker::routes::Routes;
use crate::worker::runnable::{Decoded, Outcome, Runnable};
use crate::worker::scaler::Work;
use crate::{DeadReason, JobContext, JobId, UniqueUntil, topology, trace};

/// What handler tasks need, shared by all of one consumer's.
pub(crate) struct Handler {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) job: Arc<dyn Runnable>,
    pub(crate) routes: Routes,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) observers: Arc<[Arc<dyn Observer>]>,
    /// The job type's circuit breaker and rate limit, shared by its consumers.
    pub(crate) gate: Option<Arc<Gate>>,
    pub(crate) health: Health,
    /// The job's series (a partitioned job's partition queues share their
    /// job queue's).
    pub(crate) metrics: JobMetrics,
    /// What the handlers did, for adaptive concurrency.
    pub(crate) work: Option<Arc<Work>>,
    /// Deliveries not started (or not retried) because their channel had
    /// closed, since the consumer last reported them.
    pub(crate) abandoned: AtomicUsize,
    /// How long a delivery may be held (below the broker's consumer timeout).
    pub(crate) hold_budget: Option<Duration>,
    /// Attempts made in place by jobs not yet settled (and on the plain
    /// path, if `remember_plain`).
    pub(crate) attempts: Attempts,
    /// Whether one attempt of this job can outlast the broker's consumer
    /// timeout (no job timeout, or one as long): then plain attempts are
    /// remembered too.
    pub(crate) remember_plain: bool,
    /// The job ids an operator cancelled (the worker's, shared).
    pub(crate) cancellations: Arc<Cancellations>,
    /// A unique job's lock, freed when the job starts or finishes.
    pub(crate) unique: Option<UniqueLock>,
    /// The job ids done lately, for a job that deduplicates deliveries.
    pub(crate) inbox: Option<Inbox>,
    /// The worker's handler budget, if it has one, and this job type's
    /// place in it.
    pub(crate) budget: Option<InBudget>,
    /// The job type's limits shared by every process, if it has any.
    pub(crate) quota: Option<Arc<Quota>>,
    /// Where batches are counted (the worker's store).
    pub(crate) batches: Option<Arc<dyn Store>>,
    /// How many settlements wait for a publish that failed (a resource
    /// alarm): the consumer widens its window by them.
    pub(crate) held: watch::Sender<usize>,
}

/// Where a job's inbox is kept, and for how long an id is remembered.
pub(crate) struct Inbox {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) window: Duration,
}

/// Where a unique job's lock is, and when the worker frees it.
pub(crate) struct UniqueLock {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) until: UniqueUntil,
}

impl Handler {
    /// Handles one delivery, from its envelope to its settlement.
    ///
    /// Through the broker, one attempt runs here in the given slot, and a
    /// retry is published to a delay queue. In place, the attempts run in
    /// this task, holding the delivery through the backoff, so that a
    /// key's later jobs wait behind it; a slot is held only while the
    /// handler runs. Either way the slot is given back before the
    /// settlement, which may wait on the broker (a resource alarm).
    ///
    /// The broker takes a held delivery back past its consumer timeout:
    /// in-place backoffs are shortened to keep within the hold budget, and
    /// a redelivery continues from the attempts this worker remembers (see
    /// `held`), so the job still ends and never runs beside itself.
    ///
    /// `decoded` is the payload if the consumer already deserialized it
    /// (to read its partition key, `key`): the first attempt runs on it.
    pub(crate) async fn handle(
        &self,
        delivery: Delivery,
        mut decoded: Option<Decoded>,
        key: Option<String>,
        retries: Retries,
    ) {
        let Some((delivery, mut envelope, retries)) = self.admit(delivery, retries).await else {
            return;
        };
        envelope.key = key;
        let job_id = &envelope.job_id;
        let mut course = Course::new(retries, self);
        // Attempts held in place, or one that can outlast the consumer
        // timeout, are remembered.
        let key = held::key(job_id, &delivery.message);
        let memory = (course.in_place.is_some() || self.remember_plain).then(|| key.clone());
        let (delivery, mut attempt) = match self
            .resume(delivery, job_id, &key, envelope.attempt, memory.is_some())
            .await
        {
            Resumed::Settled => return,
            Resumed::Continue(delivery, attempt) => (delivery, attempt),
        };
        // After `resume`: a redelivered job decided here is settled as
        // decided, and one still running here is waited for.
        if envelope.discarded || self.is_cancelled(&envelope) {
            drop(course.slot.take());
            let why = if envelope.discarded {
                DISCARDED
            } else {
                CANCELLED_BEFORE
            };
            let cancelled = Outcome::Cancelled(why.to_owned());
            return self
                .without_running(delivery, job_id, attempt, cancelled)
                .await;
        }
        if self.already_done(job_id).await {
            tracing::info!(queue = self.routes.queue.name.as_str(), %job_id, "a job already done (a duplicate delivery); acking it without running it");
            return self
                .without_running(delivery, job_id, attempt, Outcome::Succeeded)
                .await;
        }
        loop {
            let span = self.span(&delivery, job_id, attempt);
            let attempted = self
                .try_once(
                    &delivery,
                    decoded.take(),
                    &envelope,
                    attempt,
                    memory.as_ref(),
                    &mut course,
                )
                .instrument(span.clone())
                .await;
            let Some((action, took)) = attempted else {
                return;
            };
            course.ran = true;
            drop(course.slot.take());
            let (Action::Retry { error, delay }, Some(hold)) = (&action, &course.in_place) else {
                return self
                    .settle(delivery, attempt, job_id, action, Some(took))
                    .instrument(span)
                    .await;
            };
            let (wait, shortened) = hold.next_start(Instant::now(), *delay);
            if shortened {
                tracing::warn!(queue = self.routes.queue.name.as_str(), %job_id, attempt, backoff = ?delay, retry_in = ?wait, "backoff shortened: the broker's consumer timeout would take the held delivery back first");
            }
            let outcome = AttemptOutcome::Retrying {
                error: error.clone(),
                delay: wait,
            };
            span.record("outcome", outcome.label());
            span.record("otel.status_code", "error");
            self.metrics.attempt(&outcome, Some(took));
            self.report(&delivery, attempt, job_id, &outcome);
            drop(span);
            let doing = self.doing(&envelope, attempt + 1, Some((wait, error)));
            match self.wait_to_retry(&envelope, wait, doing, &course).await {
                Waited::Due if self.abandon_if_closed(&delivery) => return,
                Waited::Due => attempt += 1,
                Waited::Halted => return self.halted(job_id, attempt + 1),
                Waited::Cancelled if self.abandon_if_closed(&delivery) => return,
                Waited::Cancelled => {
                    let cancelled = Outcome::Cancelled(CANCELLED_WAITING.to_owned());
                    return self
                        .without_running(delivery, job_id, attempt, cancelled)
                        .await;
                }
            }
        }
    }

    /// Reads a delivery's envelope; `None` once a delivery that will not
    /// run is taken care of: its channel closed, not due yet (deferred),
    /// or malformed (dead-lettered). The retries' slot is given back first.
    async fn admit(
        &self,
        delivery: Delivery,
        retries: Retries,
    ) -> Option<(Delivery, Envelope, Retries)> {
        if self.abandon_if_closed(&delivery) {
            return None;
        }
        if self.deferred(&delivery) {
            drop(retries);
            self.defer(delivery).await;
            return None;
        }
        self.metrics.consumed();
        match Envelope::read(&delivery.message) {
            Ok(envelope) => {
                self.metrics.time_in_queue(envelope.enqueued_at);
                Some((delivery, envelope, retries))
            }
            Err(reason) => {
                drop(retries);
                self.malformed(delivery, reason).await;
                None
            }
        }
    }

    /// One attempt of the delivery, in a seat (see `seat`): what becomes
    /// of it and how long it ran; `None` if it did not run (a pause or a
    /// stop, its channel closed).
    async fn try_once(
        &self,
        delivery: &Delivery,
        mut decoded: Option<Decoded>,
        envelope: &Envelope,
        attempt: u32,
        memory: Option<&JobId>,
        course: &mut Course,
    ) -> Option<(Action, Duration)> {
        let (halt, ran) = (&course.halt, course.ran);
        let key = match &self.quota {
            Some(quota) if quota.keyed() => self.job.rate_key(&delivery.message.body, &mut decoded),
            _ => None,
        };
        let job = (&envelope.job_id, key.as_deref());
        let seat = self
            .seat(course.slot.take(), &course.slots, job, (halt, ran))
            .await;
        // A seat that may have been waited for is not used once a pause
        // (or a stop) is asked.
        let waited = course.in_place.is_some() || self.budget.is_some() || self.quota.is_some();
        let seat = match seat {
            Some(seat) if !(waited && halt.is_asked(ran)) => seat,
            seat => {
                if let Some(seat) = seat {
                    seat.leave();
                }
                self.halted(&envelope.job_id, attempt);
                return None;
            }
        };
        if self.abandon_if_closed(delivery) {
            seat.leave();
            return None;
        }
        let attempted = self
            .attempt(delivery, decoded, envelope, attempt, memory, (halt, ran))
            .await;
        seat.leave();
        let (outcome, took, running) = attempted?;
        let outcome = self.unless_cancelled(outcome, envelope);
        let action = self.action_for(outcome, attempt, &envelope.job_id);
        if let Some(running) = running {
            running.ended(&action);
        }
        Some((action, took))
    }

    /// Waits `wait` before a retry in place, unless the job is cancelled or
    /// a pause (or a stop) is asked meanwhile.
    /// An operator may end the wait early ([`Cancellations::run_now`]).
    async fn wait_to_retry(
        &self,
        envelope: &Envelope,
        wait: Duration,
        doing: Doing,
        course: &Course,
    ) -> Waited {
        let asked = course.halt.clone().asked(course.ran);
        let cancel = self
            .cancellations
            .watch(&envelope.job_id, envelope.replayed_at, doing);
        tokio::select! {
            _ = tokio::time::sleep(wait) => Waited::Due,
            () = cancel.run_now() => Waited::Due,
            _ = cancel.cancelled() => Waited::Cancelled,
            () = asked => Waited::Halted,
        }
    }

    /// What an attempt (or, with `retry`, a wait of `wait` before one after
    /// `error`) of this job is, as the console shows it.
    fn doing(
        &self,
        envelope: &Envelope,
        attempt: u32,
        retry: Option<(Duration, &String)>,
    ) -> Doing {
        Doing {
            job: self.job.name(),
            attempt,
            key: envelope.key.clone(),
            retry: retry.map(|(wait, error)| {
                let now = SystemTime::now();
                let error = crate::headers::cut(error, crate::headers::RETRY_ERROR_AT_MOST);
                (now.checked_add(wait).unwrap_or(now), error)
            }),
        }
    }

    /// A message that is not a job of this type: dead-lettered as malformed.
    async fn malformed(&self, delivery: Delivery, reason: String) {
        let job_id = unknown_id(&delivery);
        self.without_running(delivery, &job_id, 1, Outcome::Malformed(reason))
            .await
    }

    /// Whether an operator cancelled this job (this delivery of it: not
    /// one replayed after the cancel).
    pub(super) fn is_cancelled(&self, envelope: &Envelope) -> bool {
        self.cancellations
            .contains(&envelope.job_id, envelope.replayed_at)
    }

    /// An attempt that did not succeed of a job an operator cancelled
    /// meanwhile is dead-lettered as cancelled, not retried.
    pub(super) fn unless_cancelled(&self, outcome: Outcome, envelope: &Envelope) -> Outcome {
        if matches!(outcome, Outcome::Succeeded) || !self.is_cancelled(envelope) {
            return outcome;
        }
        let ended = match outcome {
            Outcome::Failed(error) => error.chain(),
            Outcome::Panicked(message) => format!("panicked: {message}"),
            Outcome::TimedOut(limit) => format!("timed out after {limit:?}"),
            Outcome::Succeeded | Outcome::Malformed(_) | Outcome::Cancelled(_) => {
                return outcome;
            }
        };
        Outcome::Cancelled(format!(
            "{CANCELLED_RUNNING}; the handler ended with: {ended}"
        ))
    }

    /// A redelivered job this worker ran before, under a delivery the
    /// broker took back (its channel closed): waits for an attempt of it
    /// still running, then settles an outcome already decided, or
    /// dead-letters a job whose attempts all ran, or says which attempt
    /// comes next.
    /// Its attempts are looked up if this job's are remembered
    /// (`remembered`). Either way, a redelivered job this worker settled
    /// lately is acked again without running: its ack was lost (RabbitMQ 4
    /// stops reading a connection it closes before the client learns of
    /// the close).
    async fn resume(
        &self,
        delivery: Delivery,
        job_id: &JobId,
        key: &JobId,
        attempt: u32,
        remembered: bool,
    ) -> Resumed {
        if !delivery.redelivered {
            return Resumed::Continue(delivery, attempt);
        }
        // An attempt still running here is waited for first: it may be
        // about to settle.
        let seen = if remembered {
            self.attempts.settled_view(key).await
        } else {
            None
        };
        if self.attempts.was_settled(key, attempt) {
            tracing::info!(queue = self.routes.queue.name.as_str(), %job_id, "a redelivered job this worker settled already (its ack was lost); acking it again without running it");
            if let Err(error) = delivery.acker.ack().await {
                tracing::debug!(queue = self.routes.queue.name.as_str(), %job_id, %error, "acking a job settled already failed; it comes back");
            }
            return Resumed::Settled;
        }
        let Some(seen) = seen else {
            return Resumed::Continue(delivery, attempt);
        };
        if let Some(action) = seen.decided {
            // Decided here under the earlier delivery, never settled.
            self.carry_out(delivery, job_id, seen.attempt, action).await;
            return Resumed::Settled;
        }
        if seen.attempt < attempt {
            return Resumed::Continue(delivery, attempt);
        }
        if seen.attempt >= self.max_attempts {
            self.exhausted(delivery, job_id, seen).await;
            return Resumed::Settled;
        }
        tracing::info!(queue = self.routes.queue.name.as_str(), %job_id, attempt = seen.attempt + 1, "a redelivered job continues from the attempts it made here");
        Resumed::Continue(delivery, seen.attempt + 1)
    }

    /// Settles a redelivered job whose outcome was decided here under an
    /// earlier delivery that could not be settled: the handler does not run
    /// again.
    async fn carry_out(&self, delivery: Delivery, job_id: &JobId, attempt: u32, action: Action) {
        let span = self.span(&delivery, job_id, attempt);
        span.in_scope(|| tracing::info!(queue = self.routes.queue.name.as_str(), %job_id, attempt, "a redelivered job's outcome was decided here; settling it without running it again"));
        Box::pin(self.settle(delivery, attempt, job_id, action, None))
            .instrument(span)
            .await
    }

    /// A redelivered job whose attempts all ran here under an earlier
    /// delivery (the broker took it back): dead-lettered, not run again.
    async fn exhausted(&self, delivery: Delivery, job_id: &JobId, seen: Seen) {
        let span = self.span(&delivery, job_id, seen.attempt);
        let error = seen.error.unwrap_or_else(|| {
            format!(
                "attempt {} was interrupted: the broker took the delivery back",
                seen.attempt
            )
        });
        let action = Action::DeadLetter {
            reason: DeadReason::RetriesExhausted,
            error,
        };
        span.in_scope(|| tracing::warn!(queue = self.routes.queue.name.as_str(), %job_id, attempts = seen.attempt, "a redelivered job had made all its attempts here; dead-lettering it"));
        Box::pin(self.settle(delivery, seen.attempt, job_id, action, None))
            .instrument(span)
            .await
    }

    /// True (and counted) when `delivery` came on a channel that has closed
    /// since: it can never be settled and the broker delivers it again, so
    /// running it would only run it twice.
    pub(super) fn abandon_if_closed(&self, delivery: &Delivery) -> bool {
        if delivery.acker.is_open() {
            return false;
        }
        self.left_to_broker();
        true
    }

    /// A delivery whose next attempt (`attempt`) does not start: the job
    /// pauses or the worker stops (see [`Halt`]). It is left unsettled; the broker
    /// has it back, in its place, when the subscription closes.
    pub(super) fn halted(&self, job_id: &JobId, attempt: u32) {
        tracing::debug!(queue = self.routes.queue.name.as_str(), %job_id, attempt, "pausing or stopping: a held job's attempt does not start; it goes back to the queue");
    }

    /// Counts a delivery of a closed channel, not started or not settled:
    /// the broker delivers it again. The first of a run is logged; the
    /// consumer logs the count when it resubscribes or stops.
    pub(super) fn left_to_broker(&self) {
        if self.abandoned.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                queue = self.routes.queue.name.as_str(),
                "the consumer's channel closed: its deliveries are left to the broker, which delivers them again"
            );
        }
    }

    /// How many deliveries were left to the broker since the last call.
    pub(crate) fn take_abandoned(&self) -> usize {
        self.abandoned.swap(0, Ordering::Relaxed)
    }

    /// The span of one attempt, a child of the trace that enqueued the job
    /// (see [`crate::trace`]). Its `outcome` is recorded once the attempt is
    /// settled.
    pub(super) fn span(&self, delivery: &Delivery, job_id: &JobId, attempt: u32) -> Span {
        let span = tracing::info_span!(
            "qjob.attempt",
            otel.kind = "consumer",
            otel.status_code = field::Empty,
            job = self.job.name(),
            queue = self.routes.queue.name.as_str(),
            job_id = %job_id,
            attempt = i64::from(attempt),
            redelivered = delivery.redelivered,
            outcome = field::Empty,
            traceparent = field::Empty,
        );
        trace::continue_from(&span, &delivery.message.headers);
        span
    }

    pub(super) fn deferred(&self, delivery: &Delivery) -> bool {
        topology::remaining_wait(&delivery.message).is_some()
    }

    /// Runs the handler once, through the gate; returns how it ended and
    /// how long the handler ran.
    ///
    /// With `memory`, the attempt is remembered (see `held`) from the
    /// moment it starts, past the gate; the caller records how it ended.
    async fn attempt<'a>(
        &'a self,
        delivery: &Delivery,
        decoded: Option<Decoded>,
        envelope: &Envelope,
        attempt: u32,
        memory: Option<&'a JobId>,
        (halt, ran): (&Halt, bool),
    ) -> Option<(Outcome, Duration, Option<Running<'a>>)> {
        if let Some(gate) = &self.gate {
            let entered = tokio::select! {
                biased;
                () = halt.clone().asked(ran) => false,
                () = gate.enter() => true,
            };
            if !entered || halt.is_asked(ran) {
                // A pause or a stop while it waited at the gate.
                if entered {
                    gate.withdraw();
                }
                self.halted(&envelope.job_id, attempt);
                return None;
            }
            // The breaker may have held it long: its channel may be gone.
            if self.abandon_if_closed(delivery) {
                gate.withdraw();
                return None;
            }
        }
        // The last wait before the handler runs is behind us (a slot, the
        // gate): a cancel that came meanwhile stops it here.
        if self.is_cancelled(envelope) {
            if let Some(gate) = &self.gate {
                gate.withdraw();
            }
            let cancelled = Outcome::Cancelled(CANCELLED_BEFORE.to_owned());
            return Some((cancelled, Duration::ZERO, None));
        }
        // The job starts now (past the gate, in its slot): a lock held
        // while it waited is freed.
        if let Some((store, key)) = self.unique_lock(&delivery.message, &[UniqueUntil::Started]) {
            self.release(&*store, &key, &envelope.job_id).await;
        }
        let running = memory.map(|key| Running::start(&self.attempts, key, attempt));
        self.metrics.in_flight(1.0);
        let started = tokio::time::Instant::now();
        let outcome = self.run(delivery, decoded, envelope, attempt).await;
        let took = started.elapsed();
        self.metrics.in_flight(-1.0);
        if let Some(work) = &self.work {
            work.record(took);
        }
        if let Some(gate) = &self.gate {
            gate.leave(!matches!(outcome, Outcome::Succeeded));
        }
        Some((outcome, took, running))
    }

    async fn run(
        &self,
        delivery: &Delivery,
        decoded: Option<Decoded>,
        envelope: &Envelope,
        attempt: u32,
    ) -> Outcome {
        let doing = self.doing(envelope, attempt, None);
        let cancel = self
            .cancellations
            .watch(&envelope.job_id, envelope.replayed_at, doing);
        let ctx = JobContext::of_attempt(
            &self.routes.queue.name,
            envelope.job_id.clone(),
            envelope.enqueued_at,
            (attempt, self.max_attempts),
            delivery.redelivered,
            cancel.token(),
        );
        self.job
            .clone()
            .run(&delivery.message.body, decoded, ctx, self.timeout)
            .await
    }

    /// What becomes of this attempt ([`decide::decide`]), logged.
    pub(super) fn action_for(&self, outcome: Outcome, attempt: u32, job_id: &JobId) -> Action {
        let action = decide::decide(
            outcome,
            &Attempt {
                number: attempt,
                max_attempts: self.max_attempts,
                backoff: &self.backoff,
                jitter: backoff::jitter_for(job_id.as_str(), attempt),
            },
        );
        let queue = self.routes.queue.name.as_str();
        match &action {
            Action::Defer { .. } => {}
            Action::Ack => tracing::debug!(queue, %job_id, attempt, "job succeeded"),
            Action::Retry { error, delay } => tracing::info!(
                queue,
                %job_id,
                attempt,
                error,
                retry_in = ?delay,
                "job failed; retrying"
            ),
            Action::DeadLetter { reason, error } => tracing::warn!(
                queue,
                %job_id,
                attempt,
                reason = reason.as_str(),
                error,
                "job dead-lettered"
            ),
        }
        action
    }
}

/// How one delivery's attempts go: the slot the consumer gave it (through
/// the broker) or none (in place, with its hold), the job type's slots to
/// take one from; what halts them; and whether one ran in this task.
struct Course {
    slot: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
    in_place: Option<Hold>,
    halt: Halt,
    ran: bool,
}

impl Course {
    fn new(retries: Retries, handler: &Handler) -> Self {
        let (slot, slots, in_place, halt) = match retries {
            Retries::ThroughBroker { slot, slots, halt } => (slot, slots, None, halt),
            Retries::InPlace {
                received,
                slots,
                halt,
            } => {
                let hold = Hold::new(received, handler.hold_budget, handler.timeout);
                (None, slots, Some(hold), halt)
            }
        };
        Self {
            slot,
            slots,
            in_place,
            halt,
            ran: false,
        }
    }
}

/// How the wait before a retry in place ended.
enum Waited {
    Due,
    Cancelled,
    Halted,
}

/// What [`Handler::resume`] made of a delivery.
enum Resumed {
    /// Settled without running the job.
    Settled,
    /// To run, from this attempt.
    Continue(Delivery, u32),
}

/// The error of a job cancelled before it was delivered.
const CANCELLED_BEFORE: &str = "cancelled by an operator before it ran";

/// The error of a job an operator discarded from its delay queue.
const DISCARDED: &str = "discarded by an operator from its delay queue, before it ran";

/// The error of a job cancelled while it waited in place for a retry.
const CANCELLED_WAITING: &str = "cancelled by an operator while it waited to be retried";

/// The error of a job cancelled while its handler ran.
const CANCELLED_RUNNING: &str = "cancelled by an operator while it ran";

fn unknown_id(delivery: &Delivery) -> JobId {
    JobId::from(delivery.message.id.clone().unwrap_or_default())
}
