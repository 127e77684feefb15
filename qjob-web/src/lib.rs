//! qjob's web dashboard: an axum [`Router`] to mount in your application,
//! over [`qjob::admin::Admin`] (RabbitMQ alone, no database).
//!
//! Pages: an overview (workers, job types with depth, rates and a small
//! throughput chart, breakers, alarms, each job type's last hour charted),
//! one job type (its last hour, queues, partitions, delay queues,
//! settings, pause/resume, concurrency), the jobs running now (cancel),
//! the jobs scheduled and retrying (run now, discard), a job found by id,
//! dead letters (browse, filter, payload and headers, replay, discard, bulk
//! replay), workers, and schedules (leader, ticks, missed-tick policy;
//! fire now, pause, resume). Server-rendered HTML that works without
//! JavaScript; one small script (served, never inline) refreshes the
//! page's content every few seconds. Everything is embedded in the binary, and every response
//! carries a strict Content-Security-Policy.
//!
//! Actions are `POST`s with a token bound to a `SameSite=Strict` cookie,
//! refused when the browser says they come from another site. A read-only
//! mode shows no action and refuses them; [`Console::authorize`] is where
//! the application's authentication decides who sees and who acts.
//!
//! ```no_run
//! use std::sync::Arc;
//! use qjob::admin::Admin;
//! use qjob_web::{Access, Console};
//!
//! # async fn serve(broker: qjob::AmqpBroker) -> Result<(), Box<dyn std::error::Error>> {
//! let admin = Arc::new(Admin::connect(broker).await?);
//! let console = Console::new(admin)
//!     .base_path("/qjob")
//!     .authorize(|request, access| {
//!         // Your session check here; `Access::Act` for pause, replay, …
//!         let _ = (request, access);
//!         Ok(())
//!     });
//! let app = axum::Router::new().nest("/qjob", console.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod actions;
mod chart;
mod csrf;
mod html;
mod live;
mod pages;
mod schedules;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use qjob::admin::Admin;
use tokio::time::Instant;

/// What a request wants: to look, or to act (pause, replay, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// A page or an asset (`GET`).
    View,
    /// An action (`POST`).
    Act,
}

/// Why a request may not go on: the response sent instead (a 401, a
/// redirect to the login page, …). Made from anything that is a response:
/// `Err(StatusCode::UNAUTHORIZED.into())`.
#[derive(Debug)]
pub struct Denied(Box<Response>);

impl<T: IntoResponse> From<T> for Denied {
    fn from(response: T) -> Self {
        Denied(Box::new(response.into_response()))
    }
}

/// Decides whether a request may go on.
type Authorize = dyn Fn(&Parts, Access) -> Result<(), Denied> + Send + Sync;

/// The dashboard: configure it, then mount [`Console::router`].
pub struct Console {
    admin: Arc<Admin>,
    read_only: bool,
    base: String,
    refresh: Duration,
    authorize: Option<Arc<Authorize>>,
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("read_only", &self.read_only)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A dashboard over `admin`.
    pub fn new(admin: Arc<Admin>) -> Self {
        Self {
            admin,
            read_only: false,
            base: String::new(),
            refresh: Duration::from_secs(5),
            authorize: None,
            hosts: Vec::new(),
            origins: Vec::new(),
        }
    }

    /// Shows no action and refuses every `POST` (403).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Where the router is mounted (`"/qjob"` for `.nest("/qjob", …)`), for
    /// the links it writes; empty (the root) by default. Each segment is
    /// percent-encoded as needed.
    pub fn base_path(mut self, base: impl Into<String>) -> Self {
        self.base = base
            .into()
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(|segment| format!("/{}", html::segment(segment)))
            .collect();
        self
    }

