//! `qjob`: see the workers, queues and dead letters of qjob's jobs on
//! RabbitMQ, and command the workers. Built on `qjob::admin`.
//!
//! Exit codes: 0 done; 1 the broker failed or could not be reached; 2 bad
//! usage; 3 not found (no such dead letter, queue, job type or schedule,
//! or no worker heard for `asyncapi`); 4 a command was not carried out
//! (no worker replied, or one refused); 5 `topology check` found problems.

/// `println!` through [`table::say`]: cleaned of control characters, and
/// quiet on a closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::table::say(&format!($($arg)*))
    };
}

mod activity;
mod args;
mod asyncapi;
mod commands;
mod dlq;
mod failure;
mod history;
mod out;
mod overview;
mod schedules;
mod table;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use qjob::AmqpBroker;
use qjob::admin::{Admin, Waiting};

use args::{Cli, Command, Topology, WaitingArgs};
use commands::{check_topology, obey, running};
use dlq::dead_letters;
use failure::Failure;
use out::Out;
use overview::{queues, status, workers};

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
                wait,
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
        Command::Concurrency {
            job,
            concurrency,
            global,
        } => {
            running(&admin, job).await?;
            let replies = if *global {
                admin
                    .set_global_concurrency(job, Some(*concurrency))
                    .await?
            } else {
                admin.set_concurrency(job, *concurrency as usize).await?
            };
            obey(&out, job, replies)
        }
        Command::Cancel { job_id } => {
            admin.refresh().await?;
            obey(&out, job_id, admin.cancel(job_id).await?)
        }
        Command::Running { job } => {
            admin.refresh().await?;
            if let Some(job) = job {
                running(&admin, job).await?;
            }
            activity::running(&out, &admin.running(job.as_deref()));
            Ok(())
        }
        Command::Scheduled(args) => waiting(&out, &admin, Waiting::Scheduled, args).await,
        Command::Retrying(args) => waiting(&out, &admin, Waiting::Retrying, args).await,
        Command::Find { job_id } => {
            admin.refresh().await?;
            activity::find(&out, job_id, &admin.find(job_id).await?)
        }
        Command::RunNow { job_id } => {
            admin.refresh().await?;
            activity::acted(&out, job_id, admin.run_now(job_id).await?)
        }
        Command::Discard { job_id } => {
            admin.refresh().await?;
            activity::acted(&out, job_id, admin.discard_waiting(job_id).await?)
        }
        Command::Topology(Topology::Check) => {
            admin.refresh().await?;
            check_topology(&out, &admin).await
        }
        Command::Asyncapi(args) => asyncapi::asyncapi(&admin, &cli.url, args).await,
        Command::Schedules => schedules::list(&out, &admin).await,
        Command::Schedule(command) => schedules::command(&out, &admin, command).await,
        Command::History { job } => history::history(&out, &admin, job.as_deref()).await,
    }
}

/// `scheduled` or `retrying`.
async fn waiting(
    out: &Out,
    admin: &Admin,
    which: Waiting,
    args: &WaitingArgs,
) -> Result<(), Failure> {
    admin.refresh().await?;
    let job = args.job.as_deref();
    if let Some(job) = job {
        running(admin, job).await?;
    }
    let delayed = admin.delayed(job, which, args.offset, args.limit).await?;
    let held = (which == Waiting::Retrying).then(|| admin.held(job));
    activity::waiting(out, which, &delayed, held.as_ref());
    if !out.json {
        for view in admin.jobs().await? {
            let named = job.is_none_or(|job| view.status.is_named(job));
            if named && !qjob::admin::browsable(&view) && view.delayed() > 0 {
                say!(
                    "({} wait in the delay queues of {}, a quorum job type: counted, never read)",
                    view.delayed(),
                    view.job
                );
            }
        }
    }
    Ok(())
}
