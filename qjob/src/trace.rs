//! W3C trace context on job messages, so that a job's spans join the trace
//! of the code that enqueued it.
//!
//! With the `opentelemetry` feature, [`Client`](crate::Client) writes the
//! current span's context as a [`traceparent`] header (and `tracestate`, if
//! any) on each job it publishes, and the worker makes that context the
//! parent of the job's `qjob.attempt` spans. Retries, delays and dead
//! letters keep the headers, so every attempt of a job belongs to the trace
//! that enqueued it. The format is always W3C Trace Context, whatever
//! propagator the application installed globally: it is what the header
//! names say.
//!
//! Without the feature qjob writes no trace headers, and a `traceparent`
//! set by another producer is recorded as the attempt span's `traceparent`
//! field, for logs to correlate.
//!
//! [`traceparent`]: https://www.w3.org/TR/trace-context/#traceparent-header

use tracing::Span;

use crate::broker::{HeaderValue, Headers};

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) flags: u8,
}

impl TraceParent {
    /// Parses `version-traceid-parentid-flags`. Version `00` must have
    /// exactly four fields; a later version may append fields, which are
    /// ignored. All-zero ids and version `ff` are invalid.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let mut fields = text.split('-');
        let version = hex_field(fields.next()?, 2)?;
        let trace_id = u128::from_str_radix(hex_field(fields.next()?, 32)?, 16).ok()?;
        let span_id = u64::from_str_radix(hex_field(fields.next()?, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex_field(fields.next()?, 2)?, 16).ok()?;
        let rest = fields.next();
        let valid = match version {
            "ff" => false,
            "00" => rest.is_none(),
            _ => true,
        };
        (valid && trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The header's value (version `00`).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn to_header(self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// `field` if it is `len` lowercase hex digits.
fn hex_field(field: &str, len: usize) -> Option<&str> {
    (field.len() == len
        && field
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(field)
}

fn text<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    match headers.get(name)? {
        HeaderValue::Str(text) => Some(text),
        _ => None,
    }
}

/// Writes the current span's trace context on a message about to be
/// published, if there is one.
pub(crate) fn inject(headers: &mut Headers) {
    #[cfg(feature = "opentelemetry")]
    otel::inject(&Span::current(), headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = headers;
}

/// Makes the trace context a delivered message carries the parent of
/// `span` (a span not yet entered), and records it as the span's
/// `traceparent` field.
pub(crate) fn continue_from(span: &Span, headers: &Headers) {
    let Some(value) = text(headers, TRACEPARENT) else {
        return;
    };
    // A malformed header starts no trace: the span is then a root.
    let Some(parent) = TraceParent::parse(value) else {
        tracing::debug!(
            traceparent = value,
            "ignoring a malformed traceparent header"
        );
        return;
    };
    span.record("traceparent", value);
    #[cfg(feature = "opentelemetry")]
    otel::set_parent(span, parent, text(headers, TRACESTATE));
    #[cfg(not(feature = "opentelemetry"))]
    let _ = parent;
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr;

    use opentelemetry::Context;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{TRACEPARENT, TRACESTATE, TraceParent};
    use crate::broker::Headers;

    pub(super) fn inject(span: &Span, headers: &mut Headers) {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if !span_context.is_valid() {
            return;
        }
        let parent = TraceParent {
            trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
            flags: span_context.trace_flags().to_u8(),
        };
        headers.insert(TRACEPARENT.into(), parent.to_header().into());
        let state = span_context.trace_state().header();
        if !state.is_empty() {
            headers.insert(TRACESTATE.into(), state.into());
        }
    }

    pub(super) fn set_parent(span: &Span, parent: TraceParent, state: Option<&str>) {
        let state = state
            .and_then(|state| TraceState::from_str(state).ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.span_id.to_be_bytes()),
            TraceFlags::new(parent.flags),
            true,
            state,
        );
        // Fails only when no OpenTelemetry layer records this span: then
        // there is no trace to join.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.to_header(), EXAMPLE);
    }

    #[test]
    fn rejects_what_the_specification_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_may_add_fields() {
        let parent =
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later")
                .unwrap();
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
    }
}
