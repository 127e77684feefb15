//! A worker exposing Prometheus metrics and a health endpoint over HTTP.
//!
//! ```text
//! cargo run --example metrics_and_health            # runs a batch, prints the scrape, exits
//! QJOB_SERVE=1 cargo run --example metrics_and_health
//! curl -s 127.0.0.1:9898/metrics; curl -si 127.0.0.1:9898/health
//! ```
//!
//! Uses RabbitMQ when `QJOB_AMQP_URL` is set, the in-memory broker otherwise.

use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use qjob::broker::Broker;
use qjob::{Client, Health, JobContext, JobError, Worker, job};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ADDRESS: &str = "127.0.0.1:9898";

#[job(queue = "example.metered", retry = 2, concurrency = 4)]
async fn metered(n: u32, ctx: JobContext) -> Result<(), JobError> {
    tokio::time::sleep(std::time::Duration::from_millis(u64::from(n % 7) * 3)).await;
    if n.is_multiple_of(5) && ctx.attempt() == 1 {
        return Err(JobError::msg("flaky downstream"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let memory = qjob_testkit::MemoryBroker::new();
    let broker: Arc<dyn Broker> = match std::env::var("QJOB_AMQP_URL") {
        Ok(url) => Arc::new(qjob::AmqpBroker::connect(url).await?),
        Err(_) => Arc::new(memory.clone()),
    };
    let worker = Worker::builder(broker.clone()).register(MeteredJob).build();
    let health = worker.health();
    let listener = TcpListener::bind(ADDRESS).await?;
    tokio::spawn(serve(listener, metrics.clone(), health.clone()));
    println!("serving http://{ADDRESS}/metrics and http://{ADDRESS}/health");

    let results = Client::new(broker).enqueue_all::<MeteredJob>(0..50).await?;
    println!("enqueued {} jobs", results.len());
    if std::env::var_os("QJOB_SERVE").is_some() {
        worker
            .run_until(async { tokio::signal::ctrl_c().await.unwrap() })
            .await?;
    } else {
        worker
            .run_until(memory.wait_until_empty("example.metered"))
            .await?;
        println!("{}", health_text(&health).1);
        for line in metrics.render().lines().filter(|l| l.starts_with("qjob_")) {
            println!("{line}");
        }
    }
    Ok(())
}

/// Answers `GET /metrics` and `GET /health`, one request per connection.
async fn serve(listener: TcpListener, metrics: PrometheusHandle, health: Health) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read = stream.read(&mut request).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..read]);
            let (status, body) = if request.starts_with("GET /metrics") {
                ("200 OK", metrics.render())
            } else if request.starts_with("GET /health") {
                health_text(&health)
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// The health report as text, 200 when ready and 503 otherwise.
fn health_text(health: &Health) -> (&'static str, String) {
    let report = health.report();
    let status = if report.is_ready() {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    (status, format!("{report:#?}\n"))
}
