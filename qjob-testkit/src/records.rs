//! What the harness saw: every settled attempt, as the worker reported it.

use std::sync::Mutex;

use qjob::{AttemptEvent, AttemptOutcome, Job, JobId, Observer};

/// One settled attempt of a job of type `J`.
#[derive(Clone)]
#[non_exhaustive]
pub struct Attempt<P> {
    /// The payload, or `None` if the message did not deserialize.
    pub payload: Option<P>,
    /// The message body.
    pub body: Vec<u8>,
    /// The job's id.
    pub job_id: JobId,
    /// The attempt number (1-based).
    pub attempt: u32,
    /// Whether the broker redelivered the message.
    pub redelivered: bool,
    /// How the attempt ended.
    pub outcome: AttemptOutcome,
}

/// One line: the outcome first, then the attempt, the payload as text and
/// the job id.
impl<P: std::fmt::Debug> std::fmt::Debug for Attempt<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match &self.outcome {
            AttemptOutcome::Succeeded => "succeeded".to_owned(),
            AttemptOutcome::Retrying { error, delay } => {
                format!("failed, retry in {delay:?}: {error}")
            }
            AttemptOutcome::DeadLettered { reason, error } => {
                format!("dead-lettered ({reason}): {error}")
            }
            other => format!("{other:?}"),
        };
        let redelivered = if self.redelivered {
            ", redelivered"
        } else {
            ""
        };
        write!(
            f,
            "{outcome} (attempt {}{redelivered}) {} [job {}]",
            self.attempt,
            crate::text::body(&self.body),
            self.job_id
        )
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Record {
    job: &'static str,
    job_id: JobId,
    attempt: u32,
    redelivered: bool,
    body: Vec<u8>,
    outcome: AttemptOutcome,
}

/// The observer the harness registers with its worker.
#[derive(Debug, Default)]
pub(crate) struct Records {
    records: Mutex<Vec<Record>>,
}

impl Observer for Records {
    fn attempt_settled(&self, event: &AttemptEvent<'_>) {
        self.records.lock().expect("records poisoned").push(Record {
            job: event.job,
            job_id: event.job_id.clone(),
            attempt: event.attempt,
            redelivered: event.redelivered,
            body: event.payload.to_vec(),
            outcome: event.outcome.clone(),
        });
    }
}

impl Records {
    /// Every settled attempt of `J`, in the order they settled.
    pub(crate) fn of<J: Job>(&self) -> Vec<Attempt<J::Payload>> {
        self.records
            .lock()
            .expect("records poisoned")
            .iter()
            .filter(|record| record.job == J::NAME)
            .map(|record| Attempt {
                payload: serde_json::from_slice(&record.body).ok(),
                body: record.body.clone(),
                job_id: record.job_id.clone(),
                attempt: record.attempt,
                redelivered: record.redelivered,
                outcome: record.outcome.clone(),
            })
            .collect()
    }
}
