//! The live pages: the jobs running now, the jobs waiting (scheduled, and
//! retrying in delay queues or held in workers), and a job found by id,
//! each with the actions that apply where it is.

use std::fmt::Write;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use qjob::admin::{ACTIVITY_AT_MOST, DelayedJob, HeldView, Waiting, Whereabouts, browsable};
use serde::Deserialize;

use crate::html::{Table, ago, duration, escape};
use crate::pages::{Refresh, button, failed, job_link, page, queue_link};
use crate::{Context, Shared};

/// What a live page's query may say.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    /// Only this job type (its name or queue).
    #[serde(default)]
    job: Option<String>,
    /// From this job on.
    #[serde(default)]
    offset: Option<usize>,
}

/// Jobs shown per page of waiting jobs.
const PAGE: usize = 100;

/// A worker as its host, pid and short id.
fn worker((id, host, pid): &(String, String, u32)) -> String {
    let chars = id.chars().count();
    let short: String = id.chars().skip(chars.saturating_sub(8)).collect();
    escape(&format!("{host}/{pid} ({short})"))
}

/// The job filter in use, if any, with a link to all.
fn filtered(shared: &Shared, path: &str, job: Option<&str>) -> String {
    job.map_or_else(String::new, |job| {
        format!(
            r#"<p class="muted">Job type {} only · <a href="{}">all</a></p>"#,
            escape(job),
            escape(&shared.link(path))
        )
    })
}

pub(crate) async fn running(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
    Query(params): Query<Params>,
) -> Response {
    let job = params.job.as_deref().filter(|job| !job.is_empty());
    let listed = shared.admin.running(job);
    let mut html = filtered(&shared, "/running", job);
    let mut table = Table::new(&["Job", "Id", "Attempt", "Running for", "Key", "Worker", ""]);
    for view in &listed.items {
        let running = &view.running;
        table.row(&[
            job_link(&shared, &running.job),
            format!("<code>{}</code>", escape(&running.job_id)),
            running.attempt.to_string(),
            duration(view.running_for),
            running.key.as_deref().map_or("–".to_owned(), escape),
            worker(&view.worker),
            button(
                &shared,
                &ctx,
                "/running/cancel",
                &[("job_id", &running.job_id)],
                "Cancel",
                "danger",
            ),
        ]);
    }
    html.push_str(&table.finish("nothing runs now"));
    if !listed.complete {
        let _ = write!(
            html,
            r#"<p class="muted">Each worker lists its {ACTIVITY_AT_MOST} longest-running; {} run in all.</p>"#,
            listed.total
        );
    }
    page(&shared, &ctx, "Running now", Refresh::Still, &html)
}

pub(crate) async fn scheduled(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
    Query(params): Query<Params>,
) -> Response {
    waiting(&shared, &ctx, &params, Waiting::Scheduled).await
}

pub(crate) async fn retrying(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
    Query(params): Query<Params>,
) -> Response {
    waiting(&shared, &ctx, &params, Waiting::Retrying).await
}

