//! The outbox tests' PostgreSQL: a pool on `QJOB_PG_URL` (or the test
//! database on 127.0.0.1:5432), a fresh table per test, and a metrics
//! recorder.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qjob::outbox::Outbox;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The database the tests use: `QJOB_PG_URL`, or `test` on 127.0.0.1:5432.
pub fn pg_url() -> String {
    std::env::var("QJOB_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A pool on the test database; an unreachable PostgreSQL fails the test.
pub async fn pg_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&pg_url())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "these tests need PostgreSQL ({}; see README.md): {error}",
                pg_url()
            )
        })
}

/// Drops `table` (and its notify function) if an earlier run left it,
/// then migrates `outbox` into it.
pub async fn fresh(pool: &PgPool, outbox: &Outbox) {
    let table = outbox.table();
    sqlx::raw_sql(&format!(
        r#"DROP TABLE IF EXISTS "{table}"; DROP FUNCTION IF EXISTS "{table}_notify"();"#
    ))
    .execute(pool)
    .await
    .unwrap();
    outbox.migrate(pool).await.unwrap();
}

/// Rows in `table`.
pub async fn rows(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!(r#"SELECT count(*) FROM "{table}""#))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A metrics recorder that keeps every counter's and gauge's last value
/// by `name{label=value,…}`, to read at any time (histograms are not kept).
#[derive(Default, Clone)]
pub struct Metrics(
    Arc<Mutex<std::collections::HashMap<String, Arc<std::sync::atomic::AtomicU64>>>>,
);

impl Metrics {
    /// The recorder of this test binary, installed at the first call.
    pub fn installed() -> Self {
        static INSTALLED: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let metrics = Metrics::default();
                metrics::set_global_recorder(metrics.clone())
                    .expect("no other recorder in this binary");
                metrics
            })
            .clone()
    }

    fn cell(&self, key: &metrics::Key) -> Arc<std::sync::atomic::AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn value(&self, series: &str) -> Option<u64> {
        let cells = self.0.lock().unwrap();
        let cell = cells.get(series)?;
        Some(cell.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Counter `series` (`name{label=value}`), 0 if never recorded.
    pub fn counter(&self, series: &str) -> u64 {
        self.value(series).unwrap_or(0)
    }

    /// Gauge `series`, if recorded.
    pub fn gauge(&self, series: &str) -> Option<f64> {
        self.value(series).map(f64::from_bits)
    }
}

impl metrics::Recorder for Metrics {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.cell(key))
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Writes a `Task` for each of `seqs` into `outbox` in one transaction,
/// commits it, and returns the jobs' ids in order.
pub async fn committed<J: qjob::Job<Payload = crate::Task>>(
    outbox: &Outbox,
    pool: &PgPool,
    seqs: impl IntoIterator<Item = u32>,
) -> Vec<String> {
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for seq in seqs {
        let task = crate::Task::new("outbox", seq, crate::Act::Succeed);
        ids.push(
            outbox
                .enqueue::<J>(&mut tx, task)
                .await
                .unwrap()
                .to_string(),
        );
    }
    tx.commit().await.unwrap();
    ids
}
