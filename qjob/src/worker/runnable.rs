//! A registered job with its types erased, so one worker holds many.

use std::any::{Any, type_name};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::{Job, JobContext, JobError, JobOptions};

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Succeeded,
    Failed(JobError),
    /// The message cannot be handled by this job type at all.
    Malformed(String),
    Panicked(String),
    TimedOut(Duration),
    /// An operator cancelled the job: before it ran, or while it ran and
    /// its handler did not succeed.
    Cancelled(String),
}

/// A message's payload as the consumer read it (for its partition key),
/// handed to the first attempt so that it is not deserialized twice.
pub(crate) enum Decoded {
    Payload(Box<dyn Any + Send>),
    /// Reading it panicked (user code: a `Deserialize` impl, or the key's
    /// `Display`): the job is malformed. It is not read again, since a
    /// second read that succeeded would run it outside its key's lane.
    Panicked(String),
}

pub(crate) trait Runnable: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The job type's Rust name, without its paths (`ChargeJob`,
    /// `Notify<Email>`).
    fn type_name(&self) -> String;
    fn options(&self) -> JobOptions;
    /// The payload's JSON Schema ([`Job::payload_schema`]).
    fn payload_schema(&self) -> Option<serde_json::Value>;
    /// The payload of a message with its partition key (`None` if the job
    /// gives none, or reading it panicked), or `None` if the body does not
    /// deserialize.
    fn decode_keyed(&self, body: &[u8]) -> Option<(Option<String>, Decoded)>;
    /// The key of a message's rate ([`Job::rate_key`]), reading the
    /// payload into `decoded` if it is not read yet; `None` if it gives
    /// none or does not read (a panic included: the attempt finds it
    /// malformed).
    fn rate_key(&self, body: &[u8], decoded: &mut Option<Decoded>) -> Option<String>;
    /// Runs the handler on `decoded` (from [`Runnable::decode_keyed`], for
    /// this job type) or else on the body deserialized, catching panics
    /// and enforcing the timeout.
    fn run(
        self: Arc<Self>,
        body: &[u8],
        decoded: Option<Decoded>,
        ctx: JobContext,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Outcome>;
}

pub(crate) struct Registered<J>(pub(crate) J);

/// A Rust type's name as [`std::any::type_name`] writes it, without the
/// paths of its types: `app::jobs::Notify<app::Email>` is `Notify<Email>`.
fn without_paths(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut word = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else if c == ':' && chars.peek() == Some(&':') {
            // `word` was a path's segment.
            chars.next();
            word.clear();
        } else {
            out.push_str(&word);
            word.clear();
            out.push(c);
        }
    }
    out.push_str(&word);
    out
}

impl<J: Job> Runnable for Registered<J> {
    fn name(&self) -> &'static str {
        J::NAME
    }

    fn type_name(&self) -> String {
        without_paths(type_name::<J>())
    }

    fn options(&self) -> JobOptions {
        J::options()
    }

    fn payload_schema(&self) -> Option<serde_json::Value> {
        J::payload_schema()
    }

    fn decode_keyed(&self, body: &[u8]) -> Option<(Option<String>, Decoded)> {
        // User code (a `Deserialize` or `Display` impl) runs on the
        // consumer's task here: a panic must not end the consumer.
        let read = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let payload = serde_json::from_slice::<J::Payload>(body).ok()?;
            Some((J::partition_key(&payload), payload))
        }));
        match read {
            Ok(Some((key, payload))) => Some((key, Decoded::Payload(Box::new(payload)))),
            Ok(None) => None,
            Err(panic) => {
                let reason = format!(
                    "reading the payload as {} panicked: {}",
                    type_name::<J::Payload>(),
                    panic_text(panic.as_ref())
                );
                Some((None, Decoded::Panicked(reason)))
            }
        }
    }

    fn rate_key(&self, body: &[u8], decoded: &mut Option<Decoded>) -> Option<String> {
        if decoded.is_none() {
            *decoded = self.decode_keyed(body).map(|(_, payload)| payload);
        }
        let Some(Decoded::Payload(payload)) = decoded else {
            return None;
        };
        let payload = payload.downcast_ref::<J::Payload>()?;
        std::panic::catch_unwind(AssertUnwindSafe(|| J::rate_key(payload)))
            .ok()
            .flatten()
    }

    fn run(
        self: Arc<Self>,
        body: &[u8],
        decoded: Option<Decoded>,
        ctx: JobContext,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Outcome> {
        let payload = match payload::<J>(body, decoded) {
            Ok(payload) => payload,
            Err(reason) => return Box::pin(std::future::ready(Outcome::Malformed(reason))),
        };
        Box::pin(async move {
            let attempt = AssertUnwindSafe(self.0.perform(payload, ctx)).catch_unwind();
            let result = match timeout {
                None => attempt.await,
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(result) => result,
                    Err(_) => return Outcome::TimedOut(limit),
                },
            };
            match result {
                Ok(Ok(())) => Outcome::Succeeded,
                Ok(Err(error)) => Outcome::Failed(error),
                Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
            }
        })
    }
}

/// The payload for an attempt: as the consumer decoded it, or else
/// deserialized from the body (catching a panic of user code); the reason
/// it is malformed otherwise.
fn payload<J: Job>(body: &[u8], decoded: Option<Decoded>) -> Result<J::Payload, String> {
    match decoded {
        Some(Decoded::Panicked(reason)) => return Err(reason),
        Some(Decoded::Payload(payload)) => {
            if let Ok(payload) = payload.downcast::<J::Payload>() {
                return Ok(*payload);
            }
        }
        None => {}
    }
    match std::panic::catch_unwind(|| serde_json::from_slice::<J::Payload>(body)) {
        Ok(Ok(payload)) => Ok(payload),
        Ok(Err(error)) => Err(format!(
            "payload does not deserialize as {}: {error}",
            type_name::<J::Payload>()
        )),
        Err(panic) => Err(format!(
            "reading the payload as {} panicked: {}",
            type_name::<J::Payload>(),
            panic_text(panic.as_ref())
        )),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    format!("handler panicked: {}", panic_text(panic))
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

#[cfg(test)]
mod name_tests {
    use super::without_paths;

    #[test]
    fn type_names_lose_their_paths_and_keep_their_generics() {
        assert_eq!(without_paths("app::jobs::ChargeJob"), "ChargeJob");
        assert_eq!(without_paths("ChargeJob"), "ChargeJob");
        assert_eq!(
            without_paths("app::Notify<app::mail::Email, u8>"),
            "Notify<Email, u8>"
        );
    }
}
