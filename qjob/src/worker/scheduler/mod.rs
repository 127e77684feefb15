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
//! the leader keeps the one with the later tick and acks the other. A new
//! leader publishes a lease first and takes up no tick until it comes
//! back: the queue delivers in order, so it has read every lease then.
//!
//! The console pauses a schedule (no tick fires, the lease stays held and
//! renewed, the next tick moves on) and resumes it (the missed-tick policy
//! applies to the ticks that went by), and has its leader fire one tick
//! now: published as a due tick is, with the current second's tick id,
//! and recorded nowhere, so the regular ticks go on as they would have
//! ([`crate::worker::schedule_control`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, ConsumeOptions, Delivery, Subscription};
use crate::policy::backoff;
use crate::schedule::{self, Missed, Schedule};
use crate::topology::names;
use crate::worker::health::{Health, ScheduleHealth};
use crate::worker::schedule_control::{Controlled, FireNow, Fired};

mod clock;
mod lease;

use crate::{Error, Job, JobId, JobOptions, headers, topology, trace};
use clock::{AHEAD_TOLERANCE, Clock, MAX_SLEEP};
use lease::{Lease, Refused, declare_lease_queue, truncated};

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
        names::lease_queue(&self.name)
    }

    pub(crate) fn health(&self) -> ScheduleHealth {
        ScheduleHealth::new(
            self.job,
            self.schedule.expression(),
            self.schedule.zone(),
            self.schedule.missed().as_str(),
        )
    }
}

