//! [`Relay`]: one round claims due rows, publishes them (those due at
//! once in order, the delayed ones into their delay queues) and deletes
//! those confirmed, in one database transaction. Running rounds, and
//! waiting between them, is `run.rs`'s.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::Outbox;
use super::sql::{database, headers_from_json, migrated, millis_since_epoch};
use crate::broker::Message;
use crate::job::Job;
use crate::options::{JobOptions, QueueType};
use crate::outcomes::Outcomes;
use crate::policy::backoff;
use crate::{Error, topology};

/// Delay queues published to at once in a round.
const DELAYED_IN_FLIGHT: usize = 64;

/// The longest a refused row waits before it is tried again.
const MAX_ROW_BACKOFF: Duration = Duration::from_secs(3600);

/// How long a row whose job type's queues could not be declared waits.
const DEFER_FOR: Duration = Duration::from_secs(5);

/// Publishes an outbox's committed rows: in `seq` order, with publisher
/// confirms, each row deleted once its confirm came. Several relays may
/// run at once, each on the rows the others have not claimed (`FOR UPDATE
/// SKIP LOCKED`).
///
/// A relay runs its rounds back to back while they find rows. Then it
/// waits: it wakes at once when a transaction that wrote rows commits
/// (`LISTEN`/`NOTIFY`, sent only while a relay waits), and every poll
/// interval in case a notification was missed.
pub struct Relay {
    pub(super) outbox: Outbox,
    pub(super) pool: PgPool,
    pub(super) batch: usize,
    pub(super) poll: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("table", &self.outbox.table.name)
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// What one round of a relay did ([`Relay::relay_once`]).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Relayed {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published, confirmed and deleted.
    pub published: usize,
    /// Rows the broker refused (an unroutable message, a full queue): each
    /// waits, with its `last_error`, and is tried again with backoff.
    pub refused: usize,
    /// Why the rows neither published nor refused were not: the broker
    /// was unreachable or did not confirm in time. They stay, and go out
    /// in a later round (possibly twice, with the same job id).
    pub failed: Option<String>,
}

/// A claimed row, read.
struct Claimed {
    seq: i64,
    job: String,
    queue: String,
    queue_type: QueueType,
    run_at_ms: Option<i64>,
    attempts: i32,
    message: Message,
}

impl Claimed {
    fn read(row: &PgRow) -> Result<Self, (i64, i32, String)> {
        let seq: i64 = row.get("seq");
        let attempts: i32 = row.get("attempts");
        let headers: String = row.get("headers");
        let headers = headers_from_json(&headers).map_err(|error| (seq, attempts, error))?;
        let queue_type = match row.get::<&str, _>("queue_type") {
            "quorum" => QueueType::Quorum,
            _ => QueueType::Classic,
        };
        let job_id: String = row.get("job_id");
        let mut message = Message::new(row.get::<Vec<u8>, _>("body"))
            .with_id(job_id)
            .with_headers(headers);
        if let Some(priority) = row.get::<Option<i16>, _>("priority") {
            let priority = u8::try_from(priority).map_err(|_| {
                (
                    seq,
                    attempts,
                    format!("priority {priority} is not in 0..=255"),
                )
            })?;
            message = message.with_priority(priority);
        }
        Ok(Self {
            seq,
            job: row.get("job"),
            queue: row.get("queue"),
            queue_type,
            run_at_ms: row.get("run_at_ms"),
            attempts,
            message,
        })
    }

    /// How long the job still has to wait, if it is delayed.
    fn wait(&self, now_ms: i64) -> Option<Duration> {
        let left = self.run_at_ms? - now_ms;
        u64::try_from(left)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }
}

/// What became of a claimed row in a round.
#[derive(Debug, Clone)]
enum Outcome {
    /// Confirmed: deleted.
    Published,
    /// Refused for what it is (an unroutable message, a full queue, a
    /// queue declared otherwise): it waits on its own, with backoff, and
    /// the other rows go on.
    Refused(String),
    /// Not published for now (the broker unreachable, blocking, or not
    /// confirming in time): it stays, and the relay backs off.
    Failed(String),
    /// Not sent, for a reason of its job type's (its queues could not be
    /// declared, or checked): it waits a few seconds on its own, without
    /// counting as refused, and the other rows go on.
    Deferred(String),
}

