//! Periodic jobs: each tick of a schedule enqueued once, however many
//! workers carry the schedule.
//!
//! Leadership needs RabbitMQ alone. Every worker with the schedule consumes
//! its lease queue (`qjob.schedule.<name>`, single active consumer); the
//! queue holds one lease message, recording the last tick fired (or,
//! before the first, when the schedule started). The
//! active consumer receives the lease and holds it unacked: it is the
//! leader. At each tick it publishes the tick's job (its id derived from
//! the schedule and the tick), then a new lease with that tick; the old
//! one is acked when the new one arrives. When the leader goes (a crash, a
//! stop, a lost connection), the broker gives its lease back to the queue
//! and to the next consumer, which carries on from the last tick it
//! records: a tick fired but not yet recorded (a crash between the two
//! publishes) is fired again, with the same job id.
//!
//! Two leases can exist for a moment (a crash between publishing a new one
//! and acking the old, two workers starting at once on an empty queue):
//! the leader keeps the one with the later tick and acks the other, and
//! takes up no tick until it has all the leases the queue holds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::{Broker, ConsumeOptions, Delivery, Message, QueueSpec, Subscription};
use crate::schedule::{self, LEASE_QUEUE_PREFIX, Missed, Schedule};
use crate::worker::health::{Health, ScheduleHealth};
use crate::{Error, Job, JobOptions, QueueType, headers, topology, trace};

/// The leases a leader may hold at once (duplicates it merges).
const LEASE_PREFETCH: u16 = 10;

/// The longest wait between two attempts to lead (or to fire a tick).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How long a leader holds one lease delivery before it records the same
/// tick in a new one (at most; a third of the broker's consumer timeout if
/// that is shorter): RabbitMQ's `consumer_timeout` would otherwise take the
/// lease back from the leader of a schedule that ticks less often.
const RENEW_EVERY: Duration = Duration::from_secs(300);

/// How long a leader waits for a lease it recorded to come back to it: one
/// that does not was taken by another consumer, so this one no longer
/// leads (its consuming connection is gone, and it does not know yet).
const RECORD_RETURNS_WITHIN: Duration = Duration::from_secs(10);

/// The lease message's format version.
const LEASE_FORMAT: u32 = 1;

/// A schedule as a worker carries it: what it enqueues, where.
pub(crate) struct Planned {
    pub(crate) name: String,
    pub(crate) job: &'static str,
    pub(crate) schedule: Schedule,
    /// The job type's options, to declare its queues.
    pub(crate) options: JobOptions,
    /// The queue its jobs go to (a partition queue for a partitioned job).
    pub(crate) target: String,
    /// The payload, serialized once.
    pub(crate) body: Vec<u8>,
}

impl Planned {
    /// The schedule `schedule` of job type `J` with `payload`.
    pub(crate) fn new<J: Job>(schedule: Schedule, payload: &J::Payload) -> Result<Self, Error> {
        let name = schedule::checked_name(&schedule, J::NAME)?;
        let body = serde_json::to_vec(payload).map_err(|source| Error::Serialize {
            job: J::NAME,
            source,
        })?;
        Ok(Self {
            name,
            job: J::NAME,
            schedule,
            options: J::options(),
            target: crate::Client::target::<J>(Some(payload)).into_owned(),
            body,
        })
    }

    fn lease_queue(&self) -> String {
        format!("{LEASE_QUEUE_PREFIX}{}", self.name)
    }

    pub(crate) fn health(&self) -> ScheduleHealth {
        ScheduleHealth::new(self.job, self.schedule.expression(), self.schedule.zone())
    }
}

/// The lease: the last tick fired (or, before the first, when the
/// schedule started), in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    format: u32,
    last_ms: Option<u64>,
}

impl Lease {
    fn new(last: Option<SystemTime>) -> Self {
        Self {
            format: LEASE_FORMAT,
            last_ms: last.map(millis),
        }
    }

