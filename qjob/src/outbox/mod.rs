//! Enqueueing inside a PostgreSQL transaction: a transactional outbox
//! (feature `postgres`).
//!
//! [`Outbox::enqueue`] writes a job into an outbox table in the caller's
//! transaction: the job exists if and only if the transaction commits. A
//! [`Relay`] publishes committed rows with publisher confirms, in the order
//! they were written, and deletes each row once its confirm came. A relay
//! killed between the confirm and the delete publishes the row again, with
//! the same job id (at-least-once, as everywhere in qjob).
//!
//! See the [guide](crate::docs::outbox).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{Acquire, PgConnection, Postgres, Row};

use crate::broker::{HeaderValue, Headers, Message};
use crate::client::Client;
use crate::client::message::delayable;
use crate::job::{Job, JobId};
use crate::options::{JobOptions, QueueType};
use crate::policy::backoff;
use crate::{Error, topology};

/// The outbox table's SQL, for the default name `qjob_outbox`: what
/// [`Outbox::migrate`] applies, with the table's own name in its place.
pub const SCHEMA: &str = include_str!("../../sql/outbox.sql");

/// The table's name in [`SCHEMA`].
const DEFAULT_TABLE: &str = "qjob_outbox";

/// Table names end with `_notify` for their trigger, within PostgreSQL's
/// 63 bytes.
const MAX_TABLE_NAME: usize = 50;

/// The latest `run_at` a row takes: the end of the year 9999, in ms since
/// the Unix epoch (PostgreSQL's range goes further; a later time is a
/// mistake).
const LATEST_RUN_AT_MS: i64 = 253_402_300_799_999;

/// Delay queues published to at once in a round.
const DELAYED_IN_FLIGHT: usize = 64;

/// The longest a refused row waits before it is tried again.
const MAX_ROW_BACKOFF: Duration = Duration::from_secs(3600);

/// How long a row whose job type's queues could not be declared waits.
const DEFER_FOR: Duration = Duration::from_secs(5);

/// The longest a relay waits before a round after a failed one.
const MAX_RELAY_BACKOFF: Duration = Duration::from_secs(5);

/// How often a relay reads the outbox's depth for its metrics.
const STATS_EVERY: Duration = Duration::from_secs(1);

fn database(operation: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let operation = operation.into();
    move |source| Error::Database {
        operation,
        source: Box::new(source),
    }
}

/// Writes jobs into an outbox table inside the caller's transactions.
/// Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Charge { order: i64 }
/// # #[qjob::job(queue = "docs.outbox.charge")]
/// # async fn charge(job: Charge, ctx: qjob::JobContext) -> Result<(), qjob::JobError> { Ok(()) }
/// # async fn run(client: qjob::Client, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use qjob::outbox::Outbox;
///
/// let outbox = Outbox::new(client);
/// outbox.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
/// outbox.enqueue::<ChargeJob>(&mut tx, Charge { order: 42 }).await?;
/// tx.commit().await?; // the job exists from here on, and only if this commits
///
/// // Beside the app (or inside a worker, with `WorkerBuilder::relay`):
/// tokio::spawn(outbox.relay(pool).run_until(std::future::pending()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Outbox {
    client: Client,
    table: Table,
    /// Whether committed rows wake the relays (the table's trigger).
    notify: bool,
    /// The job types this process has seen, by name: a relay declares
    /// their queues before it publishes their rows.
    jobs: Arc<Mutex<HashMap<String, JobOptions>>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.table.name)
            .finish_non_exhaustive()
    }
}

/// The outbox table's name and the statements on it.
#[derive(Clone)]
struct Table {
    name: Arc<str>,
    insert: Arc<str>,
    claim: Arc<str>,
    delete: Arc<str>,
    refuse: Arc<str>,
    stats: Arc<str>,
}

