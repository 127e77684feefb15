//! Dead-lettering records as RabbitMQ writes them: the `x-death` list and
//! the `x-first-death-*` headers.

use qjob::broker::{ExactValue, HeaderValue, Headers};

/// Why a message was dead-lettered, as RabbitMQ names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Rejected,
    Expired,
    /// Returned to a quorum queue more often than its delivery limit.
    DeliveryLimit,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Records a dead-lettering of a message from `queue` at `time` (seconds
/// since the epoch): the entry for the same queue and reason counts one
/// more and moves to the front, or a new entry goes first; the
/// `x-first-death-*` headers are set once.
/// An `x-death` time, as RabbitMQ writes it: an AMQP timestamp.
fn timestamp(seconds: i64) -> HeaderValue {
    HeaderValue::Exact(ExactValue::Timestamp(u64::try_from(seconds).unwrap_or(0)))
}

pub(crate) fn record(headers: &mut Headers, queue: &str, reason: Reason, time: i64) {
    let mut deaths: Vec<HeaderValue> = match headers.remove("x-death") {
        Some(HeaderValue::List(items)) => items,
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|entry| {
        entry.as_table().is_some_and(|table| {
            table.get("queue").and_then(HeaderValue::as_str) == Some(queue)
                && table.get("reason").and_then(HeaderValue::as_str) == Some(reason.as_str())
        })
    });
    let entry = match same {
        Some(index) => {
            let HeaderValue::Table(mut table) = deaths.remove(index) else {
                unreachable!("matched a table")
            };
            let count = table
                .get("count")
                .and_then(HeaderValue::as_int)
                .unwrap_or(0);
            table.insert("count".into(), HeaderValue::Int(count + 1));
            table.insert("time".into(), timestamp(time));
            table
        }
        None => {
            let mut table = Headers::new();
            table.insert("count".into(), HeaderValue::Int(1));
            table.insert("reason".into(), reason.as_str().into());
            table.insert("queue".into(), queue.into());
            table.insert("time".into(), timestamp(time));
            table.insert("exchange".into(), "".into());
            table.insert("routing-keys".into(), HeaderValue::List(vec![queue.into()]));
            table
        }
    };
    deaths.insert(0, HeaderValue::Table(entry));
    headers.insert("x-death".into(), HeaderValue::List(deaths));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), reason.as_str().into());
        headers.insert("x-first-death-queue".into(), queue.into());
        headers.insert("x-first-death-exchange".into(), "".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(headers: &Headers, index: usize) -> &Headers {
        headers["x-death"].as_list().unwrap()[index]
            .as_table()
            .unwrap()
    }

    #[test]
    fn first_death_adds_an_entry_and_the_first_death_headers() {
        let mut headers = Headers::new();
        record(&mut headers, "q.delay", Reason::Expired, 100);
        let death = entry(&headers, 0);
        assert_eq!(death["count"], HeaderValue::Int(1));
        assert_eq!(death["reason"], HeaderValue::from("expired"));
        assert_eq!(death["queue"], HeaderValue::from("q.delay"));
        assert_eq!(
            death["routing-keys"],
            HeaderValue::List(vec!["q.delay".into()])
        );
        assert_eq!(headers["x-first-death-queue"], HeaderValue::from("q.delay"));
    }

    #[test]
    fn the_same_queue_and_reason_count_up_and_move_to_the_front() {
        let mut headers = Headers::new();
        record(&mut headers, "q.delay", Reason::Expired, 100);
        record(&mut headers, "q", Reason::Rejected, 101);
        record(&mut headers, "q.delay", Reason::Expired, 102);
        assert_eq!(headers["x-death"].as_list().unwrap().len(), 2);
        assert_eq!(entry(&headers, 0)["count"], HeaderValue::Int(2));
        assert_eq!(entry(&headers, 0)["time"].as_int(), Some(102));
        assert_eq!(entry(&headers, 1)["queue"], HeaderValue::from("q"));
        assert_eq!(
            headers["x-first-death-reason"],
            HeaderValue::from("expired")
        );
    }
}
