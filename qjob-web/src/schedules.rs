//! The schedules page: each schedule the workers carry, its leader, last
//! and next tick, missed-tick policy and pause; per schedule, "Fire now"
//! and "Pause" or "Resume" (actions as the others: token-checked `POST`s
//! that redirect back with what happened).

use std::sync::Arc;
use std::time::SystemTime;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qjob::admin::ScheduleView;

use crate::actions::{Checked, Plain, back, broker_error, replied};
use crate::html::{Table, ago, duration, escape, segment};
use crate::pages::{Refresh, button, page};
use crate::{Context, Shared};

/// Where the page is, and where its actions lead back to.
const PAGE: &str = "/schedules";

pub(crate) async fn schedules(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Context>,
) -> Response {
    let schedules = shared.admin.schedules();
    let mut html = String::from(
        "<p>Fire now enqueues one tick at once, with the current second's tick id, \
         and leaves the regular ticks as they are. A paused schedule fires nothing until \
         resumed; on resume, its missed-tick policy decides about the ticks that went by \
         (latest: the latest fires once; skip: none). A worker started later does not \
         know of a pause.</p>",
    );
    let mut table = Table::new(&[
        "Schedule",
        "Job",
        "Cron",
        "Zone",
        "Leader",
        "Workers",
        "Last tick",
        "Next tick",
        "Missed",
        "Paused",
        "Problem",
        "",
    ]);
    for view in &schedules {
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
            schedule
                .last_fired
                .map_or("–".to_owned(), |at| format!("{} ago", ago(at))),
            next,
            escape(if schedule.missed.is_empty() {
                "–"
            } else {
                &schedule.missed
            }),
            paused(view),
            schedule.problem.as_deref().map_or("–".to_owned(), escape),
            actions(&shared, &ctx, view),
        ]);
    }
    html.push_str(&table.finish("no running worker carries a schedule"));
    // A button per row: not refreshed under the click.
    page(&shared, &ctx, "Schedules", Refresh::Still, &html)
}

/// `no`, `yes`, or on how many of its workers (`1 of 2`).
fn paused(view: &ScheduleView) -> String {
    match view.paused_on {
        0 => "no".to_owned(),
        on if on == view.workers => "yes".to_owned(),
        on => format!("{on} of {}", view.workers),
    }
}

/// The row's buttons: fire now, and pause (unless paused on every worker)
/// or resume (if paused on any).
fn actions(shared: &Shared, ctx: &Context, view: &ScheduleView) -> String {
    let path = format!("{PAGE}/{}", segment(&view.name));
    let mut html = button(shared, ctx, &format!("{path}/fire"), &[], "Fire now", "");
    if view.paused_on < view.workers {
        html.push_str(&button(
            shared,
            ctx,
            &format!("{path}/pause"),
            &[],
            "Pause",
            "danger",
        ));
    }
    if view.paused_on > 0 {
        html.push_str(&button(
            shared,
            ctx,
            &format!("{path}/resume"),
            &[],
            "Resume",
            "",
        ));
    }
    html
}

/// Refuses a schedule no running worker reports: the only ones the
/// console commands.
fn unknown(shared: &Shared, name: &str) -> Option<Response> {
    let known = shared
        .admin
        .schedules()
        .iter()
        .any(|view| view.name == name);
    (!known).then(|| {
        (
            StatusCode::NOT_FOUND,
            "not a schedule a running worker carries",
        )
            .into_response()
    })
}

pub(crate) async fn fire(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    _: Checked<Plain>,
) -> Response {
    if let Some(refused) = unknown(&shared, &name) {
        return refused;
    }
    let notice = match shared.admin.fire_schedule(&name).await {
        Ok(reply) if reply.ok => reply.message,
        Ok(reply) => format!("fire now {name}: refused: {}", reply.message),
        Err(error @ qjob::Error::Timeout { .. }) => format!("fire now {name}: {error}"),
        Err(error) => return broker_error(error),
    };
    back(&shared, PAGE, &notice)
}

pub(crate) async fn pause(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    _: Checked<Plain>,
) -> Response {
    if let Some(refused) = unknown(&shared, &name) {
        return refused;
    }
    match shared.admin.pause_schedule(&name).await {
        Ok(replies) => back(&shared, PAGE, &replied(&format!("pause {name}"), &replies)),
        Err(error) => broker_error(error),
    }
}

pub(crate) async fn resume(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    _: Checked<Plain>,
) -> Response {
    if let Some(refused) = unknown(&shared, &name) {
        return refused;
    }
    match shared.admin.resume_schedule(&name).await {
        Ok(replies) => back(&shared, PAGE, &replied(&format!("resume {name}"), &replies)),
        Err(error) => broker_error(error),
    }
}
