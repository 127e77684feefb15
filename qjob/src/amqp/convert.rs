//! Mapping qjob's messages and headers to and from AMQP properties.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldTable, LongString, ShortString};

use crate::broker::{ExactValue, HeaderValue, Headers, Message, QueueSpec};
use crate::{Error, QueueType};

pub(super) fn properties(message: &Message) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if !message.headers.is_empty() {
        properties = properties.with_headers(table(&message.headers));
    }
    if let Some(id) = &message.id {
        properties = properties.with_message_id(id.as_str().into());
    }
    if let Some(kind) = &message.kind {
        properties = properties.with_type(kind.as_str().into());
    }
    if let Some(timestamp) = message.timestamp {
        properties = properties.with_timestamp(timestamp);
    }
    if let Some(priority) = message.priority {
        properties = properties.with_priority(priority);
    }
    properties
}

fn table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(ShortString::from(name.as_str()), to_amqp(value));
    }
    table
}

fn headers(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), from_amqp(value)))
        .collect()
}

pub(super) fn message(properties: &BasicProperties, body: Vec<u8>) -> Message {
    let headers = properties
        .headers()
        .as_ref()
        .map(headers)
        .unwrap_or_default();
    Message {
        id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        kind: properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str().to_owned()),
        timestamp: *properties.timestamp(),
        priority: *properties.priority(),
        headers,
        body,
    }
}

fn to_amqp(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::List(items) => {
            AMQPValue::FieldArray(items.iter().map(to_amqp).collect::<Vec<_>>().into())
        }
        HeaderValue::Table(headers) => AMQPValue::FieldTable(table(headers)),
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        HeaderValue::RawStr(bytes) => AMQPValue::LongString(LongString::from(bytes.clone())),
        HeaderValue::Bytes(bytes) => AMQPValue::ByteArray(ByteArray::from(bytes.clone())),
        HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
        HeaderValue::Float(x) => AMQPValue::Double(*x),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Exact(exact) => match *exact {
            ExactValue::I8(n) => AMQPValue::ShortShortInt(n),
            ExactValue::U8(n) => AMQPValue::ShortShortUInt(n),
            ExactValue::I16(n) => AMQPValue::ShortInt(n),
            ExactValue::U16(n) => AMQPValue::ShortUInt(n),
            ExactValue::I32(n) => AMQPValue::LongInt(n),
            ExactValue::U32(n) => AMQPValue::LongUInt(n),
            ExactValue::F32(x) => AMQPValue::Float(x),
            ExactValue::Decimal { scale, value } => {
                AMQPValue::DecimalValue(DecimalValue { scale, value })
            }
            ExactValue::Timestamp(t) => AMQPValue::Timestamp(t),
            ExactValue::Void => AMQPValue::Void,
        },
    }
}

fn from_amqp(value: &AMQPValue) -> HeaderValue {
    let exact = HeaderValue::Exact;
    match value {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(n) => exact(ExactValue::I8(*n)),
        AMQPValue::ShortShortUInt(n) => exact(ExactValue::U8(*n)),
        AMQPValue::ShortInt(n) => exact(ExactValue::I16(*n)),
        AMQPValue::ShortUInt(n) => exact(ExactValue::U16(*n)),
        AMQPValue::LongInt(n) => exact(ExactValue::I32(*n)),
        AMQPValue::LongUInt(n) => exact(ExactValue::U32(*n)),
        AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
        AMQPValue::Float(x) => exact(ExactValue::F32(*x)),
        AMQPValue::Double(x) => HeaderValue::Float(*x),
        AMQPValue::DecimalValue(d) => exact(ExactValue::Decimal {
            scale: d.scale,
            value: d.value,
        }),
        // Never in a table on the wire (it has no type tag there).
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_owned()),
            Err(_) => HeaderValue::RawStr(s.as_bytes().to_vec()),
        },
        AMQPValue::Timestamp(t) => exact(ExactValue::Timestamp(*t)),
        AMQPValue::FieldArray(items) => {
            HeaderValue::List(items.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::FieldTable(table) => HeaderValue::Table(headers(table)),
        AMQPValue::ByteArray(bytes) => HeaderValue::Bytes(bytes.as_slice().to_vec()),
        AMQPValue::Void => exact(ExactValue::Void),
    }
}

/// The `queue.declare` arguments of a spec.
pub(super) fn queue_arguments(spec: &QueueSpec) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(spec.queue_type.as_str().into()),
    );
    if let Some(max_length) = spec.max_length {
        arguments.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(max_length.into()),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    if spec.queue_type == QueueType::Quorum {
        // On a cluster, the leader goes to the node leading the fewest
        // queues, so that a job's partition queues spread their leaders
        // over the nodes instead of all landing where the first worker
        // connected. RabbitMQ 3.10 and 3.11 know this value; 3.12 and later
        // read it as `balanced`.
        arguments.insert(
            "x-queue-leader-locator".into(),
            AMQPValue::LongString("least-leaders".into()),
        );
    }
    if spec.single_active {
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    if let Some(limit) = spec.delivery_limit {
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(limit.into()),
        );
    }
    if let Some(max_priority) = spec.max_priority {
        arguments.insert(
            "x-max-priority".into(),
            AMQPValue::LongLongInt(max_priority.into()),
        );
    }
    if let Some(ttl) = spec.message_ttl {
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(millis(ttl)));
    }
    if let Some(target) = &spec.dead_letter_to {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(target.as_str().into()),
        );
    }
    if let Some(expires) = spec.expires {
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(millis(expires).max(1)),
        );
    }
    if let Some(work_queue) = &spec.shard_of {
        // For operators (`rabbitmqctl list_queues name arguments`):
        // RabbitMQ neither compares nor returns it; the mark qjob reads
        // is `mark_shard`'s exchange.
        arguments.insert(
            "x-qjob-shard-of".into(),
            AMQPValue::LongString(work_queue.as_str().into()),
        );
    }
    arguments
}