impl Table {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            insert: format!(
                "INSERT INTO \"{name}\" (job_id, job, queue, queue_type, run_at, headers, body) \
                 VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), $6::jsonb, $7)"
            )
            .into(),
            claim: format!(
                "SELECT seq, job_id, job, queue, queue_type, \
                 (extract(epoch FROM run_at) * 1000)::int8 AS run_at_ms, \
                 headers::text AS headers, body, attempts \
                 FROM \"{name}\" WHERE retry_at IS NULL OR retry_at <= clock_timestamp() \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            )
            .into(),
            delete: format!("DELETE FROM \"{name}\" WHERE seq = ANY($1)").into(),
            refuse: format!(
                "UPDATE \"{name}\" SET attempts = attempts + $4, last_error = $2, \
                 retry_at = clock_timestamp() + make_interval(secs => $3::float8) \
                 WHERE seq = $1"
            )
            .into(),
            stats: format!(
                "SELECT count(*)::int8, \
                 extract(epoch FROM clock_timestamp() - min(created_at))::float8, \
                 count(*) FILTER (WHERE attempts > 0)::int8 FROM \"{name}\""
            )
            .into(),
        }
    }
}

/// How full an outbox is ([`Outbox::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Rows not yet published.
    pub depth: u64,
    /// How long the oldest of them has waited.
    pub oldest: Option<Duration>,
    /// Rows the broker refused at least once (each has its `last_error`).
    pub refused: u64,
}

