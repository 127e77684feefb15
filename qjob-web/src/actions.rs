//! The actions: `POST` forms that carry the CSRF token, act through
//! [`Admin`](qjob::admin::Admin), and redirect back with what happened
//! (post/redirect/get).

use std::sync::Arc;

use axum::Form;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use qjob::admin::{Acted, LetterFilter, Reply};
use serde::Deserialize;

use crate::html::segment;
use crate::{Context, Shared};

/// A form with nothing but the token.
#[derive(Debug, Deserialize)]
pub(crate) struct Plain {
    csrf: String,
}

/// A form about one dead letter.
#[derive(Debug, Deserialize)]
pub(crate) struct Letter {
    csrf: String,
    job_id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Concurrency {
    csrf: String,
    concurrency: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct GlobalConcurrency {
    csrf: String,
    limit: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Cancel {
    csrf: String,
    job_id: String,
}

/// A form about one waiting job, and the page to go back to.
#[derive(Debug, Deserialize)]
pub(crate) struct WaitingJob {
    csrf: String,
    job_id: String,
    #[serde(default)]
    back: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Matching {
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    error: String,
}

/// A form whose token is the request's cookie token: anything else is
/// refused (403) before the handler runs.
pub(crate) struct Checked<T>(T);

/// A form that carries the CSRF token.
pub(crate) trait Tokened {
    fn csrf(&self) -> &str;
}

macro_rules! tokened {
    ($($form:ty),*) => {
        $(impl Tokened for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        })*
    };
}

tokened!(
    Plain,
    Letter,
    Concurrency,
    GlobalConcurrency,
    Cancel,
    WaitingJob,
    Matching
);

impl<S, T> FromRequest<S> for Checked<T>
where
    S: Send + Sync,
    T: Tokened + serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let token = request
            .extensions()
            .get::<Context>()
            .map(|context| context.token.clone());
        let Form(form) = Form::<T>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match token {
            Some(token) if token.accepts(form.csrf()) => Ok(Checked(form)),
            _ => Err((
                StatusCode::FORBIDDEN,
                "refused: the form's token does not match (reload the page and try again)",
            )
                .into_response()),
        }
    }
}

/// Back to `path`, leaving `notice` for it (in a cookie, shown once: a
/// link cannot forge it).
pub(crate) fn back(shared: &Shared, path: &str, notice: &str) -> Response {
    let mut response = Redirect::to(&shared.link(path)).into_response();
    let cookie = crate::csrf::notice_cookie(&shared.base, Some(notice));
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

pub(crate) fn broker_error(error: qjob::Error) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        format!("the broker failed: {error}"),
    )
        .into_response()
}

/// What the workers said, in one line.
pub(crate) fn replied(what: &str, replies: &[Reply]) -> String {
    if replies.is_empty() {
        return format!("{what}: no running worker replied");
    }
    let ok = replies.iter().filter(|reply| reply.ok).count();
    let refused: Vec<&str> = replies
        .iter()
        .filter(|reply| !reply.ok)
        .map(|reply| reply.message.as_str())
        .collect();
    if refused.is_empty() {
        format!("{what}: done by {ok} worker(s)")
    } else {
        format!(
            "{what}: done by {ok}, refused by {}: {}",
            refused.len(),
            refused[0]
        )
    }
}

pub(crate) async fn pause(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    _: Checked<Plain>,
) -> Response {
    let replies = shared.admin.pause(&job).await;
    commanded(&shared, &job, "pause", replies)
}

pub(crate) async fn resume(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    _: Checked<Plain>,
) -> Response {
    let replies = shared.admin.resume(&job).await;
    commanded(&shared, &job, "resume", replies)
}

/// Back to job `job`'s page, saying what the workers replied to `what`.
fn commanded(
    shared: &Shared,
    job: &str,
    what: &str,
    replies: Result<Vec<Reply>, qjob::Error>,
) -> Response {
    match replies {
        Ok(replies) => back(
            shared,
            &format!("/jobs/{}", segment(job)),
            &replied(&format!("{what} {job}"), &replies),
        ),
        Err(error) => broker_error(error),
    }
}

pub(crate) async fn concurrency(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    Checked(form): Checked<Concurrency>,
) -> Response {
    let page = format!("/jobs/{}", segment(&job));
    let Ok(concurrency) = form.concurrency.trim().parse::<usize>() else {
        return back(&shared, &page, "concurrency: a whole number, please");
    };
    match shared.admin.set_concurrency(&job, concurrency).await {
        Ok(replies) => back(
            &shared,
            &page,
            &replied(&format!("concurrency {concurrency}"), &replies),
        ),
        Err(error) => broker_error(error),
    }
}

/// Sets a job's global concurrency, across every process
/// (`Admin::set_global_concurrency`).
pub(crate) async fn global_concurrency(
    State(shared): State<Arc<Shared>>,
    Path(job): Path<String>,
    Checked(form): Checked<GlobalConcurrency>,
) -> Response {
    let page = format!("/jobs/{}", segment(&job));
    let limit = match form.limit.trim().parse::<u32>() {
        Ok(limit) if (1..=100_000).contains(&limit) => limit,
        _ => {
            return back(
                &shared,
                &page,
                "global concurrency: a whole number from 1 to 100000, please",
            );
        }
    };
    match shared.admin.set_global_concurrency(&job, Some(limit)).await {
        Ok(replies) => back(
            &shared,
            &page,
            &replied(&format!("global concurrency {limit}"), &replies),
        ),
        Err(error) => broker_error(error),
    }
}

