//! The AsyncAPI document of the job types the workers run
//! (`Admin::asyncapi`), on RabbitMQ and in memory: valid against the
//! official AsyncAPI 3.0.0 JSON Schema (vendored in `fixtures/asyncapi`,
//! checked offline), with each job type's queue, routing and payload
//! schema (`#[job(schema)]`, feature `schemars`).
//!
//! The RabbitMQ broker is shared with other tests, whose job types the
//! document holds too: the checks look at this file's own.

use std::time::{Duration, SystemTime};

use qjob::admin::{Admin, AsyncApi};
use qjob::{Job, JobContext, JobError, Worker, job};
use qjob_tests::scenarios::{Env, LIMIT};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const HEARTBEAT: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize, JsonSchema)]
struct Invoice {
    /// The account billed.
    account: String,
    cents: u64,
    lines: Vec<Line>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize)]
struct Hook {
    account: String,
}

#[job(queue = "qjob.test.asyncapi.invoice", schema)]
async fn asyncapi_invoice(_invoice: Invoice, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "qjob.test.asyncapi.classic")]
async fn asyncapi_classic(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "qjob.test.asyncapi.quorum", queue_type = "quorum", retry = 2)]
async fn asyncapi_quorum(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "qjob.test.asyncapi.hooks", partition_by = account, partitions = 4)]
async fn asyncapi_partitioned(_hook: Hook, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "qjob.test.asyncapi.priority", priorities = 5)]
async fn asyncapi_priority(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// Two builds of one job type (one name, one queue): the older gives no
/// schema, the newer one does.
mod older {
    use super::*;

    #[job(queue = "qjob.test.asyncapi.twin")]
    pub(super) async fn asyncapi_twin(_invoice: Invoice, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

mod newer {
    use super::*;

    #[job(queue = "qjob.test.asyncapi.twin", schema)]
    pub(super) async fn asyncapi_twin(_invoice: Invoice, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// The official AsyncAPI 3.0.0 schema's errors in `document`, each with
/// where it is.
fn asyncapi_errors(document: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(include_str!("../fixtures/asyncapi/3.0.0.json")).unwrap();
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles offline");
    validator
        .iter_errors(document)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

fn assert_valid(document: &Value) {
    let errors = asyncapi_errors(document);
    assert!(
        errors.is_empty(),
        "not a valid AsyncAPI 3.0.0 document: {errors:#?}\n{document:#}"
    );
}

/// What `reference` (`#/components/schemas/<name>`) points at in `document`.
fn resolved<'a>(document: &'a Value, reference: &Value) -> &'a Value {
    let pointer = reference.as_str().unwrap().strip_prefix('#').unwrap();
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{reference} resolves to nothing"))
}

/// Waits until the document has every channel of `keys`; returns it.
async fn document_with(admin: &Admin, api: &AsyncApi, keys: &[&str]) -> Value {
    qjob_tests::eventually(
        "the job types in the document",
        LIMIT,
        || admin.asyncapi(api),
        |document| {
            keys.iter()
                .all(|key| document["channels"].get(key).is_some())
        },
    )
    .await
}

#[test]
fn schema_gives_the_payloads_draft_07_schema_and_its_absence_none() {
    let schema = AsyncapiInvoiceJob::payload_schema().expect("a schema");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["title"], "Invoice");
    assert_eq!(schema["required"], json!(["account", "cents", "lines"]));
    assert_eq!(
        schema["properties"]["account"]["description"],
        "The account billed."
    );
    assert_eq!(
        schema["properties"]["lines"]["items"]["$ref"],
        "#/definitions/Line"
    );
    assert_eq!(
        schema["definitions"]["Line"]["properties"]["quantity"]["type"],
        "integer"
    );
    assert_eq!(AsyncapiClassicJob::payload_schema(), None);
}

#[tokio::test]
async fn heartbeats_carry_the_payload_schema() {
    let env = Env::memory().await;
    let admin = Admin::connect(env.broker()).await.unwrap();
    let running = env.run(
        Worker::builder(env.broker())
            .register(AsyncapiInvoiceJob)
            .register(AsyncapiClassicJob)
            .heartbeat_interval(HEARTBEAT)
            .build(),
    );
    let workers = admin.wait_for_workers(1, LIMIT).await;
    let schema_of = |name: &str| {
        let jobs = &workers[0].status.jobs;
        let job = jobs.iter().find(|job| job.job == name).unwrap();
        job.payload_schema.clone()
    };
    assert_eq!(
        schema_of(AsyncapiInvoiceJob::NAME),
        AsyncapiInvoiceJob::payload_schema()
    );
    assert_eq!(schema_of(AsyncapiClassicJob::NAME), None);
    running.stop().await.unwrap();
}

#[test]
fn the_schema_finds_what_is_wrong() {
    let document = json!({
        "asyncapi": "3.0.0",
        "info": { "title": "t", "version": "1" },
        "operations": { "o": { "action": "publish", "channel": { "$ref": "#/channels/c" } } },
    });
    let errors = asyncapi_errors(&document);
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("/operations/o")),
        "{errors:#?}"
    );
}

async fn the_document_describes_each_job_type(env: &Env) {
    env.reset::<AsyncapiInvoiceJob>().await;
    env.reset::<AsyncapiClassicJob>().await;
    env.reset::<AsyncapiQuorumJob>().await;
    env.reset::<AsyncapiPartitionedJob>().await;
    env.reset::<AsyncapiPriorityJob>().await;
    let admin = Admin::connect(env.broker()).await.unwrap();
    let running = env.run(
        Worker::builder(env.broker())
            .register(AsyncapiInvoiceJob)
            .register(AsyncapiClassicJob)
            .register(AsyncapiQuorumJob)
            .register(AsyncapiPartitionedJob)
            .register(AsyncapiPriorityJob)
            .heartbeat_interval(HEARTBEAT)
            .build(),
    );
    let api = AsyncApi::new("Billing", "1.2.3")
        .with_server("amqp://billing:s3cret@rabbit.internal:5672/%2f")
        .unwrap();
    let keys = [
        "asyncapi_invoice",
        "asyncapi_classic",
        "asyncapi_quorum",
        "asyncapi_partitioned",
        "asyncapi_priority",
    ];
    let document = document_with(&admin, &api, &keys).await;
    assert_valid(&document);
    assert!(!document.to_string().contains("s3cret"));
    assert_eq!(
        document["servers"]["rabbitmq"]["host"],
        "rabbit.internal:5672"
    );

    let channels = &document["channels"];
    let address = |key: &str| channels[key]["address"].as_str().unwrap().to_owned();
    assert_eq!(address("asyncapi_invoice"), AsyncapiInvoiceJob::QUEUE);
    assert_eq!(address("asyncapi_classic"), AsyncapiClassicJob::QUEUE);
    assert_eq!(address("asyncapi_quorum"), AsyncapiQuorumJob::QUEUE);
    assert_eq!(address("asyncapi_priority"), AsyncapiPriorityJob::QUEUE);
    assert_eq!(
        address("asyncapi_partitioned"),
        "qjob.test.asyncapi.hooks.p{partition}"
    );
    let partition = &channels["asyncapi_partitioned"]["parameters"]["partition"];
    assert_eq!(partition["enum"], json!(["0", "1", "2", "3"]));
    for key in keys {
        let queue = &channels[key]["bindings"]["amqp"]["queue"];
        assert_eq!(queue["name"], channels[key]["address"], "{key}");
        assert_eq!(queue["vhost"], "/", "{key}");
        let operation = &document["operations"][format!("enqueue_{key}")];
        assert_eq!(operation["action"], "send", "{key}");
        assert_eq!(operation["bindings"]["amqp"]["deliveryMode"], 2, "{key}");
    }
    let quorum = channels["asyncapi_quorum"]["description"].as_str().unwrap();
    assert!(quorum.contains("quorum work queue"), "{quorum}");
    assert!(quorum.contains("3 attempts"), "{quorum}");

    let messages = &document["components"]["messages"];
    let priority = messages["asyncapi_priority"]["description"]
        .as_str()
        .unwrap();
    assert!(priority.contains("`priority` from 0 to 5"), "{priority}");
    let classic = messages["asyncapi_classic"]["description"]
        .as_str()
        .unwrap();
    assert!(classic.contains("no `priority`"), "{classic}");

    // The payload's schema for the job type that gives one, its
    // definitions among the components; a description for the others.
    let invoice = &messages["asyncapi_invoice"]["payload"];
    assert_eq!(invoice["title"], "Invoice");
    assert_eq!(invoice.get("$schema"), None);
    assert_eq!(invoice["required"], json!(["account", "cents", "lines"]));
    let line = resolved(&document, &invoice["properties"]["lines"]["items"]["$ref"]);
    assert_eq!(line["properties"]["quantity"]["type"], "integer");
    for key in [
        "asyncapi_classic",
        "asyncapi_quorum",
        "asyncapi_partitioned",
    ] {
        let payload = messages[key]["payload"].as_object().unwrap();
        assert_eq!(payload.keys().collect::<Vec<_>>(), ["description"], "{key}");
        assert!(
            payload["description"]
                .as_str()
                .unwrap()
                .contains("no JSON Schema")
        );
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn the_document_describes_each_job_type_on_rabbitmq() {
    the_document_describes_each_job_type(&Env::amqp().await).await;
}

#[tokio::test]
async fn the_document_describes_each_job_type_in_memory() {
    the_document_describes_each_job_type(&Env::memory().await).await;
}

#[tokio::test]
async fn the_worker_started_last_describes_a_job_type() {
    let env = Env::memory().await;
    let admin = Admin::connect(env.broker()).await.unwrap();
    let start = |worker: Worker| env.run(worker);
    let builder = || Worker::builder(env.broker()).heartbeat_interval(HEARTBEAT);
    let older = start(builder().register(older::AsyncapiTwinJob).build());
    let first = admin.wait_for_workers(1, LIMIT).await;
    let older_started = first[0].status.started_at;
    // Heartbeats count time in milliseconds: the newer worker starts in a
    // later one.
    qjob_tests::until("a later millisecond", LIMIT, async || {
        SystemTime::now() > older_started + Duration::from_millis(1)
    })
    .await;
    let newer = start(builder().register(newer::AsyncapiTwinJob).build());
    let api = AsyncApi::new("Twins", "1.0.0");
    let payload =
        |document: &Value| document["components"]["messages"]["asyncapi_twin"]["payload"].clone();
    let document = qjob_tests::eventually(
        "the newer worker's schema",
        LIMIT,
        || admin.asyncapi(&api),
        |document| payload(document).get("title").is_some(),
    )
    .await;
    assert_eq!(payload(&document)["title"], "Invoice");
    assert_valid(&document);

    newer.stop().await.unwrap();
    qjob_tests::eventually(
        "the older worker's description, once the newer stopped",
        LIMIT,
        || admin.asyncapi(&api),
        |document| {
            payload(document)["description"]
                .as_str()
                .is_some_and(|text| text.contains("no JSON Schema"))
        },
    )
    .await;
    older.stop().await.unwrap();
}
