//! One job type's consumer: takes deliveries while a handler slot is free,
//! runs each in its own task, settles it, and resubscribes when the
//! subscription fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::broker::{Broker, ConsumeOptions, Delivery, Subscription};
use crate::headers::Envelope;
use crate::policy::backoff::{self, BackoffPolicy};
use crate::worker::observer::{AttemptEvent, Observer};
use crate::worker::runnable::{Outcome, Runnable};
use crate::worker::settle::{self, Action, Attempt, Routes};
use crate::{Error, JobContext, JobId, JobOptions, topology};

/// Longest wait between two attempts to resubscribe.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);

pub(crate) struct Consumer {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) job: Arc<dyn Runnable>,
    pub(crate) options: JobOptions,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) tag: String,
    pub(crate) observers: Arc<[Arc<dyn Observer>]>,
}

impl Consumer {
    /// Declares the topology and subscribes; errors here are startup errors.
    pub(crate) async fn subscribe(&self) -> Result<Box<dyn Subscription>, Error> {
        topology::declare(&*self.broker, &self.options).await?;
        self.broker
            .consume(
                self.options.queue(),
                ConsumeOptions {
                    prefetch: self.options.prefetch(),
                    tag: self.tag.clone(),
                },
            )
            .await
    }

    /// Consumes until `stop` turns true, then lets in-flight handlers finish
    /// within the shutdown timeout and closes the subscription, so that the
    /// broker redelivers whatever was not settled.
    pub(crate) async fn run(
        self,
        mut subscription: Box<dyn Subscription>,
        mut stop: watch::Receiver<bool>,
    ) {
        let concurrency = self.options.concurrency();
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut handlers = JoinSet::new();
        let mut failures = 0u32;
        let handler = Arc::new(self.handler());
        'consume: loop {
            let slot = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break 'consume,
                slot = slots.clone().acquire_owned() => slot.expect("semaphore never closed"),
            };
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break 'consume,
                next = subscription.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    failures = 0;
                    let handler = handler.clone();
                    handlers.spawn(async move {
                        handler.handle(delivery).await;
                        drop(slot);
                    });
                    while handlers.try_join_next().is_some() {}
                }
                ended => {
                    drop(slot);
                    match ended {
                        Some(Err(error)) => {
                            tracing::warn!(queue = self.options.queue(), %error, "consumer failed; resubscribing")
                        }
                        _ => tracing::warn!(
                            queue = self.options.queue(),
                            "consumer cancelled by the broker; resubscribing"
                        ),
                    }
                    let _ = subscription.close().await;
                    match self.resubscribe(&mut stop, &mut failures).await {
                        Some(next) => subscription = next,
                        None => return self.drain(handlers, slots, None).await,
                    }
                }
            }
        }
        if let Err(error) = subscription.cancel().await {
            tracing::debug!(queue = self.options.queue(), %error, "cancelling the consumer failed");
        }
        self.drain(handlers, slots, Some(subscription)).await;
    }

    async fn resubscribe(
        &self,
        stop: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Option<Box<dyn Subscription>> {
        loop {
            *failures = failures.saturating_add(1);
            let delay = (Duration::from_millis(100) * 2u32.saturating_pow(*failures - 1).min(64))
                .min(MAX_RESUBSCRIBE_DELAY);
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            match self.subscribe().await {
                Ok(subscription) => {
                    tracing::info!(queue = self.options.queue(), "consumer resubscribed");
                    return Some(subscription);
                }
                Err(error) => tracing::warn!(
                    queue = self.options.queue(),
                    %error,
                    retry_in = ?delay,
                    "resubscribe failed"
                ),
            }
        }
    }

    async fn drain(
        &self,
        mut handlers: JoinSet<()>,
        slots: Arc<Semaphore>,
        subscription: Option<Box<dyn Subscription>>,
    ) {
        let all = u32::try_from(self.options.concurrency()).unwrap_or(u32::MAX);
        let finished = tokio::time::timeout(self.shutdown_timeout, slots.acquire_many(all)).await;
        if finished.is_err() {
            tracing::warn!(
                queue = self.options.queue(),
                in_flight = handlers.len(),
                timeout = ?self.shutdown_timeout,
                "shutdown timeout reached; abandoning in-flight handlers (their messages are redelivered)"
            );
            handlers.abort_all();
        }
        while handlers.join_next().await.is_some() {}
        if let Some(subscription) = subscription
            && let Err(error) = subscription.close().await
        {
            tracing::debug!(queue = self.options.queue(), %error, "closing the subscription failed");
        }
    }

    fn handler(&self) -> Handler {
        Handler {
            broker: self.broker.clone(),
            job: self.job.clone(),
            routes: Routes {
                queue: self.options.queue().to_owned(),
                dead_letter_queue: self.options.dead_letter_queue(),
                queue_type: self.options.queue_type(),
            },
            backoff: BackoffPolicy::new(self.options.backoff()),
            max_attempts: self.options.max_attempts(),
            timeout: self.options.timeout(),
            observers: self.observers.clone(),
        }
    }
}

