//! Delay queues: where a delayed job or a retry waits on the broker, and
//! the leases that keep them declared while in use.

use std::time::Duration;

use crate::broker::{Broker, HeaderValue, Message, QueueSpec, Sent};
use crate::policy::backoff;
use crate::topology::names;
use crate::{Error, QueueType, headers};

/// How long a delay queue outlives its last declare beyond its delay. A
/// delayed publish redeclares its delay queue first when the lease is half
/// a grace old ([`Leases`]; a redeclare renews it), so a queue expires only
/// long after its last message should have moved on; the grace covers a
/// node restart or a leader election in between.
pub(crate) const DELAY_QUEUE_GRACE: Duration = Duration::from_secs(600);

/// The delay queue for `delay`: `<queue>.delay.<ms>ms`, whose messages expire
/// after `delay` back into the work queue. Same type as the work queue, and
/// a quorum one is named for it (`<queue>.delay.<ms>ms.quorum`): a job that
/// switches type while delayed messages wait must not meet its old delay
/// queue, which RabbitMQ would refuse to redeclare (`PRECONDITION_FAILED`).
pub(crate) fn delay_queue(queue: &str, queue_type: QueueType, delay: Duration) -> QueueSpec {
    QueueSpec::new(names::delay_queue(queue, delay, kind(queue_type)))
        .with_queue_type(queue_type)
        .with_message_ttl(delay)
        .with_dead_letter_to(queue)
        .with_expires(delay.saturating_add(DELAY_QUEUE_GRACE))
}

/// The type in a delay queue's name: none for a classic one.
fn kind(queue_type: QueueType) -> Option<&'static str> {
    (queue_type != QueueType::Classic).then(|| queue_type.as_str())
}

/// The delay queue named `name` of a job on `queue`, as
/// [`delay_queue`] declares it; `None` if the name is not one of its.
pub(crate) fn delay_queue_named(
    queue: &str,
    queue_type: QueueType,
    name: &str,
) -> Option<QueueSpec> {
    let delay = names::delay_of(queue, name, kind(queue_type))?;
    Some(delay_queue(queue, queue_type, delay))
}

/// The longest a message waits in one delay queue. A longer delay waits
/// there, comes back with the rest of its wait in `qjob-delay-left`, and
/// waits again (see [`Delayed`]).
pub(crate) const MAX_DELAY_HOP: Duration = Duration::from_secs(24 * 3600);

/// A message on its way into a delay queue.
pub(crate) struct Delayed {
    /// The delay queue to publish to (declared first when its lease is
    /// due for renewal).
    pub(crate) spec: QueueSpec,
    pub(crate) message: Message,
}

/// Plans the wait of `message` for `delay` before it goes (back) into
/// `queue`: one hop of at most [`MAX_DELAY_HOP`], with what is left after it
/// in the `qjob-delay-left` header (counted in hops, not on a clock, so it
/// holds on any clock, virtual ones included).
pub(crate) fn delayed(
    queue: &str,
    queue_type: QueueType,
    delay: Duration,
    mut message: Message,
) -> Delayed {
    let delay = backoff::round_up(delay);
    let now = std::time::SystemTime::now();
    let due = headers::millis(now.checked_add(delay).unwrap_or(now));
    message
        .headers
        .insert(headers::DUE_AT.into(), HeaderValue::Int(due));
    let hop = delay.min(MAX_DELAY_HOP);
    let left = delay - hop;
    if left.is_zero() {
        message.headers.remove(headers::DELAY_LEFT);
    } else {
        let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        message
            .headers
            .insert(headers::DELAY_LEFT.into(), HeaderValue::Int(left));
    }
    Delayed {
        spec: delay_queue(queue, queue_type, hop),
        message,
    }
}

