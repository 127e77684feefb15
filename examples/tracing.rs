//! One trace from the request that enqueues a job to the handler's own
//! spans, across the broker and a retry (the `opentelemetry` feature): the
//! spans go to an in-memory OpenTelemetry exporter and are printed as a
//! tree at the end. Swap the exporter for OTLP to see the same in Jaeger or
//! Tempo.
//!
//! ```text
//! cargo run --example tracing                 # in memory, no broker needed
//! QJOB_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example tracing
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::trace::{SpanId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use qjob::broker::Broker;
use qjob::{Client, JobContext, JobError, Worker, job};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    pub number: u32,
}

static CHARGED: Notify = Notify::const_new();

/// Fails its first attempt (the card network times out), then succeeds.
#[job(queue = "examples.tracing.charge", retry = 1, backoff = fixed("50ms"))]
pub async fn charge(order: Order, ctx: JobContext) -> Result<(), JobError> {
    let _card = tracing::info_span!("charge.card", order = order.number).entered();
    if ctx.attempt() == 1 {
        return Err(JobError::msg("card network timed out"));
    }
    CHARGED.notify_one();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), qjob::Error> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("qjob-example")))
        .init();

    let broker: Arc<dyn Broker> = match std::env::var("QJOB_AMQP_URL") {
        Ok(url) => Arc::new(qjob::AmqpBroker::connect(url).await?),
        Err(_) => Arc::new(qjob_testkit::MemoryBroker::new()),
    };
    let client = Client::new(broker.clone());
    client
        .enqueue::<ChargeJob>(Order { number: 42 })
        .instrument(tracing::info_span!("checkout", order = 42))
        .await?;
    Worker::builder(broker)
        .register(ChargeJob)
        .build()
        .run_until(CHARGED.notified())
        .await?;

    let spans = exporter.get_finished_spans().expect("spans recorded");
    let traces: std::collections::HashSet<_> =
        spans.iter().map(|s| s.span_context.trace_id()).collect();
    println!("{} spans in {} trace(s):", spans.len(), traces.len());
    print_tree(&spans, SpanId::INVALID, 0);
    Ok(())
}

/// Prints the spans under `parent`, oldest first, one indent per level.
fn print_tree(spans: &[SpanData], parent: SpanId, depth: usize) {
    let mut children: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.parent_span_id == parent)
        .collect();
    children.sort_by_key(|span| span.start_time);
    for span in children {
        let fields: HashMap<&str, String> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.to_string()))
            .collect();
        let shown: Vec<String> = ["queue", "attempt", "outcome", "order"]
            .iter()
            .filter_map(|key| Some(format!("{key}={}", fields.get(key)?)))
            .collect();
        println!(
            "{:indent$}{} [{:?}] trace {} {}",
            "",
            span.name,
            span.span_kind,
            span.span_context.trace_id(),
            shown.join(" "),
            indent = depth * 2
        );
        print_tree(spans, span.span_context.span_id(), depth + 1);
    }
}
