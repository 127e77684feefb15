//! How a run of `qjob` fails: its exit code and message.

use qjob::Error;

/// How a run ended: its exit code, and what to say on stderr.
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure(1, error.to_string())
    }
}

/// Exit code: what the command names does not exist.
pub(crate) const NOT_FOUND: u8 = 3;
/// Exit code: no worker carried the command out.
pub(crate) const NOT_CARRIED_OUT: u8 = 4;
/// Exit code: the topology check found problems.
pub(crate) const TOPOLOGY_PROBLEMS: u8 = 5;
