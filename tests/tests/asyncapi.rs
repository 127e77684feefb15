//! A job type's payload schema (`#[job(schema)]`, feature `schemars`) in
//! its workers' heartbeats.

use std::time::Duration;

use qjob::admin::Admin;
use qjob::{Job, JobContext, JobError, Worker, job};
use qjob_tests::scenarios::Env;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

#[job(queue = "qjob.test.asyncapi.invoice", schema)]
async fn asyncapi_invoice(_invoice: Invoice, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "qjob.test.asyncapi.classic")]
async fn asyncapi_classic(_n: u32, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[test]
fn schema_gives_the_payloads_draft_07_schema_and_its_absence_none() {
    let schema = AsyncapiInvoiceJob::payload_schema().expect("a schema");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["title"], "Invoice");
    assert_eq!(
        schema["required"],
        serde_json::json!(["account", "cents", "lines"])
    );
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
    let workers = admin
        .wait_for_workers(1, qjob_tests::scenarios::LIMIT)
        .await;
    let jobs = &workers[0].status.jobs;
    let schema_of = |name: &str| {
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
