//! One queue's consumer: takes deliveries, runs each in its own task, and
//! resubscribes when the subscription fails. Plain queues take a delivery
//! only when a handler slot is free (but for a job with shared limits,
//! whose handler task takes its slot); partition queues keep taking them
//! (prefetch bounds how many) and run them in per-key lanes. Partitioned,
//! capped (`max_length`) and quorum jobs retry in place; the others through
//! a delay queue (see `topology::retries_in_place`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, ConsumeOptions, Delivery, QueueSpec, Subscription};
use crate::policy::backoff;
use crate::policy::lanes::Lanes;
use crate::worker::halt::{Halt, Retries};
use crate::worker::handler::Handler;
use crate::worker::health::Health;
use crate::worker::runnable::Decoded;
use crate::{Error, JobOptions, topology};

/// Longest wait between two attempts to resubscribe.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);

/// The most settlements held by a resource alarm that a consumer keeps
/// out of its prefetch window (each holds its message in memory); past
/// them, held settlements fill the window and consumption waits for the
/// alarm to clear.
pub(crate) const MAX_HELD_OUTSIDE_THE_WINDOW: usize = 1_000;

/// The prefetch for a window of `base` with `held` settlements held: base
/// plus what is held (up to [`MAX_HELD_OUTSIDE_THE_WINDOW`]), rounded up
/// to a multiple of `base` so that the consumer is not replaced at every
/// one.
fn widened(base: u16, held: usize) -> u16 {
    let base = base.max(1);
    let held = held.min(MAX_HELD_OUTSIDE_THE_WINDOW);
    let step = usize::from(base);
    let extra = held.div_ceil(step) * step;
    u16::try_from(usize::from(base) + extra).unwrap_or(u16::MAX)
}

/// What woke a plain queue's consumer.
enum SlotEvent {
    /// The worker stops.
    Stop,
    /// An operator paused the job.
    Pause,
    /// Adaptive concurrency moved the prefetch.
    Prefetch(u16),
    /// The settlements held by a resource alarm changed.
    Held(usize),
    /// A delivery, and the handler slot it runs in (`None`: in place).
    Delivery(Delivery, Option<OwnedSemaphorePermit>),
    /// The subscription ended (`None`: cancelled by the broker).
    Ended(Option<Result<Delivery, Error>>),
}

/// What woke a lane dispatcher.
enum LaneEvent {
    /// An operator paused the job.
    Pause,
    /// A handler of this key finished.
    Finished(String),
    /// The subscription yielded.
    Next(Option<Result<Delivery, Error>>),
}

pub(crate) struct Consumer {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) options: JobOptions,
    /// Runs the deliveries; its routes hold the queue consumed (the work
    /// queue or one partition queue) as declared.
    pub(crate) handler: Arc<Handler>,
    /// The job type's handler slots, shared by its consumers.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) tag: String,
    pub(crate) health: Health,
    /// The prefetch to consume with, when it follows adaptive concurrency;
    /// `None`: the job's configured prefetch.
    pub(crate) prefetch: Option<watch::Receiver<u16>>,
    /// Whether an operator paused the job (shared by its consumers).
    pub(crate) paused: watch::Receiver<bool>,
    /// Whether the queue is a shard past the job's `shards`, left by a
    /// deploy with more: consumed while it exists, never declared.
    pub(crate) inherited: bool,
}

impl Consumer {
    /// The queue consumed, as declared.
    fn spec(&self) -> &QueueSpec {
        &self.handler.routes.queue
    }

    /// The name of the queue consumed.
    pub(crate) fn queue(&self) -> &str {
        &self.spec().name
    }

    /// Declares this consumer's queues and subscribes.
    pub(crate) async fn subscribe(&self) -> Result<Box<dyn Subscription>, Error> {
        if !self.inherited {
            self.broker.declare_queue(self.spec()).await?;
        }
        topology::declare_dead_letter_queue(&*self.broker, &self.options).await?;
        self.broker
            .consume(
                self.queue(),
                ConsumeOptions::new(self.subscribed_prefetch(), self.tag.clone()),
            )
            .await
    }

    /// Consumes until `stop` turns true, then cancels the consumer, lets
    /// in-flight handlers finish within the shutdown timeout and closes the
    /// subscription, so that the broker redelivers whatever was not settled.
    pub(crate) async fn run(self, subscription: Box<dyn Subscription>, stop: CancellationToken) {
        if self.options.partitions().is_some() {
            self.run_lanes(subscription, stop).await
        } else {
            self.run_slots(subscription, stop).await
        }
    }

