//! Settling a delivery: carrying out the decided [`Action`] on the broker
//! in an at-least-once order (publish and confirm first, ack last), tried
//! again while the broker refuses (a resource alarm), and what the
//! handler records once it is settled.

use std::time::Duration;

use tokio::sync::watch;

use tracing::{Instrument, Span};

use crate::broker::{Acker, Broker, Delivery, Message, QueueSpec};
use crate::policy::backoff;
use crate::worker::decide::{Action, dead_letter_message, retry_message};
use crate::worker::handler::Handler;
use crate::worker::held;
use crate::worker::observer::AttemptOutcome;
use crate::worker::routes::Routes;
use crate::worker::runnable::Outcome;
use crate::{Error, JobId, UniqueUntil, headers, topology};

/// The message that carries an outcome on, published before the original
/// is acked.
enum Outgoing<'a> {
    Direct {
        queue: &'a QueueSpec,
        message: Message,
    },
    Delayed(topology::Delayed),
}

impl<'a> Outgoing<'a> {
    /// What `action` publishes, if anything.
    fn of(routes: &'a Routes, attempt: u32, action: Action, message: Message) -> Option<Self> {
        let (queue, retry) = (&routes.queue, &routes.retry);
        let delayed = |delay, message| {
            Some(Outgoing::Delayed(topology::delayed(
                &retry.name,
                retry.queue_type,
                delay,
                message,
            )))
        };
        match action {
            Action::Ack => None,
            Action::Retry { delay, error } if delay.is_zero() => Some(Outgoing::Direct {
                queue: retry,
                message: retry_message(message, attempt, &error),
            }),
            Action::Retry { delay, error } => {
                delayed(delay, retry_message(message, attempt, &error))
            }
            Action::Defer { delay } => delayed(delay, message),
            Action::DeadLetter { reason, error } => Some(Outgoing::Direct {
                queue: &routes.dead_letter,
                message: dead_letter_message(message, &queue.name, attempt, &reason, &error),
            }),
        }
    }

    async fn publish(&self, broker: &dyn Broker, leases: &topology::Leases) -> Result<(), Error> {
        match self {
            Outgoing::Direct { queue, message } => {
                let published = broker.publish(&queue.name, message.clone()).await;
                if let Err(Error::Unroutable { .. }) = &published {
                    // The queue is gone: declare it again for the next try.
                    let _ = broker.declare_queue(queue).await;
                }
                published
            }
            Outgoing::Delayed(delayed) => delayed.publish(broker, leases).await,
        }
    }
}

/// The wait before publishing a settlement again after `failures` failed
/// tries: 100 ms, doubling, at most 5 s.
pub(crate) fn settle_backoff(failures: u32) -> Duration {
    backoff::retry_delay(failures, Duration::from_secs(5))
}

/// Carries out `action` for `delivery`: for a retry or a dead letter the new
/// message is confirmed before the original is acked.
///
/// A publish that fails (a resource alarm, a lost connection, a missing or
/// full queue) is tried again with [`settle_backoff`] while the delivery is
/// held: the outcome is decided, so the handler never runs again for it and
/// nothing loops. `failed` hears of each failure and the wait after it. Once
/// the delivery cannot be settled any more (its channel closed) the broker
/// delivers it again, and [`Unsettled`] says why.
pub(crate) async fn apply(
    broker: &dyn Broker,
    routes: &Routes,
    attempt: u32,
    action: Action,
    delivery: Delivery,
    failed: impl Fn(&Error, Duration),
) -> Result<(), Unsettled> {
    let Delivery { message, acker, .. } = delivery;
    if !acker.is_open() {
        // Publishing now would only add a copy: the broker delivers the
        // original again.
        return Err(Unsettled::ChannelClosed);
    }
    if let Some(outgoing) = Outgoing::of(routes, attempt, action, message) {
        // Boxed: a success publishes nothing, and its task need not hold
        // room for this.
        Box::pin(publish_until_sent(
            broker, routes, &outgoing, &*acker, failed,
        ))
        .await?;
    }
    // `is_open` says nothing once the ack was tried (the acker is spent
    // on the attempt): a failed ack is reported as it is.
    acker.ack().await.map_err(Unsettled::Failed)
}

/// Publishes `outgoing` until it is sent, waiting after each failure (see
/// [`apply`]); fails once the delivery's channel closed.
async fn publish_until_sent(
    broker: &dyn Broker,
    routes: &Routes,
    outgoing: &Outgoing<'_>,
    acker: &dyn Acker,
    failed: impl Fn(&Error, Duration),
) -> Result<(), Unsettled> {
    let mut failures = 0;
    while let Err(error) = outgoing.publish(broker, &routes.leases).await {
        failures += 1;
        let wait = settle_backoff(failures);
        failed(&error, wait);
        // While a resource alarm lasts, publishing again would fail the
        // same way: wait it out without churning the broker.
        loop {
            tokio::time::sleep(wait).await;
            if !acker.is_open() {
                return Err(Unsettled::ChannelClosed);
            }
            if broker.blocked_reason().is_none() {
                break;
            }
        }
    }
    Ok(())
}

/// Why a delivery could not be settled; the broker delivers it again.
#[derive(Debug)]
pub(crate) enum Unsettled {
    /// Its channel closed (a lost connection, a consumer timeout).
    ChannelClosed,
    /// The broker refused the ack.
    Failed(Error),
}

