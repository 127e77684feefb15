//! What runs and waits now: `running`, `scheduled`, `retrying`, `find`,
//! and the actions on a waiting job, `run-now` and `discard`.

use qjob::admin::{Acted, DelayedJob, HeldView, Listed, RunningView, Waiting, Whereabouts};
use serde_json::{Value, json};

use crate::failure::{Failure, NOT_CARRIED_OUT, NOT_FOUND};
use crate::out::{Out, millis, short_id};
use crate::table::{Table, ago, short, span, until};

/// `running`: the attempts running now, the longest-running first.
pub(crate) fn running(out: &Out, listed: &Listed<RunningView>) {
    if out.json {
        let items: Vec<Value> = listed.items.iter().map(running_json).collect();
        return out.print_json(&json!({
            "running": items,
            "complete": listed.complete,
            "total": listed.total,
        }));
    }
    let mut table = Table::new(["JOB", "ID", "ATTEMPT", "RUNNING FOR", "KEY", "WORKER"]);
    for view in &listed.items {
        let running = &view.running;
        table.row([
            running.job.clone(),
            running.job_id.clone(),
            running.attempt.to_string(),
            span(view.running_for),
            running.key.clone().unwrap_or_else(|| "-".to_owned()),
            worker(&view.worker),
        ]);
    }
    table.print();
    if !listed.complete {
        say!(
            "(each worker lists its {} longest-running; {} run in all)",
            qjob::admin::ACTIVITY_AT_MOST,
            listed.total
        );
    }
}

fn running_json(view: &RunningView) -> Value {
    let running = &view.running;
    json!({
        "job": running.job,
        "job_id": running.job_id,
        "attempt": running.attempt,
        "started_at_ms": millis(running.started_at),
        "running_for_ms": u64::try_from(view.running_for.as_millis()).unwrap_or(u64::MAX),
        "key": running.key,
        "worker_id": view.worker.0,
        "host": view.worker.1,
        "pid": view.worker.2,
    })
}

/// `scheduled` or `retrying`: the jobs in delay queues (and, retrying,
/// those held in workers), the soonest due first.
pub(crate) fn waiting(
    out: &Out,
    which: Waiting,
    delayed: &[DelayedJob],
    held: Option<&Listed<HeldView>>,
) {
    if out.json {
        let delayed: Vec<Value> = delayed.iter().map(delayed_json).collect();
        let mut value = json!({ "delayed": delayed });
        if let Some(held) = held {
            let items: Vec<Value> = held.items.iter().map(held_json).collect();
            value["held"] = json!({
                "jobs": items,
                "complete": held.complete,
                "total": held.total,
            });
        }
        return out.print_json(&value);
    }
    let mut table = Table::new(["JOB", "ID", "ATTEMPT", "DUE", "WHERE", "ERROR"]);
    for job in delayed {
        table.row([
            job.job.clone(),
            job.job_id.clone().unwrap_or_else(|| "-".to_owned()),
            job.attempt.to_string(),
            job.due_at.map_or_else(|| "?".to_owned(), due),
            job.queue.clone(),
            short(job.error.as_deref().unwrap_or("-"), 60),
        ]);
    }
    for view in held.map(|held| held.items.as_slice()).unwrap_or_default() {
        let retrying = &view.retrying;
        table.row([
            retrying.job.clone(),
            retrying.job_id.clone(),
            retrying.attempt.to_string(),
            format!("in {}", span(view.due_in)),
            format!("held by {}", worker(&view.worker)),
            short(&retrying.error, 60),
        ]);
    }
    table.print();
    if which == Waiting::Retrying
        && let Some(held) = held
        && !held.complete
    {
        say!(
            "(each worker lists its {} soonest due; {} held in all)",
            qjob::admin::ACTIVITY_AT_MOST,
            held.total
        );
    }
}

fn due(at: std::time::SystemTime) -> String {
    match until(at).as_str() {
        "0s" => "due".to_owned(),
        left => format!("in {left}"),
    }
}

fn delayed_json(job: &DelayedJob) -> Value {
    json!({
        "job": job.job,
        "job_id": job.job_id,
        "attempt": job.attempt,
        "due_at_ms": job.due_at.map(millis),
        "enqueued_at_ms": job.enqueued_at.map(millis),
        "queue": job.queue,
        "error": job.error,
        "payload": job.payload,
    })
}

fn held_json(view: &HeldView) -> Value {
    let retrying = &view.retrying;
    json!({
        "job": retrying.job,
        "job_id": retrying.job_id,
        "attempt": retrying.attempt,
        "failed_at_ms": millis(retrying.failed_at),
        "next_attempt_at_ms": millis(retrying.next_attempt_at),
        "error": retrying.error,
        "key": retrying.key,
        "worker_id": view.worker.0,
        "host": view.worker.1,
        "pid": view.worker.2,
    })
}

