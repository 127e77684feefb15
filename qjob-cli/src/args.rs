//! The command line: global options, commands and their arguments.

use clap::{Args, Parser, Subcommand};
use qjob::admin::LetterFilter;

/// Operate qjob's jobs on RabbitMQ: workers, queues, dead letters.
#[derive(Debug, Parser)]
#[command(name = "qjob", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The broker's AMQP URL.
    #[arg(
        long,
        global = true,
        env = "QJOB_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true
    )]
    pub(crate) url: String,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// How long to wait for the workers' heartbeats and replies, in
    /// milliseconds.
    #[arg(long, global = true, default_value_t = 1500, value_name = "MS")]
    pub(crate) wait: u64,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Workers alive and gone, job types with their queues, alarms.
    Status,
    /// The workers heard from: host, version, uptime, last heartbeat.
    Workers,
    /// The queues of the running job types: ready messages and consumers.
    Queues,
    /// Dead letters: list, show, replay, discard, purge.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Pauses a job type on every worker that runs it (consumers cancelled,
    /// running jobs finish, nothing rejected).
    Pause {
        /// The job type's name (`charge`), its type's (`ChargeJob`) or its queue.
        job: String,
    },
    /// Resumes a paused job type.
    Resume {
        /// The job type's name (`charge`), its type's (`ChargeJob`) or its queue.
        job: String,
    },
    /// Sets a job type's handler slots on every worker that runs it, or
    /// with --global its global concurrency (across every process).
    Concurrency {
        /// The job type's name (`charge`), its type's (`ChargeJob`) or its queue.
        job: String,
        /// Handler slots per worker (with --global: across every process).
        #[arg(value_parser = clap::value_parser!(u32).range(1..=100_000))]
        concurrency: u32,
        /// Set the job's global concurrency, kept in the workers' store.
        #[arg(long)]
        global: bool,
    },
    /// Cancels a job by id: its running handler is told, and it is
    /// dead-lettered as cancelled (also if it has not arrived yet).
    Cancel {
        /// The job's id.
        job_id: String,
    },
    /// The jobs running now, the longest-running first.
    Running {
        /// Only this job type (its name, its type's or its queue).
        #[arg(long)]
        job: Option<String>,
    },
    /// The jobs scheduled for later (enqueue_in, enqueue_at), waiting in
    /// delay queues, the soonest due first.
    Scheduled(WaitingArgs),
    /// The retries waiting out their backoff: in delay queues, and held in
    /// workers for a retry in place, the soonest due first.
    Retrying(WaitingArgs),
    /// Where a job is, by id: running, held, delayed or dead-lettered.
    Find {
        /// The job's id.
        job_id: String,
    },
    /// Runs a waiting job now: one in a delay queue moves on (a retry
    /// keeps its attempt), one held for a retry in place starts its next
    /// attempt.
    RunNow {
        /// The job's id.
        job_id: String,
    },
    /// Discards a waiting job: dead-lettered as cancelled without running
    /// (its dead-letter queue keeps it).
    Discard {
        /// The job's id.
        job_id: String,
    },
    /// Checks the broker's queues against what the running workers declare.
    #[command(subcommand)]
    Topology(Topology),
    /// An AsyncAPI 3.0.0 document of the running job types (JSON), for
    /// producers in other languages.
    Asyncapi(crate::asyncapi::AsyncApiArgs),
    /// The schedules the running workers carry: leader, last and next
    /// tick, missed-tick policy, paused.
    Schedules,
    /// Fires a schedule's tick now, pauses or resumes a schedule.
    #[command(subcommand)]
    Schedule(crate::schedules::ScheduleCommand),
    /// The last hour, per job type and minute: attempts succeeded, failed
    /// and dead-lettered, and p50/p95 run times.
    History {
        /// Only this job type (its name, its type's or its queue).
        #[arg(long)]
        job: Option<String>,
    },
}

/// Which waiting jobs to list.
#[derive(Debug, Args)]
pub(crate) struct WaitingArgs {
    /// Only this job type (its name, its type's or its queue).
    #[arg(long)]
    pub(crate) job: Option<String>,
    /// Skip this many.
    #[arg(long, default_value_t = 0)]
    pub(crate) offset: usize,
    /// List at most this many.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Dlq {
    /// Lists dead letters, oldest first, leaving them in place (it reads at
    /// most the first 10 000).
    List {
        /// The job type's name (`charge`), its type's (`ChargeJob`), its queue, or its dead-letter queue.
        queue: String,
        /// Skip this many (of those that pass the filter).
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        filter: Filter,
    },
    /// Shows one dead letter: payload, error, headers.
    Show {
        /// The job type's name (`charge`), its type's (`ChargeJob`), its queue, or its dead-letter queue.
        queue: String,
        /// The job's id.
        job_id: String,
    },
    /// Replays dead letters into the queue they failed on.
    Replay {
        /// The job type's name (`charge`), its type's (`ChargeJob`), its queue, or its dead-letter queue.
        queue: String,
        /// The job to replay; without it, `--all` or a filter says which.
        #[arg(conflicts_with_all = ["reason", "error"])]
        job_id: Option<String>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with_all = ["job_id", "reason", "error"])]
        all: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Removes one dead letter.
    Discard {
        /// The job type's name (`charge`), its type's (`ChargeJob`), its queue, or its dead-letter queue.
        queue: String,
        /// The job's id.
        job_id: String,
    },
    /// Removes every dead letter the queue holds now.
    Purge {
        /// The job type's name (`charge`), its type's (`ChargeJob`), its queue, or its dead-letter queue.
        queue: String,
        /// Confirms: the letters are gone for good.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Filter {
    /// Only letters dead-lettered for this reason (permanent,
    /// retries-exhausted, malformed, delivery-limit, cancelled).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Only letters whose error contains this text.
    #[arg(long)]
    pub(crate) error: Option<String>,
}

impl Filter {
    pub(crate) fn letters(&self) -> Option<LetterFilter> {
        if self.reason.is_none() && self.error.is_none() {
            return None;
        }
        let mut filter = LetterFilter::all();
        if let Some(reason) = &self.reason {
            filter = filter.reason(reason);
        }
        if let Some(text) = &self.error {
            filter = filter.error_contains(text);
        }
        Some(filter)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Topology {
    /// Missing queues, arguments that differ, extra partitions or shards,
    /// orphan delay queues.
    Check,
}
