//! The pages: server-rendered HTML, readable without JavaScript.

use std::fmt::Write;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use qjob::admin::{JobView, Letter, LetterFilter, QueueRole, WorkerState, WorkerView};
use serde::Deserialize;

use crate::Shared;
use crate::csrf::Token;
use crate::html::{Table, ago, duration, escape, segment, sparkline};

/// What a page's query may say.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    /// What the last action did.
    #[serde(default)]
    notice: Option<String>,
    /// Dead letters: only this reason.
    #[serde(default)]
    reason: Option<String>,
    /// Dead letters: only errors containing this.
    #[serde(default)]
    error: Option<String>,
    /// Dead letters: from this position in the queue.
    #[serde(default)]
    offset: Option<usize>,
}

/// Dead letters shown per page.
const PAGE: usize = 50;

/// A page: the layout around `content`.
fn page(shared: &Shared, title: &str, notice: Option<&str>, content: &str) -> Response {
    let base = &shared.base;
    let mut html = String::with_capacity(content.len() + 2048);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · qjob</title>
<link rel="stylesheet" href="{base}/assets/console.css"><script src="{base}/assets/console.js" defer></script>
</head><body><header><a class="brand" href="{base}/">qjob</a><nav><a href="{base}/">Overview</a><a href="{base}/workers">Workers</a><a href="{base}/dead-letters">Dead letters</a></nav>{mode}</header>
<main data-refresh="{refresh}"><h1>{title}</h1>"#,
        title = escape(title),
        mode = if shared.read_only {
            r#"<span class="badge">read-only</span>"#
        } else {
            ""
        },
        refresh = shared.refresh.as_secs(),
    );
    if let Some(notice) = notice.filter(|n| !n.is_empty()) {
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
fn not_found(shared: &Shared, title: &str, notice: Option<&str>, html: &str) -> Response {
    let mut response = page(shared, title, notice, html);
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

fn failed(shared: &Shared, error: qjob::Error) -> Response {
    let mut response = page(
        shared,
        "The broker failed",
        None,
        &format!("<p>{}</p>", escape(&error.to_string())),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// A `POST` button (none in read-only mode).
fn button(shared: &Shared, token: &Token, action: &str, label: &str, class: &str) -> String {
    if shared.read_only {
        return String::new();
    }
    format!(
        r#"<form method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="{class}">{label}</button></form>"#,
        action = escape(&shared.link(action)),
        csrf = escape(&token.value),
        label = escape(label),
    )
}

fn job_link(shared: &Shared, job: &str) -> String {
    format!(
        r#"<a href="{}">{}</a>"#,
        escape(&shared.link(&format!("/jobs/{}", segment(job)))),
        escape(job)
    )
}

fn queue_link(shared: &Shared, queue: &str, count: u64) -> String {
    format!(
        r#"<a href="{}">{count}</a>"#,
        escape(&shared.link(&format!("/dead-letters/{}", segment(queue))))
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
    Extension(token): Extension<Token>,
    Query(params): Query<Params>,
) -> Response {
    let jobs = match shared.admin.jobs().await {
        Ok(jobs) => jobs,
        Err(error) => return failed(&shared, error),
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
    let alarms: Vec<String> = workers
        .iter()
        .filter(|w| w.alive)
        .filter_map(|w| {
            let blocked = w.status.blocked.as_ref().map(|b| format!("blocked: {b}"));
            let down = (!w.status.connected).then(|| "disconnected".to_owned());
            let what = blocked.or(down)?;
            Some(format!("{} (pid {}): {what}", w.status.host, w.status.pid))
        })
        .collect();
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
            queue_link(&shared, &job.status.dead_letter_queue, job.dead_letters()),
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
    html.push_str("<h2>Workers</h2>");
    html.push_str(&workers_table(&workers));
    if !shared.read_only {
        let _ = write!(
            html,
            r#"<h2>Cancel a job</h2><form method="post" action="{action}" class="row"><input type="hidden" name="csrf" value="{csrf}"><label>Job id <input name="job_id" required size="40"></label><button type="submit" class="danger">Cancel</button></form>"#,
            action = escape(&shared.link("/cancel")),
            csrf = escape(&token.value),
        );
    }
    page(&shared, "Overview", params.notice.as_deref(), &html)
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
        let id: String = status
            .worker_id
            .chars()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
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
    Query(params): Query<Params>,
) -> Response {
    let workers = shared.admin.workers();
    page(
        &shared,
        "Workers",
        params.notice.as_deref(),
        &workers_table(&workers),
    )
}

pub(crate) async fn job(
    State(shared): State<Arc<Shared>>,
    Extension(token): Extension<Token>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let jobs = match shared.admin.jobs().await {
        Ok(jobs) => jobs,
        Err(error) => return failed(&shared, error),
    };
    let Some(job) = jobs
        .iter()
        .find(|job| job.job == name || job.status.queue == name)
    else {
        return not_found(
            &shared,
            &name,
            params.notice.as_deref(),
            "<p>No running worker runs this job type.</p>",
        );
    };
    let status = &job.status;
    let mut html = String::new();
    let autoscale = status.autoscale.map_or("off".to_owned(), |range| {
        format!("{}–{}", range.min, range.max)
    });
    let _ = write!(
        html,
        r#"<section class="settings"><dl><dt>Queue</dt><dd>{queue}</dd><dt>Queue type</dt><dd>{kind}</dd><dt>Partitions</dt><dd>{partitions}</dd><dt>Prefetch</dt><dd>{prefetch}</dd><dt>Concurrency</dt><dd>{concurrency} over {workers} worker(s)</dd><dt>Autoscale</dt><dd>{autoscale}</dd><dt>Attempts</dt><dd>{attempts}</dd><dt>Paused on</dt><dd>{paused} of {workers}</dd><dt>Settled</dt><dd>{succeeded} succeeded, {failed} failed, {retried} retried, {dead} dead-lettered</dd></dl></section>"#,
        queue = escape(&status.queue),
        kind = escape(&status.queue_type),
        partitions = status
            .partitions
            .map_or("none".to_owned(), |p| p.to_string()),
        prefetch = status.prefetch,
        concurrency = job.concurrency,
        workers = job.workers,
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
            &token,
            &format!("{base}/pause"),
            "Pause",
            "danger",
        ));
        html.push_str(&button(
            &shared,
            &token,
            &format!("{base}/resume"),
            "Resume",
            "",
        ));
        let _ = write!(
            html,
            r#"<form method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><label>Concurrency per worker <input name="concurrency" type="number" min="1" max="100000" required value="{current}"></label><button type="submit">Set</button></form>"#,
            action = escape(&shared.link(&format!("{base}/concurrency"))),
            csrf = escape(&token.value),
            current = status.concurrency,
        );
        html.push_str("</section>");
    }
    html.push_str("<h2>Queues</h2>");
    let mut table = Table::new(&["Queue", "Role", "Ready", "Consumers"]);
    for queue in &job.queues {
        let role = match queue.role {
            QueueRole::Work => "work",
            QueueRole::DeadLetter => "dead letters",
            QueueRole::Delay => "delay",
            _ => "other",
        };
        let (ready, consumers) = match queue.stats {
            Some(stats) => (stats.messages.to_string(), stats.consumers.to_string()),
            None => ("missing".to_owned(), "–".to_owned()),
        };
        let name = if matches!(queue.role, QueueRole::DeadLetter | QueueRole::Delay) {
            format!(
                r#"<a href="{}">{}</a>"#,
                escape(&shared.link(&format!("/dead-letters/{}", segment(&queue.name)))),
                escape(&queue.name)
            )
        } else {
            escape(&queue.name)
        };
        table.row(&[name, role.to_owned(), ready, consumers]);
    }
    html.push_str(&table.finish("no queue"));
    if let Some(error) = &job.last_error {
        let _ = write!(html, "<h2>Last error</h2><pre>{}</pre>", escape(error));
    }
    page(&shared, &job.job, params.notice.as_deref(), &html)
}

pub(crate) async fn dead_letter_queues(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<Params>,
) -> Response {
    let jobs = match shared.admin.jobs().await {
        Ok(jobs) => jobs,
        Err(error) => return failed(&shared, error),
    };
    let mut table = Table::new(&["Dead-letter queue", "Job", "Letters"]);
    for job in &jobs {
        table.row(&[
            format!(
                r#"<a href="{}">{}</a>"#,
                escape(&shared.link(&format!(
                    "/dead-letters/{}",
                    segment(&job.status.dead_letter_queue)
                ))),
                escape(&job.status.dead_letter_queue)
            ),
            job_link(&shared, &job.job),
            job.dead_letters().to_string(),
        ]);
    }
    let html = table.finish("no running worker has reported yet");
    page(&shared, "Dead letters", params.notice.as_deref(), &html)
}

pub(crate) async fn dead_letters(
    State(shared): State<Arc<Shared>>,
    Extension(token): Extension<Token>,
    Path(queue): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let stats = match shared.admin.queue(&queue).await {
        Ok(stats) => stats,
        Err(error) => return failed(&shared, error),
    };
    let Some(stats) = stats else {
        return not_found(
            &shared,
            &queue,
            params.notice.as_deref(),
            "<p>No such queue.</p>",
        );
    };
    let offset = params.offset.unwrap_or(0);
    let letters = match shared.admin.dead_letters(&queue, offset, PAGE).await {
        Ok(letters) => letters,
        Err(error) => return failed(&shared, error),
    };
    let reason = params.reason.clone().unwrap_or_default();
    let error_text = params.error.clone().unwrap_or_default();
    let mut filter = LetterFilter::all();
    if !reason.is_empty() {
        filter = filter.reason(reason.as_str());
    }
    if !error_text.is_empty() {
        filter = filter.error_contains(error_text.as_str());
    }
    let shown: Vec<&Letter> = letters.iter().filter(|l| filter.matches(l)).collect();
    let path = format!("/dead-letters/{}", segment(&queue));
    // Another queue of a job (a delay queue) shows what waits there, with
    // no action.
    let actions = !shared.read_only && queue.ends_with(".dlq");
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<p>{total} message(s) in the queue; {from}–{to} read in place, {shown} match.</p>
<form method="get" action="{action}" class="row"><label>Reason <select name="reason">{options}</select></label><label>Error contains <input name="error" value="{error}"></label><button type="submit">Filter</button></form>"#,
        total = stats.messages,
        from = offset + usize::from(!letters.is_empty()),
        to = offset + letters.len(),
        shown = shown.len(),
        action = escape(&shared.link(&path)),
        options = [
            "",
            "permanent",
            "retries-exhausted",
            "malformed",
            "delivery-limit",
            "cancelled"
        ]
        .iter()
        .map(|option| format!(
            r#"<option value="{0}"{1}>{2}</option>"#,
            option,
            if *option == reason { " selected" } else { "" },
            if option.is_empty() { "any" } else { option }
        ))
        .collect::<String>(),
        error = escape(&error_text),
    );
    if actions {
        let _ = write!(
            html,
            r#"<form method="post" action="{action}" class="row"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="reason" value="{reason}"><input type="hidden" name="error" value="{error}"><button type="submit">Replay every letter that matches</button></form>"#,
            action = escape(&shared.link(&format!("{path}/replay"))),
            csrf = escape(&token.value),
            reason = escape(&reason),
            error = escape(&error_text),
        );
    }
    let mut table = Table::new(&["Job id", "Reason", "Attempts", "Failed", "Error", ""]);
    for letter in shown {
        let id = letter
            .job_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let letter_path = format!("{path}/{}", segment(&id));
        table.row(&[
            format!(
                r#"<a href="{}">{}</a>"#,
                escape(&shared.link(&letter_path)),
                escape(&id)
            ),
            escape(letter.reason.as_str()),
            letter.attempts.to_string(),
            letter
                .failed_at
                .map_or("–".to_owned(), |at| format!("{} ago", ago(at))),
            escape(&letter.error),
            if actions {
                let replay = button(
                    &shared,
                    &token,
                    &format!("{letter_path}/replay"),
                    "Replay",
                    "",
                );
                let discard = button(
                    &shared,
                    &token,
                    &format!("{letter_path}/discard"),
                    "Discard",
                    "danger",
                );
                format!("{replay}{discard}")
            } else {
                String::new()
            },
        ]);
    }
    html.push_str(&table.finish("no dead letter here"));
    let query = |offset: usize| {
        format!(
            "{}?offset={offset}&reason={}&error={}",
            shared.link(&path),
            segment(&reason),
            segment(&error_text)
        )
    };
    html.push_str(r#"<nav class="pages">"#);
    if offset > 0 {
        let _ = write!(
            html,
            r#"<a href="{}">← newer</a>"#,
            escape(&query(offset.saturating_sub(PAGE)))
        );
    }
    if offset + letters.len() < stats.messages as usize {
        let _ = write!(
            html,
            r#"<a href="{}">older →</a>"#,
            escape(&query(offset + PAGE))
        );
    }
    html.push_str("</nav>");
    page(&shared, &queue, params.notice.as_deref(), &html)
}

pub(crate) async fn dead_letter(
    State(shared): State<Arc<Shared>>,
    Extension(token): Extension<Token>,
    Path((queue, job_id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Response {
    let letter = match shared.admin.dead_letter(&queue, &job_id).await {
        Ok(letter) => letter,
        Err(error) => return failed(&shared, error),
    };
    let Some(letter) = letter else {
        let html = format!(
            "<p>No dead letter of job {} in {}.</p>",
            escape(&job_id),
            escape(&queue)
        );
        return not_found(&shared, &job_id, params.notice.as_deref(), &html);
    };
    let path = format!("/dead-letters/{}/{}", segment(&queue), segment(&job_id));
    let payload = match &letter.payload {
        Some(payload) => serde_json::to_string_pretty(payload).unwrap_or_default(),
        None => String::from_utf8_lossy(&letter.body).into_owned(),
    };
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<section class="settings"><dl><dt>Queue</dt><dd>{queue}</dd><dt>Reason</dt><dd>{reason}</dd><dt>Error</dt><dd>{error}</dd><dt>Attempts</dt><dd>{attempts}</dd><dt>First failed</dt><dd>{first}</dd><dt>Last failed</dt><dd>{last}</dd><dt>Host</dt><dd>{host}</dd></dl></section>"#,
        queue = escape(&queue),
        reason = escape(letter.reason.as_str()),
        error = escape(&letter.error),
        attempts = letter.attempts,
        first = letter
            .first_failed_at
            .map_or("–".to_owned(), |at| format!("{} ago", ago(at))),
        last = letter
            .failed_at
            .map_or("–".to_owned(), |at| format!("{} ago", ago(at))),
        host = escape(letter.host.as_deref().unwrap_or("–")),
    );
    html.push_str(r#"<section class="actions">"#);
    html.push_str(&button(
        &shared,
        &token,
        &format!("{path}/replay"),
        "Replay",
        "",
    ));
    html.push_str(&button(
        &shared,
        &token,
        &format!("{path}/discard"),
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
    page(&shared, &job_id, params.notice.as_deref(), &html)
}
