//! Dead letters: what they say ([`DeadLetter`], [`DeadReason`]), and the
//! walk over a dead-letter queue that peeks at them, replays them into the
//! work queue or discards them, for the client ([`crate::DeadLetters`])
//! and the console alike.

use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use crate::broker::{Broker, Delivery, HeaderValue, Headers, Message, queue_depth};
use crate::headers::{self, from_millis};
use crate::{Error, JobId};

/// Why a job was dead-lettered: the `qjob-reason` header of its dead
/// letter, the `reason` label of `qjob_jobs_dead_lettered_total`, and what
/// observers and [`DeadLetter`] report.
///
/// ```
/// use qjob::DeadReason;
///
/// assert_eq!(DeadReason::parse("retries-exhausted"), DeadReason::RetriesExhausted);
/// assert_eq!(DeadReason::Permanent.as_str(), "permanent");
/// assert_eq!(DeadReason::parse("stopped-by-v9"), "stopped-by-v9");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadReason {
    /// Every attempt failed.
    RetriesExhausted,
    /// The handler returned a permanent error.
    Permanent,
    /// The message could not be read as the job's payload.
    Malformed,
    /// RabbitMQ moved it: it came back to its quorum queue unsettled more
    /// often than the job's `delivery_limit` (its worker crashed, or lost
    /// its connection, while holding it).
    DeliveryLimit,
    /// An operator cancelled it ([`crate::admin::Admin::cancel`]): while it
    /// ran (its handler did not succeed), or before it was delivered.
    Cancelled,
    /// A reason this version of qjob does not know (written by another).
    Other(String),
}

impl DeadReason {
    /// The reason as written in the `qjob-reason` header.
    pub fn as_str(&self) -> &str {
        match self {
            DeadReason::Other(reason) => reason,
            known => known.label(),
        }
    }

    /// The reason as a metrics label: `other` for an unknown one.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            DeadReason::RetriesExhausted => "retries-exhausted",
            DeadReason::Permanent => "permanent",
            DeadReason::Malformed => "malformed",
            DeadReason::DeliveryLimit => "delivery-limit",
            DeadReason::Cancelled => "cancelled",
            DeadReason::Other(_) => "other",
        }
    }

    /// Reads a `qjob-reason` header.
    pub fn parse(reason: &str) -> Self {
        match reason {
            "retries-exhausted" => DeadReason::RetriesExhausted,
            "permanent" => DeadReason::Permanent,
            "malformed" => DeadReason::Malformed,
            "delivery-limit" => DeadReason::DeliveryLimit,
            "cancelled" => DeadReason::Cancelled,
            other => DeadReason::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for DeadReason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for DeadReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A job in a dead-letter queue, as qjob wrote it there.
#[derive(Clone)]
#[non_exhaustive]
pub struct DeadLetter<P> {
    /// The job's id.
    pub job_id: Option<JobId>,
    /// The payload, or `None` if the body does not deserialize.
    pub payload: Option<P>,
    /// The message body, as published.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: DeadReason,
    /// The last error.
    pub error: String,
    /// The attempts made.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failed_at: Option<SystemTime>,
    /// When the last attempt failed.
    pub failed_at: Option<SystemTime>,
    /// The host of the worker that dead-lettered it.
    pub host: Option<String>,
    /// Every header of the message.
    pub headers: Headers,
}

/// The body shows as text (JSON), not as a list of bytes.
impl<P: std::fmt::Debug> std::fmt::Debug for DeadLetter<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("reason", &self.reason)
            .field("error", &self.error)
            .field("attempts", &self.attempts)
            .field("job_id", &self.job_id)
            .field("payload", &self.payload)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("first_failed_at", &self.first_failed_at)
            .field("failed_at", &self.failed_at)
            .field("host", &self.host)
            .field("headers", &self.headers)
            .finish()
    }
}

