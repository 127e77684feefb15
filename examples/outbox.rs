//! Enqueue in the same transaction as your data: an order and its charge
//! job commit together, or neither exists. A worker relays the outbox to
//! RabbitMQ and runs the charge.
//!
//! Needs PostgreSQL and RabbitMQ:
//!
//! ```text
//! cargo run --example outbox
//! QJOB_PG_URL=postgres://user@host/db QJOB_AMQP_URL=amqp://… cargo run --example outbox
//! ```
//!
//! (PostgreSQL: `postgres://postgres@127.0.0.1:5432/test` by default;
//! RabbitMQ: `amqp://guest:guest@127.0.0.1:5672/%2f`.) It creates the
//! tables `example_orders` and `example_outbox`.

use qjob::outbox::Outbox;
use qjob::{AmqpBroker, Client, JobContext, JobError, Worker, job};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
pub struct Charge {
    pub order: i64,
    pub cents: i64,
}

static CHARGED: Notify = Notify::const_new();

#[job(queue = "example.outbox.charge", retry = 3)]
async fn charge(job: Charge, ctx: JobContext) -> Result<(), JobError> {
    println!(
        "charging order {} ({} cents): job {}",
        job.order,
        job.cents,
        ctx.job_id()
    );
    CHARGED.notify_one();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pg_url = std::env::var("QJOB_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let amqp_url = std::env::var("QJOB_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let pool = sqlx::PgPool::connect(&pg_url)
        .await
        .map_err(|error| format!("this example needs PostgreSQL at {pg_url}: {error}"))?;
    let broker = AmqpBroker::connect(amqp_url.as_str()).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_orders (id bigint PRIMARY KEY, cents bigint NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let outbox = Outbox::new(Client::new(broker.clone())).with_table("example_outbox")?;
    outbox.migrate(&pool).await?;

    // A worker that relays the outbox and runs the charges, until the
    // first charge ran.
    let worker = Worker::builder(broker)
        .register(ChargeJob)
        .relay(outbox.relay(pool.clone()))
        .build();
    let charged = CHARGED.notified();
    let running = tokio::spawn(worker.run_until(charged));

    let order: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) + 1 FROM example_orders")
        .fetch_one(&pool)
        .await?;

    // An order that rolls back: no order, and its job never runs.
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO example_orders (id, cents) VALUES ($1, $2)")
        .bind(order)
        .bind(999)
        .execute(&mut *tx)
        .await?;
    let lost = outbox
        .enqueue::<ChargeJob>(&mut tx, Charge { order, cents: 999 })
        .await?;
    tx.rollback().await?;
    println!("order {order} rolled back: job {lost} will never run");

    // An order that commits: its charge runs, once the relay has published it.
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO example_orders (id, cents) VALUES ($1, $2)")
        .bind(order)
        .bind(1250)
        .execute(&mut *tx)
        .await?;
    let job = outbox
        .enqueue::<ChargeJob>(&mut tx, Charge { order, cents: 1250 })
        .await?;
    tx.commit().await?;
    println!("order {order} committed with job {job}");

    running.await??;
    let stats = outbox.stats(&pool).await?;
    println!("outbox: {} rows waiting", stats.depth);
    Ok(())
}
