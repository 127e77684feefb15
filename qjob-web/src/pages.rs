//! The pages: server-rendered HTML, readable without JavaScript.

use std::fmt::Write;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use qjob::admin::{JobView, LetterFilter, QueueRole, ScheduleView, WorkerState, WorkerView};
use serde::Deserialize;
use std::time::SystemTime;

use crate::chart;
use crate::html::{Table, ago, duration, escape, segment, sparkline};
use crate::{Context, Shared};

/// What a dead-letter page's query may say.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    /// Only this reason.
    #[serde(default)]
    reason: Option<String>,
    /// Only errors containing this.
    #[serde(default)]
    error: Option<String>,
    /// From this letter on, among those that pass the filter.
    #[serde(default)]
    offset: Option<usize>,
    /// One letter: its job id.
    #[serde(default)]
    id: Option<String>,
}

/// Dead letters shown per page.
const PAGE: usize = 50;

/// The dead-letter reasons a filter offers.
const REASONS: [&str; 5] = [
    "permanent",
    "retries-exhausted",
    "malformed",
    "delivery-limit",
    "cancelled",
];

/// Whether the script refreshes a page. Pages with a button per row do
/// not: a row could move under the click.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    Live,
    Still,
}

/// A page: the layout around `content`.
pub(crate) fn page(
    shared: &Shared,
    ctx: &Context,
    title: &str,
    refresh: Refresh,
    content: &str,
) -> Response {
    let base = escape(&shared.base);
    let mut html = String::with_capacity(content.len() + 2048);
    let refresh = match refresh {
        Refresh::Live => format!(r#" data-refresh="{}""#, shared.refresh.as_secs()),
        Refresh::Still => String::new(),
    };
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · qjob</title>
<link rel="stylesheet" href="{base}/assets/console.css"><script src="{base}/assets/console.js" defer></script>
</head><body><header><a class="brand" href="{base}/">qjob</a><nav><a href="{base}/">Overview</a><a href="{base}/running">Running</a><a href="{base}/scheduled">Scheduled</a><a href="{base}/retrying">Retrying</a><a href="{base}/workers">Workers</a><a href="{base}/schedules">Schedules</a><a href="{base}/dead-letters">Dead letters</a></nav><form method="get" action="{base}/find" class="search" role="search"><input name="id" placeholder="Find a job by id" aria-label="Job id" size="28" required><button type="submit">Find</button></form>{mode}</header>
<main{refresh}><h1>{title}</h1>"#,
        title = escape(title),
        mode = if shared.read_only {
            r#"<span class="badge">read-only</span>"#
        } else {
            ""
        },
    );
    if let Some(notice) = ctx.notice.as_deref().filter(|n| !n.is_empty()) {
        let _ = write!(
            html,
            r#"<p class="notice" role="status">{}</p>"#,
            escape(notice)
        );
    }
    html.push_str(content);
    html.push_str("</main></body></html>\n");
    Html(html).into_response()
}

