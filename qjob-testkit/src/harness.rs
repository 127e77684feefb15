//! [`TestKit`]: run jobs on a [`MemoryBroker`] and assert what happened.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use qjob::{AttemptOutcome, Client, DeadLetter, Error, Job, JobContext, JobError, JobId, Worker};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::MemoryBroker;
use crate::records::{Attempt, Records};
use crate::text;

/// How far ahead [`TestKit::run_until_idle`] looks for delayed work by default.
const DEFAULT_HORIZON: Duration = Duration::from_secs(24 * 3600);

type Register = Box<dyn Fn(qjob::WorkerBuilder) -> qjob::WorkerBuilder + Send + Sync>;

/// A test harness: an in-memory broker, a client, a worker for the
/// registered jobs, and queries over everything that happened.
///
/// Use it under `#[tokio::test(start_paused = true)]`: retries, backoff and
/// delays then run on virtual time, in milliseconds of real time.
///
/// # Examples
///
/// ```
/// use qjob::{job, JobContext, JobError};
/// use qjob_testkit::TestKit;
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Charge { account: String, cents: u64 }
///
/// #[job(queue = "docs.kit.charge", retry = 2, backoff = exponential(base = "1s", max = "1m"))]
/// async fn charge(job: Charge, _ctx: JobContext) -> Result<(), JobError> {
///     if job.account == "frozen" {
///         return Err(JobError::msg("account frozen"));
///     }
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let mut kit = TestKit::new().register(ChargeJob);
/// kit.enqueue::<ChargeJob>(Charge { account: "a".into(), cents: 5 }).await.unwrap();
/// kit.enqueue::<ChargeJob>(Charge { account: "frozen".into(), cents: 7 }).await.unwrap();
/// kit.run_until_idle().await;
///
/// kit.assert_succeeded::<ChargeJob>(|c| c.account == "a");
/// let dead = kit.assert_dead_lettered::<ChargeJob>(|c| c.account == "frozen");
/// assert_eq!(dead.attempts, 3);
/// assert_eq!(dead.error, "account frozen");
/// assert_eq!(kit.retried::<ChargeJob>().len(), 2);
/// # }
/// ```
pub struct TestKit {
    broker: MemoryBroker,
    client: Client,
    jobs: Vec<Register>,
    queues: Vec<String>,
    records: Arc<Records>,
    worker: Option<Running>,
    horizon: Duration,
}

struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), Error>>,
    health: qjob::Health,
}

impl std::fmt::Debug for TestKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKit")
            .field("queues", &self.queues)
            .field("running", &self.worker.is_some())
            .field("horizon", &self.horizon)
            .finish_non_exhaustive()
    }
}

impl Default for TestKit {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKit {
    /// A harness on a fresh [`MemoryBroker`].
    pub fn new() -> Self {
        let broker = MemoryBroker::new();
        Self {
            client: Client::new(broker.clone()),
            broker,
            jobs: Vec::new(),
            queues: Vec::new(),
            records: Arc::default(),
            worker: None,
            horizon: DEFAULT_HORIZON,
        }
    }

    /// Registers a job type with the harness's worker.
    pub fn register<J: Job + Clone>(mut self, job: J) -> Self {
        self.jobs
            .push(Box::new(move |builder| builder.register(job.clone())));
        self.queues.extend(J::options().consumed_queues());
        self
    }

    /// Gives the harness's client and worker `store`, for unique jobs,
    /// inboxes and batches (a [`qjob::store::MemoryStore`] in tests).
    pub fn store<S: qjob::store::Store + Clone>(mut self, store: S) -> Self {
        self.client = self.client.clone().with_store(store.clone());
        self.jobs
            .push(Box::new(move |builder| builder.store(store.clone())));
        self
    }

    /// Applies `configure` to the harness's worker builder when the
    /// worker starts: a handler budget, resources' sizes, a permit lease
    /// (`qjob::WorkerBuilder::max_handlers`, `resource`, `permit_lease`).
    pub fn configure(
        mut self,
        configure: impl Fn(qjob::WorkerBuilder) -> qjob::WorkerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.jobs.push(Box::new(configure));
        self
    }