impl<P: DeserializeOwned> DeadLetter<P> {
    /// Reads a dead-lettered message.
    pub fn from_message(message: &Message) -> Self {
        let text = |name: &str| {
            message
                .headers
                .get(name)
                .map(HeaderValue::to_string)
                .unwrap_or_default()
        };
        let int = |name: &str| message.headers.get(name).and_then(HeaderValue::as_int);
        let (reason, error) = if text("x-first-death-reason") == "delivery_limit"
            && !message.headers.contains_key(headers::REASON)
        {
            (
                DeadReason::DeliveryLimit,
                "returned to the queue unsettled more often than its delivery limit \
                 (its worker crashed, or lost its connection, while holding it)"
                    .to_owned(),
            )
        } else {
            (
                DeadReason::parse(&text(headers::REASON)),
                text(headers::ERROR),
            )
        };
        Self {
            job_id: message.id.clone().map(JobId::from),
            payload: serde_json::from_slice(&message.body).ok(),
            body: message.body.clone(),
            reason,
            error,
            attempts: int(headers::ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            first_failed_at: int(headers::FIRST_FAILED_AT).map(from_millis),
            failed_at: int(headers::FAILED_AT).map(from_millis),
            host: message
                .headers
                .get(headers::HOST)
                .and_then(HeaderValue::as_str)
                .map(str::to_owned),
            headers: message.headers.clone(),
        }
    }
}

/// The message that replays a dead letter: the same id, body and user
/// headers, the failure history removed (so the attempt count starts again
/// at 1), and `qjob-replays` counting the replays.
pub(crate) fn replay_message(mut message: Message) -> Message {
    let replays = message
        .headers
        .get(headers::REPLAYS)
        .and_then(HeaderValue::as_int)
        .unwrap_or(0);
    message
        .headers
        .retain(|name, _| !headers::is_failure_history(name));
    message
        .headers
        .insert(headers::REPLAYS.into(), HeaderValue::Int(replays + 1));
    message.headers.insert(
        headers::REPLAYED_AT.into(),
        HeaderValue::Int(headers::millis(SystemTime::now())),
    );
    message
}

/// The most dead letters a walk holds to put back in place; further ones it
/// keeps move to the tail of the queue instead.
const HELD_AT_MOST: usize = 1_000;

/// What to do with one dead letter while walking the queue.
pub(crate) enum Visit {
    /// Leave it in its place.
    Keep,
    /// Publish this message into this queue (a replay, or a delayed job
    /// moved on), then remove it.
    Move(String, Message),
    /// Remove it.
    Discard,
    /// End the walk here (this letter is kept).
    Stop,
}

/// The dead letters of `queue` that `select` picks, from the `offset`-th
/// of those on, at most `limit`, left in place and in order. The walk holds
/// what it reads, and reads at most `at_most` letters.
pub(crate) async fn peek<P: DeserializeOwned>(
    broker: &Arc<dyn Broker>,
    queue: &str,
    (offset, limit, at_most): (usize, usize, usize),
    mut select: impl FnMut(&DeadLetter<P>) -> bool,
) -> Result<Vec<DeadLetter<P>>, Error> {
    let mut seen = Vec::new();
    if limit == 0 {
        return Ok(seen);
    }
    let (mut read, mut selected) = (0, 0);
    walk(broker, queue, false, |message| {
        if read == at_most {
            return Visit::Stop;
        }
        read += 1;
        let letter = DeadLetter::from_message(message);
        if select(&letter) {
            selected += 1;
            if selected > offset {
                seen.push(letter);
            }
        }
        if seen.len() < limit {
            Visit::Keep
        } else {
            Visit::Stop
        }
    })
    .await?;
    Ok(seen)
}

/// Takes each dead letter of `queue` in turn (`basic.get`), as many as the
/// queue held at the start, and does what `visit` says with it; finally
/// puts back every one kept, so they return to their places. Returns how
/// many were replayed or discarded. With `rotate`, memory stays bounded
/// (see [`crate::DeadLetters::replay_where`]).
pub(crate) async fn walk(
    broker: &Arc<dyn Broker>,
    queue: &str,
    rotate: bool,
    mut visit: impl FnMut(&Message) -> Visit,
) -> Result<usize, Error> {
    let Some(depth) = queue_depth(&**broker, queue).await? else {
        return Ok(0);
    };
    let mut kept = Held::default();
    let mut removed = 0;
    let mut outcome = Ok(());
    for _ in 0..depth {
        let delivery = match get(broker.clone(), queue).await {
            Ok(Some(delivery)) => delivery,
            Ok(None) => break,
            Err(error) => {
                outcome = Err(error);
                break;
            }
        };
        let visited = visit(&delivery.message);
        // Held from here on: dropped, the walk puts it back.
        kept.0.push_back(delivery);
        // Where the letter goes as it leaves the queue by this walk, and
        // whether that counts.
        let (publish, counts) = match visited {
            Visit::Keep if !rotate || kept.0.len() <= HELD_AT_MOST => continue,
            Visit::Stop => break,
            // Memory stays bounded: past the first letters kept, each one
            // kept moves to the tail (republished and confirmed, then
            // removed), in order.
            Visit::Keep => {
                let message = kept.0.back().expect("just held").message.clone();
                (Some((queue.to_owned(), message)), false)
            }
            Visit::Move(target, message) => (Some((target, message)), true),
            Visit::Discard => (None, true),
        };
        let delivery = kept.0.pop_back().expect("still held");
        match move_on(broker.clone(), delivery, publish).await {
            Ok(()) => removed += usize::from(counts),
            Err((error, back)) => {
                kept.0.extend(back);
                outcome = Err(error);
                break;
            }
        }
    }
    // Put back what was kept, in order; each stays held until its reject
    // is sent.
    while let Some(delivery) = kept.0.front() {
        if let Err(error) = delivery.acker.reject(true).await {
            outcome = outcome.and(Err(error));
        }
        kept.0.pop_front();
    }
    outcome.map(|()| removed)
}

/// Publishes `publish`'s message (if any) to its queue, confirmed, then
/// acks `delivery`, in a task of its own: a walk dropped in between (a
/// timeout, an aborted request) leaves neither half undone, so a message
/// moved on is never also put back. On a failed publish the delivery comes
/// back to be put back (or is put back by the task, if the walk is gone).
async fn move_on(
    broker: Arc<dyn Broker>,
    delivery: Delivery,
    publish: Option<(String, Message)>,
) -> Result<(), (Error, Option<Delivery>)> {
    let task = tokio::spawn(async move {
        if let Some((target, message)) = publish
            && let Err(error) = broker.publish(&target, message).await
        {
            return Err((error, Held([delivery].into())));
        }
        delivery
            .acker
            .ack()
            .await
            .map_err(|error| (error, Held::default()))
    });
    match task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err((error, mut held))) => Err((error, held.0.pop_front())),
        Err(ended) => Err((Error::broker("move a message on", ended.to_string()), None)),
    }
}

