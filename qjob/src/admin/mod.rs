//! The operator's view of qjob, over the broker alone: which workers run
//! and how their job types do (from their heartbeats), the queues with
//! their depth, the dead letters (browsed in place, replayed, discarded),
//! and commands to the workers (pause, resume, concurrency, cancel) and to
//! the schedules they carry (fire a tick now, pause, resume).
//!
//! [`Admin`] is what the `qjob` command-line tool and the `qjob-web`
//! dashboard are built on; it works the same on `AmqpBroker` and on
//! `qjob_testkit::MemoryBroker`.
//!
//! ```
//! # use qjob::{job, JobContext, JobError, Worker};
//! use qjob::admin::Admin;
//! use qjob_testkit::MemoryBroker;
//! # #[job(queue = "docs.admin.email")]
//! # async fn email(_to: String, _ctx: JobContext) -> Result<(), JobError> { Ok(()) }
//!
//! # #[tokio::main] async fn main() -> Result<(), qjob::Error> {
//! let broker = MemoryBroker::new();
//! let admin = Admin::connect(broker.clone()).await?;
//! let worker = Worker::builder(broker.clone()).register(EmailJob).build();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(worker.run_until(async { let _ = stopped.await; }));
//!
//! let workers = admin.wait_for_workers(1, std::time::Duration::from_secs(5)).await;
//! assert_eq!(workers[0].status.jobs[0].job, "email");
//! admin.pause("email").await?;
//! # stop.send(()).unwrap(); running.await.unwrap()?;
//! # Ok(()) }
//! ```

mod activity;
mod asyncapi;
mod commands;
mod delayed;
mod find;
mod heard;
mod history;
mod letters;
mod schedules;
mod topology_check;
mod views;

pub use crate::protocol::MinuteStatus;
pub use crate::protocol::{
    ACTIVITY_AT_MOST, BudgetStatus, CONTROL_EXCHANGE, Command, CommandMessage, ConcurrencyRange,
    DeclaredQueue, FORMAT, JobStatus, PermitStatus, Reply, RetryingJob, RunningJob,
    STATUS_EXCHANGE, SharedLimitsStatus, WorkerState, WorkerStatus,
};
pub use activity::{HeldView, Listed, RunningView};
pub use asyncapi::AsyncApi;
pub use commands::DEFAULT_REPLY_WINDOW;
pub use delayed::{DelayedJob, Waiting, browsable};
pub use find::{Acted, Whereabouts};
pub use history::{JobHistory, MinuteView};
pub use letters::{BROWSE_AT_MOST, Letter, LetterFilter};
pub use topology_check::TopologyProblem;
pub use views::{JobView, MISSED_HEARTBEATS, QueueRole, QueueView, ScheduleView, WorkerView};

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Error;
use crate::broker::Broker;
use heard::{Seen, listen};

/// The console's handle on the broker: see the [module](self).
///
/// It listens to the status exchange from [`Admin::connect`] on (a
/// private queue of its connection), so it knows the workers whose
/// heartbeats came since; [`Admin::refresh`] asks every worker for one at
/// once. Dropping it stops listening.
pub struct Admin {
    broker: Arc<dyn Broker>,
    id: String,
    seen: Arc<Mutex<Seen>>,
    listener: tokio::task::JoinHandle<()>,
    reply_window: Duration,
    commands: AtomicU64,
    /// The delay queues seen in the delay indexes: another console reading
    /// an index at the same time holds its entries.
    delay_queues_seen: Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Admin {
    /// Starts listening to the workers' heartbeats on `broker` (a shared
    /// broker is an `Arc<…>`, itself a [`Broker`]) and asks every worker
    /// for one.
    ///
    /// # Errors
    ///
    /// The broker's error, if it cannot listen or send.
    pub async fn connect(broker: impl Broker) -> Result<Self, Error> {
        let broker: Arc<dyn Broker> = Arc::new(broker);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let patterns = ["worker.*".to_owned(), format!("reply.{id}")];
        let listener = broker
            .listen(STATUS_EXCHANGE, &[&patterns[0], &patterns[1]])
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let admin = Self {
            listener: tokio::spawn(listen(broker.clone(), patterns, listener, seen.clone())),
            broker,
            id,
            seen,
            reply_window: DEFAULT_REPLY_WINDOW,
            commands: AtomicU64::new(0),
            delay_queues_seen: Mutex::default(),
        };
        admin.send(Command::Ping).await?;
        Ok(admin)
    }

    /// How long a command waits for the workers' replies (2 s by default):
    /// it returns sooner once every alive worker concerned replied.
    pub fn with_reply_window(mut self, window: Duration) -> Self {
        self.reply_window = window;
        self
    }

    /// The broker the console acts on.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("console state poisoned")
    }
}
