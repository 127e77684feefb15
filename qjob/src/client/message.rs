//! What a job's message is and where it goes: the helpers every way of
//! enqueueing shares (one job, many, delayed, through the outbox).

use std::borrow::Cow;

use super::Client;
use crate::broker::Message;
use crate::{Error, headers, topology, trace};
use crate::{Job, JobId};

/// A negative confirm from a capped queue means it is full.
pub(super) fn full<J: Job>(error: Error) -> Error {
    match (error, J::options().max_length()) {
        (Error::PublishRejected { queue }, Some(max_length)) => {
            Error::QueueFull { queue, max_length }
        }
        (error, _) => error,
    }
}

/// Whether a failed publish may have been stored all the same: no confirm
/// came (a timeout), or the connection went after the message was sent.
/// (`Connect` is a publish that found no connection: nothing was sent.)
pub(crate) fn maybe_stored(error: &Error) -> bool {
    matches!(error, Error::Timeout { .. } | Error::Broker { .. })
}

/// Refuses to delay a job whose queue is capped: RabbitMQ would drop it if
/// it came due while the queue is full.
pub(crate) fn delayable<J: Job>() -> Result<(), Error> {
    match J::options().max_length() {
        None => Ok(()),
        Some(max_length) => Err(Error::Config(format!(
            "job {} cannot be delayed: its queue {:?} is capped (max_length = {max_length}), \
             and RabbitMQ drops a delayed job that comes due while the queue is full; \
             enqueue it when it is due, or remove the cap",
            J::NAME,
            J::QUEUE
        ))),
    }
}

/// The store key of a unique job's lock: its queue and its key.
pub(crate) fn unique_lock_key(queue: &str, key: &str) -> String {
    format!("unique:{queue}:{key}")
}

impl Client {
    /// The message of a job and, for a unique job, its lock's key, which
    /// travels in the `qjob-unique-key` header: the worker frees the lock
    /// by it, never by a key computed again from the payload.
    pub(super) fn unique_message<J: Job>(
        &self,
        payload: &J::Payload,
    ) -> Result<(JobId, Message, Option<String>), Error> {
        let (id, mut message) = Self::message::<J>(payload)?;
        if let Some(batch) = &self.batch {
            message
                .headers
                .insert(headers::BATCH.into(), batch.to_string().into());
        }
        let lock = J::options()
            .unique()
            .and_then(|_| J::unique_key(payload))
            .map(|key| unique_lock_key(J::QUEUE, &key));
        if let Some(lock) = &lock {
            message
                .headers
                .insert(headers::UNIQUE_KEY.into(), lock.clone().into());
        }
        Ok((id, message, lock))
    }

    /// The queue a job goes to: the work queue, or for a partitioned job the
    /// partition queue of its key (partition 0 when there is no payload to
    /// take a key from). A sharded job's jobs that go out at once spread
    /// over its shards ([`Client::target_now`]); what waits goes here.
    pub(crate) fn target<J: Job>(payload: Option<&J::Payload>) -> Cow<'static, str> {
        // Only partitioned jobs have keys: the common case needs no options.
        let key = match payload.map(J::partition_key) {
            Some(None) => return Cow::Borrowed(J::QUEUE),
            Some(Some(key)) => key,
            None => String::new(),
        };
        Cow::Owned(topology::route(&J::options(), Some(&key)).into_owned())
    }

    /// The queue a job that goes out now goes to: [`Client::target`], or
    /// for a sharded job (`options` are `J`'s) any of its shards.
    pub(super) fn target_now<J: Job>(
        options: &crate::JobOptions,
        payload: &J::Payload,
    ) -> Cow<'static, str> {
        match topology::any_shard(options) {
            Some(shard) => Cow::Owned(shard),
            None => Self::target::<J>(Some(payload)),
        }
    }

    pub(crate) fn message<J: Job>(payload: &J::Payload) -> Result<(JobId, Message), Error> {
        let body = serde_json::to_vec(payload).map_err(|source| Error::Serialize {
            job: J::NAME,
            source,
        })?;
        let id = JobId::new();
        let mut message = headers::new_job(&id, body);
        trace::inject(&mut message.headers);
        Ok((id, message))
    }
}
