//! qjob's quickstart: two jobs, a few enqueues, one job failing through its
//! retries into the dead-letter queue, a worker, a clean shutdown.
//!
//! ```text
//! cargo run --example quickstart                 # in memory, no broker needed
//! QJOB_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use qjob::broker::Broker;
use qjob::{Client, JobContext, JobError, Worker, job};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
    pub subject: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Charge {
    pub account: String,
    pub cents: u64,
}

/// Jobs whose outcome is final (succeeded, or failed on their last attempt).
static FINISHED: AtomicUsize = AtomicUsize::new(0);
static ALL_FINISHED: Notify = Notify::const_new();
const JOBS: usize = 5;

fn finished() {
    if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == JOBS {
        ALL_FINISHED.notify_one();
    }
}

#[job(queue = "quickstart.email", prefetch = 10, concurrency = 4)]
pub async fn send_email(email: Email, ctx: JobContext) -> Result<(), JobError> {
    println!(
        "email   {:<18} {:?} (job {})",
        email.to,
        email.subject,
        ctx.job_id()
    );
    finished();
    Ok(())
}

#[job(queue = "quickstart.charge", retry = 2)]
pub async fn charge(charge: Charge, ctx: JobContext) -> Result<(), JobError> {
    if charge.account == "acct-frozen" {
        println!(
            "charge  {:<18} attempt {}/{} failed: account frozen",
            charge.account,
            ctx.attempt(),
            ctx.max_attempts()
        );
        if ctx.is_last_attempt() {
            finished();
        }
        return Err(JobError::msg("account frozen"));
    }
    println!("charge  {:<18} {} cents", charge.account, charge.cents);
    finished();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), qjob::Error> {
    qjob_examples::init_logs("qjob=warn");

    let memory = qjob_testkit::MemoryBroker::new();
    let broker: Arc<dyn Broker> = match std::env::var("QJOB_AMQP_URL") {
        Ok(url) => {
            println!("broker: RabbitMQ at {url}");
            Arc::new(qjob::AmqpBroker::connect(url).await?)
        }
        Err(_) => {
            println!("broker: in memory (set QJOB_AMQP_URL to use RabbitMQ)");
            Arc::new(memory.clone())
        }
    };

    let client = Client::new(broker.clone());
    for (to, subject) in [
        ("ada@example.com", "welcome"),
        ("alan@example.com", "receipt"),
    ] {
        let email = Email {
            to: to.into(),
            subject: subject.into(),
        };
        client.enqueue::<SendEmailJob>(email).await?;
    }
    for (account, cents) in [("acct-1", 1999), ("acct-2", 500), ("acct-frozen", 250)] {
        let charge = Charge {
            account: account.into(),
            cents,
        };
        client.enqueue::<ChargeJob>(charge).await?;
    }
    println!("enqueued {JOBS} jobs");

    Worker::builder(broker)
        .register(SendEmailJob)
        .register(ChargeJob)
        .build()
        .run_until(ALL_FINISHED.notified())
        .await?;

    println!("worker stopped cleanly");
    if std::env::var("QJOB_AMQP_URL").is_err() {
        for dead in memory.messages("quickstart.charge.dlq") {
            let body = String::from_utf8_lossy(&dead.body);
            let error = &dead.headers[qjob::headers::ERROR];
            let attempts = &dead.headers[qjob::headers::ATTEMPTS];
            println!(
                "dead letter in quickstart.charge.dlq: {body} after {attempts} attempts: {error}"
            );
        }
    } else {
        println!("the frozen account's charge is in queue quickstart.charge.dlq");
    }
    Ok(())
}