/// `find`: where the job is and what can be done; not found (3) if
/// nowhere.
pub(crate) fn find(out: &Out, job_id: &str, found: &[Whereabouts]) -> Result<(), Failure> {
    if out.json {
        let found: Vec<Value> = found.iter().map(whereabouts_json).collect();
        out.print_json(&json!({ "job_id": job_id, "found": found }));
    } else {
        for place in found {
            say!("{}", whereabouts_text(place));
        }
    }
    if found.is_empty() {
        return Err(Failure(
            NOT_FOUND,
            format!(
                "job {job_id} is not running, held, delayed or dead-lettered in any job type of a running worker (a job waiting in its work queue, or done, is not looked for)"
            ),
        ));
    }
    Ok(())
}

/// One place a job is, in a line, with what can be done there.
fn whereabouts_text(place: &Whereabouts) -> String {
    match place {
        Whereabouts::Running(view) => format!(
            "running: {} attempt {} for {} on {} (qjob cancel {})",
            view.running.job,
            view.running.attempt,
            span(view.running_for),
            worker(&view.worker),
            view.running.job_id
        ),
        Whereabouts::Held(view) => format!(
            "held for a retry: {} attempt {} in {} on {}, after: {} (qjob run-now, qjob discard)",
            view.retrying.job,
            view.retrying.attempt,
            span(view.due_in),
            worker(&view.worker),
            short(&view.retrying.error, 80)
        ),
        Whereabouts::Delayed(job) => format!(
            "delayed: {} attempt {}, {} in {} (qjob run-now, qjob discard)",
            job.job,
            job.attempt,
            job.due_at.map_or_else(|| "due ?".to_owned(), due),
            job.queue
        ),
        Whereabouts::Dead { job, queue, letter } => format!(
            "dead: {job} in {queue}, {} after {} attempt(s){}: {} (qjob dlq replay, qjob dlq discard)",
            letter.reason,
            letter.attempts,
            letter
                .failed_at
                .map_or_else(String::new, |at| format!(", {} ago", ago(at))),
            short(&letter.error, 80)
        ),
        other => format!("{}: {}", other.place(), other.job()),
    }
}

fn whereabouts_json(place: &Whereabouts) -> Value {
    let mut value = match place {
        Whereabouts::Running(view) => running_json(view),
        Whereabouts::Held(view) => held_json(view),
        Whereabouts::Delayed(job) => delayed_json(job),
        Whereabouts::Dead { job, queue, letter } => json!({
            "job": job,
            "queue": queue,
            "reason": letter.reason.as_str(),
            "error": letter.error,
            "attempts": letter.attempts,
            "failed_at_ms": letter.failed_at.map(millis),
        }),
        other => json!({ "job": other.job() }),
    };
    value["place"] = place.place().into();
    value
}

/// `run-now` or `discard`: what became of the waiting job; not found (3)
/// if it waits nowhere, not carried out (4) if no worker replied.
pub(crate) fn acted(out: &Out, job_id: &str, acted: Acted) -> Result<(), Failure> {
    let (text, value) = match &acted {
        Acted::Delayed(job) => (
            format!("job {job_id} ({}) moved on from {}", job.job, job.queue),
            json!({ "job_id": job_id, "delayed": delayed_json(job) }),
        ),
        Acted::Held(replies) => {
            let done: Vec<_> = replies.iter().filter(|reply| reply.ok).collect();
            let lines: Vec<String> = done
                .iter()
                .map(|reply| format!("{}: {}", short_id(&reply.worker_id), reply.message))
                .collect();
            let replies: Vec<Value> = done
                .iter()
                .map(|r| json!({ "worker_id": r.worker_id, "message": r.message }))
                .collect();
            (
                lines.join("\n"),
                json!({ "job_id": job_id, "held": replies }),
            )
        }
        Acted::Unanswered => {
            return Err(Failure(
                NOT_CARRIED_OUT,
                format!("a worker holds job {job_id}, and no running worker replied"),
            ));
        }
        _ => return Err(not_waiting(job_id)),
    };
    if out.json {
        out.print_json(&value);
    } else {
        say!("{text}");
    }
    Ok(())
}

fn not_waiting(job_id: &str) -> Failure {
    Failure(
        NOT_FOUND,
        format!(
            "job {job_id} waits in no delay queue and no worker holds it for a retry (qjob find {job_id} says where it is)"
        ),
    )
}

/// A worker as its host, pid and short id.
fn worker((id, host, pid): &(String, String, u32)) -> String {
    format!("{host}/{pid} ({})", short_id(id))
}
