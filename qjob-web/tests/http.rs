//! The console's HTTP contract, without a browser, on MemoryBroker: the
//! security headers, the cross-site checks of actions, the read-only mode
//! and the authorization hook.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use qjob::admin::Admin;
use qjob::{JobContext, JobError, Worker, job};
use qjob_testkit::MemoryBroker;
use qjob_web::{Access, Console};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[job(queue = "web.http.email", shards = 2)]
async fn email(_to: String, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// Serves `console` on a free port; returns its address.
async fn serve(console: Console) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, console.router()).await });
    addr
}

/// A raw HTTP/1.1 exchange: the status, the headers (lower-case names) and
/// the body.
async fn http(addr: &str, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_lowercase(), value.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The `name=value` of the token cookie a page set, and the token.
fn token_cookie(headers: &[(String, String)]) -> (String, String) {
    let set = header(headers, "set-cookie").expect("a token cookie");
    let cookie = set.split(';').next().unwrap().to_owned();
    let token = cookie.trim_start_matches("qjob_csrf=").to_owned();
    (cookie, token)
}

fn get(addr: &str, path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n")
}

fn post(addr: &str, path: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A broker with one worker reporting, and a console's admin on it.
async fn running() -> (Arc<Admin>, tokio::sync::oneshot::Sender<()>) {
    let broker = MemoryBroker::new();
    let admin = Arc::new(Admin::connect(broker.clone()).await.unwrap());
    let hourly = qjob::Schedule::cron("@hourly")
        .unwrap()
        .named("hourly-email");
    let worker = Worker::builder(broker)
        .register(EmailJob)
        .schedule::<EmailJob>(hourly, "ops@example.com".into())
        .heartbeat_interval(Duration::from_millis(50))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    admin.wait_for_workers(1, Duration::from_secs(10)).await;
    (admin, stop)
}

#[tokio::test]
async fn pages_carry_a_strict_policy_and_a_token_cookie() {
    let (admin, _stop) = running().await;
    let addr = serve(Console::new(admin)).await;
    let (status, headers, body) = http(&addr, &get(&addr, "/", None)).await;
    assert_eq!(status, 200);
    let policy = header(&headers, "content-security-policy").unwrap();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    assert!(!body.contains("<script>"), "no inline script");
    assert!(!body.contains("style="), "no inline style");
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "nothing from elsewhere"
    );
    assert!(
        body.contains(r#"<a href="/jobs/email">email</a>"#),
        "{body}"
    );
    assert!(
        body.contains("<h2>Schedules</h2>")
            && body.contains("<td>hourly-email</td>")
            && body.contains("<code>@hourly</code>"),
        "{body}"
    );
    let cookie = header(&headers, "set-cookie").unwrap();
    assert!(
        cookie.starts_with("qjob_csrf=")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("HttpOnly")
    );
    let (status, headers, script) = http(&addr, &get(&addr, "/assets/console.js", None)).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(script.contains("data-refresh"));
}

#[tokio::test]
async fn actions_need_the_cookie_token_and_this_origin() {
    let (admin, _stop) = running().await;
    let addr = serve(Console::new(admin)).await;
    let (_, headers, body) = http(&addr, &get(&addr, "/jobs/email", None)).await;
    assert!(body.contains("<dt>Shards</dt><dd>2</dd>"), "{body}");
    let (cookie, token) = token_cookie(&headers);
    assert!(body.contains(&format!(r#"name="csrf" value="{token}""#)));
    let form = format!("csrf={token}");

    // No cookie: another site's form cannot send it.
    let (status, _, _) = http(&addr, &post(&addr, "/jobs/email/pause", "", &form)).await;
    assert_eq!(status, 403);
    // The cookie but a wrong token.
    let with_cookie = format!("Cookie: {cookie}\r\n");
    let wrong = "csrf=0123456789abcdef0123456789abcdef";
    let (status, _, _) = http(
        &addr,
        &post(&addr, "/jobs/email/pause", &with_cookie, wrong),
    )
    .await;
    assert_eq!(status, 403);
    // The browser says it comes from elsewhere.
    let cross = format!("{with_cookie}Origin: https://evil.example\r\n");
    let (status, _, _) = http(&addr, &post(&addr, "/jobs/email/pause", &cross, &form)).await;
    assert_eq!(status, 403);
    let cross = format!("{with_cookie}Sec-Fetch-Site: cross-site\r\n");
    let (status, _, _) = http(&addr, &post(&addr, "/jobs/email/pause", &cross, &form)).await;
    assert_eq!(status, 403);
    // From this origin, with the token: done, and back to the page.
    let same = format!("{with_cookie}Origin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n");
    let (status, headers, _) = http(&addr, &post(&addr, "/jobs/email/pause", &same, &form)).await;
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/jobs/email"));
    // What it did comes in a cookie, shown once: a link cannot forge it.
    let set = header(&headers, "set-cookie").unwrap();
    let notice = set.split(';').next().unwrap();
    assert_eq!(
        notice,
        "qjob_notice=pause%20email%3A%20done%20by%201%20worker%28s%29"
    );
    let cookies = format!("{cookie}; {notice}");
    let (_, headers, page) = http(&addr, &get(&addr, "/jobs/email", Some(&cookies))).await;
    assert!(
        page.contains(r#"<p class="notice" role="status">pause email: done by 1 worker(s)</p>"#),
        "{page}"
    );
    assert!(
        header(&headers, "set-cookie")
            .unwrap()
            .starts_with("qjob_notice=; ")
    );
    // The worker's heartbeat after the command says it is paused.
    qjob_tests::until(
        "the job paused on its worker",
        Duration::from_secs(10),
        async || {
            let (_, _, page) = http(&addr, &get(&addr, "/jobs/email", Some(&cookie))).await;
            page.contains("<dt>Paused on</dt><dd>1 of 1</dd>")
        },
    )
    .await;
}

#[tokio::test]
async fn only_known_dead_letter_queues_and_hosts_are_served() {
    let (admin, _stop) = running().await;
    let addr = serve(Console::new(admin.clone())).await;
    let (status, _, body) = http(&addr, &get(&addr, "/dead-letters/web.http.email", None)).await;
    assert_eq!(status, 404, "a work queue is not browsed");
    assert!(body.contains("Not the dead-letter queue of a job type"));
    let (status, _, _) = http(&addr, &get(&addr, "/dead-letters/web.http.email.dlq", None)).await;
    assert_eq!(status, 200);
    let (status, _, _) = http(
        &addr,
        &get(&addr, "/dead-letters/web.http.email.dlq?id=.", None),
    )
    .await;
    assert_eq!(status, 404, "no letter of that id");

    let only = serve(Console::new(admin).allowed_hosts(["console.example"])).await;
    let (status, _, _) = http(&only, &get(&only, "/", None)).await;
    assert_eq!(status, 421, "a rebound name is refused");
    let request = "GET / HTTP/1.1\r\nHost: Console.Example\r\nConnection: close\r\n\r\n";
    let (status, _, _) = http(&only, request).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn read_only_shows_no_action_and_refuses_them() {
    let (admin, _stop) = running().await;
    let addr = serve(Console::new(admin).read_only(true)).await;
    let (_, headers, body) = http(&addr, &get(&addr, "/jobs/email", None)).await;
    assert!(body.contains(r#"<span class="badge">read-only</span>"#));
    assert!(!body.contains(r#"method="post""#), "no form posts");
    let (cookie, token) = token_cookie(&headers);
    let extra = format!("Cookie: {cookie}\r\n");
    let (status, _, body) = http(
        &addr,
        &post(&addr, "/jobs/email/pause", &extra, &format!("csrf={token}")),
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "this console is read-only"));
}

#[tokio::test]
async fn the_application_decides_who_sees_and_who_acts() {
    let (admin, _stop) = running().await;
    let console = Console::new(admin).authorize(|request, access| {
        let user = request.headers.get("x-user").and_then(|v| v.to_str().ok());
        match (user, access) {
            (Some("admin"), _) | (Some("viewer"), Access::View) => Ok(()),
            _ => Err((StatusCode::UNAUTHORIZED, "log in first").into()),
        }
    });
    let addr = serve(console).await;
    let (status, _, _) = http(&addr, &get(&addr, "/", None)).await;
    assert_eq!(status, 401);
    let request =
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nX-User: viewer\r\nConnection: close\r\n\r\n");
    let (status, _, _) = http(&addr, &request).await;
    assert_eq!(status, 200);
    let (status, _, body) = http(
        &addr,
        &post(&addr, "/jobs/email/pause", "X-User: viewer\r\n", "csrf=x"),
    )
    .await;
    assert_eq!((status, body.as_str()), (401, "log in first"));
}

#[tokio::test]
async fn what_comes_from_outside_is_escaped() {
    let (admin, _stop) = running().await;
    let addr = serve(Console::new(admin)).await;
    let (status, _, body) = http(
        &addr,
        &get(&addr, "/jobs/%3Cscript%3Ealert(1)%3C%2Fscript%3E", None),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(!body.contains("<script>alert"));
    let (status, _, body) = http(&addr, &get(&addr, "/dead-letters/no.such.queue", None)).await;
    assert_eq!(status, 404);
    assert!(body.contains("Not the dead-letter queue of a job type"));
}

#[job(queue = "web.http.limited", global_concurrency = 2, class = "critical")]
async fn limited(_to: String, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// A job with a global concurrency shows it with its class, and its form
/// sets it for every process: a value that is not a whole number from 1 is
/// refused with a notice, a good one is done by the worker.
#[tokio::test]
async fn a_global_concurrency_is_shown_and_set_from_the_job_page() {
    let broker = MemoryBroker::new();
    let admin = Arc::new(Admin::connect(broker.clone()).await.unwrap());
    let worker = Worker::builder(broker)
        .register(LimitedJob)
        .store(qjob::store::MemoryStore::new())
        .heartbeat_interval(Duration::from_millis(50))
        .build();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    admin.wait_for_workers(1, Duration::from_secs(10)).await;
    let addr = serve(Console::new(admin)).await;
    let page = |cookie: Option<String>| {
        let addr = addr.clone();
        async move { http(&addr, &get(&addr, "/jobs/limited", cookie.as_deref())).await }
    };
    let (_, headers, body) = page(None).await;
    assert!(
        body.contains("<dt>Limits</dt><dd>critical, global 0/2</dd>"),
        "{body}"
    );
    assert!(
        body.contains(r#"action="/jobs/limited/global-concurrency""#),
        "{body}"
    );
    let (cookie, token) = token_cookie(&headers);
    let same =
        format!("Cookie: {cookie}\r\nOrigin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n");
    let path = "/jobs/limited/global-concurrency";
    for bad in ["0", "two", "100001"] {
        let form = format!("csrf={token}&limit={bad}");
        let (status, headers, _) = http(&addr, &post(&addr, path, &same, &form)).await;
        assert_eq!(status, 303);
        let notice = header(&headers, "set-cookie").unwrap();
        assert!(notice.contains("from%201%20to%20100000"), "{bad}: {notice}");
    }
    let form = format!("csrf={token}&limit=4");
    let (status, headers, _) = http(&addr, &post(&addr, path, &same, &form)).await;
    assert_eq!(status, 303);
    let notice = header(&headers, "set-cookie").unwrap();
    assert!(notice.contains("done%20by%201%20worker"), "{notice}");
    qjob_tests::until("the new limit shown", Duration::from_secs(10), async || {
        let (_, _, body) = page(Some(cookie.clone())).await;
        body.contains("<dt>Limits</dt><dd>critical, global 0/4</dd>")
    })
    .await;
}

/// Tells `waiting` what to do: `block` waits for a cancel, `fail` fails,
/// anything else succeeds (and is counted).
#[job(queue = "web.http.waiting", retry = 2, backoff = fixed("15m"), concurrency = 2)]
async fn waiting(what: String, ctx: JobContext) -> Result<(), JobError> {
    match what.as_str() {
        "block" => {
            ctx.cancelled().await;
            Err(JobError::msg("stopped"))
        }
        "fail" => Err(JobError::msg("web failure")),
        _ => {
            WAITING_DONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }
}

static WAITING_DONE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The live pages list what runs and waits, each row with its actions,
/// which need the token, and go back to a page of the console only.
#[tokio::test]
async fn live_pages_list_and_act_on_what_runs_and_waits() {
    let broker = MemoryBroker::new();
    let admin = Arc::new(Admin::connect(broker.clone()).await.unwrap());
    let worker = Worker::builder(broker.clone())
        .register(WaitingJob)
        .heartbeat_interval(Duration::from_millis(50))
        .build();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    admin.wait_for_workers(1, Duration::from_secs(10)).await;
    let client = qjob::Client::new(broker);
    let blocked = client.enqueue::<WaitingJob>("block".into()).await.unwrap();
    let later = client
        .enqueue_in::<WaitingJob>("later".into(), Duration::from_secs(1800))
        .await
        .unwrap();
    let failing = client.enqueue::<WaitingJob>("fail".into()).await.unwrap();
    let addr = serve(Console::new(admin)).await;
    let until_page = |path: String, text: String| {
        let addr = addr.clone();
        async move {
            let mut seen = String::new();
            qjob_tests::until(
                &format!("{path} shows {text}"),
                Duration::from_secs(10),
                async || {
                    let (_, _, body) = http(&addr, &get(&addr, &path, None)).await;
                    seen = body;
                    seen.contains(&text)
                },
            )
            .await;
            seen
        }
    };
    let running = until_page("/running".into(), blocked.to_string()).await;
    assert!(running.contains(r#"action="/running/cancel""#), "{running}");
    assert!(
        running.contains(r#"<a href="/running">Running</a>"#),
        "the nav"
    );
    let scheduled = until_page("/scheduled".into(), later.to_string()).await;
    assert!(
        scheduled.contains(r#"<input type="hidden" name="back" value="scheduled">"#),
        "{scheduled}"
    );
    assert!(scheduled.contains("in 29m"), "{scheduled}");
    let retrying = until_page("/retrying?job=waiting".into(), failing.to_string()).await;
    assert!(
        retrying.contains("web failure") && retrying.contains("in 14m"),
        "{retrying}"
    );
    let found = until_page(format!("/find?id={later}"), "<h2>Scheduled</h2>".into()).await;
    assert!(found.contains("Run now"), "{found}");
    let (_, headers, nowhere) = http(&addr, &get(&addr, "/find?id=no-such-job", None)).await;
    assert!(nowhere.contains("is not running, held, delayed or dead-lettered"));

    let (cookie, token) = token_cookie(&headers);
    let same =
        format!("Cookie: {cookie}\r\nOrigin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n");
    let form = format!("csrf=0123456789abcdef0123456789abcdef&job_id={later}&back=scheduled");
    let (status, _, _) = http(&addr, &post(&addr, "/waiting/run-now", &same, &form)).await;
    assert_eq!(status, 403, "a wrong token");
    let form = format!("csrf={token}&job_id={later}&back=scheduled");
    let (status, headers, _) = http(&addr, &post(&addr, "/waiting/run-now", &same, &form)).await;
    assert_eq!(
        (status, header(&headers, "location")),
        (303, Some("/scheduled"))
    );
    assert!(
        header(&headers, "set-cookie")
            .unwrap()
            .contains("moved%20on")
    );
    qjob_tests::until(
        "the scheduled job ran",
        Duration::from_secs(10),
        async || WAITING_DONE.load(std::sync::atomic::Ordering::SeqCst) == 1,
    )
    .await;
    let back = format!("find?id={failing}");
    let form = format!("csrf={token}&job_id={failing}&back={back}");
    let (status, headers, _) = http(&addr, &post(&addr, "/waiting/discard", &same, &form)).await;
    assert_eq!(status, 303);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("/{back}").as_str())
    );
    until_page(
        format!("/find?id={failing}"),
        "<h2>Dead-lettered</h2>".into(),
    )
    .await;
    for evil in [
        "https%3A%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "find%3Fid%3D%0D%0AX%3A1",
    ] {
        let form = format!("csrf={token}&job_id=nothing&back={evil}");
        let (status, headers, _) =
            http(&addr, &post(&addr, "/waiting/run-now", &same, &form)).await;
        assert_eq!(
            (status, header(&headers, "location")),
            (303, Some("/scheduled")),
            "{evil}"
        );
    }
    let form = format!("csrf={token}&job_id={blocked}");
    let (status, headers, _) = http(&addr, &post(&addr, "/running/cancel", &same, &form)).await;
    assert_eq!(
        (status, header(&headers, "location")),
        (303, Some("/running"))
    );
    until_page(
        format!("/find?id={blocked}"),
        "<h2>Dead-lettered</h2>".into(),
    )
    .await;
}

#[job(queue = "web.http.report")]
async fn report(_: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// The schedules page lists the schedule its worker leads, with a form per
/// action; the forms need the cookie token; "fire now" enqueues the tick
/// it names (its queue has no consumer here: the job stays there), "pause"
/// shows on the page; an unknown schedule is not found.
#[tokio::test]
async fn the_schedules_page_fires_pauses_and_checks_its_forms() {
    let broker = MemoryBroker::new();
    let admin = Arc::new(Admin::connect(broker.clone()).await.unwrap());
    let hourly = qjob::Schedule::cron("@hourly").unwrap().named("web-report");
    let worker = Worker::builder(broker.clone())
        .schedule::<ReportJob>(hourly, ())
        .heartbeat_interval(Duration::from_millis(50))
        .build();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let addr = serve(Console::new(admin)).await;
    let mut seen = (Vec::new(), String::new());
    qjob_tests::until("the schedule led", Duration::from_secs(10), async || {
        let (_, headers, body) = http(&addr, &get(&addr, "/schedules", None)).await;
        seen = (headers, body);
        seen.1.contains("(pid ")
    })
    .await;
    let (headers, body) = seen;
    assert!(
        body.contains(r#"<a href="/schedules">Schedules</a>"#),
        "{body}"
    );
    for cell in [
        "<td>web-report</td>",
        "<td>report</td>",
        "<td><code>@hourly</code></td>",
        "<td>UTC</td>",
        "<td>latest</td>",
        "<td>no</td>",
        r#"action="/schedules/web-report/fire""#,
        r#"action="/schedules/web-report/pause""#,
    ] {
        assert!(body.contains(cell), "{cell} in {body}");
    }
    assert!(!body.contains("/schedules/web-report/resume"), "{body}");
    let (cookie, token) = token_cookie(&headers);
    let fire = "/schedules/web-report/fire";

    // Without the cookie, or with another token: refused, nothing fired.
    let form = format!("csrf={token}");
    let (status, _, _) = http(&addr, &post(&addr, fire, "", &form)).await;
    assert_eq!(status, 403);
    let with_cookie = format!("Cookie: {cookie}\r\n");
    let wrong = "csrf=0123456789abcdef0123456789abcdef";
    let (status, _, _) = http(&addr, &post(&addr, fire, &with_cookie, wrong)).await;
    assert_eq!(status, 403);
    assert!(broker.messages("web.http.report").is_empty());

    // With it: the tick enqueued, and named on the page it leads back to.
    let same = format!("{with_cookie}Origin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n");
    let (status, headers, _) = http(&addr, &post(&addr, fire, &same, &form)).await;
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/schedules"));
    let notice = header(&headers, "set-cookie").unwrap();
    let notice = notice.split(';').next().unwrap();
    let cookies = format!("{cookie}; {notice}");
    let (_, _, page) = http(&addr, &get(&addr, "/schedules", Some(&cookies))).await;
    let (_, shown) = page
        .split_once(r#"<p class="notice" role="status">schedule web-report: tick "#)
        .unwrap_or_else(|| panic!("{page}"));
    let id = shown.split_whitespace().next().unwrap();
    assert!(id.starts_with("web-report@"), "{id}");
    let queued = broker.messages("web.http.report");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id.as_deref(), Some(id));

    // Pause: done by the worker, and the page offers to resume.
    let path = "/schedules/web-report/pause";
    let (status, headers, _) = http(&addr, &post(&addr, path, &same, &form)).await;
    assert_eq!(status, 303);
    assert!(
        header(&headers, "set-cookie")
            .unwrap()
            .starts_with("qjob_notice=pause%20web-report%3A%20done%20by%201%20worker%28s%29"),
        "{headers:?}"
    );
    qjob_tests::until("the pause shown", Duration::from_secs(10), async || {
        let (_, _, page) = http(&addr, &get(&addr, "/schedules", Some(&cookie))).await;
        page.contains("<td>yes</td>") && page.contains("/schedules/web-report/resume")
    })
    .await;

    let (status, _, _) = http(&addr, &post(&addr, "/schedules/nope/fire", &same, &form)).await;
    assert_eq!(status, 404);
}

#[job(queue = "web.http.history", prefetch = 10, concurrency = 10)]
async fn flaky(fail: bool, _ctx: JobContext) -> Result<(), JobError> {
    if fail {
        return Err(JobError::permanent(JobError::msg("broken for good")));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// The counts a page's per-minute `<title>`s add up to.
fn minute_titles(body: &str) -> (u64, u64, u64) {
    let mut sums = (0, 0, 0);
    for title in body.split("<title>").skip(1) {
        let title = title.split("</title>").next().unwrap();
        let Some((_, counts)) = title.split_once(" UTC: ") else {
            continue;
        };
        let count = |what: &str| -> u64 {
            let before = counts.split(what).next().unwrap();
            before
                .rsplit(' ')
                .find(|w| !w.is_empty())
                .unwrap()
                .parse()
                .unwrap()
        };
        sums.0 += count(" succeeded");
        sums.1 += count(" failed");
        sums.2 += count(" dead-lettered");
    }
    sums
}

#[tokio::test]
async fn the_overview_and_the_job_page_chart_the_last_hour() {
    let broker = MemoryBroker::new();
    let admin = Arc::new(Admin::connect(broker.clone()).await.unwrap());
    let worker = Worker::builder(broker.clone())
        .register(FlakyJob)
        .heartbeat_interval(Duration::from_millis(50))
        .build();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    // 20 succeed, 5 fail for good.
    qjob::Client::new(broker.clone())
        .enqueue_all::<FlakyJob>((0..25).map(|n| n >= 20))
        .await
        .unwrap();
    qjob_tests::eventually(
        "the hour to count every job",
        Duration::from_secs(10),
        || admin.history(Some("flaky")),
        |h| {
            h.first()
                .is_some_and(|h| h.succeeded() + h.dead_lettered() == 25)
        },
    )
    .await;
    let addr = serve(Console::new(admin)).await;
    for path in ["/", "/jobs/flaky"] {
        let (status, headers, body) = http(&addr, &get(&addr, path, None)).await;
        assert_eq!(status, 200, "{path}");
        let policy = header(&headers, "content-security-policy").unwrap();
        assert!(
            policy.starts_with("default-src 'none'; script-src 'self'; style-src 'self';")
                && !policy.contains("unsafe"),
            "{policy}"
        );
        assert!(body.contains(r#"<svg class="history""#), "{path}: {body}");
        assert!(
            body.contains(
                "<title>flaky: the last hour, 20 succeeded, 5 failed, 5 dead-lettered</title>"
            ),
            "{path}: {body}"
        );
        assert_eq!(minute_titles(&body), (20, 5, 5), "{path}: {body}");
        assert!(body.contains("; p50 "), "percentiles in the hover text");
        assert!(
            !body.contains("<script>") && !body.contains("style="),
            "{path}"
        );
    }
    let (_, _, overview) = http(&addr, &get(&addr, "/", None)).await;
    assert!(
        overview.contains(r#"<a href="/jobs/flaky"><svg class="history""#),
        "each small chart leads to its job's page"
    );
}
