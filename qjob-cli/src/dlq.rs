//! `dlq`: list, show, replay, discard and purge dead letters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qjob::admin::{Admin, BROWSE_AT_MOST, Letter, LetterFilter};
use qjob::broker::{ExactValue, HeaderValue};
use serde_json::{Value, json};

use crate::args::Dlq;
use crate::commands::one_job_type;
use crate::failure::{Failure, NOT_FOUND};
use crate::out::{Out, done, millis};
use crate::table::{Table, ago, short, until};

/// The dead-letter queue `name` stands for: a dead-letter queue, a job's
/// work queue, or a job type's name or type name (from the workers'
/// heartbeats).
async fn dead_letter_queue(admin: &Admin, name: &str) -> Result<String, Failure> {
    let by_queue = format!("{name}.dlq");
    if admin.queue(&by_queue).await?.is_some() {
        return Ok(by_queue);
    }
    if name.ends_with(".dlq") && admin.queue(name).await?.is_some() {
        return Ok(name.to_owned());
    }
    admin.refresh().await?;
    let named: BTreeMap<String, String> = admin
        .workers()
        .iter()
        .flat_map(|worker| &worker.status.jobs)
        .filter(|job| job.is_named(name))
        .map(|job| (job.job.clone(), job.dead_letter_queue.clone()))
        .collect();
    if named.is_empty() {
        return Err(Failure(
            NOT_FOUND,
            format!(
                "no dead-letter queue for {name:?}: neither {by_queue:?} nor a job type of a running worker"
            ),
        ));
    }
    one_job_type(name, &named.keys().cloned().collect())?;
    Ok(named.into_values().next().expect("one job type"))
}

/// What marks the start of an id: `0193…` or `0193*`.
const STARTS: [char; 2] = ['…', '*'];

/// The id of the job `given` names among `queue`'s dead letters: the id
/// itself, or, for `dlq show` (`reading`) or when `given` ends with `…` or
/// `*`, the start of exactly one letter's id. A start is taken only when
/// every letter of the queue was read (at most 10 000, as `dlq list`
/// reads them, none held by another reader): otherwise another letter
/// might share it.
async fn job_id_in(
    admin: &Admin,
    queue: &str,
    given: &str,
    reading: bool,
) -> Result<String, Failure> {
    let start = given.trim_end_matches(STARTS);
    let marked = start.len() < given.len();
    if start.is_empty() {
        return Err(Failure(2, "give a job id, or the start of one".to_owned()));
    }
    if !marked && admin.dead_letter(queue, given).await?.is_some() {
        return Ok(given.to_owned());
    }
    let not_found = || {
        let hint = if reading || marked {
            String::new()
        } else {
            format!(" (to act on the letter whose id starts so, write {given}…)")
        };
        Failure(
            NOT_FOUND,
            format!("no dead letter of job {given} in {queue}{hint}"),
        )
    };
    if !reading && !marked {
        return Err(not_found());
    }
    let letters = admin
        .dead_letters(queue, &LetterFilter::all(), 0, BROWSE_AT_MOST)
        .await?;
    // Ready letters, and readers: a letter another reader holds is not
    // ready, and not read here.
    let (ready, readers) = admin
        .queue(queue)
        .await?
        .map_or((0, 0), |stats| (stats.messages as usize, stats.consumers));
    if letters.len() < ready || readers > 0 {
        return Err(Failure(
            2,
            format!(
                "not every letter of {queue} could be read ({} of {ready} ready, at most \
                 {BROWSE_AT_MOST}; {readers} other readers): another might start with {start}; \
                 give the whole id",
                letters.len()
            ),
        ));
    }
    let matching: BTreeSet<String> = letters
        .iter()
        .filter_map(|letter| letter.job_id.as_ref().map(ToString::to_string))
        .filter(|id| id.starts_with(start))
        .collect();
    match matching.len() {
        1 => Ok(matching.into_iter().next().expect("one id")),
        0 => Err(not_found()),
        n => Err(Failure(
            2,
            format!(
                "{n} dead letters in {queue} have ids starting with {start}: {}; give more of the id",
                matching
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if n > 5 { ", …" } else { "" }
            ),
        )),
    }
}