async fn waiting(shared: &Shared, ctx: &Context, params: &Params, which: Waiting) -> Response {
    let (title, path) = match which {
        Waiting::Retrying => ("Retrying", "/retrying"),
        _ => ("Scheduled", "/scheduled"),
    };
    let job = params.job.as_deref().filter(|job| !job.is_empty());
    let offset = params.offset.unwrap_or(0);
    let delayed = match shared.admin.delayed(job, which, offset, PAGE + 1).await {
        Ok(delayed) => delayed,
        Err(error) => return failed(shared, ctx, error),
    };
    let mut html = filtered(shared, path, job);
    let back = &path[1..];
    let mut table = Table::new(&["Job", "Id", "Attempt", "Due", "Waits in", "Error", ""]);
    for delayed in delayed.iter().take(PAGE) {
        table.row(&delayed_row(shared, ctx, delayed, back));
    }
    if which == Waiting::Retrying && offset == 0 {
        let held = shared.admin.held(job);
        for view in &held.items {
            table.row(&held_row(shared, ctx, view, back));
        }
        if !held.complete {
            let _ = write!(
                html,
                r#"<p class="muted">Each worker lists its {ACTIVITY_AT_MOST} soonest due of the jobs it holds; {} held in all.</p>"#,
                held.total
            );
        }
    }
    html.push_str(&table.finish(match which {
        Waiting::Retrying => "no retry waits",
        _ => "no job is scheduled",
    }));
    if let Ok(jobs) = shared.admin.jobs().await {
        for view in jobs {
            let named = job.is_none_or(|job| view.status.is_named(job));
            if named && !browsable(&view) && view.delayed() > 0 {
                let _ = write!(
                    html,
                    r#"<p class="muted">{} wait in the delay queues of {}, a quorum job type: counted, never read (a look would count as a delivery).</p>"#,
                    view.delayed(),
                    escape(&view.job)
                );
            }
        }
    }
    html.push_str(r#"<div class="pages">"#);
    let query = |offset: usize| {
        let mut query = format!("{path}?offset={offset}");
        if let Some(job) = job {
            query.push_str(&format!("&job={}", crate::html::segment(job)));
        }
        escape(&shared.link(&query))
    };
    if offset > 0 {
        let _ = write!(
            html,
            r#"<a href="{}">← earlier</a>"#,
            query(offset.saturating_sub(PAGE))
        );
    }
    if delayed.len() > PAGE {
        let _ = write!(html, r#"<a href="{}">later →</a>"#, query(offset + PAGE));
    }
    html.push_str("</div>");
    page(shared, ctx, title, Refresh::Still, &html)
}

/// The buttons for a waiting job: run now, discard; back to `back`.
fn waiting_actions(shared: &Shared, ctx: &Context, job_id: &str, back: &str) -> String {
    let fields = [("job_id", job_id), ("back", back)];
    format!(
        "{}{}",
        button(shared, ctx, "/waiting/run-now", &fields, "Run now", ""),
        button(
            shared,
            ctx,
            "/waiting/discard",
            &fields,
            "Discard",
            "danger"
        ),
    )
}

fn due(delayed: &DelayedJob) -> String {
    delayed.due_at.map_or("?".to_owned(), |at| {
        match at.duration_since(std::time::SystemTime::now()) {
            Ok(left) => format!("in {}", duration(left)),
            Err(_) => "due".to_owned(),
        }
    })
}

fn delayed_row(shared: &Shared, ctx: &Context, delayed: &DelayedJob, back: &str) -> Vec<String> {
    let id = delayed.job_id.as_deref().unwrap_or("");
    vec![
        job_link(shared, &delayed.job),
        format!("<code>{}</code>", escape(id)),
        delayed.attempt.to_string(),
        due(delayed),
        escape(&delayed.queue),
        delayed.error.as_deref().map_or("–".to_owned(), escape),
        if id.is_empty() {
            String::new()
        } else {
            waiting_actions(shared, ctx, id, back)
        },
    ]
}

fn held_row(shared: &Shared, ctx: &Context, view: &HeldView, back: &str) -> Vec<String> {
    let retrying = &view.retrying;
    vec![
        job_link(shared, &retrying.job),
        format!("<code>{}</code>", escape(&retrying.job_id)),
        retrying.attempt.to_string(),
        format!("in {}", duration(view.due_in)),
        format!("held by {}", worker(&view.worker)),
        escape(&retrying.error),
        waiting_actions(shared, ctx, &retrying.job_id, back),
    ]
}

/// What a find's query says.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Find {
    #[serde(default)]
    id: String,
}

pub(crate) async fn find(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
    Query(query): Query<Find>,
) -> Response {
    let id = query.id.trim();
    if id.is_empty() {
        let html = "<p>Type a job id in the search box above.</p>";
        return page(&shared, &ctx, "Find a job", Refresh::Still, html);
    }
    let found = match shared.admin.find(id).await {
        Ok(found) => found,
        Err(error) => return failed(&shared, &ctx, error),
    };
    let mut html = String::new();
    if found.is_empty() {
        let _ = write!(
            html,
            "<p>Job <code>{}</code> is not running, held, delayed or dead-lettered in any job type of a running worker. A job waiting in its work queue, or done, is not looked for.</p>",
            escape(id)
        );
    }
    let back = format!("find?id={}", crate::html::segment(id));
    for place in &found {
        html.push_str(&whereabouts(&shared, &ctx, id, place, &back));
    }
    page(&shared, &ctx, &format!("Job {id}"), Refresh::Still, &html)
}

/// Where the job is, what it says there, and what can be done.
fn whereabouts(
    shared: &Shared,
    ctx: &Context,
    id: &str,
    place: &Whereabouts,
    back: &str,
) -> String {
    let (title, facts, actions): (&str, Vec<(&str, String)>, String) = match place {
        Whereabouts::Running(view) => (
            "Running",
            vec![
                ("Job type", job_link(shared, &view.running.job)),
                ("Attempt", view.running.attempt.to_string()),
                ("Running for", duration(view.running_for)),
                ("Worker", worker(&view.worker)),
            ],
            button(
                shared,
                ctx,
                "/running/cancel",
                &[("job_id", id)],
                "Cancel",
                "danger",
            ),
        ),
        Whereabouts::Held(view) => (
            "Held for a retry in place",
            vec![
                ("Job type", job_link(shared, &view.retrying.job)),
                ("Next attempt", view.retrying.attempt.to_string()),
                ("Due in", duration(view.due_in)),
                ("Last error", escape(&view.retrying.error)),
                ("Worker", worker(&view.worker)),
            ],
            waiting_actions(shared, ctx, id, back),
        ),
        Whereabouts::Delayed(delayed) => (
            if delayed.is_retry() {
                "Waiting to be retried"
            } else {
                "Scheduled"
            },
            vec![
                ("Job type", job_link(shared, &delayed.job)),
                ("Attempt", delayed.attempt.to_string()),
                ("Due", due(delayed)),
                ("Waits in", escape(&delayed.queue)),
                (
                    "Last error",
                    delayed.error.as_deref().map_or("–".to_owned(), escape),
                ),
            ],
            waiting_actions(shared, ctx, id, back),
        ),
        Whereabouts::Dead { job, queue, letter } => (
            "Dead-lettered",
            vec![
                ("Job type", job_link(shared, job)),
                ("Reason", escape(letter.reason.as_str())),
                ("Error", escape(&letter.error)),
                ("Attempts", letter.attempts.to_string()),
                (
                    "Failed",
                    letter
                        .failed_at
                        .map_or("–".to_owned(), |at| format!("{} ago", ago(at))),
                ),
                ("Queue", queue_link(shared, queue, queue)),
            ],
            format!(
                r#"<a href="{}">Replay or discard it</a>"#,
                escape(&shared.link(&format!(
                    "/dead-letters/{}?id={}",
                    crate::html::segment(queue),
                    crate::html::segment(id)
                )))
            ),
        ),
        _ => ("Elsewhere", Vec::new(), String::new()),
    };
    let mut html = format!("<h2>{}</h2><dl>", escape(title));
    for (name, value) in facts {
        let _ = write!(html, "<dt>{}</dt><dd>{value}</dd>", escape(name));
    }
    let _ = write!(html, r#"</dl><div class="actions">{actions}</div>"#);
    html
}
