//! The AsyncAPI document of the job types the workers run: see
//! [`AsyncApi`].

mod schemas;
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::Admin;
use crate::Error;
use crate::policy::partition::{FNV_OFFSET_BASIS, FNV_PRIME};
use crate::protocol::JobStatus;
use crate::topology::names;
use crate::{headers, trace};
use server::Server;

/// The version of AMQP's AsyncAPI bindings the documents use.
const AMQP_BINDINGS: &str = "0.3.0";

/// A payload without a schema.
const NO_SCHEMA: &str = "The job type gives no JSON Schema of its payload (`#[job(schema)]` \
                         with qjob's feature `schemars` adds one): any JSON its handler reads.";

/// What an [AsyncAPI 3.0.0] document says of itself and which broker it
/// names. The document describes the job types the workers run, for
/// producers in other languages: each job type's queue and how to route
/// to it, the message's AMQP properties and headers, and the payload's
/// JSON Schema where the job type gives one ([`crate::Job::payload_schema`],
/// `#[job(schema)]`).
///
/// | in the document | what it holds |
/// |---|---|
/// | `servers.rabbitmq` | the broker ([`AsyncApi::with_server`]): host and port, virtual host, no credentials |
/// | `channels.<job>` | the job type's work queue (`address`, an AMQP `queue` binding); for a partitioned job `<queue>.p{partition}`, the partition a parameter, with the hash that picks it; for a sharded or capped job, what that means to a producer |
/// | `operations.enqueue_<job>` | `send` to the channel: persistent (`deliveryMode` 2), `mandatory` |
/// | `components.messages.<job>` | `application/json`; its AMQP properties (the message id is the job id; a priority for a job type that takes them); the headers a producer may set; the payload's schema, or a description saying there is none |
/// | `components.schemas` | the payload schemas' definitions, shared by the job types whose definitions agree |
///
/// Each job type is described as the alive worker that started last runs
/// it, so that a rolling deploy's new code wins. The document's keys are
/// the job types' names, with characters other than ASCII letters,
/// digits, `.`, `-` and `_` written `_`.
///
/// # Examples
///
/// ```
/// # use qjob::{job, JobContext, JobError, Worker};
/// use qjob::admin::{Admin, AsyncApi};
/// use qjob_testkit::MemoryBroker;
/// # #[job(queue = "docs.asyncapi.email")]
/// # async fn email(_to: String, _ctx: JobContext) -> Result<(), JobError> { Ok(()) }
///
/// # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
/// let broker = MemoryBroker::new();
/// let admin = Admin::connect(broker.clone()).await?;
/// let worker = Worker::builder(broker.clone()).register(EmailJob).build();
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let running = tokio::spawn(worker.run_until(async { let _ = stopped.await; }));
///
/// admin.wait_for_workers(1, std::time::Duration::from_secs(5)).await;
/// let api = AsyncApi::new("Mail", "1.0.0").with_server("amqp://guest:guest@rabbit:5672/%2f")?;
/// let document = admin.asyncapi(&api);
/// assert_eq!(document["channels"]["email"]["address"], "docs.asyncapi.email");
/// assert_eq!(document["servers"]["rabbitmq"]["host"], "rabbit:5672");
/// # stop.send(()).unwrap(); running.await.unwrap()?;
/// # Ok(()) }
/// ```
///
/// [AsyncAPI 3.0.0]: https://www.asyncapi.com/docs/reference/specification/v3.0.0
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncApi {
    title: String,
    version: String,
    server: Option<Server>,
}