pub(crate) async fn cancel(
    State(shared): State<Arc<Shared>>,
    Checked(form): Checked<Cancel>,
) -> Response {
    cancel_back_to(&shared, &form, "/").await
}

/// Cancels `form`'s job, then back to `page` with what the workers said.
async fn cancel_back_to(shared: &Shared, form: &Cancel, page: &str) -> Response {
    let job_id = form.job_id.trim();
    if job_id.is_empty() {
        return back(shared, page, "cancel: which job id?");
    }
    match shared.admin.cancel(job_id).await {
        Ok(replies) => back(
            shared,
            page,
            &replied(&format!("cancel {job_id}"), &replies),
        ),
        Err(error) => broker_error(error),
    }
}

pub(crate) async fn replay(
    State(shared): State<Arc<Shared>>,
    Path(queue): Path<String>,
    Checked(form): Checked<Letter>,
) -> Response {
    if let Some(refused) = unknown_queue(&shared, &queue) {
        return refused;
    }
    let replayed = shared.admin.replay(&queue, &form.job_id).await;
    one_letter(&shared, &queue, &form.job_id, "replayed", replayed)
}

pub(crate) async fn discard(
    State(shared): State<Arc<Shared>>,
    Path(queue): Path<String>,
    Checked(form): Checked<Letter>,
) -> Response {
    if let Some(refused) = unknown_queue(&shared, &queue) {
        return refused;
    }
    let discarded = shared.admin.discard(&queue, &form.job_id).await;
    one_letter(&shared, &queue, &form.job_id, "discarded", discarded)
}

/// Refuses a queue that is not the dead-letter queue of a job type the
/// workers report.
fn unknown_queue(shared: &Shared, queue: &str) -> Option<Response> {
    (!shared.is_dead_letter_queue(queue)).then(|| {
        (
            StatusCode::NOT_FOUND,
            "not the dead-letter queue of a job type a running worker reports",
        )
            .into_response()
    })
}

/// Back to the dead letters of `queue`, saying what became of `job_id`'s.
fn one_letter(
    shared: &Shared,
    queue: &str,
    job_id: &str,
    done: &str,
    outcome: Result<bool, qjob::Error>,
) -> Response {
    let page = format!("/dead-letters/{}", segment(queue));
    match outcome {
        Ok(true) => back(shared, &page, &format!("{done} {job_id}")),
        Ok(false) => back(shared, &page, &format!("{job_id} is no longer in {queue}")),
        Err(error) => broker_error(error),
    }
}

pub(crate) async fn replay_matching(
    State(shared): State<Arc<Shared>>,
    Path(queue): Path<String>,
    Checked(form): Checked<Matching>,
) -> Response {
    if let Some(refused) = unknown_queue(&shared, &queue) {
        return refused;
    }
    let mut filter = LetterFilter::all();
    if !form.reason.trim().is_empty() {
        filter = filter.reason(form.reason.trim());
    }
    if !form.error.is_empty() {
        filter = filter.error_contains(form.error.as_str());
    }
    let page = format!("/dead-letters/{}", segment(&queue));
    match shared.admin.replay_matching(&queue, &filter).await {
        Ok(replayed) => back(
            &shared,
            &page,
            &format!("replayed {replayed} dead letter(s)"),
        ),
        Err(error) => broker_error(error),
    }
}

/// Cancels a job from the page of the jobs running now.
pub(crate) async fn cancel_running(
    State(shared): State<Arc<Shared>>,
    Checked(form): Checked<Cancel>,
) -> Response {
    cancel_back_to(&shared, &form, "/running").await
}

/// Where a waiting job's action goes back to: one of the pages that show
/// the buttons (anything else goes to the scheduled jobs).
fn waiting_page(back: &str) -> String {
    match back {
        "retrying" | "scheduled" | "running" => format!("/{back}"),
        // Only what `segment` writes after the prefix: nothing that could
        // leave the console, or not be a header value.
        find if find.starts_with("find?id=")
            && find
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%=?".contains(&b)) =>
        {
            format!("/{find}")
        }
        _ => "/scheduled".to_owned(),
    }
}

/// Runs a waiting job now (`Admin::run_now`).
pub(crate) async fn run_now(
    State(shared): State<Arc<Shared>>,
    Checked(form): Checked<WaitingJob>,
) -> Response {
    let acted = shared.admin.run_now(form.job_id.trim()).await;
    waiting_acted(&shared, &form, "run now", acted)
}

/// Discards a waiting job (`Admin::discard_waiting`).
pub(crate) async fn discard_waiting(
    State(shared): State<Arc<Shared>>,
    Checked(form): Checked<WaitingJob>,
) -> Response {
    let acted = shared.admin.discard_waiting(form.job_id.trim()).await;
    waiting_acted(&shared, &form, "discard", acted)
}

fn waiting_acted(
    shared: &Shared,
    form: &WaitingJob,
    what: &str,
    acted: Result<Acted, qjob::Error>,
) -> Response {
    let page = waiting_page(&form.back);
    let job_id = form.job_id.trim();
    let notice = match acted {
        Ok(Acted::Delayed(job)) => format!("{what} {job_id}: moved on from {}", job.queue),
        Ok(Acted::Held(replies)) => replied(&format!("{what} {job_id}"), &replies),
        Ok(Acted::Unanswered) => format!("{what} {job_id}: no running worker replied"),
        Ok(_) => format!("{what}: {job_id} waits in no delay queue and no worker holds it"),
        Err(qjob::Error::Config(message)) => format!("{what}: {message}"),
        Err(error) => return broker_error(error),
    };
    back(shared, &page, &notice)
}