/// Counts one settlement as held while it lives (however its future ends).
struct HeldSettlement<'a>(&'a watch::Sender<usize>);

impl<'a> HeldSettlement<'a> {
    fn new(held: &'a watch::Sender<usize>) -> Self {
        held.send_modify(|count| *count += 1);
        Self(held)
    }
}

impl Drop for HeldSettlement<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.saturating_sub(1));
    }
}

impl Handler {
    /// Sends a job that is not due yet back into a delay queue.
    pub(super) async fn defer(&self, delivery: Delivery) {
        let delay = topology::remaining_wait(&delivery.message).unwrap_or_default();
        let defer = Action::Defer { delay };
        // Held from its first failed publish until it settles.
        let held = std::sync::OnceLock::new();
        let failed = |error: &Error, wait| {
            held.get_or_init(|| HeldSettlement::new(&self.held));
            self.settlement_failed(error, wait);
        };
        // Boxed, as every path that settles without running: the task of
        // each delivery is as large as its largest path, and is moved
        // into place at every spawn.
        let deferred = Box::pin(apply(
            &*self.broker,
            &self.routes,
            0,
            defer,
            delivery,
            failed,
        ));
        match deferred.await {
            Ok(()) => {}
            Err(Unsettled::ChannelClosed) => self.left_to_broker(),
            Err(Unsettled::Failed(error)) => {
                tracing::warn!(queue = self.routes.queue.name.as_str(), %error, "could not defer a job that is not due; the broker will redeliver it");
            }
        }
    }

    /// Settles a delivery whose fate is known without running the handler
    /// (malformed, cancelled).
    pub(super) async fn without_running(
        &self,
        delivery: Delivery,
        job_id: &JobId,
        attempt: u32,
        outcome: Outcome,
    ) {
        let span = self.span(&delivery, job_id, attempt);
        let action = span.in_scope(|| self.action_for(outcome, attempt, job_id));
        Box::pin(self.settle(delivery, attempt, job_id, action, None))
            .instrument(span)
            .await
    }

    /// Settles the delivery on the broker, then tells the observers.
    pub(super) async fn settle(
        &self,
        delivery: Delivery,
        attempt: u32,
        job_id: &JobId,
        action: Action,
        took: Option<Duration>,
    ) {
        let outcome = action.outcome();
        let memory_key = held::key(job_id, &delivery.message);
        // A job done (succeeded or dead) frees its lock once settled.
        let finished = !matches!(action, Action::Retry { .. } | Action::Defer { .. });
        // (A job that never started, cancelled or malformed, frees a lock
        // meant to go at its start too.)
        let until = [UniqueUntil::Started, UniqueUntil::Finished];
        let lock = finished
            .then(|| self.unique_lock(&delivery.message, &until))
            .flatten();
        if matches!(action, Action::Ack) {
            self.mark_done(job_id).await;
        }
        // A batch member is counted before it is settled: a crash in
        // between redelivers it, and it is not counted twice.
        if finished
            && let Some(batch) = delivery
                .message
                .headers
                .get(headers::BATCH)
                .and_then(|b| b.as_str())
            && !Box::pin(self.count_in_batch(
                &delivery,
                batch,
                job_id,
                matches!(action, Action::Ack),
            ))
            .await
        {
            return;
        }
        let report = (!self.observers.is_empty())
            .then(|| (delivery.message.body.clone(), delivery.redelivered));
        // Held from its first failed publish until it settles.
        let held = std::sync::OnceLock::new();
        let failed = |error: &Error, wait| {
            held.get_or_init(|| HeldSettlement::new(&self.held));
            self.settlement_failed(error, wait);
        };
        let settled = apply(
            &*self.broker,
            &self.routes,
            attempt,
            action,
            delivery,
            failed,
        )
        .await;
        let span = Span::current();
        if settled.is_ok() {
            self.attempts.forget(&memory_key, attempt);
            if let Some((store, key)) = lock {
                self.release(&*store, &key, job_id).await;
            }
        }
        if let Err(unsettled) = settled {
            span.record("outcome", "unsettled");
            span.record("otel.status_code", "error");
            match unsettled {
                Unsettled::ChannelClosed => self.left_to_broker(),
                Unsettled::Failed(error) => {
                    tracing::warn!(queue = self.routes.queue.name.as_str(), %job_id, %error, "could not settle the delivery; the broker will redeliver it");
                    self.health.error(&error);
                }
            }
            return;
        }
        span.record("outcome", outcome.label());
        if outcome != AttemptOutcome::Succeeded {
            span.record("otel.status_code", "error");
        }
        self.health.acked();
        self.metrics.attempt(&outcome, took);
        if let Some((payload, redelivered)) = report {
            self.notify(&payload, redelivered, attempt, job_id, &outcome);
        }
    }

    /// A settlement's publish failed; it is tried again after `wait`.
    pub(super) fn settlement_failed(&self, error: &Error, wait: Duration) {
        tracing::warn!(queue = self.routes.queue.name.as_str(), %error, retry_in = ?wait, "could not publish a settlement; holding the delivery and trying again");
        self.health.error(error);
        self.metrics.settlement_failed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_are_tried_again_with_a_growing_bounded_wait() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| settle_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(settle_backoff(u32::MAX), Duration::from_secs(5));
    }
}