impl Outbox {
    /// An outbox in the table `qjob_outbox`, whose relays publish through
    /// `client`'s broker.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            table: Table::new(DEFAULT_TABLE),
            notify: true,
            jobs: Arc::default(),
        }
    }

    /// The same outbox in table `name` (lower-case letters, digits and
    /// `_`, at most 50 bytes, not starting with a digit; it lives in the
    /// connection's `search_path`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for another name.
    pub fn table(mut self, name: &str) -> Result<Self, Error> {
        check_table_name(name)?;
        self.table = Table::new(name);
        Ok(self)
    }

    /// Whether a transaction that wrote rows wakes the relays when it
    /// commits (`NOTIFY`, through a trigger on the table; on by default).
    /// Off, [`Outbox::migrate`] drops the trigger and relays find rows by
    /// polling alone: give them a short [`Relay::poll_interval`].
    ///
    /// PostgreSQL serializes the commits of transactions that notify, so
    /// with many transactions committing at once, off commits faster (the
    /// [guide](crate::docs::outbox) has figures); on, a row goes out
    /// within milliseconds of its commit.
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table.name
    }

    /// The SQL that creates this outbox's table, its notify function and
    /// trigger ([`SCHEMA`] with this table's name).
    pub fn schema(&self) -> String {
        schema_for(&self.table.name, self.notify)
    }

    /// Creates the table, its notify function and its trigger if they do
    /// not exist, in one transaction (processes migrating at once take
    /// turns).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the database refused.
    pub async fn migrate<'a>(
        &self,
        db: impl Acquire<'a, Database = Postgres>,
    ) -> Result<(), Error> {
        let mut tx = db.begin().await.map_err(database("begin a migration"))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("qjob-outbox-migrate:{}", self.table.name))
            .execute(&mut *tx)
            .await
            .map_err(database("lock the migration"))?;
        sqlx::raw_sql(&self.schema())
            .execute(&mut *tx)
            .await
            .map_err(database(format!("create the outbox {}", self.table.name)))?;
        tx.commit().await.map_err(database("commit the migration"))
    }

    /// Writes job `J` into the outbox through `conn`, the caller's
    /// transaction: the job is published after the transaction commits,
    /// and never if it rolls back. Returns the job's id, the id its
    /// message carries (a relay's republish keeps it).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the payload does not serialize,
    /// [`Error::Config`] for a unique job (the outbox takes no unique
    /// locks: enqueue it with [`Client::enqueue_unique`]), or
    /// [`Error::Database`] (the transaction should then roll back).
    pub async fn enqueue<J: Job>(
        &self,
        conn: &mut PgConnection,
        payload: J::Payload,
    ) -> Result<JobId, Error> {
        self.write::<J>(conn, &payload, None).await
    }

    /// Writes job `J` to run after `delay`, counted from now; see
    /// [`Outbox::enqueue`] and [`Client::enqueue_in`]. A relay that
    /// publishes it late publishes it with what is left of the delay.
    ///
    /// # Errors
    ///
    /// As [`Outbox::enqueue`]; [`Error::Config`] for a job with
    /// `max_length`, as [`Client::enqueue_in`].
    pub async fn enqueue_in<J: Job>(
        &self,
        conn: &mut PgConnection,
        payload: J::Payload,
        delay: Duration,
    ) -> Result<JobId, Error> {
        let at = SystemTime::now().checked_add(delay).ok_or_else(|| {
            Error::Config(format!(
                "job {}: a delay of {delay:?} is out of range",
                J::NAME
            ))
        })?;
        self.enqueue_at::<J>(conn, payload, at).await
    }

    /// Writes job `J` to run at `at` (at once if that is past); see
    /// [`Outbox::enqueue_in`].
    ///
    /// # Errors
    ///
    /// As [`Outbox::enqueue_in`].
    pub async fn enqueue_at<J: Job>(
        &self,
        conn: &mut PgConnection,
        payload: J::Payload,
        at: SystemTime,
    ) -> Result<JobId, Error> {
        if at <= SystemTime::now() {
            return self.write::<J>(conn, &payload, None).await;
        }
        delayable::<J>()?;
        if millis_since_epoch(at) > LATEST_RUN_AT_MS {
            return Err(Error::Config(format!(
                "job {}: {at:?} is after the year 9999, out of range for the outbox",
                J::NAME
            )));
        }
        self.write::<J>(conn, &payload, Some(at)).await
    }

    async fn write<J: Job>(
        &self,
        conn: &mut PgConnection,
        payload: &J::Payload,
        at: Option<SystemTime>,
    ) -> Result<JobId, Error> {
        let options = J::options();
        if options.unique().is_some() {
            return Err(Error::Config(format!(
                "job {} is unique: the outbox takes no unique locks; \
                 enqueue it with Client::enqueue_unique",
                J::NAME
            )));
        }
        let (id, message) = Client::message::<J>(payload)?;
        let queue = Client::target::<J>(Some(payload));
        let at_ms = at.map(|at| millis_since_epoch(at) as f64);
        sqlx::query(&self.table.insert)
            .bind(id.as_str())
            .bind(J::NAME)
            .bind(&*queue)
            .bind(options.queue_type().as_str())
            .bind(at_ms)
            .bind(headers_to_json(&message.headers)?)
            .bind(message.body)
            .execute(conn)
            .await
            .map_err(database(format!("write job {} into the outbox", J::NAME)))?;
        self.learn(J::NAME, options);
        Ok(id)
    }

    /// Remembers a job type's options: a relay of this outbox declares its
    /// queues before it publishes its rows.
    fn learn(&self, job: &str, options: JobOptions) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if !jobs.contains_key(job) {
            jobs.insert(job.to_owned(), options);
        }
    }

    fn options_of(&self, job: &str) -> Option<JobOptions> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.get(job).cloned()
    }

    /// How many rows wait, how long the oldest has, how many were refused.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the database failed.
    pub async fn stats<'a>(
        &self,
        db: impl Acquire<'a, Database = Postgres>,
    ) -> Result<OutboxStats, Error> {
        let mut conn = db
            .acquire()
            .await
            .map_err(database("connect to read the outbox"))?;
        let row = sqlx::query(&self.table.stats)
            .fetch_one(&mut *conn)
            .await
            .map_err(database(format!("read the outbox {}", self.table.name)))?;
        let depth: i64 = row.get(0);
        let oldest: Option<f64> = row.get(1);
        let refused: i64 = row.get(2);
        Ok(OutboxStats {
            depth: depth.unsigned_abs(),
            oldest: oldest.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            refused: refused.unsigned_abs(),
        })
    }

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