impl AsyncApi {
    /// A document titled `title` (`info.title`), at `version`
    /// (`info.version`: the version of the API it describes, the
    /// application's), naming no server.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            server: None,
        }
    }

    /// Names the broker at `url` (an AMQP URL, as `AmqpBroker::connect`
    /// takes) as the document's server and its virtual host in each
    /// queue's binding. The user and the password are left out.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL that is not `amqp://` or `amqps://`
    /// with a host (the message does not repeat the URL).
    pub fn with_server(mut self, url: &str) -> Result<Self, Error> {
        self.server = Some(Server::parse(url)?);
        Ok(self)
    }

    /// The document of `jobs`, one status a job type (a status as a
    /// worker's heartbeat reports it).
    pub fn document(&self, jobs: &[JobStatus]) -> Value {
        let vhost = self.server.as_ref().map(|server| server.vhost.as_str());
        let (mut channels, mut operations, mut messages) = (Map::new(), Map::new(), Map::new());
        let mut schemas = Map::new();
        let mut keys = BTreeSet::new();
        for job in jobs {
            let key = fresh_key(&job.job, &mut keys);
            channels.insert(key.clone(), channel(job, &key, vhost));
            operations.insert(format!("enqueue_{key}"), operation(job, &key));
            messages.insert(key.clone(), message(job, &key, &mut schemas));
        }
        let mut components = json!({ "messages": messages });
        if !schemas.is_empty() {
            components["schemas"] = Value::Object(schemas);
        }
        let mut document = json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": self.title,
                "version": self.version,
                "description": "The job types that qjob workers run on this broker, as their \
                    heartbeats report them. Enqueue a job by publishing its message through \
                    the default exchange (`\"\"`), with its channel's queue as the routing key. \
                    The workers declare the queues: a producer declares none (a declaration \
                    with other arguments fails).",
            },
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": components,
        });
        if let Some(server) = &self.server {
            let mut described = json!({
                "host": server.host,
                "protocol": server.protocol,
                "protocolVersion": "0.9.1",
                "description": format!("RabbitMQ, virtual host `{}`.", server.vhost),
                "security": [{ "$ref": "#/components/securitySchemes/rabbitmq" }],
            });
            if let Some(pathname) = server.pathname() {
                described["pathname"] = pathname.into();
            }
            document["servers"] = json!({ "rabbitmq": described });
            document["components"]["securitySchemes"] = json!({
                "rabbitmq": {
                    "type": "userPassword",
                    "description": "A RabbitMQ user allowed to write to the queues.",
                },
            });
        }
        document
    }
}

impl Admin {
    /// The AsyncAPI 3.0.0 document of the job types the alive workers run
    /// (see [`AsyncApi`]), each as the alive worker that started last
    /// reports it. It has no channel when no worker was heard.
    pub fn asyncapi(&self, api: &AsyncApi) -> Value {
        let mut newest: BTreeMap<String, (SystemTime, JobStatus)> = BTreeMap::new();
        for worker in self.workers().into_iter().filter(|worker| worker.alive) {
            let started = worker.status.started_at;
            for job in worker.status.jobs {
                match newest.get(&job.job) {
                    Some((seen, _)) if *seen >= started => {}
                    _ => {
                        newest.insert(job.job.clone(), (started, job));
                    }
                }
            }
        }
        let jobs: Vec<JobStatus> = newest.into_values().map(|(_, job)| job).collect();
        api.document(&jobs)
    }
}

/// `name` as a key of the document: ASCII letters, digits, `.`, `-` and
/// `_`, the rest `_` (AsyncAPI's component names, and no escaping in a
/// reference).
pub(super) fn component_name(name: &str) -> String {
    let key: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    if key.is_empty() { "_".to_owned() } else { key }
}

/// The key of job type `name`, made unique among `taken` with `_2`, `_3`…
fn fresh_key(name: &str, taken: &mut BTreeSet<String>) -> String {
    let key = component_name(name);
    let key = std::iter::once(key.clone())
        .chain((2..).map(|n| format!("{key}_{n}")))
        .find(|key| !taken.contains(key))
        .expect("a free key");
    taken.insert(key.clone());
    key
}

fn channel(job: &JobStatus, key: &str, vhost: Option<&str>) -> Value {
    let address = match job.partitions {
        Some(_) => names::partition_queue(&job.queue, "{partition}"),
        None => job.queue.clone(),
    };
    let mut queue = json!({
        "name": address,
        "durable": true,
        "exclusive": false,
        "autoDelete": false,
    });
    if let Some(vhost) = vhost {
        queue["vhost"] = vhost.into();
    }
    let mut channel = json!({
        "address": address,
        "title": job.job,
        "description": channel_description(job),
        "messages": { key: { "$ref": format!("#/components/messages/{key}") } },
        "bindings": {
            "amqp": { "is": "queue", "queue": queue, "bindingVersion": AMQP_BINDINGS },
        },
    });
    if let Some(partitions) = job.partitions {
        channel["parameters"] = json!({
            "partition": {
                "description": format!(
                    "The partition of the job's key, the text of its payload's `partition_by` \
                     field: the 64-bit FNV-1a hash (offset basis {FNV_OFFSET_BASIS:#x}, prime \
                     {FNV_PRIME:#x}) of the key's UTF-8 bytes, modulo {partitions}."
                ),
                "enum": (0..partitions).map(|index| index.to_string()).collect::<Vec<_>>(),
            },
        });
    }
    channel
}

