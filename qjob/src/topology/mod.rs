//! The queues a job type needs, as [`QueueSpec`]s for the broker: what
//! workers consume, where retries and dead letters go ([`names`] names
//! them all), and the delay queues where jobs wait ([`delay`]).

mod delay;
pub(crate) mod names;

#[cfg(feature = "postgres")]
pub(crate) use delay::publish_delayed_all;
pub(crate) use delay::{Delayed, Leases, delay_queue_named, delayed, remaining_wait};
pub(crate) use names::{shard_index, shard_queue};

use crate::broker::{Broker, QueueSpec};
use crate::policy::partition::partition_for;
use crate::topology::names::partition_queue;
use crate::{Error, JobOptions, QueueType};

/// The queues a job type's workers consume: the work queue; for a
/// partitioned job its partition queues `<queue>.p0` … `<queue>.p<N-1>`,
/// each single-active-consumer so that one worker at a time drives it; for
/// a sharded one its shards, the work queue and `<queue>.s1` …
/// `<queue>.s<N-1>`, each consumed by every worker and marked as a shard
/// of the work queue ([`QueueSpec::shard_of`]).
pub(crate) fn consumed_queues(options: &JobOptions) -> Vec<QueueSpec> {
    match options.partitions() {
        None => (0..options.shards())
            .map(|index| match index {
                0 => queue_spec(options, options.queue().to_owned(), options.single_active()),
                index => inherited_shard(options, shard_queue(options.queue(), index)),
            })
            .collect(),
        Some(partitions) => (0..partitions)
            .map(|index| queue_spec(options, partition_queue(options.queue(), index), true))
            .collect(),
    }
}

fn queue_spec(options: &JobOptions, name: String, single_active: bool) -> QueueSpec {
    let mut spec = QueueSpec::new(name)
        .with_queue_type(options.queue_type())
        .with_single_active(single_active);
    if let Some(max_length) = options.max_length() {
        spec = spec.with_max_length(max_length);
    }
    if let Some(limit) = options.delivery_limit() {
        spec = spec.with_delivery_limit(limit);
    }
    if let (Some(priorities), QueueType::Classic) = (options.priorities(), options.queue_type()) {
        // A quorum queue honours priorities without an argument (RabbitMQ
        // 4; 3 ignores them): see `JobOptions::with_priorities`.
        spec = spec.with_max_priority(priorities);
    }
    if options.queue_type() == QueueType::Quorum {
        // RabbitMQ moves a message past the delivery limit to the job's
        // DLQ: the one set here, or RabbitMQ 4's default of 20 (without a
        // target it would drop the message).
        spec = spec.with_dead_letter_to(options.dead_letter_queue());
    }
    spec
}

/// Whether a job's retries wait in its worker, holding the delivery through
/// the backoff, rather than in a delay queue on the broker:
///
/// - partitioned jobs, so that a key's later jobs wait behind a retry;
/// - capped jobs (`max_length`): RabbitMQ drops a message that a delay
///   queue dead-letters into a full `reject-publish` queue;
/// - quorum jobs: RabbitMQ's dead-lettering from a delay queue back into
///   the work queue is at most once (a retry coming due while the work
///   queue elects a new leader is dropped: measured on a 3-node 3.10
///   cluster), and its at-least-once mode strands dead letters after a
///   node loss. Held by the worker, a retry is as safe as the quorum queue
///   itself: if the worker dies, the queue delivers the message again.
pub(crate) fn retries_in_place(options: &JobOptions) -> bool {
    options.partitions().is_some()
        || options.max_length().is_some()
        || options.queue_type() == QueueType::Quorum
}

/// The queue a job with this partition key goes to.
pub(crate) fn route<'a>(options: &'a JobOptions, key: Option<&str>) -> std::borrow::Cow<'a, str> {
    match (options.partitions(), key) {
        (Some(partitions), Some(key)) => {
            partition_queue(options.queue(), partition_for(key, partitions)).into()
        }
        _ => options.queue().into(),
    }
}

/// A shard of a job without a key, picked at random for one job that
/// goes out now; `None` unless the job is sharded. What waits (a delayed
/// job, a retry) goes to the work queue instead: see [`retry_queue`].
pub(crate) fn any_shard(options: &JobOptions) -> Option<String> {
    use std::hash::BuildHasher;
    let shards = options.shards();
    (shards > 1).then(|| {
        // Each `RandomState` is keyed afresh: its hash is a cheap random
        // number, and the shards fill evenly.
        let pick = std::hash::RandomState::new().hash_one(0u8) % u64::from(shards);
        shard_queue(options.queue(), pick as u16)
    })
}

/// Where the retries of a job consumed from `consumed` go: back to a
/// partition queue, and otherwise to the work queue. The work queue is
/// shard 0, which every worker consumes whatever its `shards`: a retry
/// from a shard (or a delayed job, which [`crate::Client`] sends the same
/// way) never waits for a shard that a later deploy stops consuming.
pub(crate) fn retry_queue(options: &JobOptions, consumed: &QueueSpec) -> QueueSpec {
    match options.partitions() {
        Some(_) => consumed.clone(),
        None => queue_spec(options, options.queue().to_owned(), options.single_active()),
    }
}

