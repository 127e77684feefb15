//! The topology check: the broker's queues against those the running
//! workers declare.

use std::collections::BTreeMap;

use super::Admin;
use crate::protocol::{DeclaredQueue, JobStatus};
use crate::topology::names;
use crate::{Error, topology};

/// Where the broker's queues differ from what the running workers declare
/// ([`Admin::check_topology`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyProblem {
    /// A queue a job needs does not exist (its worker declares it when it
    /// subscribes again; until then, publishes to it fail).
    Missing {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
    },
    /// A queue exists with other arguments than its job declares: the
    /// worker cannot subscribe to it, and producers cannot declare it.
    Differs {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
        /// The argument that differs, e.g. `x-max-length`.
        argument: String,
        /// Its value on the broker.
        existing: String,
        /// The value the job declares.
        requested: String,
    },
    /// A delay queue holding messages that expire into a work queue that
    /// does not exist (they would be dropped), or whose job no running
    /// worker runs.
    OrphanDelayQueue {
        /// The delay queue.
        queue: String,
        /// Messages waiting in it.
        messages: u32,
        /// The work queue its messages go to.
        target: String,
        /// Whether that work queue exists.
        target_exists: bool,
    },
    /// A partition queue past the job's partitions, left by a worker or
    /// producer with more: what is in it is never consumed.
    ExtraPartition {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
        /// Messages in it.
        messages: u32,
    },
    /// A shard past the job's shards, left by a worker or producer with
    /// more. A worker that finds it at its start consumes it until it is
    /// deleted; one that starts before it exists does not.
    ExtraShard {
        /// The job type.
        job: String,
        /// The queue.
        queue: String,
        /// Messages in it.
        messages: u32,
        /// Whether an alive worker consumes it.
        consumed: bool,
    },
}

impl std::fmt::Display for TopologyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyProblem::Missing { job, queue } => {
                write!(f, "{queue}: missing (job {job})")
            }
            TopologyProblem::Differs {
                job,
                queue,
                argument,
                existing,
                requested,
            } => write!(
                f,
                "{queue}: {argument} is {existing} on the broker, job {job} declares {requested}"
            ),
            TopologyProblem::OrphanDelayQueue {
                queue,
                messages,
                target,
                target_exists,
            } => {
                let target_state = if *target_exists {
                    "no running worker consumes it"
                } else {
                    "it does not exist: they would be dropped"
                };
                write!(
                    f,
                    "{queue}: orphan delay queue, {messages} messages expire into {target} ({target_state})"
                )
            }
            TopologyProblem::ExtraPartition {
                job,
                queue,
                messages,
            } => write!(
                f,
                "{queue}: a partition past job {job}'s partitions, {messages} messages never consumed"
            ),
            TopologyProblem::ExtraShard {
                job,
                queue,
                messages,
                consumed: false,
            } => write!(
                f,
                "{queue}: a shard past job {job}'s shards, {messages} messages never consumed"
            ),
            TopologyProblem::ExtraShard {
                job,
                queue,
                messages,
                consumed: true,
            } => write!(
                f,
                "{queue}: a shard past job {job}'s shards, {messages} messages, consumed \
                 until it is deleted (delete it once it holds no message, ready or unacked)"
            ),
        }
    }
}