/// Reads RabbitMQ's `PRECONDITION_FAILED - inequivalent arg 'A' for queue
/// 'Q' in vhost '/': received X but current is Y` into a clear error.
pub(super) fn queue_mismatch(queue: &str, text: &str) -> Option<Error> {
    let (_, rest) = text.split_once("inequivalent arg '")?;
    let (argument, rest) = rest.split_once('\'')?;
    let (_, values) = rest.split_once(": received ")?;
    let (requested, existing) = values.split_once(" but current is ")?;
    let value = |part: &str| {
        let part = part.trim();
        match part.strip_prefix("the value '") {
            Some(quoted) => quoted.split('\'').next().unwrap_or_default().to_owned(),
            None => part.trim_matches('\'').to_owned(),
        }
    };
    Some(Error::QueueMismatch {
        queue: queue.to_owned(),
        argument: argument.to_owned(),
        existing: value(existing),
        requested: value(requested),
    })
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_properties() {
        let mut original = Message::new(b"{}".to_vec())
            .with_id("job-1")
            .with_kind("charge")
            .with_timestamp(1_700_000_000)
            .with_priority(7);
        original.headers.insert("s".into(), "text".into());
        original.headers.insert("i".into(), HeaderValue::Int(-7));
        original.headers.insert("b".into(), HeaderValue::Bool(true));
        original.headers.insert("f".into(), HeaderValue::Float(0.5));
        let properties = properties(&original);
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(message(&properties, b"{}".to_vec()), original);
    }

    #[test]
    fn precondition_failures_name_the_argument_and_both_values() {
        let text = "protocol error: AMQP soft error: PRECONDITION-FAILED: PRECONDITION_FAILED - \
            inequivalent arg 'x-max-length' for queue 'jobs' in vhost '/': received the value '5' \
            of type 'signedint' but current is none";
        let Some(Error::QueueMismatch {
            queue,
            argument,
            existing,
            requested,
        }) = queue_mismatch("jobs", text)
        else {
            panic!("not parsed");
        };
        assert_eq!(
            (
                queue.as_str(),
                argument.as_str(),
                existing.as_str(),
                requested.as_str()
            ),
            ("jobs", "x-max-length", "none", "5")
        );
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'jobs' in \
            vhost '/': received the value 'quorum' of type 'longstr' but current is the value \
            'classic' of type 'longstr'";
        let error = queue_mismatch("jobs", text).unwrap().to_string();
        assert!(error.contains("x-queue-type = classic"), "{error}");
        assert!(error.contains("x-queue-type = quorum"), "{error}");
        assert!(queue_mismatch("jobs", "NOT_FOUND - no queue").is_none());
    }

    #[test]
    fn lists_and_tables_round_trip() {
        let mut death = Headers::new();
        death.insert("count".into(), HeaderValue::Int(2));
        death.insert("reason".into(), "expired".into());
        let value = HeaderValue::List(vec![HeaderValue::Table(death)]);
        assert_eq!(from_amqp(&to_amqp(&value)), value);
    }

    #[test]
    fn every_amqp_type_round_trips_exactly() {
        let values = [
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-8),
            AMQPValue::ShortShortUInt(8),
            AMQPValue::ShortInt(-16),
            AMQPValue::ShortUInt(16),
            AMQPValue::LongInt(-32),
            AMQPValue::LongUInt(32),
            AMQPValue::LongLongInt(-64),
            AMQPValue::Float(0.25),
            AMQPValue::Double(0.5),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
            AMQPValue::LongString(LongString::from("text")),
            AMQPValue::LongString(LongString::from(vec![0xff, 0x00, 0xfe])),
            AMQPValue::FieldArray(vec![AMQPValue::LongInt(1)].into()),
            AMQPValue::Timestamp(1_700_000_000),
            AMQPValue::FieldTable(FieldTable::default()),
            AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3])),
            AMQPValue::Void,
        ];
        for value in values {
            assert_eq!(to_amqp(&from_amqp(&value)), value);
        }
        let raw = from_amqp(&AMQPValue::LongString(LongString::from(vec![0xff])));
        assert_eq!(raw, HeaderValue::RawStr(vec![0xff]), "not turned into text");
        let time = from_amqp(&AMQPValue::Timestamp(7));
        assert_eq!(time.as_int(), Some(7), "a timestamp reads as an integer");
    }
}