/// How many missing shards in a row end a thorough search for shards past
/// a job's `shards` ([`shards_past`]): an operator deleting them one by
/// one may leave gaps.
pub(crate) const SHARD_GAP: u16 = 4;

/// The shards of the job on `queue` from `from` up that exist, with their
/// stats: left by a deploy with more shards. The search ends after `gap`
/// missing in a row.
pub(crate) async fn shards_past(
    broker: &dyn Broker,
    queue: &str,
    from: u16,
    gap: u16,
) -> Result<Vec<(String, crate::broker::QueueStats)>, Error> {
    let mut found = Vec::new();
    let mut missing = 0;
    for index in from.max(1)..=u16::MAX {
        let shard = shard_queue(queue, index);
        match broker.queue_stats(&shard).await? {
            Some(stats) => {
                missing = 0;
                found.push((shard, stats));
            }
            None if missing + 1 >= gap => break,
            None => missing += 1,
        }
    }
    Ok(found)
}

/// Shard `name` (past shard 0) of a job: a work queue marked as a shard
/// of the job's. A shard past the job's `shards` is consumed as such, but
/// never declared (it goes once it is deleted).
pub(crate) fn inherited_shard(options: &JobOptions, name: String) -> QueueSpec {
    queue_spec(options, name, false).with_shard_of(options.queue())
}

/// The dead-letter queue: same type as the work queue, no length cap (dead
/// letters are never dropped), never single-active.
pub(crate) fn dead_letter_queue(options: &JobOptions) -> QueueSpec {
    let spec = QueueSpec::new(options.dead_letter_queue()).with_queue_type(options.queue_type());
    match options.queue_type() {
        // Browsing takes dead letters with `basic.get` and puts them back;
        // RabbitMQ 4 counts each as a delivery, and with its default limit
        // of 20 would drop a dead letter after 20 looks. A limit no browse
        // reaches keeps them.
        QueueType::Quorum => spec.with_delivery_limit(DEAD_LETTER_DELIVERY_LIMIT),
        _ => spec,
    }
}

/// The delivery limit of a quorum dead-letter queue: in effect none.
pub(crate) const DEAD_LETTER_DELIVERY_LIMIT: u32 = 1_000_000_000;

/// Declares every queue of a job type, after checking that no one uses
/// more partitions than these options say.
///
/// # Errors
///
/// [`Error::Config`] when partition queue `<queue>.p<N>` exists: a producer
/// or worker with more partitions is (or was) running, and jobs would be
/// routed to queues this side does not know; when a classic queue is given
/// a delivery limit; or when a sharded job is also partitioned or
/// single-active. (A shard past `shards` is no error here: a rolling
/// deploy that changes `shards` has both kinds of process running at
/// once; `Admin::check_topology` reports a shard that no worker consumes.)
pub(crate) async fn declare(broker: &dyn Broker, options: &JobOptions) -> Result<(), Error> {
    if options.delivery_limit().is_some() && options.queue_type() != QueueType::Quorum {
        return Err(Error::Config(format!(
            "job queue {:?} has a delivery limit but is a classic queue: RabbitMQ counts deliveries on quorum queues only; declare it with queue type quorum",
            options.queue()
        )));
    }
    if options.shards() > 1 && (options.partitions().is_some() || options.single_active()) {
        return Err(Error::Config(format!(
            "job queue {:?} is sharded and {}: shards spread jobs in no order, which \
             partitions and single-active queues keep; choose one",
            options.queue(),
            if options.single_active() {
                "single-active"
            } else {
                "partitioned"
            },
        )));
    }
    if let Some(partitions) = options.partitions() {
        let beyond = partition_queue(options.queue(), partitions);
        if broker.queue_stats(&beyond).await?.is_some() {
            return Err(Error::Config(format!(
                "job queue {:?} is declared with {partitions} partitions, but partition queue \
                 {beyond:?} exists: a producer or worker uses more partitions; drain and delete \
                 the extra partition queues, or deploy the same `partitions` everywhere \
                 (see the ordering guide, `qjob::docs::ordering`)",
                options.queue()
            )));
        }
    }
    for spec in consumed_queues(options) {
        broker.declare_queue(&spec).await?;
    }
    declare_dead_letter_queue(broker, options).await
}

