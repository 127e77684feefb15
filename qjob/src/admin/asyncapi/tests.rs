use serde_json::json;

use super::*;
use crate::protocol::DeclaredQueue;

fn job(name: &str, queue: &str) -> JobStatus {
    JobStatus {
        job: name.to_owned(),
        queue: queue.to_owned(),
        consumed_queues: vec![queue.to_owned()],
        dead_letter_queue: format!("{queue}.dlq"),
        queue_type: "classic".to_owned(),
        max_attempts: 4,
        declared: vec![DeclaredQueue {
            name: queue.to_owned(),
            queue_type: "classic".to_owned(),
            ..DeclaredQueue::default()
        }],
        ..JobStatus::default()
    }
}

fn api() -> AsyncApi {
    AsyncApi::new("Billing", "2.1.0")
        .with_server("amqp://billing:s3cret@rabbit.internal/billing")
        .unwrap()
}

#[test]
fn a_job_type_is_a_channel_an_operation_and_a_message() {
    let document = api().document(&[job("charge", "billing.charge")]);
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(document["info"]["title"], "Billing");
    assert_eq!(document["info"]["version"], "2.1.0");
    assert_eq!(
        document["servers"]["rabbitmq"],
        json!({
            "host": "rabbit.internal:5672",
            "pathname": "/billing",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "description": "RabbitMQ, virtual host `billing`.",
            "security": [{ "$ref": "#/components/securitySchemes/rabbitmq" }],
        })
    );
    assert!(!document.to_string().contains("s3cret"));

    let channel = &document["channels"]["charge"];
    assert_eq!(channel["address"], "billing.charge");
    assert_eq!(
        channel["bindings"]["amqp"],
        json!({
            "is": "queue",
            "queue": {
                "name": "billing.charge",
                "durable": true,
                "exclusive": false,
                "autoDelete": false,
                "vhost": "billing",
            },
            "bindingVersion": "0.3.0",
        })
    );
    let description = channel["description"].as_str().unwrap();
    assert!(
        description.starts_with("Job type `charge`'s classic work queue. A job gets 4 attempts"),
        "{description}"
    );
    assert!(
        description.contains("`billing.charge.dlq`"),
        "{description}"
    );
    assert_eq!(channel.get("parameters"), None);

    let operation = &document["operations"]["enqueue_charge"];
    assert_eq!(operation["action"], "send");
    assert_eq!(operation["channel"]["$ref"], "#/channels/charge");
    assert_eq!(
        operation["messages"],
        json!([{ "$ref": "#/channels/charge/messages/charge" }])
    );
    assert_eq!(
        operation["bindings"]["amqp"],
        json!({ "deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0" })
    );

    let message = &document["components"]["messages"]["charge"];
    assert_eq!(message["contentType"], "application/json");
    let properties = message["description"].as_str().unwrap();
    assert!(
        properties.contains("`message_id` the job's id"),
        "{properties}"
    );
    assert!(properties.contains("no `priority`"), "{properties}");
    let headers = message["headers"]["properties"].as_object().unwrap();
    let mut names: Vec<&str> = headers.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["qjob-enqueued-at", "traceparent", "tracestate"]);
    assert_eq!(message["payload"], json!({ "description": NO_SCHEMA }));
    assert_eq!(document["components"].get("schemas"), None);
}

#[test]
fn without_a_server_the_document_names_none() {
    let document = AsyncApi::new("Jobs", "1.0.0").document(&[job("charge", "billing.charge")]);
    assert_eq!(document.get("servers"), None);
    assert_eq!(document["components"].get("securitySchemes"), None);
    let queue = &document["channels"]["charge"]["bindings"]["amqp"]["queue"];
    assert_eq!(queue.get("vhost"), None);
}

#[test]
fn a_partitioned_job_routes_by_a_parameter() {
    let mut webhooks = job("deliver", "webhooks");
    webhooks.partitions = Some(3);
    webhooks.consumed_queues = vec![
        "webhooks.p0".into(),
        "webhooks.p1".into(),
        "webhooks.p2".into(),
    ];
    let document = api().document(&[webhooks]);
    let channel = &document["channels"]["deliver"];
    assert_eq!(channel["address"], "webhooks.p{partition}");
    assert_eq!(
        channel["bindings"]["amqp"]["queue"]["name"],
        "webhooks.p{partition}"
    );
    let partition = &channel["parameters"]["partition"];
    assert_eq!(partition["enum"], json!(["0", "1", "2"]));
    let how = partition["description"].as_str().unwrap();
    assert!(
        how.contains("offset basis 0xcbf29ce484222325, prime 0x100000001b3"),
        "{how}"
    );
    assert!(how.contains("modulo 3"), "{how}");
    // The hash the description gives is the one producers use.
    assert_eq!(
        crate::policy::partition::partition_for("customer-42", 3),
        (crate::policy::partition::fnv1a64(b"customer-42") % 3) as u16
    );
    let description = channel["description"].as_str().unwrap();
    assert!(
        description.contains("`webhooks.p0` … `webhooks.p2`"),
        "{description}"
    );
    assert!(
        description.contains("classic partition queues"),
        "{description}"
    );
    assert!(
        description.contains("never to `webhooks` (no queue)"),
        "{description}"
    );
}

#[test]
fn shards_caps_priorities_and_single_active_are_told() {
    let mut sharded = job("export", "exports");
    sharded.shards = Some(2);
    sharded.declared[0].max_length = Some(500);
    let mut single = job("sync", "sync");
    single.declared[0].single_active = true;
    single.priorities = Some(5);
    single.queue_type = "quorum".to_owned();
    let document = api().document(&[sharded, single]);
    let export = document["channels"]["export"]["description"]
        .as_str()
        .unwrap();
    assert!(
        export.contains("Sharded over 2 queues, `exports` and `exports.s1`"),
        "{export}"
    );
    assert!(export.contains("At most 500 jobs wait"), "{export}");
    let sync = document["channels"]["sync"]["description"]
        .as_str()
        .unwrap();
    assert!(
        sync.contains("quorum work queue, with a single active consumer"),
        "{sync}"
    );
    let message = document["components"]["messages"]["sync"]["description"]
        .as_str()
        .unwrap();
    assert!(message.contains("`priority` from 0 to 5"), "{message}");
}

#[test]
fn payload_schemas_and_their_definitions_go_in() {
    let mut invoice = job("invoice", "billing.invoice");
    invoice.payload_schema = Some(json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": { "line": { "$ref": "#/definitions/Line" } },
        "definitions": { "Line": { "type": "string" } },
    }));
    let document = api().document(&[invoice]);
    let payload = &document["components"]["messages"]["invoice"]["payload"];
    assert_eq!(
        payload,
        &json!({
            "type": "object",
            "properties": { "line": { "$ref": "#/components/schemas/Line" } },
        })
    );
    assert_eq!(
        document["components"]["schemas"],
        json!({ "Line": { "type": "string" } })
    );
}

#[test]
fn names_become_keys_once_each() {
    let document = api().document(&[job("r#type", "a"), job("r_type", "b"), job("", "c")]);
    let channels = document["channels"].as_object().unwrap();
    let mut keys: Vec<&str> = channels.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["_", "r_type", "r_type_2"]);
    assert_eq!(channels["r_type"]["address"], "a");
    assert_eq!(channels["r_type"]["title"], "r#type");
    assert_eq!(channels["r_type_2"]["address"], "b");
}
