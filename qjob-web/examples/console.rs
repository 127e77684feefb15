//! The console over a running demo: `cargo run --example console`, then
//! open <http://127.0.0.1:8080>. It needs RabbitMQ: `QJOB_AMQP_URL`, or
//! 127.0.0.1:5672 (guest/guest). `QJOB_CONSOLE_ADDR` moves the address.
//!
//! Two workers run three job types while a producer enqueues: `demo.email`
//! succeeds, `demo.report` fails now and then and retries with a backoff
//! (and every hundredth report takes a minute), `demo.import` fails for
//! good the first time it sees a job (a bug, fixed since: a replayed
//! import succeeds), and a few emails are scheduled for later. Both
//! workers carry the hourly `digest` schedule. Pause a job type, replay a
//! dead letter, cancel a slow report from the running jobs, run a
//! scheduled email now, find a job by id, fire the digest now, and watch
//! the workers.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qjob::admin::Admin;
use qjob::{AmqpBroker, Client, Error, JobContext, JobError, Worker, job};
use serde::{Deserialize, Serialize};

/// A demo job's payload.
#[derive(Debug, Serialize, Deserialize)]
pub struct Task {
    pub n: u64,
}

#[job(queue = "demo.email", prefetch = 10, concurrency = 4)]
pub async fn email(task: Task, _ctx: JobContext) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(20 + task.n % 30)).await;
    Ok(())
}

#[job(queue = "demo.report", retry = 3, backoff = fixed("2s"), concurrency = 2)]
pub async fn report(task: Task, ctx: JobContext) -> Result<(), JobError> {
    let rendering = if task.n % 100 == 99 {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(100)
    };
    tokio::select! {
        _ = ctx.cancelled() => return Err(JobError::msg("cancelled while rendering")),
        _ = tokio::time::sleep(rendering) => {}
    }
    if task.n.is_multiple_of(5) && ctx.attempt() == 1 {
        return Err(JobError::msg(format!(
            "report {}: upstream timed out",
            task.n
        )));
    }
    Ok(())
}

/// The imports seen: the first run of each fails (the bug), a replay runs
/// again and succeeds.
static IMPORTED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The imports that succeeded, by job id.
static IMPORTS_DONE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Whether the import with job id `id` succeeded.
pub fn import_done(id: &str) -> bool {
    IMPORTS_DONE
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|done| done.contains(id))
}

#[job(queue = "demo.import", retry = 0)]
async fn import(task: Task, ctx: JobContext) -> Result<(), JobError> {
    let id = ctx.job_id().to_string();
    let first = IMPORTED
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(id.clone());
    if first && task.n.is_multiple_of(3) {
        return Err(JobError::permanent(JobError::msg(format!(
            "import {}: column \"amount\" is not a number",
            task.n
        ))));
    }
    IMPORTS_DONE
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(id);
    Ok(())
}

/// The digests that ran, by job id (a tick's: `digest@<time>`).
static DIGESTS_DONE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Whether the digest with job id `id` ran.
pub fn digest_done(id: &str) -> bool {
    DIGESTS_DONE
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|done| done.contains(id))
}

/// Every hour, on the hour (schedule `digest`, carried by both workers).
#[job(queue = "demo.digest", cron = "0 0 * * * *")]
async fn digest(_: (), ctx: JobContext) -> Result<(), JobError> {
    DIGESTS_DONE
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(ctx.job_id().to_string());
    Ok(())
}

/// The running demo: its workers and producer stop when it is dropped.
#[derive(Debug)]
pub struct Demo {
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    producer: tokio::task::JoinHandle<()>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.producer.abort();
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// Starts two workers and a producer on `broker`, with a few dead letters
/// to look at.
pub async fn start(broker: AmqpBroker, heartbeat: Duration) -> Result<Demo, Error> {
    let broker = Arc::new(broker);
    let mut stop = Vec::new();
    let workers = [
        Worker::builder(broker.clone())
            .register(EmailJob)
            .register(ReportJob)
            .register(ImportJob)
            .register(DigestJob),
        Worker::builder(broker.clone())
            .register(EmailJob)
            .register(ImportJob)
            .register(DigestJob),
    ];
    for builder in workers {
        let worker = builder.heartbeat_interval(heartbeat).build();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stop.push(tx);
        tokio::spawn(async move {
            let stopped = worker.run_until(async {
                let _ = rx.await;
            });
            if let Err(error) = stopped.await {
                eprintln!("worker failed: {error}");
            }
        });
    }
    let client = Client::new(broker.clone());
    for n in 0..6 {
        client.enqueue::<ImportJob>(Task { n }).await?;
    }
    for hours in 1..=3 {
        let later = Duration::from_secs(hours * 3600);
        client
            .enqueue_in::<EmailJob>(Task { n: hours }, later)
            .await?;
    }
    let producer = tokio::spawn(async move {
        let mut n = 6;
        loop {
            let _ = client.enqueue::<EmailJob>(Task { n }).await;
            if n.is_multiple_of(4) {
                let _ = client.enqueue::<ReportJob>(Task { n }).await;
            }
            if n.is_multiple_of(25) {
                let _ = client.enqueue::<ImportJob>(Task { n }).await;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    Ok(Demo { stop, producer })
}

/// The console's router over `broker`, answering at `host` only (it has no
/// authentication: no other site may rebind its name to it).
pub async fn console(
    broker: AmqpBroker,
    refresh: Duration,
    host: &str,
) -> Result<axum::Router, Error> {
    let admin = Arc::new(Admin::connect(broker).await?);
    let console = qjob_web::Console::new(admin)
        .refresh(refresh)
        .allowed_hosts([host]);
    Ok(console.router())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("QJOB_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let broker = AmqpBroker::connect(url).await?;
    let _demo = start(broker.clone(), Duration::from_secs(2)).await?;
    let addr = std::env::var("QJOB_CONSOLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let router = console(broker, Duration::from_secs(3), &addr).await?;
    println!("qjob console on http://{addr} (Ctrl-C stops)");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