fn check_table_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_TABLE_NAME
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        return Ok(());
    }
    Err(Error::Config(format!(
        "outbox table name {name:?}: use lower-case letters, digits and `_`, \
         at most {MAX_TABLE_NAME} bytes, not starting with a digit"
    )))
}

/// Where [`SCHEMA`]'s notify trigger begins.
const NOTIFY_SECTION: &str = "-- Wakes the relays";

/// [`SCHEMA`] for table `name` (a checked name), with its notify trigger
/// or without (dropping one an earlier migration made).
fn schema_for(name: &str, notify: bool) -> String {
    let schema = match SCHEMA.split_once(NOTIFY_SECTION) {
        Some((table, _)) if !notify => format!(
            "{table}-- Relays poll: no trigger wakes them.\n\
             DO $$\n\
             BEGIN\n    \
                 IF EXISTS (\n        \
                     SELECT 1 FROM pg_trigger\n        \
                     WHERE tgname = '{DEFAULT_TABLE}_notify' \
                     AND tgrelid = '\"{DEFAULT_TABLE}\"'::regclass\n    \
                 ) THEN\n        \
                     DROP TRIGGER \"{DEFAULT_TABLE}_notify\" ON \"{DEFAULT_TABLE}\";\n    \
                 END IF;\n\
             END\n\
             $$;\n"
        ),
        _ => SCHEMA.to_owned(),
    };
    schema.replace(DEFAULT_TABLE, name)
}

fn millis_since_epoch(at: SystemTime) -> i64 {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A job's headers as a JSON object: qjob's own headers are text, and
/// numbers and booleans keep their type.
fn headers_to_json(headers: &Headers) -> Result<String, Error> {
    let mut object = serde_json::Map::new();
    for (name, value) in headers {
        let value = match value {
            HeaderValue::Str(text) => serde_json::Value::from(text.as_str()),
            HeaderValue::Int(n) => serde_json::Value::from(*n),
            HeaderValue::Bool(b) => serde_json::Value::from(*b),
            HeaderValue::Float(x) if x.is_finite() => serde_json::Value::from(*x),
            other => {
                return Err(Error::Config(format!(
                    "header {name:?} ({other}) cannot be kept in the outbox: \
                     only text, numbers and booleans can"
                )));
            }
        };
        object.insert(name.clone(), value);
    }
    Ok(serde_json::Value::Object(object).to_string())
}

fn headers_from_json(text: &str) -> Result<Headers, String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|error| format!("headers are not an object: {error}"))?;
    object
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                serde_json::Value::String(text) => HeaderValue::Str(text),
                serde_json::Value::Bool(b) => HeaderValue::Bool(b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(n) => HeaderValue::Int(n),
                    None => HeaderValue::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                other => return Err(format!("header {name:?} is {other}, not a scalar")),
            };
            Ok((name, value))
        })
        .collect()
}