/// `basic.get` from `queue`, in a task of its own, the message held as
/// soon as it arrives: if the walk is dropped while the get is under way,
/// or before it took the message, the message is put back instead of left
/// unsettled on the channel.
async fn get(broker: Arc<dyn Broker>, queue: &str) -> Result<Option<Delivery>, Error> {
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let queue = queue.to_owned();
    tokio::spawn(async move {
        let got = broker.get(&queue).await;
        let _ = got_tx.send(got.map(|got| got.map(|one| Held([one].into()))));
    });
    let got = got_rx
        .await
        .unwrap_or_else(|_| Err(Error::broker("get a dead letter", "the get task ended")))?;
    Ok(got.and_then(|mut one| one.0.pop_front()))
}

/// The dead letters a walk holds unsettled (taken with `basic.get`). The
/// walk puts them back itself; if its future is dropped first (a timeout, an
/// aborted request), they are put back from a task of their own, not left
/// invisible until the connection closes.
#[derive(Default)]
struct Held(std::collections::VecDeque<Delivery>);

impl Drop for Held {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.0);
        if held.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for delivery in held {
                    let _ = delivery.acker.reject(true).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_drop_the_failure_history_and_count() {
        let mut message = Message::new(b"{}".to_vec()).with_id("job").with_priority(7);
        for name in [
            headers::ATTEMPT,
            headers::ERROR,
            headers::REASON,
            headers::ATTEMPTS,
            headers::FAILED_AT,
            headers::FIRST_FAILED_AT,
            headers::QUEUE,
            headers::HOST,
            "x-death",
            "x-first-death-reason",
        ] {
            message.headers.insert(name.into(), "x".into());
        }
        message.headers.insert("tenant".into(), "acme".into());
        let replay = replay_message(message.clone());
        assert_eq!(replay.id, message.id);
        assert_eq!(replay.body, message.body);
        assert_eq!(replay.priority, Some(7), "a replay keeps its priority");
        let names: Vec<&str> = replay.headers.keys().map(String::as_str).collect();
        assert_eq!(names, [headers::REPLAYED_AT, headers::REPLAYS, "tenant"]);
        let again = replay_message(replay);
        assert_eq!(again.headers[headers::REPLAYS], HeaderValue::Int(2));
    }

    #[test]
    fn dead_letters_read_back() {
        let mut message = Message::new(br#""hello""#.to_vec()).with_id("job-7");
        message
            .headers
            .insert(headers::REASON.into(), "permanent".into());
        message.headers.insert(headers::ERROR.into(), "nope".into());
        message
            .headers
            .insert(headers::ATTEMPTS.into(), HeaderValue::Int(2));
        message
            .headers
            .insert(headers::FAILED_AT.into(), HeaderValue::Int(2_000));
        message
            .headers
            .insert(headers::FIRST_FAILED_AT.into(), HeaderValue::Int(1_000));
        message
            .headers
            .insert(headers::HOST.into(), "worker-1".into());
        let letter: DeadLetter<String> = DeadLetter::from_message(&message);
        assert_eq!(letter.payload.as_deref(), Some("hello"));
        assert_eq!(letter.job_id, Some(JobId::from("job-7")));
        assert_eq!(
            (letter.reason.as_str(), letter.error.as_str()),
            ("permanent", "nope")
        );
        assert_eq!(letter.attempts, 2);
        assert_eq!(letter.first_failed_at, Some(from_millis(1_000)));
        assert_eq!(letter.failed_at, Some(from_millis(2_000)));
        assert_eq!(letter.host.as_deref(), Some("worker-1"));
    }
}