/// What handler tasks need, shared by all of one consumer's.
struct Handler {
    broker: Arc<dyn Broker>,
    job: Arc<dyn Runnable>,
    routes: Routes,
    backoff: BackoffPolicy,
    max_attempts: u32,
    timeout: Option<Duration>,
    observers: Arc<[Arc<dyn Observer>]>,
}

impl Handler {
    async fn handle(&self, delivery: Delivery) {
        if let Some(delay) = topology::remaining_wait(&delivery.message) {
            let defer = Action::Defer { delay };
            let settled = settle::apply(&*self.broker, &self.routes, 0, defer, delivery).await;
            if let Err(error) = settled {
                tracing::warn!(queue = &*self.routes.queue, %error, "could not defer a job that is not due; the broker will redeliver it");
            }
            return;
        }
        let (outcome, attempt, job_id) = match Envelope::read(&delivery.message) {
            Ok(envelope) => {
                let ctx = JobContext::delivered(
                    &self.routes.queue,
                    envelope.job_id.clone(),
                    envelope.attempt,
                    self.max_attempts,
                    delivery.redelivered,
                    envelope.enqueued_at,
                );
                let span = tracing::info_span!(
                    "qjob.attempt",
                    job = self.job.name(),
                    queue = &*self.routes.queue,
                    job_id = %envelope.job_id,
                    attempt = envelope.attempt,
                    redelivered = delivery.redelivered,
                );
                let outcome = self
                    .job
                    .clone()
                    .run(&delivery.message.body, ctx, self.timeout)
                    .instrument(span)
                    .await;
                (outcome, envelope.attempt, envelope.job_id)
            }
            Err(reason) => (
                Outcome::Malformed(reason),
                1,
                JobId::from(delivery.message.id.clone().unwrap_or_default()),
            ),
        };
        let action = settle::decide(
            outcome,
            &Attempt {
                number: attempt,
                max_attempts: self.max_attempts,
                backoff: &self.backoff,
                jitter: backoff::jitter_for(job_id.as_str(), attempt),
            },
        );
        match &action {
            Action::Defer { .. } => {}
            Action::Ack => {
                tracing::debug!(queue = &*self.routes.queue, %job_id, attempt, "job succeeded")
            }
            Action::Retry { error, delay } => {
                tracing::info!(
                    queue = &*self.routes.queue,
                    %job_id,
                    attempt,
                    error,
                    retry_in = ?delay,
                    "job failed; retrying"
                )
            }
            Action::DeadLetter { reason, error } => tracing::warn!(
                queue = &*self.routes.queue,
                %job_id,
                attempt,
                reason = reason.as_str(),
                error,
                "job dead-lettered"
            ),
        }
        let report = (!self.observers.is_empty()).then(|| {
            (
                action.outcome(),
                delivery.message.body.clone(),
                delivery.redelivered,
            )
        });
        let settled = settle::apply(&*self.broker, &self.routes, attempt, action, delivery).await;
        if let Err(error) = settled {
            tracing::warn!(queue = &*self.routes.queue, %job_id, %error, "could not settle the delivery; the broker will redeliver it");
            return;
        }
        if let Some((outcome, payload, redelivered)) = report {
            let event = AttemptEvent {
                job: self.job.name(),
                queue: &self.routes.queue,
                job_id: &job_id,
                attempt,
                redelivered,
                payload: &payload,
                outcome: &outcome,
            };
            for observer in self.observers.iter() {
                observer.attempt_settled(&event);
            }
        }
    }
}