/// Runs a `dlq` command.
pub(crate) async fn dead_letters(out: &Out, admin: &Admin, command: &Dlq) -> Result<(), Failure> {
    match command {
        Dlq::List {
            queue,
            offset,
            limit,
            filter,
        } => {
            let queue = dead_letter_queue(admin, queue).await?;
            let filter = filter.letters().unwrap_or_else(LetterFilter::all);
            let letters = admin.dead_letters(&queue, &filter, *offset, *limit).await?;
            list(out, &queue, &letters);
            Ok(())
        }
        Dlq::Show { queue, job_id } => {
            let queue = dead_letter_queue(admin, queue).await?;
            let job_id = &job_id_in(admin, &queue, job_id, true).await?;
            let letter = admin.dead_letter(&queue, job_id).await?.ok_or_else(|| {
                Failure(
                    NOT_FOUND,
                    format!("no dead letter of job {job_id} in {queue}"),
                )
            })?;
            show(out, &letter);
            Ok(())
        }
        Dlq::Replay {
            queue,
            job_id,
            all,
            filter,
        } => {
            let queue = dead_letter_queue(admin, queue).await?;
            let replayed = match (job_id, filter.letters()) {
                (Some(job_id), None) => {
                    let job_id = &job_id_in(admin, &queue, job_id, false).await?;
                    if !admin.replay(&queue, job_id).await? {
                        return Err(Failure(
                            NOT_FOUND,
                            format!("no dead letter of job {job_id} in {queue}"),
                        ));
                    }
                    1
                }
                (None, Some(filter)) => admin.replay_matching(&queue, &filter).await?,
                (None, None) if *all => admin.replay_matching(&queue, &LetterFilter::all()).await?,
                _ => {
                    return Err(Failure(
                        2,
                        "say which dead letters to replay: a job id, --all, or --reason/--error"
                            .to_owned(),
                    ));
                }
            };
            done(
                out,
                &format!("replayed {replayed} from {queue}"),
                json!({ "replayed": replayed }),
            );
            Ok(())
        }
        Dlq::Discard { queue, job_id } => {
            let queue = dead_letter_queue(admin, queue).await?;
            let job_id = &job_id_in(admin, &queue, job_id, false).await?;
            if !admin.discard(&queue, job_id).await? {
                return Err(Failure(
                    NOT_FOUND,
                    format!("no dead letter of job {job_id} in {queue}"),
                ));
            }
            done(
                out,
                &format!("discarded {job_id} from {queue}"),
                json!({ "discarded": 1 }),
            );
            Ok(())
        }
        Dlq::Purge { queue, yes } => {
            let queue = dead_letter_queue(admin, queue).await?;
            if !yes {
                return Err(Failure(
                    2,
                    format!("purging removes every dead letter of {queue} for good: add --yes"),
                ));
            }
            let purged = admin.purge(&queue).await?;
            done(
                out,
                &format!("purged {purged} from {queue}"),
                json!({ "purged": purged }),
            );
            Ok(())
        }
    }
}

fn letter_json(letter: &Letter) -> Value {
    json!({
        "job_id": letter.job_id.as_ref().map(ToString::to_string),
        "reason": letter.reason.as_str(),
        "error": letter.error,
        "attempts": letter.attempts,
        "first_failed_at_ms": letter.first_failed_at.map(millis),
        "failed_at_ms": letter.failed_at.map(millis),
        "host": letter.host,
        "payload": letter.payload,
        "body": String::from_utf8_lossy(&letter.body),
        "headers": letter.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
    })
}

fn list(out: &Out, queue: &str, letters: &[Letter]) {
    if out.json {
        out.print_json(&json!({
            "queue": queue,
            "letters": letters.iter().map(letter_json).collect::<Vec<_>>(),
        }));
        return;
    }
    let mut table = Table::new(["JOB ID", "REASON", "ATTEMPTS", "FAILED", "ERROR"]);
    for letter in letters {
        table.row([
            letter
                .job_id
                .as_ref()
                .map_or("-".to_owned(), ToString::to_string),
            letter.reason.to_string(),
            letter.attempts.to_string(),
            letter
                .failed_at
                .map_or("-".to_owned(), |at| format!("{} ago", ago(at))),
            short(&letter.error, 80),
        ]);
    }
    table.print();
}