    #[cfg(feature = "periodic")]
    /// Adds a schedule to the harness's worker, as
    /// [`qjob::WorkerBuilder::schedule`] does (a job registered with a
    /// `cron` attribute brings its own).
    pub fn schedule<J: Job>(mut self, schedule: qjob::Schedule, payload: J::Payload) -> Self
    where
        J::Payload: Clone + Sync,
    {
        self.jobs.push(Box::new(move |builder| {
            builder.schedule::<J>(schedule.clone(), payload.clone())
        }));
        self
    }

    /// How far ahead [`TestKit::run_until_idle`] waits for delayed work
    /// (retries in backoff, delayed jobs); 24 hours by default.
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// Models RabbitMQ's `consumer_timeout` (off by default here; 30 min on
    /// RabbitMQ): the broker closes the channel of a consumer holding a
    /// delivery unsettled for longer and delivers the message again; the
    /// worker learns the limit from the broker. See
    /// [`MemoryBroker::set_consumer_timeout`].
    pub fn consumer_timeout(self, timeout: Duration) -> Self {
        self.broker.set_consumer_timeout(Some(timeout));
        self
    }

    /// The broker, to inspect queues or inject faults.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// A client on the broker.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Enqueues a job (confirmed, as on RabbitMQ).
    ///
    /// # Errors
    ///
    /// As [`Client::enqueue`] (a fault injected with
    /// [`MemoryBroker::fail_next_publish`], for instance).
    pub async fn enqueue<J: Job>(&self, payload: J::Payload) -> Result<JobId, Error> {
        self.client.enqueue::<J>(payload).await
    }

    /// Starts the worker if it is not running and waits until it consumes
    /// every registered queue.
    ///
    /// # Panics
    ///
    /// If no job is registered or the worker fails to start.
    pub async fn start(&mut self) {
        if self.worker.is_none() {
            assert!(
                !self.jobs.is_empty(),
                "register a job with the TestKit first"
            );
            let builder = Worker::builder(self.broker.clone())
                .shutdown_timeout(Duration::from_secs(5))
                .observer(self.records.clone());
            let worker = self
                .jobs
                .iter()
                .fold(builder, |b, register| register(b))
                .build();
            let health = worker.health();
            let (stop, stopped) = oneshot::channel::<()>();
            let handle = tokio::spawn(worker.run_until(async move {
                let _ = stopped.await;
            }));
            self.worker = Some(Running {
                stop,
                handle,
                health,
            });
        }
        let queues = self.queues.clone();
        let running = self.worker.as_mut().expect("started above");
        let subscribed = self
            .broker
            .wait_until(|broker| queues.iter().all(|queue| broker.consumer_count(queue) > 0));
        tokio::select! {
            () = subscribed => {}
            ended = &mut running.handle => {
                self.worker = None;
                panic!("the worker stopped at start: {ended:?}");
            }
        }
    }

    /// Runs the registered jobs until nothing is left to do: no message
    /// ready in a consumed queue, no delivery in flight, and no delayed
    /// message (a retry in backoff, a delayed job) due within the horizon.
    /// Jobs that handlers enqueue are run too. It cannot return early: a
    /// handler's publishes are confirmed before its delivery is acked.
    pub async fn run_until_idle(&mut self) {
        self.start().await;
        let horizon = self.horizon;
        let queues = &self.queues;
        // A registered queue's ready message is work even while its
        // consumer is away (resubscribing after a lost channel).
        let idle = self.broker.wait_until(|broker| {
            !broker.has_pending_work(horizon)
                && queues.iter().all(|queue| broker.ready_count(queue) == 0)
        });
        let running = self.worker.as_mut().expect("started above");
        tokio::select! {
            () = idle => {}
            ended = &mut running.handle => {
                self.worker = None;
                panic!("the worker stopped before the jobs were done: {ended:?}");
            }
        }
    }

    /// Lets `duration` pass on tokio's clock with the worker running, then
    /// runs until idle: in a test with paused time (`#[tokio::test(start_paused
    /// = true)]`), an hour of schedule ticks, retries and delays passes at
    /// once.
    pub async fn advance(&mut self, duration: Duration) {
        self.start().await;
        let running = self.worker.as_mut().expect("started above");
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            ended = &mut running.handle => {
                self.worker = None;
                panic!("the worker stopped while time passed: {ended:?}");
            }
        }
        self.run_until_idle().await;
    }

