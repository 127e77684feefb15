//! Messages and their headers: [`Message`], [`HeaderValue`], [`ExactValue`],
//! [`Headers`].

use std::collections::BTreeMap;
use std::fmt;

/// A header value. The common types have variants of their own; every
/// other type a transport carries arrives as [`HeaderValue::Exact`], kept
/// as it came, so that a foreign producer's headers survive a retry, a
/// delay and a dead letter byte for byte and type for type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HeaderValue {
    /// Text (an AMQP long string that is valid UTF-8).
    Str(String),
    /// A 64-bit integer.
    Int(i64),
    /// A double-precision number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A list (RabbitMQ's `x-death` is a list of tables).
    List(Vec<HeaderValue>),
    /// A nested table.
    Table(Headers),
    /// Bytes (an AMQP byte array).
    Bytes(Vec<u8>),
    /// A string that is not UTF-8 text (an AMQP long string holds any
    /// bytes), kept as it came.
    RawStr(Vec<u8>),
    /// A value of another type, kept exactly.
    Exact(ExactValue),
}

/// Header values of the AMQP types qjob does not interpret, kept exactly
/// so that they are written back with the type they came with.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ExactValue {
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 32-bit integer.
    I32(i32),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A single-precision number.
    F32(f32),
    /// A decimal: `value × 10^-scale`.
    Decimal {
        /// Digits after the point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// A timestamp, in seconds since the Unix epoch (RabbitMQ's `x-death`
    /// times are these).
    Timestamp(u64),
    /// No value (AMQP void).
    Void,
}

impl HeaderValue {
    /// The value as an integer, if it is an integer of any width or a
    /// timestamp.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(n) => Some(*n),
            HeaderValue::Exact(exact) => match *exact {
                ExactValue::I8(n) => Some(n.into()),
                ExactValue::U8(n) => Some(n.into()),
                ExactValue::I16(n) => Some(n.into()),
                ExactValue::U16(n) => Some(n.into()),
                ExactValue::I32(n) => Some(n.into()),
                ExactValue::U32(n) => Some(n.into()),
                ExactValue::Timestamp(t) => i64::try_from(t).ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The value as text, if it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a list, if it is one.
    pub fn as_list(&self) -> Option<&[HeaderValue]> {
        match self {
            HeaderValue::List(items) => Some(items),
            _ => None,
        }
    }

    /// The value as a table, if it is one.
    pub fn as_table(&self) -> Option<&Headers> {
        match self {
            HeaderValue::Table(table) => Some(table),
            _ => None,
        }
    }
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Str(s) => f.write_str(s),
            HeaderValue::Int(n) => write!(f, "{n}"),
            HeaderValue::Float(x) => write!(f, "{x}"),
            HeaderValue::Bool(b) => write!(f, "{b}"),
            HeaderValue::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            HeaderValue::Table(table) => {
                f.write_str("{")?;
                for (i, (name, value)) in table.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name}: {value}")?;
                }
                f.write_str("}")
            }
            HeaderValue::Bytes(bytes) | HeaderValue::RawStr(bytes) => {
                f.write_str("0x")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            HeaderValue::Exact(exact) => match *exact {
                ExactValue::I8(n) => write!(f, "{n}"),
                ExactValue::U8(n) => write!(f, "{n}"),
                ExactValue::I16(n) => write!(f, "{n}"),
                ExactValue::U16(n) => write!(f, "{n}"),
                ExactValue::I32(n) => write!(f, "{n}"),
                ExactValue::U32(n) => write!(f, "{n}"),
                ExactValue::F32(x) => write!(f, "{x}"),
                ExactValue::Decimal { scale, value } => {
                    write!(f, "{value}e-{scale}")
                }
                ExactValue::Timestamp(t) => write!(f, "{t}"),
                ExactValue::Void => f.write_str("void"),
            },
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}

impl From<i64> for HeaderValue {
    fn from(n: i64) -> Self {
        HeaderValue::Int(n)
    }
}

impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}

/// Message headers, by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// A message as published and as delivered: persistent, JSON by convention.
///
/// Built with [`Message::new`] and the `with_*` setters, so that a field
/// added later breaks no broker implementation; the fields are read
/// directly.
///
/// # Examples
///
/// ```
/// use qjob::broker::{HeaderValue, Headers, Message};
///
/// let headers = Headers::from([("tenant".to_owned(), HeaderValue::from("acme"))]);
/// let message = Message::new(r#"{"n":1}"#)
///     .with_id("job-1")
///     .with_headers(headers);
/// assert_eq!(message.id.as_deref(), Some("job-1"));
/// assert_eq!(message.body, br#"{"n":1}"#);
/// assert_eq!(message.kind, None);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Message {
    /// The message id (qjob puts the job id here); `None` for messages
    /// published by other producers without one.
    pub id: Option<String>,
    /// The message type (AMQP's `type` property). qjob does not write it
    /// (a job's type is its queue's); other producers' is kept.
    pub kind: Option<String>,
    /// When the message was first published, in seconds since the Unix
    /// epoch (AMQP's `timestamp` property). qjob does not write it (its
    /// job ids are UUID v7, which carry the time in milliseconds); other
    /// producers' is read as their enqueue time and kept.
    pub timestamp: Option<u64>,
    /// The message's priority (AMQP's `priority` property): a queue
    /// declared with a maximum priority ([`QueueSpec::max_priority`])
    /// delivers higher ones first. `None` counts as 0 there. qjob writes it
    /// for a job enqueued with one, and keeps it (other producers' too)
    /// through retries, delays, dead letters and replays.
    ///
    /// [`QueueSpec::max_priority`]: super::QueueSpec::max_priority
    pub priority: Option<u8>,
    /// The headers.
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

impl Message {
    /// A message of `body` with no id, kind, timestamp, priority or headers.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Sets the message id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the message type (see the field).
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Sets when the message was first published, in seconds since the
    /// Unix epoch (see the field).
    pub fn with_timestamp(mut self, timestamp: u64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Sets the priority (see the field).
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Replaces the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }
}
