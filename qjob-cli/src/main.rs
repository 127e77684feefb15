//! `qjob`: see the workers, queues and dead letters of qjob's jobs on
//! RabbitMQ, and command the workers. Built on `qjob::admin`.
//!
//! Exit codes: 0 done; 1 the broker failed or could not be reached; 2 bad
//! usage; 3 not found (no such dead letter, queue or job type); 4 a
//! command was not carried out (no worker replied, or one refused);
//! 5 `topology check` found problems.

mod table;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use qjob::admin::{
    Admin, JobView, Letter, LetterFilter, Reply, ScheduleView, WorkerState, WorkerView,
};
use qjob::{AmqpBroker, Error};
use serde_json::{Value, json};

use table::{Table, ago, short, until};

/// `println!` through [`table::say`]: cleaned of control characters, and
/// quiet on a closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        table::say(&format!($($arg)*))
    };
}

/// Operate qjob's jobs on RabbitMQ: workers, queues, dead letters.
#[derive(Debug, Parser)]
#[command(name = "qjob", version, about, long_about = None)]
struct Cli {
    /// The broker's AMQP URL.
    #[arg(
        long,
        global = true,
        env = "QJOB_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true
    )]
    url: String,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    json: bool,

    /// How long to wait for the workers' heartbeats and replies, in
    /// milliseconds.
    #[arg(long, global = true, default_value_t = 1500, value_name = "MS")]
    wait: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        /// The job type's name or queue.
        job: String,
    },
    /// Resumes a paused job type.
    Resume {
        /// The job type's name or queue.
        job: String,
    },
    /// Sets a job type's handler slots on every worker that runs it.
    Concurrency {
        /// The job type's name or queue.
        job: String,
        /// Handler slots per worker.
        #[arg(value_parser = clap::value_parser!(u32).range(1..=100_000))]
        concurrency: u32,
    },
    /// Cancels a job by id: its running handler is told, and it is
    /// dead-lettered as cancelled (also if it has not arrived yet).
    Cancel {
        /// The job's id.
        job_id: String,
    },
    /// Checks the broker's queues against what the running workers declare.
    #[command(subcommand)]
    Topology(Topology),
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// Lists dead letters, oldest first, leaving them in place (it reads at
    /// most the first 10 000).
    List {
        /// The job type's name, its queue, or its dead-letter queue.
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
        /// The job type's name, its queue, or its dead-letter queue.
        queue: String,
        /// The job's id.
        job_id: String,
    },
    /// Replays dead letters into the queue they failed on.
    Replay {
        /// The job type's name, its queue, or its dead-letter queue.
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
        /// The job type's name, its queue, or its dead-letter queue.
        queue: String,
        /// The job's id.
        job_id: String,
    },
    /// Removes every dead letter the queue holds now.
    Purge {
        /// The job type's name, its queue, or its dead-letter queue.
        queue: String,
        /// Confirms: the letters are gone for good.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
struct Filter {
    /// Only letters dead-lettered for this reason (permanent,
    /// retries-exhausted, malformed, delivery-limit, cancelled).
    #[arg(long)]
    reason: Option<String>,
    /// Only letters whose error contains this text.
    #[arg(long)]
    error: Option<String>,
}

impl Filter {
    fn letters(&self) -> Option<LetterFilter> {
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
enum Topology {
    /// Missing queues, arguments that differ, extra partitions or shards,
    /// orphan delay queues.
    Check,
}

/// How a run ended: its exit code, and what to say on stderr.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure(1, error.to_string())
    }
}

const NOT_FOUND: u8 = 3;
const NOT_CARRIED_OUT: u8 = 4;
const TOPOLOGY_PROBLEMS: u8 = 5;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("qjob: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("qjob: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let broker = AmqpBroker::connect(cli.url.clone()).await?;
    let wait = Duration::from_millis(cli.wait);
    let admin = Admin::connect(broker).await?.with_reply_window(wait);
    let out = Out { json: cli.json };
    match &cli.command {
        Command::Status => {
            admin.refresh().await?;
            status(
                &out,
                &admin.workers(),
                &admin.jobs().await?,
                &admin.schedules(),
            );
            Ok(())
        }
        Command::Workers => {
            admin.refresh().await?;
            workers(&out, &admin.workers());
            Ok(())
        }
        Command::Queues => {
            admin.refresh().await?;
            queues(&out, &admin.jobs().await?);
            Ok(())
        }
        Command::Dlq(dlq) => dead_letters(&out, &admin, dlq).await,
        Command::Pause { job } => {
            running(&admin, job).await?;
            obey(&out, job, admin.pause(job).await?)
        }
        Command::Resume { job } => {
            running(&admin, job).await?;
            obey(&out, job, admin.resume(job).await?)
        }
        Command::Concurrency { job, concurrency } => {
            running(&admin, job).await?;
            let replies = admin.set_concurrency(job, *concurrency as usize).await?;
            obey(&out, job, replies)
        }
        Command::Cancel { job_id } => {
            admin.refresh().await?;
            obey(&out, job_id, admin.cancel(job_id).await?)
        }
        Command::Topology(Topology::Check) => {
            admin.refresh().await?;
            let problems = admin.check_topology().await?;
            if out.json {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                out.print_json(&json!({ "problems": problems }));
            } else if problems.is_empty() {
                say!("the broker's queues match what the running workers declare");
            } else {
                problems.iter().for_each(|problem| say!("{problem}"));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(Failure(
                    TOPOLOGY_PROBLEMS,
                    format!("{} topology problem(s)", problems.len()),
                ))
            }
        }
    }
}

/// Where output goes, as tables or JSON.
struct Out {
    json: bool,
}

impl Out {
    fn print_json(&self, value: &Value) {
        say!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON values serialize")
        );
    }
}

