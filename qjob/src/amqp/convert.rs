//! Mapping qjob's messages and headers to and from AMQP properties.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::broker::{HeaderValue, Message, QueueSpec};

pub(super) fn properties(message: &Message) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if !message.headers.is_empty() {
        let mut table = FieldTable::default();
        for (name, value) in &message.headers {
            table.insert(ShortString::from(name.as_str()), to_amqp(value));
        }
        properties = properties.with_headers(table);
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
    properties
}

pub(super) fn message(properties: &BasicProperties, body: Vec<u8>) -> Message {
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), from_amqp(value)))
                .collect()
        })
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
        headers,
        body,
    }
}

fn to_amqp(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Str(s) | HeaderValue::Other(s) => {
            AMQPValue::LongString(LongString::from(s.as_str()))
        }
        HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
        HeaderValue::Float(x) => AMQPValue::Double(*x),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
    }
}

fn from_amqp(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(n) => HeaderValue::Int((*n).into()),
        AMQPValue::ShortShortUInt(n) => HeaderValue::Int((*n).into()),
        AMQPValue::ShortInt(n) => HeaderValue::Int((*n).into()),
        AMQPValue::ShortUInt(n) => HeaderValue::Int((*n).into()),
        AMQPValue::LongInt(n) => HeaderValue::Int((*n).into()),
        AMQPValue::LongUInt(n) => HeaderValue::Int((*n).into()),
        AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
        AMQPValue::Float(x) => HeaderValue::Float((*x).into()),
        AMQPValue::Double(x) => HeaderValue::Float(*x),
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        other => HeaderValue::Other(format!("{other:?}")),
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
    if spec.single_active {
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_properties() {
        let mut original = Message {
            id: Some("job-1".into()),
            kind: Some("charge".into()),
            timestamp: Some(1_700_000_000),
            body: b"{}".to_vec(),
            ..Message::default()
        };
        original.headers.insert("s".into(), "text".into());
        original.headers.insert("i".into(), HeaderValue::Int(-7));
        original.headers.insert("b".into(), HeaderValue::Bool(true));
        original.headers.insert("f".into(), HeaderValue::Float(0.5));
        let properties = properties(&original);
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(message(&properties, b"{}".to_vec()), original);
    }

    #[test]
    fn foreign_header_types_are_kept_as_descriptions() {
        let value = from_amqp(&AMQPValue::FieldArray(Default::default()));
        assert!(matches!(value, HeaderValue::Other(_)));
        assert_eq!(from_amqp(&AMQPValue::LongInt(3)), HeaderValue::Int(3));
    }
}
