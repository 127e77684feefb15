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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sqlx::{Acquire, PgConnection, Postgres, Row};

use crate::client::Client;
use crate::client::message::delayable;
use crate::options::JobOptions;
use crate::{EnqueueOptions, Error};
use crate::{Job, JobId};

mod relay;
mod run;
mod sql;
mod wake;

pub use relay::{Relay, Relayed};
pub use sql::SCHEMA;
use sql::{
    DEFAULT_TABLE, LATEST_RUN_AT_MS, Table, check_table_name, database, headers_to_json, migrated,
    millis_since_epoch, schema_for,
};

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
    pub fn with_table(mut self, name: &str) -> Result<Self, Error> {
        check_table_name(name)?;
        self.table = Table::new(name);
        Ok(self)
    }

    /// Whether a transaction that wrote rows wakes the relays when it
    /// commits (`NOTIFY`, through a trigger on the table; on by default).
    /// Off, [`Outbox::migrate`] drops the trigger and relays find rows by
    /// polling alone: give them a short [`Relay::poll_interval`].
    ///
    /// On, a commit notifies only while a relay waits for rows: under
    /// load the relays claim without waiting, and commits do not notify
    /// (PostgreSQL serializes the commits of transactions that notify).
    /// When the load is light, a row goes out within milliseconds of its
    /// commit. The [guide](crate::docs::outbox) has figures.
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table.name
    }

    /// The SQL that creates this outbox's table, its notify function and
    /// trigger ([`SCHEMA`] with this table's name).
    pub fn schema(&self) -> String {
        schema_for(&self.table.name, self.notify)
    }

    /// Creates the table, its notify function and its trigger if they do
    /// not exist, and adds to a table an earlier qjob made the columns it
    /// lacks (`priority`), in one transaction (processes migrating at once
    /// take turns). Run it before a new qjob writes or relays rows: one
    /// that finds a column missing fails with an error that says so.
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
        self.write::<J>(conn, &payload, None, None).await
    }

    /// Writes job `J` into the outbox as `options` say (its priority, when
    /// it runs): as [`Outbox::enqueue`], or [`Outbox::enqueue_in`] for a
    /// job that runs later. The row keeps the priority, and the relay
    /// publishes the job with it.
    ///
    /// # Errors
    ///
    /// As [`Outbox::enqueue_in`]; [`Error::Config`] for a priority the job
    /// type does not take (see [`Client::enqueue_with`]). Nothing is
    /// written then.
    pub async fn enqueue_with<J: Job>(
        &self,
        conn: &mut PgConnection,
        payload: J::Payload,
        options: EnqueueOptions,
    ) -> Result<JobId, Error> {
        let priority = options.priority_of::<J>()?;
        let now = SystemTime::now();
        let at = match options.run_at::<J>(now)? {
            Some(at) if at > now => at,
            _ => return self.write::<J>(conn, &payload, None, priority).await,
        };
        delayable::<J>()?;
        if millis_since_epoch(at) > LATEST_RUN_AT_MS {
            return Err(Error::Config(format!(
                "job {}: {at:?} is after the year 9999, out of range for the outbox",
                J::NAME
            )));
        }
        self.write::<J>(conn, &payload, Some(at), priority).await
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
        let options = EnqueueOptions::new().delay(delay);
        self.enqueue_with::<J>(conn, payload, options).await
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
        let options = EnqueueOptions::new().at(at);
        self.enqueue_with::<J>(conn, payload, options).await
    }

    async fn write<J: Job>(
        &self,
        conn: &mut PgConnection,
        payload: &J::Payload,
        at: Option<SystemTime>,
        priority: Option<u8>,
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
        let statement = match priority {
            Some(_) => &self.table.insert,
            None => &self.table.insert_plain,
        };
        let query = sqlx::query(statement)
            .bind(id.as_str())
            .bind(J::NAME)
            .bind(&*queue)
            .bind(options.queue_type().as_str())
            .bind(at_ms)
            .bind(headers_to_json(&message.headers)?)
            .bind(message.body);
        let query = match priority {
            Some(priority) => query.bind(i16::from(priority)),
            None => query,
        };
        query
            .execute(conn)
            .await
            .map_err(migrated(format!("write job {} into the outbox", J::NAME)))?;
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
}