    /// Enqueues a job to run after `delay` (on tokio's clock under a paused
    /// test), as [`Client::enqueue_in`].
    ///
    /// # Errors
    ///
    /// As [`Client::enqueue_in`].
    pub async fn enqueue_in<J: Job>(
        &self,
        payload: J::Payload,
        delay: Duration,
    ) -> Result<JobId, Error> {
        self.client.enqueue_in::<J>(payload, delay).await
    }

    /// Enqueues a job to run at `at`, as [`Client::enqueue_at`].
    ///
    /// # Errors
    ///
    /// As [`Client::enqueue_at`].
    pub async fn enqueue_at<J: Job>(
        &self,
        payload: J::Payload,
        at: std::time::SystemTime,
    ) -> Result<JobId, Error> {
        self.client.enqueue_at::<J>(payload, at).await
    }

    /// The running worker's health report (its schedules, consumers,
    /// breakers), or `None` if no worker runs.
    pub fn health(&self) -> Option<qjob::HealthReport> {
        self.worker.as_ref().map(|running| running.health.report())
    }

    /// Kills the worker as a crash would: handlers stop where they are,
    /// nothing more is settled, and the broker redelivers what the worker
    /// held. The next [`TestKit::start`] or [`TestKit::run_until_idle`]
    /// starts a new worker.
    pub async fn crash_worker(&mut self) {
        if let Some(running) = self.worker.take() {
            running.handle.abort();
            let _ = running.handle.await;
        }
    }