    /// The `Host` names (with the port, as browsers send them:
    /// `"console.example.com"`, `"127.0.0.1:8080"`) the console answers;
    /// others get 421. By default any: set it when the console is served
    /// without authentication, so that a site that rebinds its name to
    /// this address cannot use it.
    pub fn allowed_hosts<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.hosts = hosts
            .into_iter()
            .map(|host| host.into().to_ascii_lowercase())
            .collect();
        self
    }

    /// Further origins (`"https://console.example.com"`) an action may come
    /// from, when the `Host` the console sees is not the one the browser
    /// used (a proxy that rewrites it). By default only the request's own
    /// host.
    pub fn allowed_origins<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        origins: I,
    ) -> Self {
        self.origins = origins
            .into_iter()
            .map(|origin| origin.into().to_ascii_lowercase())
            .collect();
        self
    }

    /// How often the script refreshes a page's content (5 s by default).
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_secs(1));
        self
    }

    /// Your application's authentication: called on every request before
    /// anything else, with whether it looks or acts; an `Err`'s response is
    /// sent back instead.
    pub fn authorize(
        mut self,
        check: impl Fn(&Parts, Access) -> Result<(), Denied> + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Arc::new(check));
        self
    }

    /// The routes, to serve or to nest in your application's router.
    pub fn router(self) -> Router {
        let state = Arc::new(Shared {
            admin: self.admin,
            read_only: self.read_only,
            base: self.base,
            refresh: self.refresh,
            authorize: self.authorize,
            hosts: self.hosts,
            origins: self.origins,
            history: Mutex::default(),
        });
        Router::new()
            .route("/", get(pages::overview))
            .route("/workers", get(pages::workers))
            .route("/jobs/{job}", get(pages::job))
            .route("/jobs/{job}/pause", post(actions::pause))
            .route("/jobs/{job}/resume", post(actions::resume))
            .route("/jobs/{job}/concurrency", post(actions::concurrency))
            .route(
                "/jobs/{job}/global-concurrency",
                post(actions::global_concurrency),
            )
            .route("/cancel", post(actions::cancel))
            .route("/running", get(live::running))
            .route("/running/cancel", post(actions::cancel_running))
            .route("/scheduled", get(live::scheduled))
            .route("/retrying", get(live::retrying))
            .route("/waiting/run-now", post(actions::run_now))
            .route("/waiting/discard", post(actions::discard_waiting))
            .route("/find", get(live::find))
            .route("/schedules", get(schedules::schedules))
            .route("/schedules/{name}/fire", post(schedules::fire))
            .route("/schedules/{name}/pause", post(schedules::pause))
            .route("/schedules/{name}/resume", post(schedules::resume))
            .route("/dead-letters", get(pages::dead_letter_queues))
            .route("/dead-letters/{queue}", get(pages::dead_letters))
            .route(
                "/dead-letters/{queue}/replay",
                post(actions::replay_matching),
            )
            .route("/dead-letters/{queue}/replay-one", post(actions::replay))
            .route("/dead-letters/{queue}/discard-one", post(actions::discard))
            .route("/assets/console.css", get(stylesheet))
            .route("/assets/console.js", get(script))
            .layer(middleware::from_fn_with_state(state.clone(), guard))
            .with_state(state)
    }
}

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) admin: Arc<Admin>,
    pub(crate) read_only: bool,
    pub(crate) base: String,
    pub(crate) refresh: Duration,
    authorize: Option<Arc<Authorize>>,
    hosts: Vec<String>,
    origins: Vec<String>,
    /// Per job type: its recent rates, oldest first, for the chart.
    history: Mutex<HashMap<String, VecDeque<(Instant, f64)>>>,
}

/// How many rate samples a chart shows.
const HISTORY: usize = 60;

impl Shared {
    /// Records `job`'s rate now (at most one sample a second) and returns
    /// the samples.
    pub(crate) fn sample(&self, job: &str, rate: Option<f64>) -> Vec<f64> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let samples = history.entry(job.to_owned()).or_default();
        let now = Instant::now();
        if let Some(rate) = rate
            && samples
                .back()
                .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            samples.push_back((now, rate));
            if samples.len() > HISTORY {
                samples.pop_front();
            }
        }
        samples.iter().map(|(_, rate)| *rate).collect()
    }

    /// A link inside the console.
    pub(crate) fn link(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether `queue` is the dead-letter queue of a job type the workers
    /// report: the only queues the console reads or changes.
    pub(crate) fn is_dead_letter_queue(&self, queue: &str) -> bool {
        self.admin
            .workers()
            .iter()
            .flat_map(|worker| &worker.status.jobs)
            .any(|job| job.dead_letter_queue == queue)
    }
}

/// What the guard tells the handlers about a request: its CSRF token, and
/// the notice the last action left (read once).
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) token: csrf::Token,
    pub(crate) notice: Option<String>,
}

/// Runs before every route: the application's authorization, the read-only
/// mode, the cross-site checks of actions, and the security headers.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let access = if request.method() == Method::POST {
        Access::Act
    } else {
        Access::View
    };
    let (parts, body) = request.into_parts();
    if !shared.hosts.is_empty() {
        let host = csrf::host(&parts).map(str::to_ascii_lowercase);
        if !host.is_some_and(|host| shared.hosts.contains(&host)) {
            return secure((StatusCode::MISDIRECTED_REQUEST, "unknown host").into_response());
        }
    }
    if let Some(authorize) = &shared.authorize
        && let Err(Denied(denied)) = authorize(&parts, access)
    {
        return secure(*denied);
    }
    if access == Access::Act {
        if shared.read_only {
            return secure((StatusCode::FORBIDDEN, "this console is read-only").into_response());
        }
        if let Err(refused) = csrf::same_site(&parts, &shared.origins) {
            return secure((StatusCode::FORBIDDEN, refused).into_response());
        }
    }
    let token = csrf::token(&parts.headers);
    let notice = csrf::notice(&parts.headers);
    let context = Context {
        token: token.clone(),
        notice: notice.clone(),
    };
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(context);
    let mut response = next.run(request).await;
    let mut cookies = Vec::new();
    if token.is_new {
        cookies.push(token.cookie(&shared.base));
    }
    if notice.is_some() && access == Access::View {
        // Shown once.
        cookies.push(csrf::notice_cookie(&shared.base, None));
    }
    for cookie in cookies {
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    secure(response)
}

/// Adds the security headers: nothing but this origin's own scripts,
/// styles and forms; never framed.
fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../assets/console.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../assets/console.js"),
    )
}