    async fn run_slots(self, mut subscription: Box<dyn Subscription>, stop: CancellationToken) {
        let mut handlers = JoinSet::new();
        let mut failures = 0u32;
        let mut prefetch = self.prefetch.clone();
        let mut paused = self.paused.clone();
        // Settlements held by a resource alarm are kept out of the window:
        // the consumer is renewed with its prefetch widened by them (its
        // old consumer's deliveries no longer count against it), so the
        // jobs that succeed, which need no publish, go on. Not on a
        // single-active queue: renewing its consumer would hand the queue
        // to a standby while this worker still runs what it holds.
        let mut held = self.handler.held.subscribe();
        let mut base = self.subscribed_prefetch();
        // The prefetch of the subscription in use.
        let mut window = base;
        loop {
            let event = self
                .next_event(
                    &mut subscription,
                    &stop,
                    &mut prefetch,
                    &mut paused,
                    &mut held,
                )
                .await;
            let (replaced, prefetch_now) = match event {
                SlotEvent::Stop => break,
                SlotEvent::Pause => (
                    self.pause(subscription, &mut handlers, &stop, &mut paused)
                        .await,
                    base,
                ),
                SlotEvent::Delivery(delivery, slot) => {
                    failures = 0;
                    let halt = Halt::new(stop.clone(), self.paused.clone());
                    self.spawn_handler(&mut handlers, delivery, slot, halt);
                    continue;
                }
                SlotEvent::Prefetch(target) => {
                    base = target;
                    let held_now = if self.single_active() {
                        0
                    } else {
                        *held.borrow()
                    };
                    let target = widened(base, held_now);
                    self.set_prefetch(subscription, target, &mut handlers, &stop, &mut failures)
                        .await
                }
                SlotEvent::Held(_) if self.single_active() => continue,
                SlotEvent::Held(count) => {
                    // Widened as they grow, narrowed once none is left.
                    let target = widened(base, count);
                    if (count > 0 && target <= window) || (count == 0 && window == base) {
                        continue;
                    }
                    if count > 0 {
                        tracing::info!(
                            queue = self.queue(),
                            held = count,
                            prefetch = target,
                            "settlements held by a resource alarm: the consumer's window is widened"
                        );
                    }
                    self.set_prefetch(subscription, target, &mut handlers, &stop, &mut failures)
                        .await
                }
                SlotEvent::Ended(ended) => (
                    self.replace(subscription, ended, &mut handlers, &stop, &mut failures)
                        .await,
                    base,
                ),
            };
            window = prefetch_now;
            match replaced {
                Some(next) => subscription = next,
                None => return self.drain(handlers, None).await,
            }
        }
        self.stop(handlers, subscription).await;
    }

    /// What happens next on a plain queue: a free handler slot first (none
    /// is needed by jobs that retry in place: the prefetch bounds what they
    /// hold), then a delivery; a stop or a prefetch change wins at any point.
    async fn next_event(
        &self,
        subscription: &mut Box<dyn Subscription>,
        stop: &CancellationToken,
        prefetch: &mut Option<watch::Receiver<u16>>,
        paused: &mut watch::Receiver<bool>,
        held: &mut watch::Receiver<usize>,
    ) -> SlotEvent {
        // A job with shared limits takes its slot in the handler's task: a
        // slot held here while no delivery comes (the prefetch all waiting
        // on the limits) would stall it.
        let slot = if topology::retries_in_place(&self.options) || self.handler.quota.is_some() {
            None
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return SlotEvent::Stop,
                _ = paused.wait_for(|paused| *paused) => return SlotEvent::Pause,
                target = changed(prefetch) => return SlotEvent::Prefetch(target),
                Ok(()) = held.changed() => return SlotEvent::Held(*held.borrow_and_update()),
                slot = self.slots.clone().acquire_owned() => {
                    Some(slot.expect("semaphore never closed"))
                }
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => SlotEvent::Stop,
            _ = paused.wait_for(|paused| *paused) => SlotEvent::Pause,
            target = changed(prefetch) => SlotEvent::Prefetch(target),
            Ok(()) = held.changed() => SlotEvent::Held(*held.borrow_and_update()),
            next = subscription.next() => match next {
                Some(Ok(delivery)) => SlotEvent::Delivery(delivery, slot),
                ended => SlotEvent::Ended(ended),
            },
        }
    }