/// Publishes an outbox's committed rows: in `seq` order, with publisher
/// confirms, each row deleted once its confirm came. Several relays may
/// run at once, each on the rows the others have not claimed (`FOR UPDATE
/// SKIP LOCKED`).
///
/// A relay wakes at once when a transaction that wrote rows commits
/// (`LISTEN`/`NOTIFY`), and every poll interval in case a notification was
/// missed.
pub struct Relay {
    outbox: Outbox,
    pool: PgPool,
    batch: usize,
    poll: Duration,
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
        Ok(Self {
            seq,
            job: row.get("job"),
            queue: row.get("queue"),
            queue_type,
            run_at_ms: row.get("run_at_ms"),
            attempts,
            message: Message {
                id: Some(job_id),
                headers,
                body: row.get("body"),
                ..Message::default()
            },
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

impl Relay {
    /// Rows claimed and published per round (500 by default; at least 1).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// How often the relay looks for rows when no notification came (1 s
    /// by default; at least 10 ms).
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
            .map_err(database(format!("claim rows of the outbox {}", table.name)))?;
        let mut relayed = Relayed {
            claimed: rows.len(),
            ..Relayed::default()
        };
        if rows.is_empty() {
            return Ok(relayed);
        }
        let mut refusals: Vec<(i64, i32, String)> = Vec::new();
        let mut deferrals: Vec<(i64, String)> = Vec::new();
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            match Claimed::read(row) {
                Ok(row) => claimed.push(row),
                Err(refusal) => refusals.push(refusal),
            }
        }
        drop(rows);
        let blocked = self.blocked(&claimed).await;
        let outcomes = self.publish(&claimed, &blocked).await;
        let mut published = Vec::new();
        for (row, outcome) in claimed.iter().zip(outcomes) {
            match outcome {
                Outcome::Published => published.push(row.seq),
                Outcome::Refused(error) => refusals.push((row.seq, row.attempts, error)),
                Outcome::Failed(error) => {
                    relayed.failed.get_or_insert(error);
                }
                Outcome::Deferred(error) => deferrals.push((row.seq, error)),
            }
        }
        sqlx::query(&table.delete)
            .bind(&published)
            .execute(&mut *tx)
            .await
            .map_err(database("delete published rows"))?;
        for (seq, attempts, error) in &refusals {
            tracing::warn!(table = %table.name, seq, attempts = attempts + 1, %error, "outbox row refused; it waits and is tried again");
            sqlx::query(&table.refuse)
                .bind(seq)
                .bind(error)
                .bind(row_backoff(*attempts).as_secs_f64())
                .bind(1i32)
                .execute(&mut *tx)
                .await
                .map_err(database("mark a refused row"))?;
        }
        for (seq, error) in &deferrals {
            tracing::warn!(table = %table.name, seq, %error, "outbox row deferred; it is tried again in a few seconds");
            sqlx::query(&table.refuse)
                .bind(seq)
                .bind(error)
                .bind(DEFER_FOR.as_secs_f64())
                .bind(0i32)
                .execute(&mut *tx)
                .await
                .map_err(database("defer a row"))?;
        }
        tx.commit()
            .await
            .map_err(database("commit a relay round"))?;
        relayed.published = published.len();
        relayed.refused = refusals.len();
        let label = table.name.to_string();
        metrics::counter!("qjob_outbox_published_total", "table" => label.clone())
            .increment(published.len() as u64);
        metrics::counter!("qjob_outbox_refused_total", "table" => label)
            .increment(refusals.len() as u64);
        Ok(relayed)
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
        let client = &self.outbox.client;
        let mut outcomes: Vec<Option<Outcome>> = Vec::new();
        outcomes.resize_with(claimed.len(), || None);
        let mut direct = Vec::new();
        // By target queue and delay: each group is one delay queue.
        let mut delayed: BTreeMap<(&str, Duration), Vec<usize>> = BTreeMap::new();
        for (index, row) in claimed.iter().enumerate() {
            if let Some(outcome) = blocked.get(&index) {
                outcomes[index] = Some(outcome.clone());
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
        if !direct.is_empty() {
            let messages = direct
                .iter()
                .map(|&index| (claimed[index].queue.clone(), claimed[index].message.clone()))
                .collect();
            let results = client.broker().publish_all(messages).await;
            for (&index, result) in direct.iter().zip(results) {
                outcomes[index] = Some(Outcome::from_publish(result));
            }
        }
        // Each group pipelined in order on its own session, a few groups
        // at once.
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
        let mut results = Vec::new();
        let mut groups = groups.into_iter().peekable();
        while groups.peek().is_some() {
            let some: Vec<_> = groups.by_ref().take(DELAYED_IN_FLIGHT).collect();
            results.extend(futures_util::future::join_all(some).await);
        }
        for (index, outcome) in results.into_iter().flatten() {
            outcomes[index] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    Outcome::Failed("the broker gave no outcome for it".to_owned())
                })
            })
            .collect()
    }

