//! The console in headless Chromium (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them), over the example's demo on
//! RabbitMQ: the overview lists the workers, pausing a job type stops its
//! consumption on the broker, replaying a dead letter runs it, cancelling
//! a running job from its row dead-letters it, running a scheduled job now
//! empties its delay queue, the search box finds a job by id, and firing
//! a schedule now runs its tick. It also renews the overview's and the
//! running jobs' screenshots in
//! `qjob/docs/`.

#[path = "../examples/console.rs"]
mod demo;

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use qjob::broker::Broker;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

/// The screenshot the console guide shows.
const SCREENSHOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../qjob/docs/console-overview.png"
);

/// The screenshot of the jobs running now, for the guide.
const RUNNING_SCREENSHOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../qjob/docs/console-running.png"
);

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts chromedriver and a headless Chromium session.
async fn browser() -> (Client, tokio::process::Child) {
    let port = free_port();
    let driver = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "this test needs chromedriver (apt-get install chromium chromium-driver): {error}"
            )
        });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"] }),
    );
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let connected = ClientBuilder::rustls()
            .expect("a TLS configuration")
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match connected {
            Ok(client) => return (client, driver),
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "chromedriver did not start: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reloads `url` until its `<main>` text passes `check`; returns the text.
async fn until_page(
    client: &Client,
    url: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        client.goto(url).await.unwrap();
        let text = client
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}; last: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Clicks the page's first button labelled `label`; returns the notice of
/// the page it leads back to.
async fn click(client: &Client, label: &str) -> String {
    click_at(client, &format!("//button[text()='{label}']")).await
}

/// Clicks the button that `xpath` finds; returns the notice of the page it
/// leads back to.
async fn click_at(client: &Client, xpath: &str) -> String {
    // The notice of an earlier action must not pass for this one's.
    client
        .execute(
            "document.querySelectorAll('p.notice').forEach(n => n.remove()); return null;",
            vec![],
        )
        .await
        .unwrap();
    client
        .find(Locator::XPath(xpath))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click may return before the next page is there: wait for it.
    let notice = client
        .wait()
        .at_most(LIMIT)
        .for_element(Locator::Css("p.notice"))
        .await
        .unwrap();
    notice.text().await.unwrap()
}

/// Clicks the button labelled `label` in the table row that shows `id`;
/// returns the notice of the page it leads back to.
async fn click_in_row(client: &Client, id: &str, label: &str) -> String {
    click_at(
        client,
        &format!("//tr[td/code[text()='{id}']]//button[text()='{label}']"),
    )
    .await
}

/// Whether the dead-letter queue `queue` holds job `id` (left in place).
async fn rabbit_dead_letter(broker: &qjob::AmqpBroker, queue: &str, id: &str) -> bool {
    let admin = qjob::admin::Admin::connect(broker.clone()).await.unwrap();
    admin.dead_letter(queue, id).await.unwrap().is_some()
}

/// Waits until `check` holds.
async fn until(what: &str, check: impl AsyncFnMut() -> bool) {
    qjob_tests::until(what, LIMIT, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let rabbit = qjob_tests::Rabbit::connect().await;
    let queues = [
        "demo.email",
        "demo.email.dlq",
        "demo.email.delay-index",
        "demo.email.delay.3600000ms",
        "demo.email.delay.7200000ms",
        "demo.email.delay.10800000ms",
        "demo.email.delay.86400000ms",
        "demo.report",
        "demo.report.dlq",
        "demo.import",
        "demo.import.dlq",
        "demo.digest",
        "demo.digest.dlq",
    ];
    rabbit.delete(&queues).await;
    let broker = qjob_tests::amqp().await;
    let _demo = demo::start(broker.clone(), Duration::from_millis(200))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let base = format!("http://{addr}");
    let router = demo::console(broker.clone(), Duration::from_secs(1), &addr)
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let (client, _driver) = browser().await;

    // The overview lists both workers, running.
    let overview = until_page(&client, &format!("{base}/"), "two workers", |text| {
        text.matches("running").count() >= 2
    })
    .await;
    assert!(overview.contains("workers alive"), "{overview}");
    // The script refreshes the content in place (it runs under the CSP).
    client
        .execute(
            "document.querySelector('main h1').setAttribute('data-seen', '1'); return null;",
            vec![],
        )
        .await
        .unwrap();
    until("a refresh by the script", async || {
        let marked = client
            .find(Locator::Css("main h1[data-seen]"))
            .await
            .is_ok();
        !marked
    })
    .await;

    // Pausing `email` stops its consumption on the broker.
    let stats = async |queue: &str| broker.queue_stats(queue).await.unwrap().unwrap();
    client.goto(&format!("{base}/jobs/email")).await.unwrap();
    assert_eq!(
        click(&client, "Pause").await,
        "pause email: done by 2 worker(s)"
    );
    until("no consumer on demo.email", async || {
        stats("demo.email").await.consumers == 0
    })
    .await;
    let waiting = stats("demo.email").await.messages;
    until("the producer's jobs waiting", async || {
        stats("demo.email").await.messages > waiting + 5
    })
    .await;
    assert_eq!(
        click(&client, "Resume").await,
        "resume email: done by 2 worker(s)"
    );
    until("both consumers back", async || {
        stats("demo.email").await.consumers == 2
    })
    .await;

    // Replaying a dead letter runs it: the import bug is fixed since.
    let letters = format!("{base}/dead-letters/demo.import.dlq");
    until_page(&client, &letters, "the import dead letters", |text| {
        text.contains("is not a number")
    })
    .await;
    // The first row's letter: its job id is the row's link.
    let first = client
        .find(Locator::Css("main tbody tr td a"))
        .await
        .unwrap();
    let id = first.text().await.unwrap();
    assert!(!demo::import_done(&id));
    let notice = click(&client, "Replay").await;
    assert_eq!(notice, format!("replayed {id}"));
    until("the replayed import done", async || demo::import_done(&id)).await;
    let letter = format!("{letters}?id={id}");
    until_page(&client, &letter, "the letter gone from the queue", |text| {
        text.contains("No dead letter of job")
    })
    .await;

    // Running now: a slow report, cancelled from its row, is
    // dead-lettered as cancelled on the broker.
    let client_api = qjob::Client::new(broker.clone());
    let slow = client_api
        .enqueue::<demo::ReportJob>(demo::Task { n: 1_099 })
        .await
        .unwrap();
    let running = format!("{base}/running");
    // Running a second or more, so that the screenshot shows a time.
    until_page(&client, &running, "the slow report running", |text| {
        text.lines()
            .any(|line| line.contains(slow.as_str()) && !line.contains(" 0s "))
    })
    .await;
    let screenshot = client.screenshot().await.unwrap();
    std::fs::write(RUNNING_SCREENSHOT, screenshot).unwrap();
    let notice = click_in_row(&client, slow.as_str(), "Cancel").await;
    assert!(
        notice.starts_with(&format!("cancel {slow}: done by")),
        "{notice}"
    );
    until("the report dead-lettered as cancelled", async || {
        rabbit_dead_letter(&broker, "demo.report.dlq", slow.as_str()).await
    })
    .await;

    // Scheduled: an email due in a day runs now; its delay queue is empty
    // after.
    let tomorrow = client_api
        .enqueue_in::<demo::EmailJob>(demo::Task { n: 1 }, Duration::from_secs(86_400))
        .await
        .unwrap();
    let scheduled = format!("{base}/scheduled");
    until_page(&client, &scheduled, "the email scheduled", |text| {
        text.contains(tomorrow.as_str())
    })
    .await;
    let notice = click_in_row(&client, tomorrow.as_str(), "Run now").await;
    assert!(
        notice.contains("moved on from demo.email.delay.86400000ms"),
        "{notice}"
    );
    assert_eq!(stats("demo.email.delay.86400000ms").await.messages, 0);

    // Find by id, from the search box: the cancelled report is dead.
    let search = client
        .find(Locator::Css("header input[name=id]"))
        .await
        .unwrap();
    search.send_keys(slow.as_str()).await.unwrap();
    client
        .find(Locator::XPath("//header//button[text()='Find']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let found = client
        .wait()
        .at_most(LIMIT)
        .for_element(Locator::XPath("//main/h2[text()='Dead-lettered']"))
        .await;
    assert!(found.is_ok(), "the find page says where the report is");
    let text = client
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("cancelled while rendering"), "{text}");

    fire_the_digest_now(&client, &base).await;

    // The overview's screenshot, for the guide.
    client.goto(&format!("{base}/")).await.unwrap();
    until("a throughput chart", async || {
        client.find(Locator::Css("main svg.spark")).await.is_ok()
    })
    .await;
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(SCREENSHOT, png).unwrap();
    client.close().await.unwrap();
}

/// "Fire now" on the schedules page: the digest's leader enqueues a tick,
/// the notice names it, and a worker runs it off the broker.
async fn fire_the_digest_now(client: &Client, base: &str) {
    let schedules = format!("{base}/schedules");
    until_page(client, &schedules, "the digest schedule led", |text| {
        let leader = format!("(pid {})", std::process::id());
        text.lines()
            .any(|line| line.starts_with("digest ") && line.contains(&leader))
    })
    .await;
    // Other tests' schedules may be on the page: this row's button.
    let notice = click_at(client, "//form[@action='/schedules/digest/fire']/button").await;
    let id = notice
        .strip_prefix("schedule digest: tick ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{notice}"))
        .to_owned();
    assert!(id.starts_with("digest@"), "{id}");
    until("the digest tick run", async || demo::digest_done(&id)).await;
}