    /// Runs a delivery in a task of its own: in its slot (or one its task
    /// takes), or in place, holding it through its retries.
    fn spawn_handler(
        &self,
        handlers: &mut JoinSet<()>,
        delivery: Delivery,
        slot: Option<OwnedSemaphorePermit>,
        halt: Halt,
    ) {
        let handler = self.handler.clone();
        let slots = self.slots.clone();
        if topology::retries_in_place(&self.options) {
            let received = Instant::now();
            handlers.spawn(async move {
                let in_place = Retries::InPlace {
                    received,
                    slots,
                    halt,
                };
                handler.handle(delivery, None, None, in_place).await
            });
        } else {
            handlers.spawn(async move {
                let retries = Retries::ThroughBroker { slot, slots, halt };
                handler.handle(delivery, None, None, retries).await
            });
        }
        while handlers.try_join_next().is_some() {}
    }

    async fn run_lanes(self, mut subscription: Box<dyn Subscription>, stop: CancellationToken) {
        let mut handlers = JoinSet::new();
        let mut lanes: Lanes<String, Admitted> = Lanes::default();
        let (done, mut finished) = mpsc::unbounded_channel::<String>();
        let mut failures = 0u32;
        let mut paused = self.paused.clone();
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = paused.wait_for(|paused| *paused) => LaneEvent::Pause,
                Some(key) = finished.recv() => LaneEvent::Finished(key),
                next = subscription.next() => LaneEvent::Next(next),
            };
            match event {
                LaneEvent::Pause => {
                    // What waits in the lanes goes back to the queue, in
                    // order, when the paused subscription closes; the
                    // running keys finish first.
                    drop(lanes.take_queued());
                    let resumed = self
                        .pause(subscription, &mut handlers, &stop, &mut paused)
                        .await;
                    // Every handler ended: the lanes start afresh, and the
                    // releases they sent are stale.
                    lanes = Lanes::default();
                    while finished.try_recv().is_ok() {}
                    match resumed {
                        Some(next) => subscription = next,
                        None => return self.drain(handlers, None).await,
                    }
                }
                LaneEvent::Finished(key) => {
                    if let Some(next) = lanes.finish(&key) {
                        self.spawn_in_lane(&mut handlers, Some(key), next, &done, &stop);
                    }
                }
                LaneEvent::Next(Some(Ok(delivery))) => {
                    failures = 0;
                    let received = Instant::now();
                    let (key, decoded) = self
                        .handler
                        .job
                        .decode_keyed(&delivery.message.body)
                        .map_or((None, None), |(key, decoded)| (key, Some(decoded)));
                    let admitted = Admitted {
                        delivery,
                        decoded,
                        received,
                    };
                    match key {
                        Some(key) => {
                            if let Some(next) = lanes.admit(key.clone(), admitted) {
                                self.spawn_in_lane(&mut handlers, Some(key), next, &done, &stop);
                            }
                        }
                        // No key (a malformed message, or the job gives
                        // none for this payload): it needs no lane.
                        None => self.spawn_in_lane(&mut handlers, None, admitted, &done, &stop),
                    }
                }
                LaneEvent::Next(ended) => {
                    // What waited in the lanes came from the lost
                    // subscription: the broker redelivers it, in order. Keys
                    // still running keep their lanes until they finish.
                    drop(lanes.take_queued());
                    match self
                        .replace(subscription, ended, &mut handlers, &stop, &mut failures)
                        .await
                    {
                        Some(next) => subscription = next,
                        None => return self.drain(handlers, None).await,
                    }
                }
            }
            while handlers.try_join_next().is_some() {}
        }
        // Deliveries waiting in lanes are never started; closing the
        // subscription returns them to the queue in their order.
        self.stop(handlers, subscription).await;
    }

    /// Runs a delivery of `key`'s lane (held in place through its retries);
    /// when it is done, the lane's next delivery starts. Without a key it
    /// runs on its own.
    fn spawn_in_lane(
        &self,
        handlers: &mut JoinSet<()>,
        key: Option<String>,
        admitted: Admitted,
        done: &mpsc::UnboundedSender<String>,
        stop: &CancellationToken,
    ) {
        let (handler, slots) = (self.handler.clone(), self.slots.clone());
        let halt = Halt::new(stop.clone(), self.paused.clone());
        let release = Release(key.clone().map(|key| (key, done.clone())));
        handlers.spawn(async move {
            let _release = release;
            let in_place = Retries::InPlace {
                received: admitted.received,
                slots,
                halt,
            };
            handler
                .handle(admitted.delivery, admitted.decoded, key, in_place)
                .await;
        });
    }

    /// Moves the subscription to a new prefetch; if that fails, replaces
    /// the subscription (which subscribes with the configured prefetch, or
    /// adaptive concurrency's). Returns the subscription and its prefetch.
    async fn set_prefetch(
        &self,
        mut subscription: Box<dyn Subscription>,
        target: u16,
        handlers: &mut JoinSet<()>,
        stop: &CancellationToken,
        failures: &mut u32,
    ) -> (Option<Box<dyn Subscription>>, u16) {
        match subscription.set_prefetch(target).await {
            Ok(()) => {
                tracing::debug!(queue = self.queue(), prefetch = target, "prefetch changed");
                (Some(subscription), target)
            }
            Err(error) => (
                self.replace(subscription, Some(Err(error)), handlers, stop, failures)
                    .await,
                self.subscribed_prefetch(),
            ),
        }
    }

    /// The prefetch [`Consumer::subscribe`] subscribes with.
    fn subscribed_prefetch(&self) -> u16 {
        self.prefetch
            .as_ref()
            .map_or(self.options.prefetch(), |target| *target.borrow())
    }

    /// Logs why a subscription ended, closes it and subscribes again with
    /// backoff; `None` if the worker is stopping meanwhile.
    async fn replace(
        &self,
        subscription: Box<dyn Subscription>,
        ended: Option<Result<Delivery, Error>>,
        handlers: &mut JoinSet<()>,
        stop: &CancellationToken,
        failures: &mut u32,
    ) -> Option<Box<dyn Subscription>> {
        let cancelled = ended.is_none();
        self.health.consumer(self.queue(), false);
        self.report_left_to_broker();
        match ended {
            Some(Err(error)) => {
                self.health.error(&error);
                tracing::warn!(queue = self.queue(), %error, "consumer failed; resubscribing")
            }
            _ => {
                // `basic.cancel` from RabbitMQ: the queue was deleted, a
                // node holding it went away, or (RabbitMQ 4) a delivery
                // outlived the consumer timeout.
                self.health.error(Error::broker(
                    format!("consume queue {:?}", self.queue()),
                    "the broker cancelled the consumer (queue deleted, node lost or consumer timeout)",
                ));
                tracing::warn!(
                    queue = self.queue(),
                    "consumer cancelled by the broker; resubscribing"
                )
            }
        }
        if cancelled && self.single_active() {
            // The channel is alive: closing it now would return the
            // deliveries of running handlers, which would run again (on
            // the queue's next active consumer, beside these). Their
            // settlements land first; what was held and not started comes
            // back at the close.
            // Bounded like a shutdown (a stop meanwhile waits here too).
            let _ = tokio::time::timeout(self.shutdown_timeout, async {
                while handlers.join_next().await.is_some() {}
            })
            .await;
        }
        let _ = subscription.close().await;
        self.resubscribe(stop, failures).await
    }

    /// Subscribes again, with backoff after each failure; `None` if the
    /// worker stops meanwhile.
    async fn resubscribe(
        &self,
        stop: &CancellationToken,
        failures: &mut u32,
    ) -> Option<Box<dyn Subscription>> {
        loop {
            *failures = failures.saturating_add(1);
            let delay = backoff::retry_delay(*failures, MAX_RESUBSCRIBE_DELAY);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            if self.inherited && matches!(self.broker.queue_stats(self.queue()).await, Ok(None)) {
                // Deleted: what it held is gone with it, and nothing goes
                // to it any more. Its consumer ends with the worker.
                tracing::info!(
                    queue = self.queue(),
                    "the shard past the job's shards is gone"
                );
                self.health.forget_consumer(self.queue());
                stop.cancelled().await;
                return None;
            }
            match self.subscribe().await {
                Ok(subscription) => {
                    self.health.consumer(self.queue(), true);
                    tracing::info!(queue = self.queue(), "consumer resubscribed");
                    return Some(subscription);
                }
                Err(error) => {
                    tracing::warn!(queue = self.queue(), %error, retry_in = ?delay, "resubscribe failed");
                    self.health.error(&error);
                }
            }
        }
    }

    /// Pauses the job on this queue: the consumer is cancelled (not a
    /// message rejected), the handlers running finish, and closing the
    /// subscription returns what it held and had not started, in order;
    /// then it waits for a resume and subscribes again. `None` if the
    /// worker stops meanwhile (the caller drains what still runs).
    async fn pause(
        &self,
        mut subscription: Box<dyn Subscription>,
        handlers: &mut JoinSet<()>,
        stop: &CancellationToken,
        paused: &mut watch::Receiver<bool>,
    ) -> Option<Box<dyn Subscription>> {
        tracing::info!(
            queue = self.queue(),
            in_flight = handlers.len(),
            "pausing: the consumer is cancelled, running handlers finish"
        );
        self.health.paused(self.queue(), true);
        // As at a stop, a single-active-consumer queue is not cancelled
        // first: it would pass to a standby while this worker still runs
        // its jobs (every worker pauses it, but not at the same instant).
        if !self.single_active()
            && let Err(error) = subscription.cancel().await
        {
            tracing::debug!(queue = self.queue(), %error, "cancelling the consumer failed");
        }
        let finished = tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = async { while handlers.join_next().await.is_some() {} } => true,
        };
        if !finished {
            // Stopping: the handlers still running keep their channel open
            // until they settle, within the shutdown timeout.
            self.drain(std::mem::take(handlers), Some(subscription))
                .await;
            return None;
        }
        self.health.consumer(self.queue(), false);
        if let Err(error) = subscription.close().await {
            tracing::debug!(queue = self.queue(), %error, "closing the paused subscription failed");
        }
        self.report_left_to_broker();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            _ = paused.wait_for(|paused| !*paused) => {}
        }
        self.health.paused(self.queue(), false);
        tracing::info!(queue = self.queue(), "resuming");
        let mut failures = 0;
        self.resubscribe(stop, &mut failures).await
    }

    /// Stops: no new delivery is started, in-flight handlers finish within
    /// the shutdown timeout, and closing the subscription returns the rest.
    ///
    /// A single-active-consumer queue (every partition queue) is not
    /// cancelled first: RabbitMQ would hand it to a standby at once, which
    /// would start a key's later jobs while this worker still runs an
    /// earlier one and holds the next. It is handed over only at the close,
    /// once nothing of it runs here, with what it held back in the queue in
    /// order. (Cancelling a classic single-active queue that holds unacked
    /// messages also crashes its queue process on RabbitMQ 3.10.)
    async fn stop(&self, handlers: JoinSet<()>, mut subscription: Box<dyn Subscription>) {
        if !self.single_active()
            && let Err(error) = subscription.cancel().await
        {
            tracing::debug!(queue = self.queue(), %error, "cancelling the consumer failed");
        }
        self.drain(handlers, Some(subscription)).await;
    }

    /// Whether this consumer's queue has one active consumer at a time.
    fn single_active(&self) -> bool {
        self.options.partitions().is_some() || self.options.single_active()
    }

    /// Logs, once, how many deliveries of a closed channel were left to the
    /// broker (not started, or not settled) since the last report.
    fn report_left_to_broker(&self) {
        match self.handler.take_abandoned() {
            0 => {}
            count => tracing::warn!(
                queue = self.queue(),
                count,
                "deliveries of a closed channel were left to the broker (not started, or finished and not acked); it delivers them again"
            ),
        }
    }

    /// Waits for in-flight handlers up to the shutdown timeout, abandons the
    /// rest, and closes the subscription.
    async fn drain(&self, mut handlers: JoinSet<()>, subscription: Option<Box<dyn Subscription>>) {
        let finished = tokio::time::timeout(self.shutdown_timeout, async {
            while handlers.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                queue = self.queue(),
                in_flight = handlers.len(),
                timeout = ?self.shutdown_timeout,
                "shutdown timeout reached; abandoning in-flight handlers (their messages are redelivered)"
            );
            handlers.abort_all();
            while handlers.join_next().await.is_some() {}
        }
        if let Some(subscription) = subscription
            && let Err(error) = subscription.close().await
        {
            tracing::debug!(queue = self.queue(), %error, "closing the subscription failed");
        }
        self.report_left_to_broker();
    }
}

