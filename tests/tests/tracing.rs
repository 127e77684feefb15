//! Trace propagation: the span that enqueues a job and the spans of its
//! attempts belong to one trace, on both brokers, through a retry. Its own
//! binary: it installs a global tracing subscriber.

use std::sync::OnceLock;

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId, TracerProvider};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use qjob::broker::Broker;
use qjob::broker::HeaderValue;
use qjob::{Client, Job, JobContext, JobError, trace};
use qjob_tests::eventually;
use qjob_tests::scenarios::{Env, LIMIT};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing::instrument::WithSubscriber;
use tracing::subscriber::NoSubscriber;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    pub number: u32,
}

/// Fails its first attempt, so that the trace shows a retry; opens a span
/// of its own on each attempt.
async fn charge(order: Order, ctx: JobContext) -> Result<(), JobError> {
    tracing::info_span!("charge.card", order = order.number).in_scope(|| {
        if ctx.attempt() == 1 {
            Err(JobError::msg("card network timed out"))
        } else {
            Ok(())
        }
    })
}

#[qjob::job(queue = "qjob.test.tracing.memory", retry = 1, backoff = fixed("10ms"))]
async fn charge_in_memory(order: Order, ctx: JobContext) -> Result<(), JobError> {
    charge(order, ctx).await
}

#[qjob::job(queue = "qjob.test.tracing.amqp", retry = 1, backoff = fixed("10ms"))]
async fn charge_on_rabbitmq(order: Order, ctx: JobContext) -> Result<(), JobError> {
    charge(order, ctx).await
}

#[qjob::job(queue = "qjob.test.tracing.untraced")]
async fn untraced(order: Order, _ctx: JobContext) -> Result<(), JobError> {
    let _ = order;
    Ok(())
}

/// The spans every test in this binary exports.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("qjob-tests")));
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        exporter
    })
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .expect("exporter readable")
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace)
        .collect()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

/// Enqueues one job inside a `checkout` span, runs a worker until both
/// attempts are exported, and checks that everything is one trace: the
/// producer's span, qjob's enqueue span, each attempt and the handler's own
/// spans, parent to child.
async fn a_producer_span_and_the_handler_spans_share_one_trace<J: Job<Payload = Order>>(
    env: Env,
    job: J,
) {
    exporter();
    env.reset::<J>().await;
    let checkout = tracing::info_span!("checkout");
    let trace = {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        checkout.context().span().span_context().trace_id()
    };
    assert_ne!(trace, TraceId::INVALID, "the layer records the test's span");
    let job_id = env
        .client()
        .enqueue::<J>(Order { number: 7 })
        .instrument(checkout)
        .await
        .expect("enqueued");

    let running = env.start(job);
    let spans = eventually(
        "both attempts exported",
        LIMIT,
        || spans_of(trace),
        |spans| named(spans, "qjob.attempt").len() == 2,
    )
    .await;
    running.stop().await.expect("worker stops");

    let checkout = named(&spans, "checkout")[0];
    let enqueue = named(&spans, "qjob.enqueue")[0];
    assert_eq!(enqueue.parent_span_id, id(checkout));
    assert_eq!(enqueue.span_kind, SpanKind::Producer);
    assert_eq!(attribute(enqueue, "queue"), Some(&Value::from(J::QUEUE)));

    let mut attempts = named(&spans, "qjob.attempt");
    attempts.sort_by_key(|span| attribute(span, "attempt").map(|v| v.to_string()));
    for (n, (attempt, outcome)) in attempts.iter().zip(["retried", "succeeded"]).enumerate() {
        assert_eq!(
            attempt.parent_span_id,
            id(enqueue),
            "attempt {} continues the enqueue span",
            n + 1
        );
        assert!(attempt.parent_span_is_remote);
        assert_eq!(attempt.span_kind, SpanKind::Consumer);
        assert_eq!(
            attribute(attempt, "attempt"),
            Some(&Value::I64(n as i64 + 1))
        );
        assert_eq!(
            attribute(attempt, "job_id"),
            Some(&Value::from(job_id.to_string()))
        );
        assert_eq!(attribute(attempt, "outcome"), Some(&Value::from(outcome)));
    }
    assert!(matches!(attempts[0].status, Status::Error { .. }));
    assert!(!matches!(attempts[1].status, Status::Error { .. }));

    let handler_spans = named(&spans, "charge.card");
    assert_eq!(handler_spans.len(), 2);
    for handler in handler_spans {
        assert!(
            attempts.iter().any(|a| id(a) == handler.parent_span_id),
            "the handler's span is a child of an attempt"
        );
    }
}

#[tokio::test]
async fn in_memory_a_producer_span_and_the_handler_spans_share_one_trace() {
    a_producer_span_and_the_handler_spans_share_one_trace(Env::memory().await, ChargeInMemoryJob)
        .await;
}

#[tokio::test]
async fn on_rabbitmq_a_producer_span_and_the_handler_spans_share_one_trace() {
    a_producer_span_and_the_handler_spans_share_one_trace(Env::amqp().await, ChargeOnRabbitmqJob)
        .await;
}

/// Without a tracing subscriber a job carries no trace headers (they would
/// cost the broker a header table per publish for nothing); with one, an
/// enqueue outside any span starts a trace at its `qjob.enqueue` span.
#[tokio::test]
async fn a_traceparent_is_written_only_when_there_is_a_trace() {
    exporter();
    let env = Env::amqp().await;
    env.reset::<UntracedJob>().await;
    let client: Client = env.client();
    client
        .enqueue::<UntracedJob>(Order { number: 1 })
        .with_subscriber(NoSubscriber::default())
        .await
        .unwrap();
    client
        .enqueue::<UntracedJob>(Order { number: 2 })
        .await
        .unwrap();

    let broker = env.broker();
    let first = get(&*broker, UntracedJob::QUEUE).await;
    assert!(!first.headers.contains_key(trace::TRACEPARENT), "{first:?}");
    let second = get(&*broker, UntracedJob::QUEUE).await;
    let Some(HeaderValue::Str(value)) = second.headers.get(trace::TRACEPARENT) else {
        panic!("expected a traceparent: {second:?}");
    };
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(fields.len(), 4, "{value}");
    assert_eq!(fields[0], "00");
    let trace = TraceId::from_hex(fields[1]).expect("a trace id");
    let span = SpanId::from_hex(fields[2]).expect("a span id");
    let spans = spans_of(trace);
    let enqueue = named(&spans, "qjob.enqueue");
    assert_eq!(enqueue.len(), 1, "{spans:?}");
    assert_eq!(id(enqueue[0]), span);
    assert_eq!(enqueue[0].parent_span_id, SpanId::INVALID);
}

/// Takes the next message of `queue`; enqueue confirmed it, so it is there.
async fn get(broker: &dyn Broker, queue: &str) -> qjob::broker::Message {
    let delivery = broker
        .get(queue)
        .await
        .expect("get works")
        .expect("a message is ready");
    delivery.acker.ack().await.expect("acked");
    delivery.message
}