/// What a producer needs to know of a job type's queues.
fn channel_description(job: &JobStatus) -> String {
    let first = job
        .consumed_queues
        .first()
        .and_then(|name| job.declared.iter().find(|queue| &queue.name == name));
    let single_active = job.partitions.is_none() && first.is_some_and(|queue| queue.single_active);
    let queues = match (job.partitions, single_active) {
        (Some(_), _) => "partition queues",
        (None, true) => "work queue, with a single active consumer",
        (None, false) => "work queue",
    };
    let attempts = match job.max_attempts {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts, the first and its retries"),
    };
    let mut text = format!(
        "Job type `{}`'s {} {queues}. A job gets {attempts}; one that fails them all, or whose \
         payload does not deserialize, goes to `{}`.",
        job.job, job.queue_type, job.dead_letter_queue,
    );
    if let Some(partitions) = job.partitions {
        let queues = listed(
            &names::partition_queue(&job.queue, 0),
            &names::partition_queue(&job.queue, partitions.saturating_sub(1)),
            partitions,
        );
        text.push_str(&format!(
            " {partitions} of them, {queues}, which keep the order of each key's jobs: publish \
             a job to the partition of its key (the `partition` parameter), never to `{}` (no \
             queue).",
            job.queue
        ));
    }
    if let Some(shards) = job.shards.filter(|&shards| shards > 1) {
        let queues = listed(
            &job.queue,
            &names::shard_queue(&job.queue, shards - 1),
            shards,
        );
        text.push_str(&format!(
            " Sharded over {shards} queues, {queues}, each consumed by every worker: a job may \
             go to any of them (qjob's producers pick one at random, spreading the load over \
             the broker's cores); `{}` is always right.",
            job.queue
        ));
    }
    if let Some(max_length) = first.and_then(|queue| queue.max_length) {
        text.push_str(&format!(
            " At most {max_length} jobs wait in each of its queues: a publish to a full one is \
             nacked (`reject-publish`), and the job is not enqueued."
        ));
    }
    text
}

/// `first` … `last` of `count` queues.
fn listed(first: &str, last: &str, count: u16) -> String {
    match count {
        0 | 1 => format!("`{first}`"),
        2 => format!("`{first}` and `{last}`"),
        _ => format!("`{first}` … `{last}`"),
    }
}

fn operation(job: &JobStatus, key: &str) -> Value {
    json!({
        "action": "send",
        "title": format!("Enqueue a `{}` job", job.job),
        "description": "Publish with publisher confirms: the job is enqueued once the broker \
            confirmed it. With `mandatory`, a job whose queue does not exist (the workers have \
            not declared it) comes back instead of vanishing; a returned or nacked publish \
            enqueued nothing.",
        "channel": { "$ref": format!("#/channels/{key}") },
        "messages": [{ "$ref": format!("#/channels/{key}/messages/{key}") }],
        "bindings": {
            "amqp": { "deliveryMode": 2, "mandatory": true, "bindingVersion": AMQP_BINDINGS },
        },
    })
}

fn message(job: &JobStatus, key: &str, schemas: &mut Map<String, Value>) -> Value {
    let payload = match &job.payload_schema {
        Some(schema) => schemas::hoisted(schema, key, schemas),
        None => json!({ "description": NO_SCHEMA }),
    };
    let priority = match job.priorities {
        Some(highest) => {
            format!("`priority` from 0 to {highest}: workers take higher ones first (none is 0)")
        }
        None => "no `priority`: the job type takes none".to_owned(),
    };
    json!({
        "name": job.job,
        "title": format!("A `{}` job", job.job),
        "contentType": "application/json",
        "description": format!(
            "The body is the payload as JSON. The AMQP properties: `content_type` \
             `application/json`; `delivery_mode` 2 (persistent); `message_id` the job's id, \
             which it keeps through its retries and dead letter: a UUID v7 is best, since the \
             workers read the job's enqueue time from it (a message without one gets a fresh \
             id); {priority}."
        ),
        "headers": headers_schema(),
        "payload": payload,
    })
}

/// The headers a producer may set (the rest of qjob's are qjob's own:
/// [`crate::headers`]).
fn headers_schema() -> Value {
    json!({
        "type": "object",
        "description": "The headers a producer may set; none is needed. A job without \
            qjob's headers is a first attempt, enqueued when its UUID v7 message id says, else \
            at its `timestamp` property, else on arrival. qjob writes its other `qjob-` headers \
            itself (retries, dead letters): leave them out, since a wrong one can make the job \
            malformed (dead-lettered unrun). Other headers are kept as they are.",
        "properties": {
            headers::ENQUEUED_AT: {
                "type": "integer",
                "minimum": 0,
                "description": "When the job was first enqueued, in milliseconds since the \
                    Unix epoch: for a producer whose message ids are not UUID v7.",
            },
            trace::TRACEPARENT: {
                "type": "string",
                "description": "The W3C trace context of the enqueuing span: the job's spans \
                    continue its trace (on workers with qjob's feature `opentelemetry`).",
            },
            trace::TRACESTATE: {
                "type": "string",
                "description": "The W3C trace state, beside `traceparent`.",
            },
        },
    })
}

#[cfg(test)]
mod tests;