/// How long a delivered message still has to wait (`qjob-delay-left`).
pub(crate) fn remaining_wait(message: &Message) -> Option<Duration> {
    let left = message.headers.get(headers::DELAY_LEFT)?.as_int()?;
    u64::try_from(left)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// Publishes `messages`, in order and pipelined, to wait `delay` before
/// they go into `queue`: one delay queue, declared when its lease is due.
/// The outer error is a failed declare (nothing was sent); each inner
/// result is as for [`Broker::publish`]. Messages returned unroutable (the
/// delay queue deleted under us) are published again, in order, after
/// one declare.
#[cfg(feature = "postgres")]
pub(crate) async fn publish_delayed_all(
    broker: &dyn Broker,
    leases: &Leases,
    queue: &str,
    queue_type: QueueType,
    delay: Duration,
    messages: Vec<Message>,
) -> Result<Vec<Result<(), Error>>, Error> {
    let planned: Vec<Delayed> = messages
        .into_iter()
        .map(|message| delayed(queue, queue_type, delay, message))
        .collect();
    let Some(spec) = planned.first().map(|first| first.spec.clone()) else {
        return Ok(Vec::new());
    };
    leases.keep(broker, &spec).await?;
    let sent = planned
        .iter()
        .map(|d| (spec.name.clone(), d.message.clone()))
        .collect();
    let mut outcomes = broker.publish_all(sent).await;
    let unroutable: Vec<usize> = (0..outcomes.len())
        .filter(|&i| matches!(outcomes[i], Err(Error::Unroutable { .. })))
        .collect();
    if !unroutable.is_empty() {
        leases.restore(broker, &spec).await?;
        let again = unroutable
            .iter()
            .map(|&i| (spec.name.clone(), planned[i].message.clone()))
            .collect();
        for (i, outcome) in unroutable.into_iter().zip(broker.publish_all(again).await) {
            outcomes[i] = outcome;
        }
    }
    Ok(outcomes)
}

impl Delayed {
    /// Declares the delay queue when its lease is due for renewal (see
    /// [`Leases`]) and publishes into it.
    pub(crate) async fn publish(&self, broker: &dyn Broker, leases: &Leases) -> Result<(), Error> {
        self.publish_tracked(broker, leases, &Sent::new()).await
    }

    /// As [`Delayed::publish`], marking `sent` when the message goes out
    /// (the first time, if the queue had to be declared again).
    pub(crate) async fn publish_tracked(
        &self,
        broker: &dyn Broker,
        leases: &Leases,
        sent: &Sent,
    ) -> Result<(), Error> {
        leases.keep(broker, &self.spec).await?;
        let name = &self.spec.name;
        match broker
            .publish_tracked(name, self.message.clone(), sent)
            .await
        {
            // Deleted under us (an operator): declare it again, once.
            // Nothing was stored, whatever happens to this future now.
            Err(Error::Unroutable { .. }) => {
                sent.clear();
                leases.restore(broker, &self.spec).await?;
                broker
                    .publish_tracked(name, self.message.clone(), sent)
                    .await
            }
            published => published,
        }
    }
}

/// When each delay queue's lease was last renewed by a declare. A delay
/// queue expires `delay + DELAY_QUEUE_GRACE` after its last declare (a
/// publish does not count as use), so a declare every half grace keeps it
/// alive past every message published into it, with one round trip saved
/// on every other delayed publish.
///
/// A declare also names the queue in its target's delay index
/// ([`delay_index`]) when this process has not lately, so that the
/// console finds the delay queues in use, whoever declared them.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    renewals: std::sync::Mutex<HashMap<String, Instant>>,
    indexed: std::sync::Mutex<HashMap<String, Instant>>,
}

type HashMap<K, V> = std::collections::HashMap<K, V>;
type Instant = tokio::time::Instant;

/// How often a delay queue in use is declared again.
const RENEW_EVERY: Duration = Duration::from_secs(DELAY_QUEUE_GRACE.as_secs() / 2);

/// How often a process names a delay queue it keeps declaring in the delay
/// index again.
const INDEX_EVERY: Duration = Duration::from_secs(12 * 3600);

/// How long an entry of a delay index lasts: past the life of the delay
/// queue it names (the process that wrote it names it again within
/// [`INDEX_EVERY`] while it declares it, and the queue lives at most
/// [`MAX_DELAY_HOP`] and a grace after its last declare).
const INDEX_ENTRY_LIFE: Duration = Duration::from_secs(
    INDEX_EVERY.as_secs() + MAX_DELAY_HOP.as_secs() + DELAY_QUEUE_GRACE.as_secs(),
);

/// The most entries a delay index holds; past them, a delay queue is named
/// once older entries expire.
pub(crate) const INDEX_AT_MOST: u32 = 10_000;

