//! The outbox table: its schema and name, the statements on it, and how
//! a job's headers and times are kept in its columns.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::broker::{HeaderValue, Headers};

/// The outbox table's SQL, for the default name `qjob_outbox`: what
/// [`Outbox::migrate`](super::Outbox::migrate) applies, with the table's own name in its place.
pub const SCHEMA: &str = include_str!("../../sql/outbox.sql");

/// The table's name in [`SCHEMA`].
pub(super) const DEFAULT_TABLE: &str = "qjob_outbox";

/// How long a relay waits for the watch lock at a time (see
/// [`Table::watch`]).
const WATCH_LOCK_TIMEOUT_MS: u32 = 100;

/// The advisory lock a relay that waits for rows holds on its listening
/// connection; the trigger notifies only while some relay holds it (or
/// waits for it). A non-negative `int4`, so that `pg_locks` shows it as
/// its `objid`.
fn watch_key(table: &str) -> String {
    format!("hashtext('qjob-outbox-watch:{table}') & 2147483647")
}

/// Table names end with `_notify` for their trigger, within PostgreSQL's
/// 63 bytes.
const MAX_TABLE_NAME: usize = 50;

/// The latest `run_at` a row takes: the end of the year 9999, in ms since
/// the Unix epoch (PostgreSQL's range goes further; a later time is a
/// mistake).
pub(super) const LATEST_RUN_AT_MS: i64 = 253_402_300_799_999;

pub(super) fn database(operation: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let operation = operation.into();
    move |source| Error::Database {
        operation,
        source: Box::new(source),
    }
}

/// Whether the database said a lock was not granted in time.
pub(super) fn lock_not_available(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "55P03")
}

/// Whether the database said a column does not exist.
pub(super) fn undefined_column(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "42703")
}

/// As [`database`], saying what to do when the table lacks a column: one
/// that a later qjob added, to a table an earlier one made.
pub(super) fn migrated(operation: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let operation = operation.into();
    move |source| {
        let operation = if undefined_column(&source) {
            format!(
                "{operation} (the table lacks a column this qjob uses: run Outbox::migrate, \
                 which adds it, or apply Outbox::schema)"
            )
        } else {
            operation
        };
        Error::Database {
            operation,
            source: Box::new(source),
        }
    }
}

/// The outbox table's name and the statements on it.
#[derive(Clone)]
pub(super) struct Table {
    pub(super) name: Arc<str>,
    pub(super) insert: Arc<str>,
    /// The insert of a row without a priority: it names no `priority`
    /// column, so producers write to a table an earlier qjob made until
    /// `Outbox::migrate` runs.
    pub(super) insert_plain: Arc<str>,
    pub(super) claim: Arc<str>,
    pub(super) delete: Arc<str>,
    pub(super) refuse: Arc<str>,
    pub(super) stats: Arc<str>,
    /// Reads nothing, but fails on a table that lacks a column.
    pub(super) columns: Arc<str>,
    /// Takes the watch lock, waiting at most [`WATCH_LOCK_TIMEOUT_MS`]:
    /// it waits for the transactions that wrote rows while no relay
    /// watched (each holds it shared until it ends).
    pub(super) watch: Arc<str>,
    /// Whether another session holds the watch lock.
    pub(super) watched: Arc<str>,
    pub(super) unwatch: Arc<str>,
}

impl Table {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            insert: format!(
                "INSERT INTO \"{name}\" \
                 (job_id, job, queue, queue_type, run_at, headers, body, priority) \
                 VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), $6::jsonb, $7, $8)"
            )
            .into(),
            insert_plain: format!(
                "INSERT INTO \"{name}\" \
                 (job_id, job, queue, queue_type, run_at, headers, body) \
                 VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), $6::jsonb, $7)"
            )
            .into(),
            claim: format!(
                "SELECT seq, job_id, job, queue, queue_type, \
                 (extract(epoch FROM run_at) * 1000)::int8 AS run_at_ms, \
                 headers::text AS headers, body, priority, attempts \
                 FROM \"{name}\" WHERE retry_at IS NULL OR retry_at <= clock_timestamp() \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            )
            .into(),
            delete: format!("DELETE FROM \"{name}\" WHERE seq = ANY($1)").into(),
            columns: format!("SELECT priority FROM \"{name}\" LIMIT 0").into(),
            watch: format!(
                "SET lock_timeout = '{WATCH_LOCK_TIMEOUT_MS}ms'; SELECT pg_advisory_lock({key})",
                key = watch_key(name)
            )
            .into(),
            watched: format!(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = 0 AND objid = ({key})::oid AND objsubid = 1 \
                 AND mode = 'ExclusiveLock' AND granted AND pid <> pg_backend_pid())",
                key = watch_key(name)
            )
            .into(),
            unwatch: format!("SELECT pg_advisory_unlock({})", watch_key(name)).into(),
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

pub(super) fn check_table_name(name: &str) -> Result<(), Error> {
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
pub(super) fn schema_for(name: &str, notify: bool) -> String {
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

pub(super) fn millis_since_epoch(at: SystemTime) -> i64 {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A job's headers as a JSON object: qjob's own headers are text, and
/// numbers and booleans keep their type.
pub(super) fn headers_to_json(headers: &Headers) -> Result<String, Error> {
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

pub(super) fn headers_from_json(text: &str) -> Result<Headers, String> {
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

/// Whether the database said the outbox table does not exist.
pub(super) fn missing_table(error: &Error) -> bool {
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
        assert!(
            schema.contains(&format!(
                "pg_try_advisory_xact_lock_shared({})",
                watch_key("orders_outbox")
            )),
            "the trigger and the relays share one lock"
        );
        assert!(schema.contains("CREATE TRIGGER \"orders_outbox_notify\""));
        assert!(schema.contains("ALTER TABLE \"orders_outbox\" ADD COLUMN priority smallint;"));
        assert!(!schema.contains(DEFAULT_TABLE));
        let polled = schema_for("orders_outbox", false);
        assert!(polled.contains("CREATE TABLE IF NOT EXISTS \"orders_outbox\" ("));
        assert!(
            polled.contains("ADD COLUMN priority"),
            "columns are added either way"
        );
        assert!(!polled.contains("CREATE TRIGGER"));
        assert!(polled.contains("DROP TRIGGER \"orders_outbox_notify\" ON \"orders_outbox\";"));
    }
}