fn show(out: &Out, letter: &Letter) {
    if out.json {
        out.print_json(&letter_json(letter));
        return;
    }
    let job_id = letter
        .job_id
        .as_ref()
        .map_or("-".to_owned(), ToString::to_string);
    say!("job id:    {job_id}");
    say!("reason:    {}", letter.reason);
    say!("error:     {}", letter.error);
    say!("attempts:  {}", letter.attempts);
    if let Some(at) = letter.failed_at {
        say!("failed:    {}", when(at));
    }
    if let Some(host) = &letter.host {
        say!("host:      {host}");
    }
    say!("payload:");
    match &letter.payload {
        Some(payload) => say!(
            "{}",
            serde_json::to_string_pretty(payload).expect("JSON values serialize")
        ),
        None => say!("{}", String::from_utf8_lossy(&letter.body)),
    }
    say!("headers:");
    for (name, value) in &letter.headers {
        say!("  {name}: {}", header_text(name, value));
    }
}

/// `at` in RFC 3339 (UTC, to the millisecond), and how long ago (or
/// until): `2026-12-07T03:34:22.500Z, 3m ago`.
fn when(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let millis = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
    let utc = chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || "a time past the calendar".to_owned(),
        |utc| utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    if at <= SystemTime::now() {
        format!("{utc}, {} ago", ago(at))
    } else {
        format!("{utc}, in {}", until(at))
    }
}

/// A time `since` the epoch, read ([`when`]), if it is one.
fn reading(since: Duration) -> Option<String> {
    UNIX_EPOCH.checked_add(since).map(when)
}

/// A header's value as `dlq show` prints it: qjob's times (its `qjob-…-at`
/// headers, milliseconds since the epoch) and AMQP timestamps (such as
/// `x-death`'s `time`, in seconds) followed by their reading, at any
/// depth; every other value as it came.
fn header_text(name: &str, value: &HeaderValue) -> String {
    let read = |count: u64, since: Duration| match reading(since) {
        Some(reading) => format!("{count} ({reading})"),
        None => count.to_string(),
    };
    match value {
        HeaderValue::Int(ms) if name.starts_with("qjob-") && name.ends_with("-at") => {
            u64::try_from(*ms)
                .map_or_else(|_| ms.to_string(), |ms| read(ms, Duration::from_millis(ms)))
        }
        HeaderValue::Exact(ExactValue::Timestamp(secs)) => read(*secs, Duration::from_secs(*secs)),
        HeaderValue::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|item| header_text(name, item))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        HeaderValue::Table(table) => format!(
            "{{{}}}",
            table
                .iter()
                .map(|(key, value)| format!("{key}: {}", header_text(key, value)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use qjob::broker::Headers;

    use super::*;

    #[test]
    fn times_in_headers_read_at_any_depth() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let ms = i64::try_from(now.as_millis()).unwrap();
        let text = header_text("qjob-failed-at", &HeaderValue::Int(ms));
        assert!(text.starts_with(&format!("{ms} (")), "{text}");
        assert!(text.ends_with("Z, 0s ago)"), "{text}");
        // RabbitMQ's x-death: a list of tables with an AMQP timestamp.
        let mut death = Headers::new();
        death.insert("reason".to_owned(), HeaderValue::Str("expired".to_owned()));
        death.insert(
            "time".to_owned(),
            HeaderValue::Exact(ExactValue::Timestamp(now.as_secs() - 180)),
        );
        let text = header_text(
            "x-death",
            &HeaderValue::List(vec![HeaderValue::Table(death)]),
        );
        assert!(text.contains("reason: expired"), "{text}");
        assert!(
            text.contains(&format!("time: {} (", now.as_secs() - 180)),
            "{text}"
        );
        assert!(text.contains("Z, 3m ago)"), "{text}");
        // Not a time: as it came. An application's `-at` header may be in
        // any unit: not read. Past the calendar: the number alone.
        assert_eq!(header_text("qjob-attempt", &HeaderValue::Int(3)), "3");
        assert_eq!(header_text("qjob-failed-at", &HeaderValue::Int(-1)), "-1");
        assert_eq!(
            header_text("created-at", &HeaderValue::Int(ms)),
            ms.to_string()
        );
        let far = header_text("qjob-failed-at", &HeaderValue::Int(i64::MAX));
        assert!(far.contains("a time past the calendar"), "{far}");
        let far = header_text("x", &HeaderValue::Exact(ExactValue::Timestamp(u64::MAX)));
        assert_eq!(far, u64::MAX.to_string());
    }
}