    fn last(&self) -> Option<SystemTime> {
        self.last_ms
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    fn message(&self) -> Message {
        Message {
            body: serde_json::to_vec(self).expect("a lease serializes"),
            ..Message::default()
        }
    }

    /// A lease read from a delivery; one that does not read (another
    /// format) counts as knowing no tick.
    fn read(delivery: &Delivery) -> Self {
        serde_json::from_slice(&delivery.message.body).unwrap_or(Lease::new(None))
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall clock as schedules read it: tokio's clock from an anchor taken
/// once per process, so that ticks follow a paused test's virtual time
/// (across worker restarts too), and never behind the system's clock (a
/// machine back from a suspend, which tokio's clock does not count).
#[derive(Clone, Copy)]
struct Clock;

/// Sleeps are cut to this and the clock read again, so that a jump of the
/// system clock (a suspend) delays a tick by at most this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

impl Clock {
    fn now(self) -> SystemTime {
        static ANCHOR: std::sync::OnceLock<(SystemTime, Instant)> = std::sync::OnceLock::new();
        let (wall, at) = *ANCHOR.get_or_init(|| (SystemTime::now(), Instant::now()));
        (wall + at.elapsed()).max(SystemTime::now())
    }

    /// When to wake up for `time`: at it, or after [`MAX_SLEEP`] to look
    /// again.
    fn wake_for(self, time: SystemTime) -> Instant {
        let until = time.duration_since(self.now()).unwrap_or_default();
        Instant::now() + until.min(MAX_SLEEP)
    }
}

/// Runs schedule `planned` until `stop`: leads it when this worker is the
/// lease queue's active consumer, stands by otherwise.
pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    planned: Planned,
    health: Health,
    consumer_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let clock = Clock;
    let renew_every = match consumer_timeout {
        Duration::ZERO => RENEW_EVERY,
        timeout => RENEW_EVERY.min(timeout / 3),
    };
    let mut failures: u32 = 0;
    loop {
        let mut leader = Leader {
            broker: &*broker,
            planned: &planned,
            health: &health,
            clock,
            held: None,
            held_since: Instant::now(),
            renew_every,
            last: None,
            leading: false,
            recorded: true,
            returning: None,
        };
        let outcome = leader.run(&mut stop).await;
        health.schedule(&planned.name, |s| {
            s.leader = false;
            s.next = None;
        });
        match outcome {
            Ok(()) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                tracing::warn!(schedule = %planned.name, %error, retry_in = ?delay, "schedule: lost the lease queue");
                health.error(&error);
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Resolves once the worker stops.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn retry_delay(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(failures.saturating_sub(1)).min(64))
        .min(MAX_RETRY_DELAY)
}

/// One subscription to the lease queue.
struct Leader<'a> {
    broker: &'a dyn Broker,
    planned: &'a Planned,
    health: &'a Health,
    clock: Clock,
    /// The lease held (unacked), with its tick and when it came.
    held: Option<(Delivery, Lease)>,
    held_since: Instant,
    renew_every: Duration,
    /// The last tick fired, as this leader knows it, or when the schedule
    /// started if none was.
    last: Option<SystemTime>,
    /// Whether this worker leads (it received a lease on this
    /// subscription: the active consumer stays so while subscribed).
    leading: bool,
    /// Whether the lease queue records `last` (a new lease was published
    /// after the last tick fired, or the schedule's start).
    recorded: bool,
    /// Until when the lease last recorded must come back to this leader.
    returning: Option<Instant>,
}

impl Leader<'_> {
    /// Leads or stands by until `stop` (`Ok`) or until the subscription
    /// fails (`Err`: the caller subscribes again).
    async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Error> {
        let queue = self.planned.lease_queue();
        // A lease handed from leader to leader is delivered again each
        // time: RabbitMQ 4's default delivery limit (20) would drop it.
        let spec = QueueSpec::new(&queue)
            .with_queue_type(QueueType::Quorum)
            .with_single_active(true)
            .with_delivery_limit(topology::DEAD_LETTER_DELIVERY_LIMIT);
        match self.broker.declare_queue(&spec).await {
            // Declared by another version with other arguments: used as
            // it is (its lease is what matters).
            Err(Error::QueueMismatch { .. }) => {
                tracing::warn!(
                    queue,
                    "the lease queue exists with other arguments; using it as it is"
                );
            }
            declared => declared?,
        }
        topology::declare(self.broker, &self.planned.options).await?;
        // No lease anywhere (the first start, or a purged queue): add one.
        // Two workers starting at once may both add one; the leader merges.
        if let Some(stats) = self.broker.queue_stats(&queue).await?
            && stats.messages == 0
            && stats.consumers == 0
        {
            self.broker
                .publish(&queue, Lease::new(None).message())
                .await?;
        }
        let options = ConsumeOptions {
            prefetch: LEASE_PREFETCH,
            tag: format!("qjob-schedule-{}", self.planned.name),
        };
        let mut subscription = self.broker.consume(&queue, options).await?;
        let result = self.lead(&mut *subscription, &queue, stop).await;
        // Whatever it held goes back to the queue, to the next leader.
        let closed = subscription.close().await;
        result.and(closed)
    }

    async fn lead(
        &mut self,
        subscription: &mut dyn Subscription,
        queue: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut next: Option<SystemTime> = None;
        loop {
            let wake = match next {
                Some(tick) => self.clock.wake_for(tick),
                None => Instant::now() + MAX_SLEEP,
            };
            let renew = self.held_since + self.renew_every;
            let returning = self.returning.unwrap_or_else(|| Instant::now() + MAX_SLEEP);
            tokio::select! {
                biased;
                () = stopped(stop) => return Ok(()),
                delivery = subscription.next() => {
                    let delivery = delivery.ok_or_else(|| Error::broker(
                        format!("consume queue {queue:?}"),
                        "the subscription ended",
                    ))??;
                    let took_over = !self.leading;
                    self.take(delivery).await?;
                    if took_over {
                        self.settle_in(subscription, queue).await?;
                        next = self.catch_up(true).await?;
                        // A fresh lease: each takeover starts its own.
                        self.recorded = false;
                    } else if next.is_some_and(|tick| Some(tick) <= self.last) {
                        // Another leader's later tick: go on after it.
                        next = self.catch_up(false).await?;
                    }
                }
                () = tokio::time::sleep_until(wake), if next.is_some() => {
                    let tick = next.expect("a tick is due");
                    let now = self.clock.now();
                    if now >= tick + MAX_SLEEP {
                        // Far behind (the clock jumped, or this process
                        // stalled): the missed-tick policy decides.
                        next = self.catch_up(false).await?;
                    } else if now >= tick {
                        self.fire(tick).await?;
                        next = self.planned.schedule.next_after(tick);
                    }
                }
                () = tokio::time::sleep_until(renew), if self.held.is_some() => {
                    self.recorded = false;
                    self.held_since = Instant::now();
                }
                () = tokio::time::sleep_until(returning), if self.returning.is_some() => {
                    return Err(Error::broker(
                        format!("consume queue {queue:?}"),
                        "the lease recorded did not come back: another worker leads",
                    ));
                }
            }
            if !self.recorded {
                self.record(queue).await?;
            }
            self.health.schedule(&self.planned.name, |s| {
                s.leader = self.leading;
                s.next = next;
            });
        }
    }

    /// Takes a lease delivered: the first makes this worker the leader; of
    /// two, the one with the later tick stays held and the other is acked.
    async fn take(&mut self, delivery: Delivery) -> Result<(), Error> {
        let lease = Lease::read(&delivery);
        self.leading = true;
        if lease.last() >= self.last {
            // What this leader recorded came back (or a later tick).
            self.returning = None;
        }
        if lease.last() > self.last {
            self.last = lease.last();
        }
        match self.held.take() {
            None => {
                self.held = Some((delivery, lease));
                self.held_since = Instant::now();
            }
            Some((held, held_lease)) => {
                // The newer delivery wins a tie: it renews the lease.
                let (keep, drop) = if lease.last() >= held_lease.last() {
                    self.held_since = Instant::now();
                    ((delivery, lease), held)
                } else {
                    ((held, held_lease), delivery)
                };
                self.held = Some(keep);
                drop.acker.ack().await?;
            }
        }
        // The queue records the last tick if the lease held does.
        self.recorded = self.held.as_ref().map(|(_, lease)| lease.last()) == Some(self.last);
        Ok(())
    }

    /// Before acting as leader: takes every lease the queue still holds
    /// (a crashed leader's two), so as not to fire a tick one of them
    /// records.
    async fn settle_in(
        &mut self,
        subscription: &mut dyn Subscription,
        queue: &str,
    ) -> Result<(), Error> {
        while self
            .broker
            .queue_stats(queue)
            .await?
            .is_some_and(|stats| stats.messages > 0)
        {
            let delivery = tokio::time::timeout(MAX_RETRY_DELAY, subscription.next())
                .await
                .map_err(|_| Error::Timeout {
                    operation: format!("take the leases of queue {queue:?}"),
                    after: MAX_RETRY_DELAY,
                })?
                .ok_or_else(|| {
                    Error::broker(format!("consume queue {queue:?}"), "the subscription ended")
                })??;
            self.take(delivery).await?;
        }
        Ok(())
    }

    /// Fires the latest tick missed since the last one fired (or skips
    /// them, as the schedule says), and returns the next tick: what a new
    /// leader does first (`taking_over`), and a leader far behind its
    /// schedule. A last tick later than now (a clock that was ahead) counts
    /// as now.
    async fn catch_up(&mut self, taking_over: bool) -> Result<Option<SystemTime>, Error> {
        let now = self.clock.now();
        let schedule = &self.planned.schedule;
        if taking_over {
            tracing::info!(schedule = %self.planned.name, last_or_start = ?self.last, "schedule: leading");
        }
        let Some(last) = self.last.map(|last| last.min(now)) else {
            // No tick fired yet: from now on. The lease records now as the
            // schedule's start (to the millisecond it keeps), so that a
            // first tick this leader cannot fire is a missed tick for the
            // next, not one that never was.
            self.last = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis(now)));
            self.recorded = false;
            return Ok(schedule.next_after(now));
        };
        if let Some(missed) = schedule.latest_between(last, now) {
            match schedule.missed_policy() {
                Missed::Latest => self.fire(missed).await?,
                Missed::Skip => {
                    tracing::info!(schedule = %self.planned.name, latest = ?missed, "schedule: skipping missed ticks");
                }
            }
        }
        Ok(schedule.next_after(now.max(self.last.unwrap_or(now))))
    }