/// Declares a job's dead-letter queue. A quorum DLQ declared before qjob
/// gave it a delivery limit keeps its arguments (RabbitMQ refuses to change
/// them): it works as before, and a warning says how to add the limit.
pub(crate) async fn declare_dead_letter_queue(
    broker: &dyn Broker,
    options: &JobOptions,
) -> Result<(), Error> {
    match broker.declare_queue(&dead_letter_queue(options)).await {
        Err(Error::QueueMismatch {
            queue,
            argument,
            existing,
            ..
        }) if argument == "x-delivery-limit" && existing == "none" => {
            tracing::warn!(
                queue = queue.as_str(),
                "this quorum dead-letter queue was declared without a delivery limit; on \
                 RabbitMQ 4 (default limit 20) browsing it can drop dead letters: give it one \
                 with a policy (`delivery-limit`), or recreate it once empty"
            );
            Ok(())
        }
        declared => declared,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::Message;

    #[test]
    fn a_sharded_job_spreads_over_its_shards_each_consumed_by_every_worker() {
        let options = JobOptions::new("mail").with_shards(4);
        let specs = consumed_queues(&options);
        let names: Vec<&str> = specs.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["mail", "mail.s1", "mail.s2", "mail.s3"]);
        assert!(specs.iter().all(|spec| !spec.single_active));
        assert!(!retries_in_place(&options), "retries wait in delay queues");
        let mut counts = std::collections::HashMap::new();
        for _ in 0..4_000 {
            *counts.entry(any_shard(&options).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4, "every shard and only they: {counts:?}");
        assert!(counts.values().all(|&n| n > 800), "evenly: {counts:?}");
        assert_eq!(any_shard(&JobOptions::new("mail")), None);
        assert_eq!(shard_index("mail", "mail.s3"), Some(3));
        for other in [
            "mail", "mail.s0", "mail.s03", "mail.sx", "mail.p1", "mails.s1", "mail.s",
        ] {
            assert_eq!(shard_index("mail", other), None, "{other}");
        }
        // What waits goes to the work queue, from every shard.
        let shard = &consumed_queues(&options)[2];
        assert_eq!(retry_queue(&options, shard).name, "mail");
        let plain = JobOptions::new("mail");
        assert_eq!(
            retry_queue(&plain, &consumed_queues(&plain)[0]).name,
            "mail"
        );
    }

    #[test]
    fn partitioned_jobs_consume_single_active_partition_queues() {
        let options = JobOptions::new("hooks").with_partitions(3);
        let names: Vec<String> = consumed_queues(&options)
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(names, ["hooks.p0", "hooks.p1", "hooks.p2"]);
        assert!(consumed_queues(&options).iter().all(|q| q.single_active));
        let key = "customer-9";
        let expected = format!("hooks.p{}", partition_for(key, 3));
        assert_eq!(route(&options, Some(key)), expected);
        assert_eq!(route(&JobOptions::new("plain"), Some(key)), "plain");
    }

    #[test]
    fn partitioned_capped_and_quorum_jobs_retry_in_place() {
        let plain = JobOptions::new("q");
        assert!(!retries_in_place(&plain));
        assert!(retries_in_place(&plain.clone().with_partitions(2)));
        assert!(retries_in_place(&plain.clone().with_max_length(10)));
        assert!(retries_in_place(&plain.with_queue_type(QueueType::Quorum)));
    }

    #[test]
    fn a_classic_job_with_priorities_declares_them_on_what_it_consumes_only() {
        let max_priorities = |options: &JobOptions| -> Vec<Option<u8>> {
            consumed_queues(options)
                .iter()
                .map(|spec| spec.max_priority)
                .collect()
        };
        let sharded = JobOptions::new("reports").with_priorities(5).with_shards(3);
        assert_eq!(max_priorities(&sharded), [Some(5); 3]);
        let partitioned = JobOptions::new("reports")
            .with_priorities(5)
            .with_partitions(2);
        assert_eq!(max_priorities(&partitioned), [Some(5); 2]);
        let shard = &consumed_queues(&sharded)[1];
        assert_eq!(retry_queue(&sharded, shard).max_priority, Some(5));
        assert_eq!(dead_letter_queue(&sharded).max_priority, None);
        let delayed = delayed(
            "reports",
            QueueType::Classic,
            Duration::from_secs(1),
            Message::new("{}").with_priority(4),
        );
        assert_eq!(delayed.spec.max_priority, None);
        assert_eq!(delayed.message.priority, Some(4), "kept while it waits");
        // A quorum queue orders by priority without the argument.
        let quorum = JobOptions::new("reports")
            .with_priorities(5)
            .with_queue_type(QueueType::Quorum);
        assert_eq!(max_priorities(&quorum), [None]);
        assert_eq!(max_priorities(&JobOptions::new("reports")), [None]);
    }

    #[test]
    fn a_delivery_limit_dead_letters_into_the_dlq() {
        let options = JobOptions::new("billing.charge")
            .with_queue_type(QueueType::Quorum)
            .with_delivery_limit(10)
            .with_partitions(2);
        for spec in consumed_queues(&options) {
            assert_eq!(spec.delivery_limit, Some(10));
            assert_eq!(spec.dead_letter_to.as_deref(), Some("billing.charge.dlq"));
        }
        let plain = &consumed_queues(&JobOptions::new("billing.charge"))[0];
        assert_eq!(
            (plain.delivery_limit, plain.dead_letter_to.as_deref()),
            (None, None)
        );
        // RabbitMQ 4 limits quorum deliveries (20) even when no limit is
        // set: a quorum queue always has the DLQ as its target.
        let quorum = JobOptions::new("billing.charge").with_queue_type(QueueType::Quorum);
        let quorum = &consumed_queues(&quorum)[0];
        assert_eq!(quorum.delivery_limit, None);
        assert_eq!(quorum.dead_letter_to.as_deref(), Some("billing.charge.dlq"));
    }
}