/// A page saying what was not found, with status 404.
fn not_found(shared: &Shared, ctx: &Context, title: &str, html: &str) -> Response {
    let mut response = page(shared, ctx, title, Refresh::Still, html);
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

pub(crate) fn failed(shared: &Shared, ctx: &Context, error: qjob::Error) -> Response {
    let html = format!("<p>{}</p>", escape(&error.to_string()));
    let mut response = page(shared, ctx, "The broker failed", Refresh::Still, &html);
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// A `POST` button with hidden `fields` (none in read-only mode).
pub(crate) fn button(
    shared: &Shared,
    ctx: &Context,
    action: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
) -> String {
    if shared.read_only {
        return String::new();
    }
    let mut hidden = String::new();
    for (name, value) in fields {
        let _ = write!(
            hidden,
            r#"<input type="hidden" name="{}" value="{}">"#,
            escape(name),
            escape(value)
        );
    }
    format!(
        r#"<form method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}">{hidden}<button type="submit" class="{class}">{label}</button></form>"#,
        action = escape(&shared.link(action)),
        csrf = escape(&ctx.token.value),
        label = escape(label),
    )
}

pub(crate) fn job_link(shared: &Shared, job: &str) -> String {
    format!(
        r#"<a href="{}">{}</a>"#,
        escape(&shared.link(&format!("/jobs/{}", segment(job)))),
        escape(job)
    )
}

pub(crate) fn queue_link(shared: &Shared, queue: &str, text: &str) -> String {
    format!(
        r#"<a href="{}">{}</a>"#,
        escape(&shared.link(&format!("/dead-letters/{}", segment(queue)))),
        escape(text)
    )
}

fn state(worker: &WorkerView) -> &'static str {
    match (worker.alive, worker.status.state) {
        (true, state) => state.as_str(),
        (false, WorkerState::Stopped) => "stopped",
        (false, _) => "gone",
    }
}

pub(crate) async fn overview(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
) -> Response {
    let jobs = match shared.admin.jobs().await {
        Ok(jobs) => jobs,
        Err(error) => return failed(&shared, &ctx, error),
    };
    let workers = shared.admin.workers();
    let alive = workers.iter().filter(|w| w.alive).count();
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<section class="cards"><div class="card"><span class="figure">{alive}</span> workers alive</div><div class="card"><span class="figure">{gone}</span> gone</div><div class="card"><span class="figure">{types}</span> job types</div><div class="card"><span class="figure">{dead}</span> dead letters</div></section>"#,
        gone = workers.len() - alive,
        types = jobs.len(),
        dead = jobs.iter().map(JobView::dead_letters).sum::<u64>(),
    );
    let alarms: Vec<String> = workers.iter().filter_map(WorkerView::alarm).collect();
    if !alarms.is_empty() {
        html.push_str(r#"<section class="alarms"><h2>Alarms</h2><ul>"#);
        for alarm in alarms {
            let _ = write!(html, "<li>{}</li>", escape(&alarm));
        }
        html.push_str("</ul></section>");
    }
    html.push_str("<h2>Job types</h2>");
    let mut table = Table::new(&[
        "Job",
        "Ready",
        "Delayed",
        "Dead",
        "Workers",
        "Paused on",
        "Concurrency",
        "In flight",
        "Rate/s",
        "Throughput",
        "Breakers open",
        "Last error",
    ]);
    for job in &jobs {
        let history = shared.sample(&job.job, job.rate);
        table.row(&[
            job_link(&shared, &job.job),
            job.depth().to_string(),
            job.delayed().to_string(),
            queue_link(
                &shared,
                &job.status.dead_letter_queue,
                &job.dead_letters().to_string(),
            ),
            job.workers.to_string(),
            job.paused_on.to_string(),
            job.concurrency.to_string(),
            job.in_flight.to_string(),
            job.rate.map_or("–".to_owned(), |rate| format!("{rate:.1}")),
            sparkline(&history),
            job.breakers_open.to_string(),
            escape(job.last_error.as_deref().unwrap_or("")),
        ]);
    }
    html.push_str(&table.finish("no running worker has reported yet"));
    html.push_str(&chart::overview(&shared.admin.history(None), |job| {
        shared.link(&format!("/jobs/{}", segment(job)))
    }));
    let schedules = shared.admin.schedules();
    if !schedules.is_empty() {
        html.push_str("<h2>Schedules</h2>");
        html.push_str(&schedules_table(&schedules));
    }
    html.push_str("<h2>Workers</h2>");
    html.push_str(&workers_table(&workers));
    if !shared.read_only {
        let _ = write!(
            html,
            r#"<h2>Cancel a job</h2><form method="post" action="{action}" class="row"><input type="hidden" name="csrf" value="{csrf}"><label>Job id <input name="job_id" required size="40"></label><button type="submit" class="danger">Cancel</button></form>"#,
            action = escape(&shared.link("/cancel")),
            csrf = escape(&ctx.token.value),
        );
    }
    page(&shared, &ctx, "Overview", Refresh::Live, &html)
}

fn schedules_table(schedules: &[ScheduleView]) -> String {
    let mut table = Table::new(&[
        "Schedule",
        "Job",
        "Cron",
        "Zone",
        "Leader",
        "Workers",
        "Next tick",
        "Last fired",
        "Problem",
    ]);
    for view in schedules {
        let schedule = &view.schedule;
        let next = schedule.next.map_or("–".to_owned(), |next| {
            let until = next.duration_since(SystemTime::now()).unwrap_or_default();
            format!("in {}", duration(until))
        });
        table.row(&[
            escape(&view.name),
            escape(&schedule.job),
            format!("<code>{}</code>", escape(&schedule.expression)),
            escape(&schedule.zone),
            view.leader
                .as_ref()
                .map_or("none".to_owned(), |(host, pid)| {
                    escape(&format!("{host} (pid {pid})"))
                }),
            view.workers.to_string(),
            next,
            schedule
                .last_fired
                .map_or("–".to_owned(), |at| format!("{} ago", ago(at))),
            schedule.problem.as_deref().map_or("–".to_owned(), escape),
        ]);
    }
    table.finish("no schedule")
}

fn workers_table(workers: &[WorkerView]) -> String {
    let mut table = Table::new(&[
        "Worker",
        "Host",
        "Pid",
        "Version",
        "State",
        "Uptime",
        "Last heartbeat",
        "Jobs",
    ]);
    for worker in workers {
        let status = &worker.status;
        let chars = status.worker_id.chars().count();
        let id: String = status
            .worker_id
            .chars()
            .skip(chars.saturating_sub(8))
            .collect();
        let jobs: Vec<&str> = status.jobs.iter().map(|job| job.job.as_str()).collect();
        table.row(&[
            escape(&id),
            escape(&status.host),
            status.pid.to_string(),
            escape(&status.version),
            format!(r#"<span class="state {0}">{0}</span>"#, state(worker)),
            ago(status.started_at),
            format!("{} ago", duration(worker.silent_for)),
            escape(&jobs.join(", ")),
        ]);
    }
    table.finish("no worker has reported yet")
}

pub(crate) async fn workers(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
) -> Response {
    let workers = shared.admin.workers();
    page(
        &shared,
        &ctx,
        "Workers",
        Refresh::Live,
        &workers_table(&workers),
    )
}

pub(crate) async fn job(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
    Path(name): Path<String>,
) -> Response {
    let jobs = match shared.admin.jobs().await {
        Ok(jobs) => jobs,
        Err(error) => return failed(&shared, &ctx, error),
    };
    let Some(job) = jobs.iter().find(|job| job.status.is_named(&name)) else {
        let html = "<p>No running worker runs this job type.</p>";
        return not_found(&shared, &ctx, &name, html);
    };
    let status = &job.status;
    let mut html = String::new();
    let autoscale = status.autoscale.map_or("off".to_owned(), |range| {
        format!("{}–{}", range.min, range.max)
    });
    let _ = write!(
        html,
        r#"<section class="settings"><dl><dt>Queue</dt><dd>{queue}</dd><dt>Queue type</dt><dd>{kind}</dd><dt>Partitions</dt><dd>{partitions}</dd><dt>Shards</dt><dd>{shards}</dd><dt>Prefetch</dt><dd>{prefetch}</dd><dt>Concurrency</dt><dd>{concurrency} over {workers} worker(s)</dd><dt>Autoscale</dt><dd>{autoscale}</dd><dt>Limits</dt><dd>{limits}</dd><dt>Attempts</dt><dd>{attempts}</dd><dt>Paused on</dt><dd>{paused} of {workers}</dd><dt>Settled</dt><dd>{succeeded} succeeded, {failed} failed, {retried} retried, {dead} dead-lettered</dd></dl></section>"#,
        queue = escape(&status.queue),
        kind = escape(&status.queue_type),
        partitions = status
            .partitions
            .map_or("none".to_owned(), |p| p.to_string()),
        shards = status.shards.unwrap_or(1),
        prefetch = status.prefetch,
        concurrency = job.concurrency,
        workers = job.workers,
        limits = escape(&job.limits_summary().unwrap_or_else(|| "none".to_owned())),
        attempts = status.max_attempts,
        paused = job.paused_on,
        succeeded = job.succeeded,
        failed = job.failed,
        retried = job.retried,
        dead = job.dead_lettered,
    );
    if !shared.read_only {
        let base = format!("/jobs/{}", segment(&job.job));
        html.push_str(r#"<section class="actions">"#);
        html.push_str(&button(
            &shared,
            &ctx,
            &format!("{base}/pause"),
            &[],
            "Pause",
            "danger",
        ));
        html.push_str(&button(
            &shared,
            &ctx,
            &format!("{base}/resume"),
            &[],
            "Resume",
            "",
        ));
        let _ = write!(
            html,
            r#"<form method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><label>Concurrency per worker <input name="concurrency" type="number" min="1" max="100000" required value="{current}"></label><button type="submit">Set</button></form>"#,
            action = escape(&shared.link(&format!("{base}/concurrency"))),
            csrf = escape(&ctx.token.value),
            current = status.concurrency,
        );
        if let Some(global) = job
            .shared_limits
            .as_ref()
            .and_then(|limits| limits.global_concurrency)
        {
            let _ = write!(
                html,
                r#"<form method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><label>Global concurrency <input name="limit" type="number" min="1" max="100000" required value="{global}"></label><button type="submit">Set</button></form>"#,
                action = escape(&shared.link(&format!("{base}/global-concurrency"))),
                csrf = escape(&ctx.token.value),
            );
        }
        html.push_str("</section>");
    }
    if let Some(history) = shared.admin.history(Some(&job.job)).first() {
        html.push_str("<h2>The last hour</h2>");
        html.push_str(&chart::last_hour(history, chart::Size::Large));
    }
    html.push_str("<h2>Queues</h2>");
    let mut table = Table::new(&["Queue", "Role", "Ready", "Consumers"]);
    for queue in &job.queues {
        let (ready, consumers) = match queue.stats {
            Some(stats) => (stats.messages.to_string(), stats.consumers.to_string()),
            None => ("missing".to_owned(), "–".to_owned()),
        };
        let name = match queue.role {
            QueueRole::DeadLetter => queue_link(&shared, &queue.name, &queue.name),
            _ => escape(&queue.name),
        };
        table.row(&[name, queue.role.as_str().to_owned(), ready, consumers]);
    }
    html.push_str(&table.finish("no queue"));
    if let Some(error) = &job.last_error {
        let _ = write!(html, "<h2>Last error</h2><pre>{}</pre>", escape(error));
    }
    page(&shared, &ctx, &job.job, Refresh::Live, &html)
}

pub(crate) async fn dead_letter_queues(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
) -> Response {
    let jobs = match shared.admin.jobs().await {
        Ok(jobs) => jobs,
        Err(error) => return failed(&shared, &ctx, error),
    };
    let mut table = Table::new(&["Dead-letter queue", "Job", "Letters"]);
    for job in &jobs {
        let queue = &job.status.dead_letter_queue;
        table.row(&[
            queue_link(&shared, queue, queue),
            job_link(&shared, &job.job),
            job.dead_letters().to_string(),
        ]);
    }
    let html = table.finish("no running worker has reported yet");
    page(&shared, &ctx, "Dead letters", Refresh::Live, &html)
}

/// The filter a dead-letter page's query asks for, with its reason and
/// error text (empty for none); an unknown reason is none.
fn filter(params: &Params) -> (LetterFilter, String, String) {
    let reason = params
        .reason
        .clone()
        .filter(|reason| REASONS.contains(&reason.as_str()))
        .unwrap_or_default();
    let error = params.error.clone().unwrap_or_default();
    let mut filter = LetterFilter::all();
    if !reason.is_empty() {
        filter = filter.reason(reason.as_str());
    }
    if !error.is_empty() {
        filter = filter.error_contains(error.as_str());
    }
    (filter, reason, error)
}

pub(crate) async fn dead_letters(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
    Path(queue): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    if !shared.is_dead_letter_queue(&queue) {
        let html = "<p>Not the dead-letter queue of a job type a running worker reports.</p>";
        return not_found(&shared, &ctx, &queue, html);
    }
    if params.id.is_some() {
        return dead_letter(&shared, &ctx, &queue, &params).await;
    }
    let total = match shared.admin.queue(&queue).await {
        Ok(stats) => stats.map_or(0, |stats| stats.messages),
        Err(error) => return failed(&shared, &ctx, error),
    };
    let offset = params.offset.unwrap_or(0);
    let (filter, reason, error_text) = filter(&params);
    let letters = match shared
        .admin
        .dead_letters(&queue, &filter, offset, PAGE)
        .await
    {
        Ok(letters) => letters,
        Err(error) => return failed(&shared, &ctx, error),
    };
    let path = format!("/dead-letters/{}", segment(&queue));
    let mut html = String::new();
    let options: String = [""]
        .iter()
        .chain(REASONS.iter())
        .map(|option| {
            format!(
                r#"<option value="{option}"{selected}>{label}</option>"#,
                selected = if *option == reason { " selected" } else { "" },
                label = if option.is_empty() { "any" } else { option },
            )
        })
        .collect();
    let _ = write!(
        html,
        r#"<p>{total} letter(s) in the queue, read in place (at most the first {most}).</p>
<form method="get" action="{action}" class="row"><label>Reason <select name="reason">{options}</select></label><label>Error contains <input name="error" value="{error}"></label><button type="submit">Filter</button></form>"#,
        most = qjob::admin::BROWSE_AT_MOST,
        action = escape(&shared.link(&path)),
        error = escape(&error_text),
    );
    if !letters.is_empty() {
        let which = match (reason.as_str(), error_text.as_str()) {
            ("", "") => "Replay every letter".to_owned(),
            (reason, "") => format!("Replay every letter with reason {reason}"),
            ("", error) => format!("Replay every letter whose error contains “{error}”"),
            (reason, error) => {
                format!("Replay every letter with reason {reason} whose error contains “{error}”")
            }
        };
        let fields = [("reason", reason.as_str()), ("error", error_text.as_str())];
        html.push_str(&button(
            &shared,
            &ctx,
            &format!("{path}/replay"),
            &fields,
            &which,
            "",
        ));
    }
    let mut table = Table::new(&["Job id", "Reason", "Attempts", "Failed", "Error", ""]);
    for letter in &letters {
        let id = letter.job_id.as_ref().map(ToString::to_string);
        let (link, actions) = match &id {
            Some(id) => {
                let query = format!("{path}?id={}", segment(id));
                let fields = [("job_id", id.as_str())];
                (
                    format!(
                        r#"<a href="{}">{}</a>"#,
                        escape(&shared.link(&query)),
                        escape(id)
                    ),
                    format!(
                        "{}{}",
                        button(
                            &shared,
                            &ctx,
                            &format!("{path}/replay-one"),
                            &fields,
                            "Replay",
                            ""
                        ),
                        button(
                            &shared,
                            &ctx,
                            &format!("{path}/discard-one"),
                            &fields,
                            "Discard",
                            "danger"
                        ),
                    ),
                )
            }
            None => (
                r#"<span class="muted">no id</span>"#.to_owned(),
                String::new(),
            ),
        };
        table.row(&[
            link,
            escape(letter.reason.as_str()),
            letter.attempts.to_string(),
            letter
                .failed_at
                .map_or("–".to_owned(), |at| format!("{} ago", ago(at))),
            escape(&letter.error),
            actions,
        ]);
    }
    html.push_str(&table.finish("no dead letter here"));
    let more = |offset: usize, label: &str| {
        let href = format!(
            "{}?offset={offset}&reason={}&error={}",
            shared.link(&path),
            segment(&reason),
            segment(&error_text)
        );
        format!(r#"<a href="{}">{label}</a>"#, escape(&href))
    };
    html.push_str(r#"<nav class="pages">"#);
    if offset > 0 {
        html.push_str(&more(offset.saturating_sub(PAGE), "← newer"));
    }
    if letters.len() == PAGE {
        html.push_str(&more(offset + PAGE, "older →"));
    }
    html.push_str("</nav>");
    page(&shared, &ctx, &queue, Refresh::Still, &html)
}

/// One dead letter: its error, payload and headers.
async fn dead_letter(shared: &Shared, ctx: &Context, queue: &str, params: &Params) -> Response {
    let job_id = params.id.clone().unwrap_or_default();
    let letter = match shared.admin.dead_letter(queue, &job_id).await {
        Ok(letter) => letter,
        Err(error) => return failed(shared, ctx, error),
    };
    let Some(letter) = letter else {
        let html = format!(
            "<p>No dead letter of job {} in {} (among its first {} letters).</p>",
            escape(&job_id),
            escape(queue),
            qjob::admin::BROWSE_AT_MOST
        );
        return not_found(shared, ctx, &job_id, &html);
    };
    let path = format!("/dead-letters/{}", segment(queue));
    let payload = match &letter.payload {
        Some(payload) => serde_json::to_string_pretty(payload).unwrap_or_default(),
        None => String::from_utf8_lossy(&letter.body).into_owned(),
    };
    let when = |at: Option<std::time::SystemTime>| {
        at.map_or("–".to_owned(), |at| format!("{} ago", ago(at)))
    };
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<section class="settings"><dl><dt>Queue</dt><dd>{queue}</dd><dt>Reason</dt><dd>{reason}</dd><dt>Error</dt><dd>{error}</dd><dt>Attempts</dt><dd>{attempts}</dd><dt>First failed</dt><dd>{first}</dd><dt>Last failed</dt><dd>{last}</dd><dt>Host</dt><dd>{host}</dd></dl></section>"#,
        queue = queue_link(shared, queue, queue),
        reason = escape(letter.reason.as_str()),
        error = escape(&letter.error),
        attempts = letter.attempts,
        first = when(letter.first_failed_at),
        last = when(letter.failed_at),
        host = escape(letter.host.as_deref().unwrap_or("–")),
    );
    let fields = [("job_id", job_id.as_str())];
    html.push_str(r#"<section class="actions">"#);
    html.push_str(&button(
        shared,
        ctx,
        &format!("{path}/replay-one"),
        &fields,
        "Replay",
        "",
    ));
    html.push_str(&button(
        shared,
        ctx,
        &format!("{path}/discard-one"),
        &fields,
        "Discard",
        "danger",
    ));
    html.push_str("</section>");
    let _ = write!(
        html,
        "<h2>Payload</h2><pre>{}</pre><h2>Headers</h2>",
        escape(&payload)
    );
    let mut table = Table::new(&["Header", "Value"]);
    for (name, value) in &letter.headers {
        table.row(&[escape(name), escape(&value.to_string())]);
    }
    html.push_str(&table.finish("no header"));
    page(shared, ctx, &job_id, Refresh::Still, &html)
}