/// A delivery admitted to a lane, with its payload as decoded for its key
/// (held until its first attempt starts: at most the prefetch of them).
struct Admitted {
    delivery: Delivery,
    decoded: Option<Decoded>,
    received: Instant,
}

/// Frees a key's lane when its handler task ends, however it ends (a
/// panic, an abort at the shutdown timeout): the key's next delivery runs.
struct Release(Option<(String, mpsc::UnboundedSender<String>)>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some((key, done)) = self.0.take() {
            let _ = done.send(key);
        }
    }
}

/// The next prefetch target; never resolves when the prefetch is fixed.
async fn changed(target: &mut Option<watch::Receiver<u16>>) -> u16 {
    if let Some(receiver) = target
        && receiver.changed().await.is_ok()
    {
        return *receiver.borrow_and_update();
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_settlements_widen_the_window_in_steps_of_the_prefetch_within_the_budget() {
        assert_eq!(widened(20, 0), 20);
        assert_eq!(widened(20, 1), 40);
        assert_eq!(widened(20, 20), 40);
        assert_eq!(widened(20, 21), 60);
        assert_eq!(widened(20, 5_000), 1_020);
        assert_eq!(widened(60_000, 1), u16::MAX);
        assert_eq!(widened(0, 0), 1);
    }
}