/// Runs schedule `planned` until `stop`: leads it when this worker is the
/// lease queue's active consumer, stands by otherwise; paused, fired now,
/// resumed through `control`.
pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    planned: Planned,
    health: Health,
    consumer_timeout: Duration,
    mut control: Controlled,
    stop: CancellationToken,
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
            renew_every,
            last: None,
            leading: false,
            recorded: true,
            unreturned: VecDeque::new(),
            settling: None,
            control: &mut control,
        };
        let outcome = leader.run(&stop).await;
        health.schedule(&planned.name, |s| {
            s.leader = false;
            s.next = None;
        });
        match outcome {
            Ok(None) => return,
            Ok(Some(Refused(why))) => {
                tracing::error!(schedule = %planned.name, "schedule stopped on this worker: {why}");
                health.error(format!("schedule {}: {why}", planned.name));
                health.schedule(&planned.name, |s| s.problem = Some(why));
                stop.cancelled().await;
                return;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                tracing::warn!(schedule = %planned.name, %error, retry_in = ?delay, "schedule: lost the lease queue");
                health.error(&error);
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn retry_delay(failures: u32) -> Duration {
    backoff::retry_delay(failures, MAX_RETRY_DELAY)
}

/// The lease a leader holds unacked.
struct Held {
    delivery: Delivery,
    /// The tick it records, as this leader counts it (a tick far ahead of
    /// its clock counts as now).
    last: Option<SystemTime>,
    /// Whether `last` is not what it records (it was far ahead).
    corrected: bool,
    id: Option<String>,
    /// When it came (or was last renewed).
    since: Instant,
}

/// One subscription to the lease queue.
struct Leader<'a> {
    broker: &'a dyn Broker,
    planned: &'a Planned,
    health: &'a Health,
    clock: Clock,
    held: Option<Held>,
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
    /// The leases this leader recorded that have not come back to it yet,
    /// oldest first, each with when it must have come back by: the
    /// deadline is the oldest one's, however many ticks followed.
    unreturned: VecDeque<(String, Instant)>,
    /// While taking over: the id of the lease recorded on taking the first
    /// one. Every lease the queue held was delivered before it (one
    /// active consumer, in queue order), so none is left unread once it
    /// comes back; until then no tick fires.
    settling: Option<String>,
    /// The console's pause and fire-now requests.
    control: &'a mut Controlled,
}

impl Leader<'_> {
    /// Leads or stands by until `stop` (`Ok(None)`), until the schedule
    /// cannot be led safely (`Ok(Some)`), or until the subscription fails
    /// (`Err`: the caller subscribes again).
    async fn run(&mut self, stop: &CancellationToken) -> Result<Option<Refused>, Error> {
        let queue = self.planned.lease_queue();
        if let Some(refused) = declare_lease_queue(self.broker, &queue).await? {
            return Ok(Some(refused));
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
        let options = ConsumeOptions::new(
            LEASE_PREFETCH,
            format!("qjob-schedule-{}", self.planned.name),
        );
        let mut subscription = self.broker.consume(&queue, options).await?;
        let result = self.lead(&mut *subscription, &queue, stop).await;
        // Whatever it held goes back to the queue, to the next leader.
        let closed = subscription.close().await;
        result.and(closed).map(|()| None)
    }

    async fn lead(
        &mut self,
        subscription: &mut dyn Subscription,
        queue: &str,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let mut next: Option<SystemTime> = None;
        // A pause or resume before this subscription is read as it stands.
        self.control.paused.borrow_and_update();
        loop {
            let wake = match next {
                Some(tick) => self.clock.wake_for(tick),
                None => Instant::now() + MAX_SLEEP,
            };
            let renew = self
                .held
                .as_ref()
                .map_or_else(Instant::now, |held| held.since + self.renew_every);
            let returning = self.unreturned.front().map(|(_, by)| *by);
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                delivery = subscription.next() => {
                    let delivery = delivery.ok_or_else(|| Error::broker(
                        format!("consume queue {queue:?}"),
                        "the subscription ended",
                    ))??;
                    let took_over = !self.leading;
                    let id = self.take(delivery).await?;
                    if took_over {
                        tracing::info!(schedule = %self.planned.name, "schedule: taking over; reading every lease first");
                        self.settling = Some(self.record(queue).await?);
                    } else if self.settling.is_some() && id == self.settling {
                        self.settling = None;
                        next = self.catch_up(true).await?;
                        // A fresh lease: each takeover starts its own.
                        let fresh = self.held.as_ref().is_some_and(|held| held.id == id);
                        self.recorded &= fresh;
                    } else if self.settling.is_none()
                        && next.is_some_and(|tick| Some(tick) <= self.last)
                    {
                        // Another leader's later tick: go on after it.
                        next = self.catch_up(false).await?;
                    }
                }
                () = tokio::time::sleep_until(wake), if next.is_some() => {
                    let tick = next.expect("a tick is due");
                    let now = self.clock.now();
                    if self.behind_the_last(now) || now >= tick + MAX_SLEEP {
                        // The clock stepped back past the last tick fired,
                        // or far ahead of the schedule (a jump, a stalled
                        // process): the missed-tick policy decides.
                        next = self.catch_up(false).await?;
                    } else if now >= tick {
                        self.fire(tick).await?;
                        next = self.planned.schedule.next_after(tick);
                    }
                }
                () = tokio::time::sleep_until(renew), if self.held.is_some() => {
                    self.recorded = false;
                    if let Some(held) = &mut self.held {
                        held.since = Instant::now();
                    }
                }
                () = tokio::time::sleep_until(returning.unwrap_or(wake)), if returning.is_some() => {
                    return Err(Error::broker(
                        format!("consume queue {queue:?}"),
                        "a lease recorded did not come back within 10 s: another worker leads",
                    ));
                }
                // The console's end lives as long as this task: the
                // request channel and the pause flag never close.
                Some(request) = self.control.requests.recv() => self.fire_now(request).await,
                Ok(()) = self.control.paused.changed() => {
                    let paused = *self.control.paused.borrow_and_update();
                    tracing::info!(schedule = %self.planned.name, paused, "schedule: paused or resumed by the console");
                    if !paused && self.leading && self.settling.is_none() {
                        // The ticks that went by while paused: the
                        // missed-tick policy decides.
                        next = self.catch_up(false).await?;
                    }
                }
            }
            if !self.recorded && self.settling.is_none() {
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
    /// Returns the lease's id.
    async fn take(&mut self, delivery: Delivery) -> Result<Option<String>, Error> {
        let lease = Lease::read(&delivery);
        let last = self.counted(lease.last());
        let corrected = last != lease.last();
        self.leading = true;
        if let Some(id) = &lease.id
            && let Some(at) = self.unreturned.iter().position(|(sent, _)| sent == id)
        {
            // It came back, and so did every record before it.
            self.unreturned.drain(..=at);
        }
        if last > self.last {
            self.last = last;
        }
        let id = lease.id.clone();
        let new = Held {
            delivery,
            last,
            corrected,
            id: lease.id,
            since: Instant::now(),
        };
        match self.held.take() {
            None => self.held = Some(new),
            Some(held) => {
                // The newer delivery wins a tie: it renews the lease.
                let (keep, drop) = if new.last >= held.last {
                    (new, held)
                } else {
                    (held, new)
                };
                self.held = Some(keep);
                drop.delivery.acker.ack().await?;
            }
        }
        // The queue records the last tick if the lease held does (one
        // counted as now records another tick: it is recorded afresh).
        self.recorded = self
            .held
            .as_ref()
            .is_some_and(|held| held.last == self.last && !held.corrected);
        Ok(id)
    }

    /// A lease's tick as this leader counts it: as it is, or now if it is
    /// further ahead of this worker's clock than two clocks in sync can
    /// be (a leader whose clock was wrong recorded it), reported loudly.
    fn counted(&self, last: Option<SystemTime>) -> Option<SystemTime> {
        let now = self.clock.now();
        match last {
            Some(tick) if tick > now + AHEAD_TOLERANCE => {
                let ahead = tick.duration_since(now).unwrap_or_default();
                self.ahead(ahead, "a lease records");
                Some(truncated(now))
            }
            last => last,
        }
    }

    /// Whether this worker's clock stepped back more than the tolerance
    /// since it fired or read its last tick; if so, the last tick counts
    /// as now from here on (reported loudly), and the queue records it
    /// again.
    fn behind_the_last(&mut self, now: SystemTime) -> bool {
        let Some(last) = self.last else { return false };
        if last <= now + AHEAD_TOLERANCE {
            return false;
        }
        self.ahead(
            last.duration_since(now).unwrap_or_default(),
            "the last tick fired is",
        );
        self.last = Some(truncated(now));
        if let Some(held) = &mut self.held
            && held.last > self.last
        {
            held.last = self.last;
            held.corrected = true;
        }
        self.recorded = false;
        true
    }

    fn ahead(&self, by: Duration, what: &str) {
        let why = format!(
            "{what} a tick {} s ahead of this worker's clock ({}); counted as now: \
             check the workers' clocks (NTP)",
            by.as_secs(),
            schedule::tick_id(&self.planned.name, self.clock.now()),
        );
        tracing::error!(schedule = %self.planned.name, "{why}");
        self.health
            .schedule(&self.planned.name, |s| s.problem = Some(why));
    }

    /// Fires the latest tick missed since the last one fired (or skips
    /// them, as the schedule says), and returns the next tick: what a new
    /// leader does first (`taking_over`), and a leader far behind its
    /// schedule. A last tick later than now (clocks a little apart) counts
    /// as now for the missed tick.
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
            self.last = Some(truncated(now));
            self.recorded = false;
            return Ok(schedule.next_after(now));
        };
        if let Some(missed) = schedule.latest_between(last, now) {
            match schedule.missed() {
                Missed::Latest => self.fire(missed).await?,
                Missed::Skip => {
                    tracing::info!(schedule = %self.planned.name, latest = ?missed, "schedule: skipping missed ticks");
                }
            }
        }
        Ok(schedule.next_after(now.max(self.last.unwrap_or(now))))
    }

    /// Enqueues the job of `tick`, unless the schedule is paused (the
    /// tick is then missed: on resume, the policy decides). A failure
    /// gives up the lead (the caller closes the subscription): the next
    /// leader fires the tick as a missed one, under the schedule's policy.
    async fn fire(&mut self, tick: SystemTime) -> Result<(), Error> {
        if Some(tick) <= self.last {
            // Fired already (by this leader, or one whose lease came).
            return Ok(());
        }
        // Held through the publish: a pause waits for a tick on its way.
        let firing = self.control.firing.clone();
        let _firing = firing.lock().await;
        if *self.control.paused.borrow() {
            tracing::debug!(schedule = %self.planned.name, ?tick, "schedule: paused, tick not fired");
            return Ok(());
        }
        let id = self.publish(tick).await?;
        tracing::debug!(schedule = %self.planned.name, %id, "schedule: tick enqueued");
        self.last = Some(tick);
        self.recorded = false;
        self.health
            .schedule(&self.planned.name, |s| s.last_fired = Some(tick));
        Ok(())
    }

    /// Publishes the job of `tick` to the schedule's queue: its payload,
    /// the headers of a new job, the trace context, and the tick's id.
    async fn publish(&self, tick: SystemTime) -> Result<JobId, Error> {
        let id = schedule::tick_id(&self.planned.name, tick);
        let mut message = headers::new_job(&id, self.planned.body.clone());
        trace::inject(&mut message.headers);
        self.broker.publish(&self.planned.target, message).await?;
        Ok(id)
    }

    /// Fires one tick now, for the console, if this worker leads: the
    /// tick of the current second (so that two requests within a second
    /// are one tick to an inbox, and one in the second of a regular tick
    /// is that tick), published as a due tick is. It records nothing:
    /// neither `last` nor the lease moves, so the regular ticks neither
    /// skip nor repeat, and a failure does not give up the lead. Works
    /// while paused too. A request the console stopped waiting for is
    /// dropped unfired.
    async fn fire_now(&mut self, request: FireNow) {
        if request.answer.is_closed() {
            return;
        }
        if !self.leading {
            let _ = request.answer.send(Fired::NotLeading);
            return;
        }
        let tick = to_the_second(self.clock.now());
        let fired = match self.publish(tick).await {
            Ok(id) => {
                tracing::info!(schedule = %self.planned.name, %id, "schedule: tick fired now by the console");
                Fired::Enqueued(id)
            }
            Err(error) => {
                tracing::warn!(schedule = %self.planned.name, %error, "schedule: a tick fired now could not be enqueued");
                Fired::Failed(error.to_string())
            }
        };
        let _ = request.answer.send(fired);
    }

    /// Records the last tick fired in a new lease, and returns its id; the
    /// old one is acked when the new one comes back ([`Leader::take`]),
    /// which must be within [`RECORD_RETURNS_WITHIN`].
    async fn record(&mut self, queue: &str) -> Result<String, Error> {
        let lease = Lease::new(self.last);
        let id = lease.id.clone().expect("a new lease has an id");
        // Counted before the publish: a lease that went out and was lost
        // with its confirm must still come back. Its time runs from the
        // confirm (a quorum queue electing a leader confirms late).
        self.unreturned
            .push_back((id.clone(), Instant::now() + RECORD_RETURNS_WITHIN));
        self.broker.publish(queue, lease.message()).await?;
        if let Some((sent, by)) = self.unreturned.back_mut()
            && *sent == id
        {
            *by = Instant::now() + RECORD_RETURNS_WITHIN;
        }
        self.recorded = true;
        Ok(id)
    }
}

/// `at` truncated to the second.
fn to_the_second(at: SystemTime) -> SystemTime {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_fired_now_is_the_current_second() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_012_345);
        assert_eq!(
            to_the_second(at),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_012)
        );
    }
}