    /// Relays until `shutdown` resolves: a round whenever a transaction
    /// wrote rows, every poll interval otherwise, and with backoff (up to
    /// 5 s) while the broker or the database fails. A round under way when
    /// `shutdown` resolves completes first.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] at start if the table does not exist
    /// ([`Outbox::migrate`] creates it). Later failures are logged and
    /// retried; they do not end the run.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.check().await?;
        self.relay_until(shutdown).await;
        Ok(())
    }

    /// Fails if the outbox table does not exist; a database not reachable
    /// yet is only logged (the relay retries).
    pub(crate) async fn check(&self) -> Result<(), Error> {
        match self.outbox.stats(&self.pool).await {
            Err(error) if missing_table(&error) => Err(error),
            Err(error) => {
                tracing::warn!(%error, "the outbox's database is not reachable yet; retrying");
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    /// [`Relay::run_until`] after its check.
    pub(crate) async fn relay_until(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let channel = self.outbox.table.name.to_string();
        let mut listener: Option<PgListener> = None;
        let (mut listen_at, mut listen_failures) = (Instant::now(), 0u32);
        let mut failures = 0u32;
        let mut stats_at: Option<Instant> = None;
        // Whether a round claimed rows since the metrics were last read.
        let mut dirty = true;
        loop {
            if listener.is_none() && self.outbox.notify && Instant::now() >= listen_at {
                tokio::select! {
                    () = &mut shutdown => return,
                    listening = self.listen(&channel) => listener = listening,
                }
                // Failing, it is tried again after a while: rounds go on,
                // polling, meanwhile.
                if listener.is_none() {
                    listen_failures += 1;
                    listen_at = Instant::now() + self.wait_after(listen_failures).max(self.poll);
                } else {
                    listen_failures = 0;
                }
            }
            let wait = match self.relay_once().await {
                Ok(relayed) => {
                    dirty |= relayed.claimed > 0;
                    let more = relayed.claimed == self.batch;
                    match relayed.failed {
                        Some(error) => {
                            failures += 1;
                            tracing::warn!(table = %channel, %error, "outbox rows not published; retrying");
                        }
                        None => failures = 0,
                    }
                    if more && failures == 0 {
                        Duration::ZERO
                    } else {
                        self.wait_after(failures)
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(table = %channel, %error, "outbox relay round failed; retrying");
                    self.wait_after(failures)
                }
            };
            // At most every second while busy; and before waiting, once
            // the rows a round claimed are accounted for.
            let stale = stats_at.is_none_or(|at| at.elapsed() >= STATS_EVERY);
            if stale || (dirty && !wait.is_zero()) {
                stats_at = Some(Instant::now());
                dirty = false;
                tokio::select! {
                    () = &mut shutdown => return,
                    () = self.record_stats() => {}
                }
            }
            if wait.is_zero() {
                // More rows wait: the next round at once, unless told to stop.
                if (&mut shutdown).now_or_never().is_some() {
                    return;
                }
                continue;
            }
            // After a failure, the backoff holds: commits do not cut it
            // short. The listener is read all the same: PostgreSQL keeps
            // every notification until each listener has read it, and a
            // queue full of them fails the application's own commits.
            let wakes = failures == 0;
            let mut lost = false;
            let notified = async {
                let Some(listening) = listener.as_mut() else {
                    return std::future::pending().await;
                };
                loop {
                    match listening.recv().await {
                        // One round takes what every notification so far
                        // announced.
                        Ok(_) => loop {
                            match listening.try_recv().now_or_never() {
                                Some(Ok(Some(_))) => {}
                                Some(Err(_)) => {
                                    lost = true;
                                    break;
                                }
                                Some(Ok(None)) | None => break,
                            }
                        },
                        Err(error) => {
                            tracing::debug!(%error, "outbox listener lost; polling until it is back");
                            lost = true;
                        }
                    }
                    if wakes || lost {
                        break;
                    }
                }
                if !wakes {
                    // Only the backoff's end starts the next round.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
                () = notified => {}
            }
            if lost {
                listener = None;
            }
        }
    }

    /// How long to wait before the next round: the poll interval, or
    /// less after failures (a first failure is retried soon).
    fn wait_after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return self.poll;
        }
        backoff::retry_delay(failures, MAX_RELAY_BACKOFF)
    }

    /// A listener on `channel`, on a connection of its own (a listener
    /// holds its connection for good: not one of the pool's).
    async fn listen(&self, channel: &str) -> Option<PgListener> {
        let options = (*self.pool.connect_options()).clone();
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&own)
            .await
            .inspect_err(|error| tracing::debug!(%error, "outbox listener: could not connect"))
            .ok()?;
        listener
            .listen(channel)
            .await
            .inspect_err(|error| tracing::debug!(%error, "outbox listener: could not listen"))
            .ok()?;
        Some(listener)
    }

    async fn record_stats(&self) {
        let Ok(stats) = self.outbox.stats(&self.pool).await else {
            return;
        };
        let label = self.outbox.table.name.to_string();
        metrics::gauge!("qjob_outbox_depth", "table" => label.clone()).set(stats.depth as f64);
        metrics::gauge!("qjob_outbox_oldest_age_seconds", "table" => label)
            .set(stats.oldest.map_or(0.0, |age| age.as_secs_f64()));
    }
}

/// Whether the database said the outbox table does not exist.
fn missing_table(error: &Error) -> bool {
    let Error::Database { source, .. } = error else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .and_then(|error| error.as_database_error())
        .and_then(|error| error.code())
        .is_some_and(|code| code == "42P01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_their_types_through_json() {
        let mut headers = Headers::new();
        headers.insert("traceparent".into(), "00-abc-def-01".into());
        headers.insert("n".into(), HeaderValue::Int(-3));
        headers.insert("b".into(), HeaderValue::Bool(true));
        headers.insert("x".into(), HeaderValue::Float(1.0));
        let json = headers_to_json(&headers).unwrap();
        assert_eq!(headers_from_json(&json).unwrap(), headers);
    }

    #[test]
    fn headers_that_json_cannot_keep_are_a_clear_error() {
        let mut headers = Headers::new();
        headers.insert("raw".into(), HeaderValue::Bytes(vec![1, 2]));
        let error = headers_to_json(&headers).unwrap_err();
        assert!(error.to_string().contains("\"raw\""), "{error}");
        assert!(headers_from_json("[1]").is_err());
        assert!(headers_from_json(r#"{"a": [1]}"#).is_err());
    }

    #[test]
    fn table_names_are_checked_and_the_schema_uses_them() {
        for bad in [
            "",
            "Orders",
            "1outbox",
            "a.b",
            "a-b",
            "x;drop",
            &"a".repeat(51),
        ] {
            assert!(
                matches!(check_table_name(bad), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        check_table_name("orders_outbox_2").unwrap();
        let schema = schema_for("orders_outbox", true);
        assert!(schema.contains("CREATE TABLE IF NOT EXISTS \"orders_outbox\" ("));
        assert!(schema.contains("pg_notify('orders_outbox', '')"));
        assert!(schema.contains("CREATE TRIGGER \"orders_outbox_notify\""));
        assert!(!schema.contains(DEFAULT_TABLE));
        let polled = schema_for("orders_outbox", false);
        assert!(polled.contains("CREATE TABLE IF NOT EXISTS \"orders_outbox\" ("));
        assert!(!polled.contains("CREATE TRIGGER"));
        assert!(polled.contains("DROP TRIGGER \"orders_outbox_notify\" ON \"orders_outbox\";"));
    }

    #[test]
    fn refused_rows_back_off_up_to_an_hour() {
        assert_eq!(row_backoff(0), Duration::from_secs(1));
        assert_eq!(row_backoff(3), Duration::from_secs(8));
        assert_eq!(row_backoff(40), MAX_ROW_BACKOFF);
        assert_eq!(row_backoff(-1), Duration::from_secs(1));
    }
}
