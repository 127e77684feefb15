//! `status`, `workers` and `queues`: what the workers' heartbeats and the
//! broker say, as tables or JSON.

use qjob::admin::{JobView, ScheduleView, WorkerState, WorkerView};
use serde_json::{Value, json};

use crate::out::{Out, millis, short_id};
use crate::table::{Table, ago, short, until};

pub(crate) fn status(
    out: &Out,
    wait: std::time::Duration,
    workers: &[WorkerView],
    jobs: &[JobView],
    schedules: &[ScheduleView],
) {
    let alive = workers.iter().filter(|w| w.alive).count();
    let gone = workers.len() - alive;
    let alarms: Vec<String> = workers.iter().filter_map(WorkerView::alarm).collect();
    if out.json {
        out.print_json(&json!({
            "workers": { "alive": alive, "gone": gone },
            "alarms": alarms,
            "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
            "schedules": schedules.iter().map(|s| json!({
                "name": s.name,
                "job": s.schedule.job,
                "cron": s.schedule.expression,
                "zone": s.schedule.zone,
                "leader": s.leader.as_ref().map(|(host, pid)| json!({ "host": host, "pid": pid })),
                "workers": s.workers,
                "next_ms": s.schedule.next.map(millis),
                "last_fired_ms": s.schedule.last_fired.map(millis),
                "problem": s.schedule.problem,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    say!("workers: {alive} alive, {gone} gone");
    if workers.is_empty() {
        // An empty table alone reads as "nothing to see".
        say!(
            "no worker was heard within {} ms (--wait): none runs, or none uses this broker \
             and virtual host. Queues need no worker: `qjob dlq list <queue>` reads a job's \
             dead letters by its queue's name.",
            wait.as_millis()
        );
    }
    for alarm in &alarms {
        say!("alarm: {alarm}");
    }
    let mut table = Table::new([
        "JOB",
        "QUEUE",
        "READY",
        "DELAYED",
        "DEAD",
        "WORKERS",
        "PAUSED",
        "CONCURRENCY",
        "IN FLIGHT",
        "RATE/S",
        "BREAKERS OPEN",
        "LIMITS",
        "LAST ERROR",
    ]);
    for job in jobs {
        table.row([
            job.job.clone(),
            job.status.queue.clone(),
            job.depth().to_string(),
            job.delayed().to_string(),
            job.dead_letters().to_string(),
            job.workers.to_string(),
            job.paused_on.to_string(),
            job.concurrency.to_string(),
            job.in_flight.to_string(),
            job.rate.map_or("-".to_owned(), |rate| format!("{rate:.1}")),
            job.breakers_open.to_string(),
            limits_text(job),
            short(job.last_error.as_deref().unwrap_or("-"), 60),
        ]);
    }
    table.print();
    for job in jobs {
        if let Some(problem) = job.shared_limits.as_ref().and_then(|l| l.problem.as_ref()) {
            say!("problem: {}: {problem}", job.job);
        }
    }
    if schedules.is_empty() {
        return;
    }
    say!("");
    let mut table = Table::new([
        "SCHEDULE",
        "JOB",
        "CRON",
        "ZONE",
        "LEADER",
        "WORKERS",
        "NEXT",
        "LAST FIRED",
    ]);
    for s in schedules {
        table.row([
            s.name.clone(),
            s.schedule.job.clone(),
            s.schedule.expression.clone(),
            s.schedule.zone.clone(),
            s.leader.as_ref().map_or("none".to_owned(), |(host, pid)| {
                format!("{host} (pid {pid})")
            }),
            s.workers.to_string(),
            s.schedule
                .next
                .map_or("-".to_owned(), |next| format!("in {}", until(next))),
            s.schedule
                .last_fired
                .map_or("-".to_owned(), |at| format!("{} ago", ago(at))),
        ]);
    }
    table.print();
    for s in schedules {
        if let Some(problem) = &s.schedule.problem {
            say!("problem: schedule {}: {problem}", s.name);
        }
    }
}

/// A job's class and limits beyond one worker, in a cell.
fn limits_text(job: &JobView) -> String {
    job.limits_summary().unwrap_or_else(|| "-".to_owned())
}

fn job_json(job: &JobView) -> Value {
    json!({
        "job": job.job,
        "queue": job.status.queue,
        "ready": job.depth(),
        "delayed": job.delayed(),
        "dead_letters": job.dead_letters(),
        "workers": job.workers,
        "paused_on": job.paused_on,
        "concurrency": job.concurrency,
        "in_flight": job.in_flight,
        "succeeded": job.succeeded,
        "failed": job.failed,
        "retried": job.retried,
        "dead_lettered": job.dead_lettered,
        "rate": job.rate,
        "breakers_open": job.breakers_open,
        "class": job.status.class,
        "shared_limits": job.shared_limits.as_ref().map(|limits| json!({
            "global_concurrency": limits.global_concurrency,
            "resource": limits.resource.as_ref().map(|(name, size)| json!({ "name": name, "size": size })),
            "global_rate": limits.global_rate,
            "key_rate": limits.key_rate,
            "started_per_second": limits.started_per_second,
            "holders": limits.holders.iter().map(|h| json!({
                "resource": h.resource,
                "holder": h.holder,
                "left_ms": h.left_ms,
            })).collect::<Vec<_>>(),
            "problem": limits.problem,
        })),
        "last_error": job.last_error,
        "queues": job.queues.iter().map(|queue| json!({
            "name": queue.name,
            "role": queue.role.as_str(),
            "exists": queue.stats.is_some(),
            "ready": queue.stats.map(|s| s.messages),
            "consumers": queue.stats.map(|s| s.consumers),
        })).collect::<Vec<_>>(),
    })
}

fn state(worker: &WorkerView) -> &'static str {
    match (worker.alive, worker.status.state) {
        (true, state) => state.as_str(),
        (false, WorkerState::Stopped) => "stopped",
        (false, _) => "gone",
    }
}

pub(crate) fn workers(out: &Out, workers: &[WorkerView]) {
    if out.json {
        let workers: Vec<Value> = workers
            .iter()
            .map(|w| {
                json!({
                    "worker_id": w.status.worker_id,
                    "host": w.status.host,
                    "pid": w.status.pid,
                    "version": w.status.version,
                    "state": state(w),
                    "alive": w.alive,
                    "started_at_ms": millis(w.status.started_at),
                    "last_heartbeat_ms": millis(w.status.sent_at),
                    "connected": w.status.connected,
                    "blocked": w.status.blocked,
                    "jobs": w.status.jobs.iter().map(|j| j.job.clone()).collect::<Vec<_>>(),
                    "budget": w.status.budget.map(|b| json!({ "max": b.max, "in_use": b.in_use })),
                })
            })
            .collect();
        out.print_json(&json!({ "workers": workers }));
        return;
    }
    let mut table = Table::new([
        "WORKER",
        "HOST",
        "PID",
        "VERSION",
        "STATE",
        "UP",
        "LAST HEARTBEAT",
        "HANDLERS",
        "JOBS",
    ]);
    for w in workers {
        let jobs: Vec<&str> = w.status.jobs.iter().map(|j| j.job.as_str()).collect();
        table.row([
            short_id(&w.status.worker_id),
            w.status.host.clone(),
            w.status.pid.to_string(),
            w.status.version.clone(),
            state(w).to_owned(),
            ago(w.status.started_at),
            format!("{} ago", ago(w.status.sent_at)),
            w.status
                .budget
                .map_or("-".to_owned(), |b| format!("{}/{}", b.in_use, b.max)),
            jobs.join(","),
        ]);
    }
    table.print();
}

pub(crate) fn queues(out: &Out, jobs: &[JobView]) {
    if out.json {
        out.print_json(&json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() }));
        return;
    }
    let mut table = Table::new(["QUEUE", "JOB", "ROLE", "READY", "CONSUMERS"]);
    for job in jobs {
        for queue in &job.queues {
            let (ready, consumers) = match queue.stats {
                Some(stats) => (stats.messages.to_string(), stats.consumers.to_string()),
                None => ("missing".to_owned(), "-".to_owned()),
            };
            table.row([
                queue.name.clone(),
                job.job.clone(),
                queue.role.as_str().to_owned(),
                ready,
                consumers,
            ]);
        }
    }
    table.print();
}