impl Admin {
    /// Compares the queues the alive workers declare with the broker's:
    /// missing queues, arguments that differ, partition queues or shards
    /// past a job's partitions or shards, and delay queues the workers used lately that hold
    /// messages for a job no running worker runs or a work queue that is
    /// gone. AMQP cannot list a broker's queues, so a delay queue no worker
    /// reported within the last ten minutes is not seen.
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn check_topology(&self) -> Result<Vec<TopologyProblem>, Error> {
        let mut problems = Vec::new();
        let workers = self.workers();
        let alive: Vec<&JobStatus> = workers
            .iter()
            .filter(|worker| worker.alive)
            .flat_map(|worker| &worker.status.jobs)
            .collect();
        let mut checked = std::collections::HashSet::new();
        for job in &alive {
            for declared in &job.declared {
                let delay = job.delay_queues.contains(&declared.name);
                if delay || !checked.insert(declared.name.clone()) {
                    continue;
                }
                problems.extend(self.check_queue(&job.job, declared).await?);
            }
            if let Some(partitions) = job.partitions {
                let extra = names::partition_queue(&job.queue, partitions);
                if checked.insert(extra.clone())
                    && let Some(stats) = self.broker.queue_stats(&extra).await?
                {
                    problems.push(TopologyProblem::ExtraPartition {
                        job: job.job.clone(),
                        queue: extra,
                        messages: stats.messages,
                    });
                }
            }
        }
        problems.extend(self.extra_shards(&alive).await?);
        let run: Vec<&str> = alive
            .iter()
            .flat_map(|job| &job.consumed_queues)
            .map(String::as_str)
            .collect();
        let delay_queues: BTreeMap<&str, &DeclaredQueue> = workers
            .iter()
            .flat_map(|worker| &worker.status.jobs)
            .flat_map(|job| {
                job.declared
                    .iter()
                    .filter(|d| job.delay_queues.contains(&d.name))
            })
            .map(|declared| (declared.name.as_str(), declared))
            .collect();
        for (name, declared) in delay_queues {
            let Some(target) = declared.dead_letter_to.clone() else {
                continue;
            };
            let Some(stats) = self.broker.queue_stats(name).await? else {
                continue;
            };
            let target_exists = self.broker.queue_stats(&target).await?.is_some();
            if stats.messages > 0 && (!target_exists || !run.contains(&target.as_str())) {
                problems.push(TopologyProblem::OrphanDelayQueue {
                    queue: name.to_owned(),
                    messages: stats.messages,
                    target,
                    target_exists,
                });
            }
        }
        Ok(problems)
    }

    /// The shards past the most any alive worker of a job runs with:
    /// while a deploy changes `shards`, a shard the new workers drop is
    /// still consumed by the old ones, and by the new ones that found it at
    /// their start.
    async fn extra_shards(&self, alive: &[&JobStatus]) -> Result<Vec<TopologyProblem>, Error> {
        let mut most: BTreeMap<(&str, &str), u16> = BTreeMap::new();
        for job in alive.iter().filter(|job| job.partitions.is_none()) {
            let shards = most.entry((&job.job, &job.queue)).or_default();
            *shards = (*shards).max(job.shards.unwrap_or(1));
        }
        let consumed: std::collections::HashSet<&str> = alive
            .iter()
            .flat_map(|job| &job.consumed_queues)
            .map(String::as_str)
            .collect();
        let mut problems = Vec::new();
        for ((job, queue), shards) in most {
            let found = topology::shards_past(&*self.broker, queue, shards, topology::SHARD_GAP);
            for (extra, stats) in found.await? {
                let consumed = consumed.contains(extra.as_str());
                // Another application's queue that only looks like a shard
                // (qjob did not mark it, and no worker consumes it) is not
                // one of this job's.
                if !consumed && !self.broker.is_shard_of(&extra, queue).await? {
                    continue;
                }
                problems.push(TopologyProblem::ExtraShard {
                    job: job.to_owned(),
                    consumed,
                    queue: extra,
                    messages: stats.messages,
                });
            }
        }
        Ok(problems)
    }

    /// Whether `declared` exists on the broker as its job declares it.
    async fn check_queue(
        &self,
        job: &str,
        declared: &DeclaredQueue,
    ) -> Result<Option<TopologyProblem>, Error> {
        if self.broker.queue_stats(&declared.name).await?.is_none() {
            return Ok(Some(TopologyProblem::Missing {
                job: job.to_owned(),
                queue: declared.name.clone(),
            }));
        }
        let Some(spec) = declared.spec() else {
            return Ok(None);
        };
        // Declaring an existing queue with its own arguments changes
        // nothing; with others, the broker names the first that differs.
        match self.broker.declare_queue(&spec).await {
            Ok(()) => Ok(None),
            Err(Error::QueueMismatch {
                queue,
                argument,
                existing,
                requested,
            }) => Ok(Some(TopologyProblem::Differs {
                job: job.to_owned(),
                queue,
                argument,
                existing,
                requested,
            })),
            Err(error) => Err(error),
        }
    }
}