/// The delay index of `queue`: a classic queue whose messages each name a
/// delay queue of `queue` declared lately (duplicates included), bounded
/// in length and in each entry's life, and deleted once unused.
pub(crate) fn delay_index(queue: &str) -> QueueSpec {
    QueueSpec::new(names::delay_index(queue))
        .with_max_length(INDEX_AT_MOST)
        .with_message_ttl(INDEX_ENTRY_LIFE)
        .with_expires(INDEX_ENTRY_LIFE.saturating_add(DELAY_QUEUE_GRACE))
}

/// The longest a delayed publish waits for its queue to be named in the
/// delay index.
const INDEX_TIMEOUT: Duration = Duration::from_secs(1);

/// A delay queue's name on its way into the index: forgotten, to be
/// written again, unless it got there.
struct Pending<'a>(Option<(&'a std::sync::Mutex<HashMap<String, Instant>>, &'a str)>);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some((indexed, name)) = self.0.take() {
            lock(indexed).remove(name);
        }
    }
}

/// Says why a delay queue is not named in the index: the first time in
/// this process as a warning (the console then misses what waits there),
/// then quietly.
fn index_failed(queue: &str, error: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(queue, error, "could not name a delay queue in its index");
    } else {
        tracing::warn!(
            queue,
            error,
            "could not name a delay queue in its index: the console does not see the jobs waiting there (said once)"
        );
    }
}