impl Outcome {
    /// A row not sent because of `error` about its job type: refused if
    /// the error is about what it is, deferred otherwise.
    fn blocking(error: Error) -> Self {
        match Outcome::from(error) {
            Outcome::Failed(error) => Outcome::Deferred(error),
            outcome => outcome,
        }
    }

    fn from_publish(result: Result<(), Error>) -> Self {
        match result {
            Ok(()) => Outcome::Published,
            Err(error) => Outcome::from(error),
        }
    }
}

impl From<Error> for Outcome {
    fn from(error: Error) -> Self {
        let refused = matches!(
            error,
            Error::PublishRejected { .. }
                | Error::QueueFull { .. }
                | Error::Unroutable { .. }
                | Error::QueueMismatch { .. }
                | Error::Config(_)
        );
        if refused {
            Outcome::Refused(error.to_string())
        } else {
            Outcome::Failed(error.to_string())
        }
    }
}

/// How long a row refused `attempts` times waits: 1 s, 2 s, 4 s, … up to
/// an hour.
fn row_backoff(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.clamp(0, 12)).unwrap_or(12);
    Duration::from_secs(1u64 << doublings).min(MAX_ROW_BACKOFF)
}

impl Outbox {
    /// A relay of this outbox's rows, reading them through `pool`.
    pub fn relay(&self, pool: PgPool) -> Relay {
        Relay {
            outbox: self.clone(),
            pool,
            batch: 500,
            poll: Duration::from_secs(1),
        }
    }
}