    /// Enqueues the job of `tick`. A failure gives up the lead (the caller
    /// closes the subscription): the next leader fires the tick as a
    /// missed one, under the schedule's policy.
    async fn fire(&mut self, tick: SystemTime) -> Result<(), Error> {
        if Some(tick) <= self.last {
            // Fired already (by this leader, or one whose lease came).
            return Ok(());
        }
        let id = schedule::tick_id(&self.planned.name, tick);
        let mut message = headers::new_job(&id, self.planned.body.clone());
        trace::inject(&mut message.headers);
        self.broker.publish(&self.planned.target, message).await?;
        tracing::debug!(schedule = %self.planned.name, %id, "schedule: tick enqueued");
        self.last = Some(tick);
        self.recorded = false;
        self.health
            .schedule(&self.planned.name, |s| s.last_fired = Some(tick));
        Ok(())
    }

    /// Records the last tick fired in a new lease; the old one is acked
    /// when the new one comes back ([`Leader::take`]).
    async fn record(&mut self, queue: &str) -> Result<(), Error> {
        self.broker
            .publish(queue, Lease::new(self.last).message())
            .await?;
        self.recorded = true;
        self.returning = Some(Instant::now() + RECORD_RETURNS_WITHIN);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unused;

    #[async_trait::async_trait]
    impl crate::broker::Acker for Unused {
        async fn ack(&self) -> Result<(), Error> {
            unreachable!("not settled")
        }

        async fn reject(&self, _requeue: bool) -> Result<(), Error> {
            unreachable!("not settled")
        }
    }

    #[test]
    fn leases_read_back_and_unknown_ones_know_no_tick() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let lease = Lease::new(Some(at));
        let delivery = |body: Vec<u8>| Delivery {
            message: Message {
                body,
                ..Message::default()
            },
            redelivered: false,
            acker: Box::new(Unused),
        };
        assert_eq!(
            Lease::read(&delivery(lease.message().body)).last(),
            Some(at)
        );
        assert_eq!(Lease::read(&delivery(b"junk".to_vec())).last(), None);
    }
}
