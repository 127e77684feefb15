//! The names of the queues qjob declares, in one place: everything that
//! makes a queue name or reads one (options, policies, the console, the
//! worker) goes through here. Plain strings in, plain strings out: this
//! module imports nothing of qjob's.
//!
//! | queue | name |
//! |---|---|
//! | work queue | `<queue>` |
//! | dead-letter queue | `<queue>.dlq` |
//! | partition `i` | `<queue>.p<i>` |
//! | shard `i` (past 0) | `<queue>.s<i>` (shard 0 is the work queue) |
//! | delay queue | `<queue>.delay.<ms>ms`, `<queue>.delay.<ms>ms.<type>` for a non-classic queue |
//! | the index of those | `<queue>.delay-index` |
//! | a schedule's leases | `qjob.schedule.<schedule>` |

use std::time::Duration;

/// The suffix of a dead-letter queue's name.
const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// The prefix of a schedule's lease queue, before the schedule's name.
#[cfg(feature = "periodic")]
pub(crate) const LEASE_QUEUE_PREFIX: &str = "qjob.schedule.";

/// The dead-letter queue of the job on `queue`.
pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}{DEAD_LETTER_SUFFIX}")
}

/// The work queue a dead-letter queue belongs to; `name` itself if it is
/// not a dead-letter queue's.
pub(crate) fn work_queue_of(name: &str) -> &str {
    name.strip_suffix(DEAD_LETTER_SUFFIX).unwrap_or(name)
}

/// The name of partition queue `index` of `queue`: `<queue>.p<index>`
/// (`index` may be a placeholder, such as an AsyncAPI parameter).
pub(crate) fn partition_queue(queue: &str, index: impl std::fmt::Display) -> String {
    format!("{queue}.p{index}")
}

/// The name of shard `index` of `queue`: the work queue itself for shard
/// 0, so that sharding a job strands nothing, and `<queue>.s<index>` after.
pub(crate) fn shard_queue(queue: &str, index: u16) -> String {
    match index {
        0 => queue.to_owned(),
        index => format!("{queue}.s{index}"),
    }
}

/// Which shard of the job on `queue` the queue `name` is, if it is one
/// past shard 0 (`<queue>.s<index>`).
pub(crate) fn shard_index(queue: &str, name: &str) -> Option<u16> {
    let index = name.strip_prefix(queue)?.strip_prefix(".s")?;
    if index.starts_with('0') || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    index.parse().ok().filter(|&index| index > 0)
}

/// The queues a worker consumes for the job on `queue`: its partition
/// queues when partitioned, else its shards (the work queue alone for one).
pub(crate) fn consumed_queues(queue: &str, partitions: Option<u16>, shards: u16) -> Vec<String> {
    match partitions {
        Some(partitions) => (0..partitions)
            .map(|index| partition_queue(queue, index))
            .collect(),
        None => (0..shards.max(1))
            .map(|index| shard_queue(queue, index))
            .collect(),
    }
}

/// The delay queue of `queue` for `delay`: `<queue>.delay.<ms>ms`, with the
/// queue type after it for a type other than classic (`kind`).
pub(crate) fn delay_queue(queue: &str, delay: Duration, kind: Option<&str>) -> String {
    match kind {
        None => format!("{queue}.delay.{}ms", delay.as_millis()),
        Some(kind) => format!("{queue}.delay.{}ms.{kind}", delay.as_millis()),
    }
}

/// The delay of the delay queue `name` of `queue` (as [`delay_queue`]
/// names it for `kind`); `None` if the name is not one of its.
pub(crate) fn delay_of(queue: &str, name: &str, kind: Option<&str>) -> Option<Duration> {
    let rest = name.strip_prefix(queue)?.strip_prefix(".delay.")?;
    let millis = match kind {
        None => rest.strip_suffix("ms")?,
        Some(kind) => rest
            .strip_suffix(kind)?
            .strip_suffix(".")?
            .strip_suffix("ms")?,
    };
    let delay = Duration::from_millis(millis.parse().ok()?);
    (delay_queue(queue, delay, kind) == name).then_some(delay)
}

/// The queue whose messages name the delay queues of `queue` in use
/// (`<queue>.delay-index`), for the console.
pub(crate) fn delay_index(queue: &str) -> String {
    format!("{queue}.delay-index")
}

/// The queue a delay queue's messages go to when due: `<queue>` of
/// `<queue>.delay.<ms>ms…`; `None` for a name that is not a delay queue's.
pub(crate) fn delay_target(name: &str) -> Option<&str> {
    let (queue, rest) = name.rsplit_once(".delay.")?;
    let millis = rest.split('.').next()?.strip_suffix("ms")?;
    (!queue.is_empty() && !millis.is_empty() && millis.bytes().all(|b| b.is_ascii_digit()))
        .then_some(queue)
}

/// The lease queue of the schedule `schedule`.
#[cfg(feature = "periodic")]
pub(crate) fn lease_queue(schedule: &str) -> String {
    format!("{LEASE_QUEUE_PREFIX}{schedule}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_queue_names_where_its_messages_go() {
        let delay = Duration::from_millis(1500);
        for kind in [None, Some("quorum")] {
            for queue in ["mail", "mail.p3", "a.delay.b"] {
                assert_eq!(delay_target(&delay_queue(queue, delay, kind)), Some(queue));
            }
        }
        for name in [
            "mail",
            "mail.delay.",
            "mail.delay.xms",
            ".delay.5ms",
            "mail.delay-index",
        ] {
            assert_eq!(delay_target(name), None, "{name}");
        }
    }

    #[cfg(feature = "periodic")]
    #[test]
    fn lease_queues_are_named_for_their_schedule() {
        assert_eq!(lease_queue("nightly"), "qjob.schedule.nightly");
    }

    #[test]
    fn names_read_back() {
        assert_eq!(dead_letter_queue("mail"), "mail.dlq");
        assert_eq!(work_queue_of("mail.dlq"), "mail");
        assert_eq!(work_queue_of("mail"), "mail");
        assert_eq!(partition_queue("webhooks", 7), "webhooks.p7");
        assert_eq!(consumed_queues("mail", None, 1), ["mail"]);
        assert_eq!(
            consumed_queues("mail", None, 3),
            ["mail", "mail.s1", "mail.s2"]
        );
        assert_eq!(consumed_queues("h", Some(2), 1), ["h.p0", "h.p1"]);
        let classic = delay_queue("q", Duration::from_millis(1500), None);
        assert_eq!(classic, "q.delay.1500ms");
        assert_eq!(
            delay_of("q", &classic, None),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(delay_of("q", &classic, Some("quorum")), None);
        let quorum = delay_queue("q", Duration::from_millis(1500), Some("quorum"));
        assert_eq!(quorum, "q.delay.1500ms.quorum");
        assert_eq!(
            delay_of("q", &quorum, Some("quorum")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            delay_of("q", "q.delay.01500ms", None),
            None,
            "one name per delay"
        );
    }
}