fn status(out: &Out, workers: &[WorkerView], jobs: &[JobView], schedules: &[ScheduleView]) {
    let alive = workers.iter().filter(|w| w.alive).count();
    let gone = workers.len() - alive;
    let alarms: Vec<String> = workers.iter().filter_map(WorkerView::alarm).collect();
    if out.json {
        out.print_json(&json!({
            "workers": { "alive": alive, "gone": gone },
            "alarms": alarms,
            "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
            "schedules": schedules.iter().map(|s| json!({
                "name": s.name,
                "job": s.schedule.job,
                "cron": s.schedule.expression,
                "zone": s.schedule.zone,
                "leader": s.leader.as_ref().map(|(host, pid)| json!({ "host": host, "pid": pid })),
                "workers": s.workers,
                "next_ms": s.schedule.next.map(millis),
                "last_fired_ms": s.schedule.last_fired.map(millis),
                "problem": s.schedule.problem,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    say!("workers: {alive} alive, {gone} gone");
    for alarm in &alarms {
        say!("alarm: {alarm}");
    }
    let mut table = Table::new([
        "JOB",
        "QUEUE",
        "READY",
        "DELAYED",
        "DEAD",
        "WORKERS",
        "PAUSED",
        "CONCURRENCY",
        "IN FLIGHT",
        "RATE/S",
        "BREAKERS OPEN",
        "LAST ERROR",
    ]);
    for job in jobs {
        table.row([
            job.job.clone(),
            job.status.queue.clone(),
            job.depth().to_string(),
            job.delayed().to_string(),
            job.dead_letters().to_string(),
            job.workers.to_string(),
            job.paused_on.to_string(),
            job.concurrency.to_string(),
            job.in_flight.to_string(),
            job.rate.map_or("-".to_owned(), |rate| format!("{rate:.1}")),
            job.breakers_open.to_string(),
            short(job.last_error.as_deref().unwrap_or("-"), 60),
        ]);
    }
    table.print();
    if schedules.is_empty() {
        return;
    }
    say!("");
    let mut table = Table::new([
        "SCHEDULE",
        "JOB",
        "CRON",
        "ZONE",
        "LEADER",
        "WORKERS",
        "NEXT",
        "LAST FIRED",
    ]);
    for s in schedules {
        table.row([
            s.name.clone(),
            s.schedule.job.clone(),
            s.schedule.expression.clone(),
            s.schedule.zone.clone(),
            s.leader.as_ref().map_or("none".to_owned(), |(host, pid)| {
                format!("{host} (pid {pid})")
            }),
            s.workers.to_string(),
            s.schedule
                .next
                .map_or("-".to_owned(), |next| format!("in {}", until(next))),
            s.schedule
                .last_fired
                .map_or("-".to_owned(), |at| format!("{} ago", ago(at))),
        ]);
    }
    table.print();
    for s in schedules {
        if let Some(problem) = &s.schedule.problem {
            say!("problem: schedule {}: {problem}", s.name);
        }
    }
}

fn job_json(job: &JobView) -> Value {
    json!({
        "job": job.job,
        "queue": job.status.queue,
        "ready": job.depth(),
        "delayed": job.delayed(),
        "dead_letters": job.dead_letters(),
        "workers": job.workers,
        "paused_on": job.paused_on,
        "concurrency": job.concurrency,
        "in_flight": job.in_flight,
        "succeeded": job.succeeded,
        "failed": job.failed,
        "retried": job.retried,
        "dead_lettered": job.dead_lettered,
        "rate": job.rate,
        "breakers_open": job.breakers_open,
        "last_error": job.last_error,
        "queues": job.queues.iter().map(|queue| json!({
            "name": queue.name,
            "role": queue.role.as_str(),
            "exists": queue.stats.is_some(),
            "ready": queue.stats.map(|s| s.messages),
            "consumers": queue.stats.map(|s| s.consumers),
        })).collect::<Vec<_>>(),
    })
}

fn state(worker: &WorkerView) -> &'static str {
    match (worker.alive, worker.status.state) {
        (true, state) => state.as_str(),
        (false, WorkerState::Stopped) => "stopped",
        (false, _) => "gone",
    }
}

fn workers(out: &Out, workers: &[WorkerView]) {
    if out.json {
        let workers: Vec<Value> = workers
            .iter()
            .map(|w| {
                json!({
                    "worker_id": w.status.worker_id,
                    "host": w.status.host,
                    "pid": w.status.pid,
                    "version": w.status.version,
                    "state": state(w),
                    "alive": w.alive,
                    "started_at_ms": millis(w.status.started_at),
                    "last_heartbeat_ms": millis(w.status.sent_at),
                    "connected": w.status.connected,
                    "blocked": w.status.blocked,
                    "jobs": w.status.jobs.iter().map(|j| j.job.clone()).collect::<Vec<_>>(),
                })
            })
            .collect();
        out.print_json(&json!({ "workers": workers }));
        return;
    }
    let mut table = Table::new([
        "WORKER",
        "HOST",
        "PID",
        "VERSION",
        "STATE",
        "UP",
        "LAST HEARTBEAT",
        "JOBS",
    ]);
    for w in workers {
        let jobs: Vec<&str> = w.status.jobs.iter().map(|j| j.job.as_str()).collect();
        table.row([
            short_id(&w.status.worker_id),
            w.status.host.clone(),
            w.status.pid.to_string(),
            w.status.version.clone(),
            state(w).to_owned(),
            ago(w.status.started_at),
            format!("{} ago", ago(w.status.sent_at)),
            jobs.join(","),
        ]);
    }
    table.print();
}

fn queues(out: &Out, jobs: &[JobView]) {
    if out.json {
        out.print_json(&json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() }));
        return;
    }
    let mut table = Table::new(["QUEUE", "JOB", "ROLE", "READY", "CONSUMERS"]);
    for job in jobs {
        for queue in &job.queues {
            let (ready, consumers) = match queue.stats {
                Some(stats) => (stats.messages.to_string(), stats.consumers.to_string()),
                None => ("missing".to_owned(), "-".to_owned()),
            };
            table.row([
                queue.name.clone(),
                job.job.clone(),
                queue.role.as_str().to_owned(),
                ready,
                consumers,
            ]);
        }
    }
    table.print();
}

/// Waits for the workers' heartbeats; not found (3) when no running worker
/// runs job type `job` (by name or queue).
async fn running(admin: &Admin, job: &str) -> Result<(), Failure> {
    admin.refresh().await?;
    let runs = admin
        .workers()
        .iter()
        .filter(|worker| worker.alive)
        .flat_map(|worker| &worker.status.jobs)
        .any(|status| status.job == job || status.queue == job);
    if runs {
        Ok(())
    } else {
        Err(Failure(
            NOT_FOUND,
            format!("no running worker runs job type {job:?}"),
        ))
    }
}

/// The dead-letter queue `name` stands for: a dead-letter queue, a job's
/// work queue, or a job type's name (from the workers' heartbeats).
async fn dead_letter_queue(admin: &Admin, name: &str) -> Result<String, Failure> {
    let by_queue = format!("{name}.dlq");
    if admin.queue(&by_queue).await?.is_some() {
        return Ok(by_queue);
    }
    if name.ends_with(".dlq") && admin.queue(name).await?.is_some() {
        return Ok(name.to_owned());
    }
    admin.refresh().await?;
    admin
        .workers()
        .iter()
        .flat_map(|worker| &worker.status.jobs)
        .find(|job| job.job == name)
        .map(|job| job.dead_letter_queue.clone())
        .ok_or_else(|| {
            Failure(
                NOT_FOUND,
                format!("no dead-letter queue for {name:?}: neither {by_queue:?} nor a job type of a running worker"),
            )
        })
}

async fn dead_letters(out: &Out, admin: &Admin, command: &Dlq) -> Result<(), Failure> {
    match command {
        Dlq::List {
            queue,
            offset,
            limit,
            filter,
        } => {
            let queue = dead_letter_queue(admin, queue).await?;
            let filter = filter.letters().unwrap_or_else(LetterFilter::all);
            let letters = admin.dead_letters(&queue, &filter, *offset, *limit).await?;
            list(out, &queue, &letters);
            Ok(())
        }
        Dlq::Show { queue, job_id } => {
            let queue = dead_letter_queue(admin, queue).await?;
            let letter = admin.dead_letter(&queue, job_id).await?.ok_or_else(|| {
                Failure(
                    NOT_FOUND,
                    format!("no dead letter of job {job_id} in {queue}"),
                )
            })?;
            show(out, &letter);
            Ok(())
        }
        Dlq::Replay {
            queue,
            job_id,
            all,
            filter,
        } => {
            let queue = dead_letter_queue(admin, queue).await?;
            let replayed = match (job_id, filter.letters()) {
                (Some(job_id), None) => {
                    if !admin.replay(&queue, job_id).await? {
                        return Err(Failure(
                            NOT_FOUND,
                            format!("no dead letter of job {job_id} in {queue}"),
                        ));
                    }
                    1
                }
                (None, Some(filter)) => admin.replay_matching(&queue, &filter).await?,
                (None, None) if *all => admin.replay_matching(&queue, &LetterFilter::all()).await?,
                _ => {
                    return Err(Failure(
                        2,
                        "say which dead letters to replay: a job id, --all, or --reason/--error"
                            .to_owned(),
                    ));
                }
            };
            done(
                out,
                &format!("replayed {replayed} from {queue}"),
                json!({ "replayed": replayed }),
            );
            Ok(())
        }
        Dlq::Discard { queue, job_id } => {
            let queue = dead_letter_queue(admin, queue).await?;
            if !admin.discard(&queue, job_id).await? {
                return Err(Failure(
                    NOT_FOUND,
                    format!("no dead letter of job {job_id} in {queue}"),
                ));
            }
            done(
                out,
                &format!("discarded {job_id} from {queue}"),
                json!({ "discarded": 1 }),
            );
            Ok(())
        }
        Dlq::Purge { queue, yes } => {
            let queue = dead_letter_queue(admin, queue).await?;
            if !yes {
                return Err(Failure(
                    2,
                    format!("purging removes every dead letter of {queue} for good: add --yes"),
                ));
            }
            let purged = admin.purge(&queue).await?;
            done(
                out,
                &format!("purged {purged} from {queue}"),
                json!({ "purged": purged }),
            );
            Ok(())
        }
    }
}

fn done(out: &Out, text: &str, value: Value) {
    if out.json {
        out.print_json(&value);
    } else {
        say!("{text}");
    }
}

fn letter_json(letter: &Letter) -> Value {
    json!({
        "job_id": letter.job_id.as_ref().map(ToString::to_string),
        "reason": letter.reason.as_str(),
        "error": letter.error,
        "attempts": letter.attempts,
        "first_failed_at_ms": letter.first_failed_at.map(millis),
        "failed_at_ms": letter.failed_at.map(millis),
        "host": letter.host,
        "payload": letter.payload,
        "body": String::from_utf8_lossy(&letter.body),
        "headers": letter.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
    })
}

fn list(out: &Out, queue: &str, letters: &[Letter]) {
    if out.json {
        out.print_json(&json!({
            "queue": queue,
            "letters": letters.iter().map(letter_json).collect::<Vec<_>>(),
        }));
        return;
    }
    let mut table = Table::new(["JOB ID", "REASON", "ATTEMPTS", "FAILED", "ERROR"]);
    for letter in letters {
        table.row([
            letter
                .job_id
                .as_ref()
                .map_or("-".to_owned(), ToString::to_string),
            letter.reason.to_string(),
            letter.attempts.to_string(),
            letter
                .failed_at
                .map_or("-".to_owned(), |at| format!("{} ago", ago(at))),
            short(&letter.error, 80),
        ]);
    }
    table.print();
}

fn show(out: &Out, letter: &Letter) {
    if out.json {
        out.print_json(&letter_json(letter));
        return;
    }
    let job_id = letter
        .job_id
        .as_ref()
        .map_or("-".to_owned(), ToString::to_string);
    say!("job id:    {job_id}");
    say!("reason:    {}", letter.reason);
    say!("error:     {}", letter.error);
    say!("attempts:  {}", letter.attempts);
    if let Some(at) = letter.failed_at {
        say!("failed:    {} ago", ago(at));
    }
    if let Some(host) = &letter.host {
        say!("host:      {host}");
    }
    say!("payload:");
    match &letter.payload {
        Some(payload) => say!(
            "{}",
            serde_json::to_string_pretty(payload).expect("JSON values serialize")
        ),
        None => say!("{}", String::from_utf8_lossy(&letter.body)),
    }
    say!("headers:");
    for (name, value) in &letter.headers {
        say!("  {name}: {value}");
    }
}

/// Reports the workers' replies to a command; fails when none replied or
/// one refused.
fn obey(out: &Out, target: &str, replies: Vec<Reply>) -> Result<(), Failure> {
    if out.json {
        let replies: Vec<Value> = replies
            .iter()
            .map(|r| json!({ "worker_id": r.worker_id, "ok": r.ok, "message": r.message }))
            .collect();
        out.print_json(&json!({ "replies": replies }));
    } else {
        for reply in &replies {
            let worker = short_id(&reply.worker_id);
            let verdict = if reply.ok { "ok" } else { "refused" };
            say!("{worker}: {verdict}: {}", reply.message);
        }
    }
    if replies.is_empty() {
        return Err(Failure(
            NOT_CARRIED_OUT,
            format!("no running worker replied for {target:?}"),
        ));
    }
    if replies.iter().any(|reply| !reply.ok) {
        return Err(Failure(
            NOT_CARRIED_OUT,
            "a worker refused the command".to_owned(),
        ));
    }
    Ok(())
}

/// The last 8 characters of a worker id: enough to tell workers apart.
fn short_id(id: &str) -> String {
    let chars = id.chars().count();
    id.chars().skip(chars.saturating_sub(8)).collect()
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}