    /// Stops the worker gracefully.
    ///
    /// # Errors
    ///
    /// The worker's own error, if it failed at start.
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        match self.worker.take() {
            Some(running) => {
                let _ = running.stop.send(());
                running
                    .handle
                    .await
                    .unwrap_or_else(|e| panic!("the worker panicked: {e}"))
            }
            None => Ok(()),
        }
    }

    /// Runs one job's handler directly with a crafted context, without any
    /// broker (`JobContext::new(queue).with_attempt(3)`, …).
    ///
    /// # Errors
    ///
    /// The handler's error.
    pub async fn perform<J: Job>(
        &self,
        job: &J,
        payload: J::Payload,
        ctx: JobContext,
    ) -> Result<(), JobError> {
        job.perform(payload, ctx).await
    }

    /// Every settled attempt of `J`, in the order they settled: completion
    /// order, not enqueue order (with concurrency, a job enqueued later can
    /// finish first).
    pub fn attempts<J: Job>(&self) -> Vec<Attempt<J::Payload>> {
        self.records.of::<J>()
    }

    /// The payloads of `J` that succeeded, in the order they completed
    /// (not the order they were enqueued in).
    pub fn succeeded<J: Job>(&self) -> Vec<J::Payload> {
        self.attempts::<J>()
            .into_iter()
            .filter(|a| a.outcome == AttemptOutcome::Succeeded)
            .filter_map(|a| a.payload)
            .collect()
    }

    /// The attempts of `J` that failed (retried or dead-lettered).
    pub fn failed_attempts<J: Job>(&self) -> Vec<Attempt<J::Payload>> {
        self.attempts::<J>()
            .into_iter()
            .filter(|a| a.outcome != AttemptOutcome::Succeeded)
            .collect()
    }

    /// The attempts of `J` that failed and were scheduled again.
    pub fn retried<J: Job>(&self) -> Vec<Attempt<J::Payload>> {
        self.attempts::<J>()
            .into_iter()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Retrying { .. }))
            .collect()
    }

    /// The jobs of `J` in its dead-letter queue, oldest first.
    pub fn dead_lettered<J: Job>(&self) -> Vec<DeadLetter<J::Payload>> {
        self.broker
            .messages(&J::options().dead_letter_queue())
            .iter()
            .map(DeadLetter::from_message)
            .collect()
    }

    /// The payloads of `J` enqueued and not run yet: ready in its queue (or
    /// partition queues) or waiting in one of its delay queues.
    pub fn enqueued<J: Job>(&self) -> Vec<J::Payload> {
        let prefix = format!("{}.", J::QUEUE);
        let dead_letters = J::options().dead_letter_queue();
        self.broker
            .queues()
            .into_iter()
            .filter(|q| q == J::QUEUE || (q.starts_with(&prefix) && *q != dead_letters))
            .flat_map(|queue| self.broker.messages(&queue))
            .filter_map(|message| serde_json::from_slice(&message.body).ok())
            .collect()
    }

    /// Asserts that a job of `J` whose payload matches succeeded.
    ///
    /// # Panics
    ///
    /// If none did, saying what happened to `J`'s jobs instead.
    pub fn assert_succeeded<J: Job>(&self, matches: impl Fn(&J::Payload) -> bool)
    where
        J::Payload: Debug,
    {
        if !self.succeeded::<J>().iter().any(&matches) {
            panic!("{}", self.explain::<J>("succeeded", &matches));
        }
    }

    /// Asserts that a job of `J` whose payload matches is in the
    /// dead-letter queue, and returns it.
    ///
    /// # Panics
    ///
    /// If none is, saying what happened to `J`'s jobs instead.
    pub fn assert_dead_lettered<J: Job>(
        &self,
        matches: impl Fn(&J::Payload) -> bool,
    ) -> DeadLetter<J::Payload>
    where
        J::Payload: Debug,
    {
        let mut dead = self.dead_lettered::<J>();
        match dead
            .iter()
            .position(|d| d.payload.as_ref().is_some_and(&matches))
        {
            Some(index) => dead.swap_remove(index),
            None => panic!("{}", self.explain::<J>("was dead-lettered", &matches)),
        }
    }

    /// Asserts that no job of `J` whose payload matches ran (it may be
    /// enqueued or delayed).
    ///
    /// # Panics
    ///
    /// If one did, listing its attempts.
    pub fn assert_not_run<J: Job>(&self, matches: impl Fn(&J::Payload) -> bool)
    where
        J::Payload: Debug,
    {
        let ran: Vec<_> = self
            .attempts::<J>()
            .into_iter()
            .filter(|a| a.payload.as_ref().is_some_and(&matches))
            .collect();
        assert!(
            ran.is_empty(),
            "{} job(s) of {} matching the filter ran:\n{}",
            ran.len(),
            J::NAME,
            text::debug_lines(&ran)
        );
    }

    /// Why no job of `J` matching the filter did `what`: whether `J` is
    /// registered, what its jobs did, and what still waits.
    fn explain<J: Job>(&self, what: &str, matches: &dyn Fn(&J::Payload) -> bool) -> String
    where
        J::Payload: Debug,
    {
        let mut out = format!("no {} job matching the filter {what}.", J::NAME);
        let registered = J::options()
            .consumed_queues()
            .iter()
            .any(|consumed| self.queues.contains(consumed));
        if !registered {
            out += &format!(
                "\njob {} (queue {:?}) is not registered with this TestKit: add \
                 `.register(...)` for it",
                J::NAME,
                J::QUEUE
            );
        }
        let waiting: Vec<J::Payload> = self
            .enqueued::<J>()
            .into_iter()
            .filter(|p| matches(p))
            .collect();
        if !waiting.is_empty() {
            out += &format!(
                "\n{} matching job(s) still enqueued or delayed, not run (a delay past the \
                 horizon, {:?}, is not waited for: `.horizon(d)`):\n{}",
                waiting.len(),
                self.horizon,
                text::debug_lines(&waiting)
            );
        }
        let attempts = self.attempts::<J>();
        out += &format!(
            "\nattempts of {} ({}):\n{}",
            J::NAME,
            attempts.len(),
            text::debug_lines(&attempts)
        );
        let dead: Vec<String> = self
            .dead_lettered::<J>()
            .iter()
            .map(|d| {
                format!(
                    "{} after {} attempt(s): {} {}",
                    d.reason,
                    d.attempts,
                    d.error,
                    text::body(&d.body)
                )
            })
            .collect();
        out += &format!(
            "\ndead letters of {} ({}):\n{}",
            J::NAME,
            dead.len(),
            text::lines(dead)
        );
        out
    }
}

impl Drop for TestKit {
    fn drop(&mut self) {
        if let Some(running) = self.worker.take() {
            running.handle.abort();
        }
    }
}