impl Relay {
    /// Rows claimed and published per round (500 by default; at least 1).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// How often a waiting relay looks for rows when no notification came
    /// (1 s by default; at least 10 ms).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(10));
        self
    }

    /// Declares job type `J`'s queues before publishing its first row. A
    /// relay knows the job types its outbox wrote in this process, and a
    /// worker's relay ([`crate::WorkerBuilder::relay`]) those registered
    /// with the worker; a row of a job type it does not know goes to its
    /// queue as it is, and waits (refused) while that queue does not
    /// exist.
    pub fn job<J: Job>(self) -> Self {
        self.outbox.learn(J::NAME, J::options());
        self
    }

    pub(crate) fn knows(&self, job: &str, options: &JobOptions) {
        self.outbox.learn(job, options.clone());
    }

    /// Claims up to a batch of due rows, publishes them and deletes those
    /// confirmed, in one database transaction: a relay that dies in
    /// between leaves its rows to the next round (of any relay).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the database failed (the rows stay, and
    /// those already published go out again), or the broker's error
    /// declaring a job's queues (nothing was published).
    pub async fn relay_once(&self) -> Result<Relayed, Error> {
        let table = &self.outbox.table;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(database("begin a relay round"))?;
        let rows = sqlx::query(&table.claim)
            .bind(i64::try_from(self.batch).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(migrated(format!("claim rows of the outbox {}", table.name)))?;
        let mut relayed = Relayed {
            claimed: rows.len(),
            ..Relayed::default()
        };
        if rows.is_empty() {
            return Ok(relayed);
        }
        let mut round = Round::default();
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            match Claimed::read(row) {
                Ok(row) => claimed.push(row),
                Err(refusal) => round.refusals.push(refusal),
            }
        }
        drop(rows);
        let blocked = self.blocked(&claimed).await;
        let outcomes = self.publish(&claimed, &blocked).await;
        for (row, outcome) in claimed.iter().zip(outcomes) {
            match outcome {
                Outcome::Published => round.published.push(row.seq),
                Outcome::Refused(error) => round.refusals.push((row.seq, row.attempts, error)),
                Outcome::Failed(error) => {
                    relayed.failed.get_or_insert(error);
                }
                Outcome::Deferred(error) => round.deferrals.push((row.seq, error)),
            }
        }
        self.write_back(&mut tx, &round).await?;
        tx.commit()
            .await
            .map_err(database("commit a relay round"))?;
        relayed.published = round.published.len();
        relayed.refused = round.refusals.len();
        let label = table.name.to_string();
        metrics::counter!("qjob_outbox_published_total", "table" => label.clone())
            .increment(round.published.len() as u64);
        metrics::counter!("qjob_outbox_refused_total", "table" => label)
            .increment(round.refusals.len() as u64);
        Ok(relayed)
    }

    /// Writes what became of a round's rows in its transaction: the
    /// published ones deleted, the refused and deferred ones set to wait.
    async fn write_back(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        round: &Round,
    ) -> Result<(), Error> {
        let table = &self.outbox.table;
        sqlx::query(&table.delete)
            .bind(&round.published)
            .execute(&mut **tx)
            .await
            .map_err(database("delete published rows"))?;
        for (seq, attempts, error) in &round.refusals {
            tracing::warn!(table = %table.name, seq, attempts = attempts + 1, %error, "outbox row refused; it waits and is tried again");
            sqlx::query(&table.refuse)
                .bind(seq)
                .bind(error)
                .bind(row_backoff(*attempts).as_secs_f64())
                .bind(1i32)
                .execute(&mut **tx)
                .await
                .map_err(database("mark a refused row"))?;
        }
        for (seq, error) in &round.deferrals {
            tracing::warn!(table = %table.name, seq, %error, "outbox row deferred; it is tried again in a few seconds");
            sqlx::query(&table.refuse)
                .bind(seq)
                .bind(error)
                .bind(DEFER_FOR.as_secs_f64())
                .bind(0i32)
                .execute(&mut **tx)
                .await
                .map_err(database("defer a row"))?;
        }
        Ok(())
    }

    /// The rows that cannot go out this round, each with why: its job
    /// type's queues could not be declared, or it is a delayed row of a
    /// type this relay does not know whose queue does not exist (it would
    /// wait in its delay queue, then be dropped). Declares the known job
    /// types' queues on the way (the client declares each once).
    async fn blocked(&self, claimed: &[Claimed]) -> HashMap<usize, Outcome> {
        // By job type: whether this relay knows it, and why its rows are
        // held back (if they are).
        let mut by_job: HashMap<&str, (bool, Option<Outcome>)> = HashMap::new();
        let mut by_queue: HashMap<&str, Option<Outcome>> = HashMap::new();
        let mut blocked = HashMap::new();
        let now_ms = millis_since_epoch(SystemTime::now());
        for (index, row) in claimed.iter().enumerate() {
            if !by_job.contains_key(row.job.as_str()) {
                let options = self.outbox.options_of(&row.job);
                let outcome = match &options {
                    Some(options) => self.outbox.client.declare(options).await.err(),
                    None => None,
                };
                by_job.insert(
                    &row.job,
                    (options.is_some(), outcome.map(Outcome::blocking)),
                );
            }
            let (known, outcome) = &by_job[row.job.as_str()];
            if let Some(outcome) = outcome {
                blocked.insert(index, outcome.clone());
                continue;
            }
            if *known || row.wait(now_ms).is_none() {
                continue;
            }
            if !by_queue.contains_key(row.queue.as_str()) {
                let outcome = match self.outbox.client.broker().queue_stats(&row.queue).await {
                    Ok(Some(_)) => None,
                    Ok(None) => Some(Outcome::Refused(format!(
                        "queue {:?} does not exist: a delayed job of {} would be dropped when \
                         due; declare its queues (run its worker, or Relay::job)",
                        row.queue, row.job
                    ))),
                    Err(error) => Some(Outcome::blocking(error)),
                };
                by_queue.insert(&row.queue, outcome);
            }
            if let Some(Some(outcome)) = by_queue.get(row.queue.as_str()) {
                blocked.insert(index, outcome.clone());
            }
        }
        blocked
    }

    /// Publishes the rows not `blocked`: those due at once pipelined in
    /// order on one session, the delayed ones into their delay queues, in
    /// order for each delay queue.
    async fn publish(
        &self,
        claimed: &[Claimed],
        blocked: &HashMap<usize, Outcome>,
    ) -> Vec<Outcome> {
        let now_ms = millis_since_epoch(SystemTime::now());
        let mut outcomes = Outcomes::new(claimed.len());
        let mut direct = Vec::new();
        // By target queue and delay: each group is one delay queue.
        let mut delayed: BTreeMap<(&str, Duration), Vec<usize>> = BTreeMap::new();
        for (index, row) in claimed.iter().enumerate() {
            if let Some(outcome) = blocked.get(&index) {
                outcomes.set(index, outcome.clone());
                continue;
            }
            match row.wait(now_ms) {
                None => direct.push(index),
                Some(wait) => delayed
                    .entry((row.queue.as_str(), backoff::round_up(wait)))
                    .or_default()
                    .push(index),
            }
        }
        self.publish_direct(claimed, &direct, &mut outcomes).await;
        self.publish_delayed(claimed, delayed, &mut outcomes).await;
        outcomes.finish(|_| Outcome::Failed("the broker gave no outcome for it".to_owned()))
    }

    /// Publishes the rows at `direct` (indices into `claimed`), due at
    /// once, pipelined in order on one session.
    async fn publish_direct(
        &self,
        claimed: &[Claimed],
        direct: &[usize],
        outcomes: &mut Outcomes<Outcome>,
    ) {
        if direct.is_empty() {
            return;
        }
        let messages = direct
            .iter()
            .map(|&index| (claimed[index].queue.clone(), claimed[index].message.clone()))
            .collect();
        let results = self.outbox.client.broker().publish_all(messages).await;
        for (&index, result) in direct.iter().zip(results) {
            outcomes.set(index, Outcome::from_publish(result));
        }
    }

    /// Publishes the delayed rows, grouped by delay queue: each group
    /// pipelined in order on its own session, a few groups at once.
    async fn publish_delayed(
        &self,
        claimed: &[Claimed],
        delayed: BTreeMap<(&str, Duration), Vec<usize>>,
        outcomes: &mut Outcomes<Outcome>,
    ) {
        let client = &self.outbox.client;
        let mut groups = Vec::new();
        for ((queue, wait), indices) in delayed {
            groups.push(async move {
                let messages = indices
                    .iter()
                    .map(|&index| claimed[index].message.clone())
                    .collect();
                let queue_type = claimed[indices[0]].queue_type;
                let published = topology::publish_delayed_all(
                    client.broker(),
                    client.leases(),
                    queue,
                    queue_type,
                    wait,
                    messages,
                )
                .await;
                let outcomes: Vec<Outcome> = match published {
                    Ok(results) => results.into_iter().map(Outcome::from_publish).collect(),
                    Err(error) => vec![Outcome::from(error); indices.len()],
                };
                indices.into_iter().zip(outcomes).collect::<Vec<_>>()
            });
        }
        let mut groups = groups.into_iter().peekable();
        while groups.peek().is_some() {
            let some: Vec<_> = groups.by_ref().take(DELAYED_IN_FLIGHT).collect();
            for (index, outcome) in futures_util::future::join_all(some)
                .await
                .into_iter()
                .flatten()
            {
                outcomes.set(index, outcome);
            }
        }
    }
}

/// What became of a round's rows, to write back in its transaction.
#[derive(Default)]
struct Round {
    /// Rows confirmed, by `seq`: deleted.
    published: Vec<i64>,
    /// Rows refused (`seq`, attempts so far, why): they wait, with backoff.
    refusals: Vec<(i64, i32, String)>,
    /// Rows deferred (`seq`, why): they wait a few seconds.
    deferrals: Vec<(i64, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_rows_back_off_up_to_an_hour() {
        assert_eq!(row_backoff(0), Duration::from_secs(1));
        assert_eq!(row_backoff(3), Duration::from_secs(8));
        assert_eq!(row_backoff(40), MAX_ROW_BACKOFF);
        assert_eq!(row_backoff(-1), Duration::from_secs(1));
    }
}
