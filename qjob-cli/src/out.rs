//! Where output goes (tables or JSON) and the small formats that several
//! commands share.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Where output goes, as tables or JSON.
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    pub(crate) fn print_json(&self, value: &Value) {
        say!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON values serialize")
        );
    }
}

/// Prints `text`, or `value` as JSON.
pub(crate) fn done(out: &Out, text: &str, value: Value) {
    if out.json {
        out.print_json(&value);
    } else {
        say!("{text}");
    }
}

/// The last 8 characters of a worker id: enough to tell workers apart.
pub(crate) fn short_id(id: &str) -> String {
    let chars = id.chars().count();
    id.chars().skip(chars.saturating_sub(8)).collect()
}

/// `at` in milliseconds since the Unix epoch, for JSON.
pub(crate) fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}
