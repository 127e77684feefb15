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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, ConsumeOptions, Delivery, Message, QueueSpec, Subscription};
use crate::policy::backoff;
use crate::schedule::{self, Missed, Schedule};
use crate::topology::names;
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
        names::lease_queue(&self.name)
    }

    pub(crate) fn health(&self) -> ScheduleHealth {
        ScheduleHealth::new(self.job, self.schedule.expression(), self.schedule.zone())
    }
}

/// The lease: the last tick fired (or, before the first, when the
/// schedule started), in milliseconds since the Unix epoch, and the id of
/// the record (each lease published carries a fresh one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    format: u32,
    last_ms: Option<u64>,
    /// Absent in the leases of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

impl Lease {
    fn new(last: Option<SystemTime>) -> Self {
        Self {
            format: LEASE_FORMAT,
            last_ms: last.map(millis),
            id: Some(uuid::Uuid::now_v7().to_string()),
        }
    }

    fn last(&self) -> Option<SystemTime> {
        self.last_ms
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    fn message(&self) -> Message {
        Message::new(serde_json::to_vec(self).expect("a lease serializes"))
    }

    /// A lease read from a delivery; one that does not read (another
    /// format) counts as knowing no tick.
    fn read(delivery: &Delivery) -> Self {
        serde_json::from_slice(&delivery.message.body).unwrap_or(Lease {
            format: LEASE_FORMAT,
            last_ms: None,
            id: None,
        })
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `at` to the millisecond a lease keeps.
fn truncated(at: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis(at))
}

/// The wall clock as schedules read it: the system's clock, both ways
/// (a step back by NTP as much as a suspend), plus how far tokio's clock
/// ran ahead of the monotonic one since the process started: nothing in
/// production, and a paused test's virtual time in tests (across worker
/// restarts too).
#[derive(Clone, Copy)]
struct Clock;

/// Sleeps are cut to this and the clock read again, so that a jump of the
/// system clock (a suspend, a step either way) is seen within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A lease may record a tick this far ahead of the reader's clock (two
/// workers' clocks a little apart) and be taken as it is; further ahead,
/// it counts as now, and the schedule reports the problem.
const AHEAD_TOLERANCE: Duration = Duration::from_secs(30);

impl Clock {
    fn now(self) -> SystemTime {
        static ANCHOR: std::sync::OnceLock<(Instant, std::time::Instant)> =
            std::sync::OnceLock::new();
        let (tokio_at, std_at) =
            *ANCHOR.get_or_init(|| (Instant::now(), std::time::Instant::now()));
        wall(SystemTime::now(), tokio_at.elapsed(), std_at.elapsed())
    }

    /// When to wake up for `time`: at it, or after [`MAX_SLEEP`] to look
    /// again.
    fn wake_for(self, time: SystemTime) -> Instant {
        let until = time.duration_since(self.now()).unwrap_or_default();
        Instant::now() + until.min(MAX_SLEEP)
    }
}

/// The system's time `system`, moved by how far tokio's clock ran ahead
/// of (or behind, while paused) the monotonic clock since the same
/// anchor.
fn wall(system: SystemTime, tokio_elapsed: Duration, std_elapsed: Duration) -> SystemTime {
    if tokio_elapsed >= std_elapsed {
        system + (tokio_elapsed - std_elapsed)
    } else {
        system - (std_elapsed - tokio_elapsed)
    }
}

/// Why a schedule stopped for good on this worker (it does not lead it
/// until it restarts).
struct Refused(String);

/// Runs schedule `planned` until `stop`: leads it when this worker is the
/// lease queue's active consumer, stands by otherwise.
pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    planned: Planned,
    health: Health,
    consumer_timeout: Duration,
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

/// Declares the lease queue, or checks that the one there elects one
/// leader: declared by another version with other arguments, it is used
/// as it is if it has a single active consumer; without one every worker
/// would lead, so the schedule is refused (`Some`).
async fn declare_lease_queue(broker: &dyn Broker, queue: &str) -> Result<Option<Refused>, Error> {
    // A lease handed from leader to leader is delivered again each time:
    // RabbitMQ 4's default delivery limit (20) would drop it.
    let mut spec = QueueSpec::new(queue)
        .with_queue_type(QueueType::Quorum)
        .with_single_active(true)
        .with_delivery_limit(topology::DEAD_LETTER_DELIVERY_LIMIT);
    // Each try takes the existing value of the argument that differed,
    // but for the single active consumer.
    for _ in 0..4 {
        let (argument, existing) = match broker.declare_queue(&spec).await {
            Ok(()) => return Ok(None),
            Err(Error::QueueMismatch {
                argument, existing, ..
            }) => (argument, existing),
            Err(error) => return Err(error),
        };
        spec = match (argument.as_str(), existing.as_str()) {
            ("x-queue-type", "classic") => QueueSpec {
                delivery_limit: None,
                ..spec.with_queue_type(QueueType::Classic)
            },
            ("x-queue-type", "quorum") => spec.with_queue_type(QueueType::Quorum),
            ("x-delivery-limit", "none") => QueueSpec {
                delivery_limit: None,
                ..spec
            },
            ("x-delivery-limit", limit) if limit.parse::<u32>().is_ok() => {
                spec.with_delivery_limit(limit.parse().expect("a number"))
            }
            ("x-single-active-consumer", _) => {
                return Ok(Some(Refused(format!(
                    "the lease queue {queue:?} exists without a single active consumer \
                     ({argument} = {existing}): every worker would lead it; delete the \
                     queue (no worker carrying the schedule running) to start afresh"
                ))));
            }
            _ => {
                return Ok(Some(Refused(format!(
                    "the lease queue {queue:?} exists with {argument} = {existing}, which \
                     qjob never declares: it cannot tell whether it elects one leader; \
                     delete the queue to start afresh"
                ))));
            }
        };
        tracing::warn!(
            queue,
            argument,
            existing,
            "the lease queue exists with other arguments; using it as it is"
        );
    }
    Ok(Some(Refused(format!(
        "the lease queue {queue:?} exists with arguments qjob does not know"
    ))))
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
        let delivery = |body: Vec<u8>| Delivery::new(Message::new(body), Box::new(Unused));
        assert_eq!(
            Lease::read(&delivery(lease.message().body)).last(),
            Some(at)
        );
        assert_eq!(Lease::read(&delivery(b"junk".to_vec())).last(), None);
    }

    /// The schedules' clock follows the system's both ways: a process
    /// that started with its clock ahead (before NTP stepped it back)
    /// used to fire early for its whole life, its clock never behind
    /// where it started.
    #[test]
    fn the_clock_follows_a_step_of_the_system_clock_either_way() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let minute = Duration::from_secs(60);
        // Ten minutes on, with no virtual time: the system's clock.
        assert_eq!(
            wall(start + 10 * minute, 10 * minute, 10 * minute),
            start + 10 * minute
        );
        // Stepped back an hour at minute 10: an hour back.
        let stepped = start + 10 * minute - 60 * minute;
        assert_eq!(wall(stepped, 10 * minute, 10 * minute), stepped);
        // Stepped forward (a suspend the monotonic clocks did not count).
        assert_eq!(
            wall(start + 90 * minute, minute, minute),
            start + 90 * minute
        );
        // Virtual time (a paused test) an hour ahead of the monotonic clock.
        assert_eq!(
            wall(start + minute, 61 * minute, minute),
            start + 61 * minute
        );
        // Tokio's clock paused while the monotonic one ran on.
        assert_eq!(wall(start + 2 * minute, Duration::ZERO, 2 * minute), start);
    }
}
