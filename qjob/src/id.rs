//! A job's identity.

use std::fmt;
use std::time::SystemTime;

/// A job's identity, unique per enqueue and kept across its retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// A new, time-ordered identifier (UUID v7).
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7().to_string())
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was made, for ids that are UUID v7 (as qjob's are):
    /// the job's first enqueue.
    pub fn created_at(&self) -> Option<SystemTime> {
        let uuid = uuid::Uuid::parse_str(&self.0).ok()?;
        let (secs, nanos) = uuid.get_timestamp()?.to_unix();
        Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        JobId(id)
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        JobId(id.to_owned())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
