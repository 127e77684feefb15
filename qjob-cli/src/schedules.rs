//! `schedules` (each schedule the running workers carry) and `schedule
//! fire|pause|resume NAME`.

use clap::Subcommand;
use qjob::admin::{Admin, ScheduleView};
use serde_json::json;

use crate::commands::obey;
use crate::failure::{Failure, NOT_CARRIED_OUT, NOT_FOUND};
use crate::out::{Out, millis};
use crate::table::{Table, ago, short, until};

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Has the schedule's leader enqueue one tick now, with the current
    /// second's tick id (its regular ticks go on as before).
    Fire {
        /// The schedule's name.
        name: String,
    },
    /// Pauses a schedule on every worker that carries it: no tick fires
    /// until resumed (its leader keeps the lease).
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Resumes a paused schedule: the ticks missed meanwhile go by its
    /// missed-tick policy.
    Resume {
        /// The schedule's name.
        name: String,
    },
}

/// `schedules`: each schedule with its leader, ticks, policy and pause.
pub(crate) async fn list(out: &Out, admin: &Admin) -> Result<(), Failure> {
    admin.refresh().await?;
    let schedules = admin.schedules();
    if out.json {
        let schedules: Vec<_> = schedules
            .iter()
            .map(|view| {
                let s = &view.schedule;
                json!({
                    "name": view.name,
                    "job": s.job,
                    "cron": s.expression,
                    "zone": s.zone,
                    "leader": view.leader.as_ref().map(|(host, pid)| json!({ "host": host, "pid": pid })),
                    "workers": view.workers,
                    "last_fired_ms": s.last_fired.map(millis),
                    "next_ms": s.next.map(millis),
                    "missed": s.missed,
                    "paused": s.paused,
                    "paused_on": view.paused_on,
                    "problem": s.problem,
                })
            })
            .collect();
        out.print_json(&json!({ "schedules": schedules }));
        return Ok(());
    }
    let mut table = Table::new([
        "SCHEDULE",
        "JOB",
        "CRON",
        "ZONE",
        "LEADER",
        "LAST TICK",
        "NEXT TICK",
        "MISSED",
        "PAUSED",
        "PROBLEM",
    ]);
    for view in &schedules {
        let s = &view.schedule;
        table.row([
            view.name.clone(),
            s.job.clone(),
            s.expression.clone(),
            s.zone.clone(),
            view.leader
                .as_ref()
                .map_or("none".to_owned(), |(host, pid)| {
                    format!("{host} (pid {pid})")
                }),
            s.last_fired
                .map_or("-".to_owned(), |at| format!("{} ago", ago(at))),
            s.next
                .map_or("-".to_owned(), |next| format!("in {}", until(next))),
            if s.missed.is_empty() {
                "-".to_owned()
            } else {
                s.missed.clone()
            },
            paused(view),
            short(s.problem.as_deref().unwrap_or("-"), 60),
        ]);
    }
    table.print();
    Ok(())
}

/// `no`, `yes`, or on how many of its workers (`1 of 2`).
fn paused(view: &ScheduleView) -> String {
    match view.paused_on {
        0 => "no".to_owned(),
        on if on == view.workers => "yes".to_owned(),
        on => format!("{on} of {}", view.workers),
    }
}

/// `schedule fire|pause|resume NAME`: not found (3) when no running worker
/// carries it; not carried out (4) when no leader fired it, or a worker
/// refused.
pub(crate) async fn command(
    out: &Out,
    admin: &Admin,
    command: &ScheduleCommand,
) -> Result<(), Failure> {
    let name = match command {
        ScheduleCommand::Fire { name }
        | ScheduleCommand::Pause { name }
        | ScheduleCommand::Resume { name } => name,
    };
    admin.refresh().await?;
    if !admin.schedules().iter().any(|view| &view.name == name) {
        return Err(Failure(
            NOT_FOUND,
            format!("no running worker carries schedule {name:?}"),
        ));
    }
    let replies = match command {
        ScheduleCommand::Fire { .. } => match admin.fire_schedule(name).await {
            Ok(reply) => vec![reply],
            Err(error @ qjob::Error::Timeout { .. }) => {
                return Err(Failure(NOT_CARRIED_OUT, error.to_string()));
            }
            Err(error) => return Err(error.into()),
        },
        ScheduleCommand::Pause { .. } => admin.pause_schedule(name).await?,
        ScheduleCommand::Resume { .. } => admin.resume_schedule(name).await?,
    };
    obey(out, name, replies)
}