fn lock(
    map: &std::sync::Mutex<HashMap<String, Instant>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Leases {
    fn renewals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        lock(&self.renewals)
    }

    /// Whether `queue` must be declared before the next publish.
    fn due(&self, queue: &str) -> bool {
        self.renewals()
            .get(queue)
            .is_none_or(|at| at.elapsed() >= RENEW_EVERY)
    }

    fn renewed(&self, queue: &str) {
        let now = Instant::now();
        let mut renewals = self.renewals();
        // Bounded: a lease past its renewal is as good as none.
        if renewals.len() >= 1024 {
            renewals.retain(|_, at| now.duration_since(*at) < RENEW_EVERY);
        }
        renewals.insert(queue.to_owned(), now);
    }

    fn forget(&self, queue: &str) {
        self.renewals().remove(queue);
    }

    /// Declares delay queue `spec` if its lease is due for renewal.
    async fn keep(&self, broker: &dyn Broker, spec: &QueueSpec) -> Result<(), Error> {
        if self.due(&spec.name) {
            broker.declare_queue(spec).await?;
            self.renewed(&spec.name);
            self.index(broker, spec).await;
        }
        Ok(())
    }

    /// Declares delay queue `spec` again: it was found missing (deleted
    /// under us, by an operator).
    async fn restore(&self, broker: &dyn Broker, spec: &QueueSpec) -> Result<(), Error> {
        self.forget(&spec.name);
        broker.declare_queue(spec).await?;
        self.renewed(&spec.name);
        self.index(broker, spec).await;
        Ok(())
    }

    /// Names delay queue `spec` in its target's delay index, unless this
    /// process did within [`INDEX_EVERY`]. Only the console reads the
    /// index: a failure is logged, and the delayed publish goes on, waiting
    /// at most [`INDEX_TIMEOUT`] for it (on a healthy broker, one declare
    /// and one publish, once per queue in 12 hours).
    async fn index(&self, broker: &dyn Broker, spec: &QueueSpec) {
        let Some(target) = spec.dead_letter_to.as_deref() else {
            return;
        };
        let now = Instant::now();
        {
            let mut indexed = lock(&self.indexed);
            if indexed
                .get(&spec.name)
                .is_some_and(|at| now.duration_since(*at) < INDEX_EVERY)
            {
                return;
            }
            if indexed.len() >= 1024 {
                indexed.retain(|_, at| now.duration_since(*at) < INDEX_EVERY);
            }
            indexed.insert(spec.name.clone(), now);
        }
        // Unless the name is written, it is written again at the next
        // declare: also when this future is dropped half-way.
        let mut pending = Pending(Some((&self.indexed, &spec.name)));
        let index = delay_index(target);
        let write = async {
            broker.declare_queue(&index).await?;
            broker
                .publish(&index.name, Message::new(spec.name.clone().into_bytes()))
                .await
        };
        match tokio::time::timeout(INDEX_TIMEOUT, write).await {
            Ok(Ok(())) => pending.0 = None,
            Ok(Err(error)) => index_failed(&spec.name, &error.to_string()),
            Err(_) => index_failed(&spec.name, &format!("no answer within {INDEX_TIMEOUT:?}")),
        }
    }

    /// The delay queues declared within the last grace, by name: those
    /// that may hold messages now.
    pub(crate) fn recent(&self) -> Vec<String> {
        let mut recent: Vec<String> = self
            .renewals()
            .iter()
            .filter(|(_, at)| at.elapsed() < DELAY_QUEUE_GRACE)
            .map(|(queue, _)| queue.clone())
            .collect();
        recent.sort();
        recent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_delay_queue_is_declared_again_every_half_grace() {
        let leases = Leases::default();
        assert!(leases.due("q.delay.1000ms"), "never declared");
        leases.renewed("q.delay.1000ms");
        assert!(!leases.due("q.delay.1000ms"));
        tokio::time::sleep(RENEW_EVERY - Duration::from_secs(1)).await;
        assert!(!leases.due("q.delay.1000ms"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(leases.due("q.delay.1000ms"), "its lease needs renewing");
        // Between two declares a queue cannot expire: it lives `delay +
        // grace` after the last one, and a message is published into it at
        // most half a grace later.
        assert!(RENEW_EVERY < DELAY_QUEUE_GRACE);
        leases.renewed("q.delay.1000ms");
        leases.forget("q.delay.1000ms");
        assert!(leases.due("q.delay.1000ms"), "forgotten after it vanished");
    }

    #[test]
    fn delay_queues_are_known_by_their_name() {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            let spec = delay_queue("jobs", queue_type, Duration::from_millis(1500));
            assert_eq!(
                delay_queue_named("jobs", queue_type, &spec.name),
                Some(spec)
            );
        }
        assert_eq!(
            delay_queue_named("jobs", QueueType::Classic, "jobs.delay.x"),
            None
        );
        assert_eq!(
            delay_queue_named("jobs", QueueType::Classic, "other.delay.5ms"),
            None
        );
        assert_eq!(
            delay_queue_named("jobs", QueueType::Quorum, "jobs.delay.5ms"),
            None
        );
    }

    #[test]
    fn delay_queues_expire_back_into_the_work_queue() {
        let spec = delay_queue(
            "billing.charge",
            QueueType::Quorum,
            Duration::from_millis(1500),
        );
        assert_eq!(spec.name, "billing.charge.delay.1500ms.quorum");
        let classic = delay_queue("billing.charge", QueueType::Classic, Duration::from_secs(2));
        assert_eq!(classic.name, "billing.charge.delay.2000ms");
        assert_eq!(spec.message_ttl, Some(Duration::from_millis(1500)));
        assert_eq!(spec.dead_letter_to.as_deref(), Some("billing.charge"));
        assert_eq!(spec.queue_type, QueueType::Quorum);
        assert!(spec.expires.unwrap() > spec.message_ttl.unwrap());
    }

    #[test]
    fn long_delays_hop_and_carry_the_rest_of_the_wait() {
        let short = delayed(
            "q",
            QueueType::Classic,
            Duration::from_secs(90),
            Message::default(),
        );
        assert_eq!(short.spec.message_ttl, Some(Duration::from_secs(90)));
        assert_eq!(remaining_wait(&short.message), None);
        let week = Duration::from_secs(7 * 24 * 3600);
        let long = delayed("q", QueueType::Classic, week, Message::default());
        assert_eq!(long.spec.message_ttl, Some(MAX_DELAY_HOP));
        assert_eq!(remaining_wait(&long.message), Some(week - MAX_DELAY_HOP));
        let next = delayed("q", QueueType::Classic, week - MAX_DELAY_HOP, long.message);
        assert_eq!(
            remaining_wait(&next.message),
            Some(week - 2 * MAX_DELAY_HOP)
        );
        let last = delayed("q", QueueType::Classic, MAX_DELAY_HOP, next.message);
        assert_eq!(remaining_wait(&last.message), None);
    }
}
