//! The commands to workers (`pause`, `resume`, `concurrency`, `cancel`)
//! and `topology check`.

use std::collections::BTreeSet;

use qjob::admin::{Admin, Reply};
use serde_json::{Value, json};

use crate::failure::{Failure, NOT_CARRIED_OUT, NOT_FOUND, TOPOLOGY_PROBLEMS};
use crate::out::{Out, short_id};

/// Waits for the workers' heartbeats; not found (3) when no running worker
/// runs job type `job` (by name, type name or queue).
pub(crate) async fn running(admin: &Admin, job: &str) -> Result<(), Failure> {
    admin.refresh().await?;
    let named: BTreeSet<String> = admin
        .workers()
        .iter()
        .filter(|worker| worker.alive)
        .flat_map(|worker| &worker.status.jobs)
        .filter(|status| status.is_named(job))
        .map(|status| status.job.clone())
        .collect();
    one_job_type(job, &named)
}

/// Whether `job` names one job type of those `named` it: none is not
/// found (3), several (one type name in two services) is bad usage (2).
pub(crate) fn one_job_type(job: &str, named: &BTreeSet<String>) -> Result<(), Failure> {
    match named.len() {
        1 => Ok(()),
        0 => Err(Failure(
            NOT_FOUND,
            format!("no running worker runs job type {job:?}"),
        )),
        _ => Err(Failure(
            2,
            format!(
                "{job:?} names several job types ({}): give its name or its queue",
                named.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Reports the workers' replies to a command; fails when none replied or
/// one refused.
pub(crate) fn obey(out: &Out, target: &str, replies: Vec<Reply>) -> Result<(), Failure> {
    if out.json {
        let replies: Vec<Value> = replies
            .iter()
            .map(|r| json!({ "worker_id": r.worker_id, "ok": r.ok, "message": r.message }))
            .collect();
        out.print_json(&json!({ "replies": replies }));
    } else {
        for reply in &replies {
            let worker = short_id(&reply.worker_id);
            let verdict = if reply.ok { "ok" } else { "refused" };
            say!("{worker}: {verdict}: {}", reply.message);
        }
    }
    if replies.is_empty() {
        return Err(Failure(
            NOT_CARRIED_OUT,
            format!("no running worker replied for {target:?}"),
        ));
    }
    if replies.iter().any(|reply| !reply.ok) {
        return Err(Failure(
            NOT_CARRIED_OUT,
            "a worker refused the command".to_owned(),
        ));
    }
    Ok(())
}

/// `topology check`: the problems found, or that there are none;
/// [`TOPOLOGY_PROBLEMS`] when there are some.
pub(crate) async fn check_topology(out: &Out, admin: &Admin) -> Result<(), Failure> {
    let problems = admin.check_topology().await?;
    if out.json {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        out.print_json(&json!({ "problems": problems }));
    } else if problems.is_empty() {
        say!("the broker's queues match what the running workers declare");
    } else {
        problems.iter().for_each(|problem| say!("{problem}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure(
            TOPOLOGY_PROBLEMS,
            format!("{} topology problem(s)", problems.len()),
        ))
    }
}
