//! Shared helpers of qjob's integration tests: a raw RabbitMQ handle to set
//! up and inspect queues, probes that handlers report to, and a task payload
//! whose behaviour each test scripts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qjob::broker::{HeaderValue, Headers};
use qjob::{AmqpBroker, JobContext, JobError};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The broker the tests use: `QJOB_AMQP_URL`, or RabbitMQ on 127.0.0.1:5672.
pub fn amqp_url() -> String {
    std::env::var("QJOB_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Connects qjob's broker; an unreachable RabbitMQ fails the test, never skips it.
pub async fn amqp() -> AmqpBroker {
    AmqpBroker::connect(amqp_url())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "these tests need RabbitMQ ({}; see README.md): {error}",
                amqp_url()
            )
        })
}

/// A job's payload in the tests: which probe it reports to and what it does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The probe's name.
    pub tag: String,
    /// The partition key, for partitioned jobs.
    #[serde(default)]
    pub key: String,
    /// A sequence number, to tell jobs apart.
    pub seq: u32,
    /// What the handler does.
    pub act: Act,
}

/// What a test handler does on each attempt.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Act {
    /// Succeeds.
    Succeed,
    /// Fails with a retryable error every time.
    Fail,
    /// Fails with a retryable error on the first attempt only.
    FailFirst,
    /// Fails until the probe is released, then succeeds.
    FailUntilReleased,
    /// Fails permanently.
    FailPermanently,
    /// Panics on attempts before this one, then succeeds.
    PanicBefore(u32),
    /// Sleeps this many milliseconds, then succeeds.
    Sleep(u64),
    /// Waits until the probe releases it, then succeeds.
    Block,
    /// Waits until an operator cancels the job, then fails.
    AwaitCancel,
    /// Sleeps this many milliseconds; fails the first attempt if told to.
    Work {
        /// How long the work takes.
        sleep_ms: u64,
        /// Whether the first attempt fails.
        fail_first: bool,
    },
}

impl Task {
    /// Task `seq` of probe `tag`.
    pub fn new(tag: &str, seq: u32, act: Act) -> Self {
        Self {
            tag: tag.to_owned(),
            key: String::new(),
            seq,
            act,
        }
    }

    /// Task `seq` of probe `tag` with partition key `key`.
    pub fn keyed(tag: &str, key: &str, seq: u32, act: Act) -> Self {
        Self {
            key: key.to_owned(),
            ..Self::new(tag, seq, act)
        }
    }
}

/// What handlers of one test report.
#[derive(Default)]
pub struct Probe {
    /// Attempts started.
    pub attempts: AtomicU32,
    /// Attempts that returned `Ok`.
    pub succeeded: AtomicU32,
    /// Handlers running now.
    pub in_flight: AtomicUsize,
    /// The most handlers seen running at once.
    pub max_in_flight: AtomicUsize,
    /// The sequence numbers that succeeded, in order.
    pub done: Mutex<Vec<u32>>,
    /// Attempt numbers seen, in order.
    pub attempt_numbers: Mutex<Vec<u32>>,
    /// When each attempt started, in order.
    pub attempt_times: Mutex<Vec<tokio::time::Instant>>,
    /// Per partition key: its handlers running now.
    pub key_in_flight: Mutex<HashMap<String, usize>>,
    /// How many attempts started while another of the same key ran.
    pub key_overlaps: AtomicUsize,
    changed: Notify,
    released: tokio::sync::watch::Sender<bool>,
}

impl Probe {
    /// Lets every blocked handler finish.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Waits until `condition` holds, failing the test after `limit`.
    pub async fn wait(&self, what: &str, limit: Duration, condition: impl Fn(&Probe) -> bool) {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if condition(self) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out after {limit:?} waiting for {what}"
        );
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }
}

/// The probe named `tag`, created on first use.
pub fn probe(tag: &str) -> Arc<Probe> {
    static PROBES: OnceLock<Mutex<HashMap<String, Arc<Probe>>>> = OnceLock::new();
    PROBES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(tag.to_owned())
        .or_default()
        .clone()
}

/// Set in a worker process's environment: each finished task prints
/// `done <seq>` on its stdout; set to `stamped`, `done <seq> <finished>
/// <started>`, both in µs since the epoch.
pub const ANNOUNCE: &str = "QJOB_TEST_ANNOUNCE";

/// Now, in µs since the Unix epoch.
pub fn micros_since_epoch() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// The body of every test handler: reports to the task's probe and acts.
pub async fn run_task(task: Task, ctx: JobContext) -> Result<(), JobError> {
    let started = micros_since_epoch();
    let probe = probe(&task.tag);
    probe.attempts.fetch_add(1, Ordering::SeqCst);
    probe.attempt_numbers.lock().unwrap().push(ctx.attempt());
    probe
        .attempt_times
        .lock()
        .unwrap()
        .push(tokio::time::Instant::now());
    let now = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    probe.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if !task.key.is_empty() {
        let mut keys = probe.key_in_flight.lock().unwrap();
        let running = keys.entry(task.key.clone()).or_default();
        *running += 1;
        if *running > 1 {
            probe.key_overlaps.fetch_add(1, Ordering::SeqCst);
        }
    }
    probe.notify();
    let _leave = InFlight(probe.clone(), task.key.clone());
    match task.act {
        Act::Succeed => {}
        Act::Fail => return Err(JobError::msg(format!("task {} failed", task.seq))),
        Act::FailFirst if ctx.attempt() == 1 => {
            return Err(JobError::msg(format!("task {} failed once", task.seq)));
        }
        Act::FailFirst => {}
        Act::FailUntilReleased if !*probe.released.borrow() => {
            return Err(JobError::msg(format!("task {} not released", task.seq)));
        }
        Act::FailUntilReleased => {}
        Act::FailPermanently => {
            return Err(JobError::permanent(JobError::msg("permanently broken")));
        }
        Act::PanicBefore(attempt) => {
            if ctx.attempt() < attempt {
                panic!("task {} panics on attempt {}", task.seq, ctx.attempt());
            }
        }
        Act::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Act::Work {
            sleep_ms,
            fail_first,
        } => {
            tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            if fail_first && ctx.attempt() == 1 {
                return Err(JobError::msg(format!("task {} failed once", task.seq)));
            }
        }
        Act::Block => {
            let mut released = probe.released.subscribe();
            let _ = released.wait_for(|released| *released).await;
        }
        Act::AwaitCancel => {
            ctx.cancelled().await;
            assert!(ctx.is_cancelled());
            return Err(JobError::msg(format!(
                "task {} stopped: cancelled",
                task.seq
            )));
        }
    }
    probe.succeeded.fetch_add(1, Ordering::SeqCst);
    probe.done.lock().unwrap().push(task.seq);
    if let Some(announce) = std::env::var_os(ANNOUNCE) {
        // A worker process tells its parent what it finished, and when if
        // asked (`stamped`): processes are compared by their own clocks.
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        if announce == "stamped" {
            let at = micros_since_epoch();
            writeln!(stdout, "done {} {at} {started}", task.seq)?;
        } else {
            writeln!(stdout, "done {}", task.seq)?;
        }
        stdout.flush()?;
    }
    Ok(())
}

struct InFlight(Arc<Probe>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.1.is_empty()
            && let Some(running) = self.0.key_in_flight.lock().unwrap().get_mut(&self.1)
        {
            *running -= 1;
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.notify();
    }
}

/// Declares a test job over `run_task`: `test_job!(name, "queue", key = value, …)`.
#[macro_export]
macro_rules! test_job {
    ($name:ident, $queue:tt $(, $($args:tt)*)?) => {
        #[qjob::job(queue = $queue $(, $($args)*)?)]
        pub async fn $name(task: $crate::Task, ctx: qjob::JobContext) -> Result<(), qjob::JobError> {
            $crate::run_task(task, ctx).await
        }
    };
}

/// A message read back from a queue.
#[derive(Debug)]
pub struct Got {
    /// Its headers.
    pub headers: Headers,
    /// Its body.
    pub body: Vec<u8>,
    /// Its message id.
    pub id: Option<String>,
    /// Its headers as RabbitMQ delivered them (empty on MemoryBroker).
    pub table: lapin::types::FieldTable,
}

/// A plain lapin connection for setting up and inspecting queues.
pub struct Rabbit {
    channel: lapin::Channel,
    _connection: Connection,
}

impl Rabbit {
    /// Connects.
    pub async fn connect() -> Self {
        Self::connect_to(&amqp_url()).await
    }

    /// Connects to the broker at `url`.
    pub async fn connect_to(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("these tests need RabbitMQ at {url}: {e}"));
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            channel,
            _connection: connection,
        }
    }

    /// Deletes the queues (if they exist), so a test starts from nothing.
    pub async fn delete(&self, queues: &[&str]) {
        for queue in queues {
            self.channel
                .queue_delete((*queue).into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    }

    /// The number of ready messages in `queue` (0 if it does not exist).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.passive(queue).await.map_or(0, |q| q.message_count())
    }

    /// The number of consumers of `queue` (0 if it does not exist).
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.passive(queue).await.map_or(0, |q| q.consumer_count())
    }

    /// A passive declare, on a channel of its own: a missing queue closes it.
    async fn passive(&self, queue: &str) -> Option<lapin::Queue> {
        let channel = self._connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok();
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        declared
    }

    /// Waits until `queue` holds `count` ready messages, failing after `limit`.
    pub async fn wait_ready(&self, queue: &str, count: u32, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ready = self.ready(queue).await;
            if ready == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue} has {ready} ready messages, expected {count} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Publishes raw bytes to `queue`, confirmed.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        self.publish_with(
            queue,
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
    }

    /// Publishes `body` with `properties` to `queue`, as a foreign producer
    /// would, confirmed.
    pub async fn publish_with(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Takes every ready message out of `queue`.
    pub async fn take_all(&self, queue: &str) -> Vec<Got> {
        let count = self.ready(queue).await;
        let channel = self._connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < count as usize {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a ready message is delivered")
                .expect("consumer open")
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            got.push(Got {
                headers: headers(&delivery.properties),
                table: delivery.properties.headers().clone().unwrap_or_default(),
                id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string()),
                body: delivery.data,
            });
        }
        channel.close(200, "done".into()).await.unwrap();
        got
    }
}

fn headers(properties: &BasicProperties) -> Headers {
    use lapin::types::AMQPValue;
    let mut headers = Headers::new();
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            let value = match value {
                AMQPValue::LongString(s) => HeaderValue::Str(s.to_string()),
                AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
                AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
                other => HeaderValue::Str(format!("{other:?}")),
            };
            headers.insert(name.to_string(), value);
        }
    }
    headers
}

/// The rows `rabbitmqctl <list> -q --no-table-headers <columns>` prints,
/// each split at whitespace (for columns without spaces in their values).
fn rabbitmqctl_rows(list: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let args: Vec<&str> = [list, "-q", "--no-table-headers"]
        .into_iter()
        .chain(columns.iter().copied())
        .collect();
    rabbitmqctl_ok(&args)
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The second column of the rows whose first is `key`, parsed.
fn values_of<T: std::str::FromStr>(rows: Vec<Vec<String>>, key: &str) -> Vec<T> {
    rows.into_iter()
        .filter(|row| row.first().map(String::as_str) == Some(key))
        .filter_map(|row| row.get(1)?.parse().ok())
        .collect()
}

/// Every message of `queue`, ready or unacked, as RabbitMQ reports them.
pub fn queue_messages(queue: &str) -> u32 {
    let rows = rabbitmqctl_rows("list_queues", &["name", "messages"]);
    values_of(rows, queue)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

/// The prefetch counts of `queue`'s consumers, as RabbitMQ reports them.
pub fn consumer_prefetch(queue: &str) -> Vec<u16> {
    values_of(
        rabbitmqctl_rows("list_consumers", &["queue_name", "prefetch_count"]),
        queue,
    )
}

/// For every consumer of a queue whose name starts with `prefix`: the queue
/// and whether the consumer is active (single-active-consumer queues have
/// one active consumer; the others wait).
pub fn consumer_activity(prefix: &str) -> Vec<(String, bool)> {
    let mut consumers: Vec<(String, bool)> =
        rabbitmqctl_rows("list_consumers", &["queue_name", "active"])
            .into_iter()
            .filter_map(|row| {
                let [queue, active] = row.as_slice() else {
                    return None;
                };
                queue
                    .starts_with(prefix)
                    .then(|| (queue.clone(), active == "true"))
            })
            .collect();
    consumers.sort();
    consumers
}

/// Closes the RabbitMQ connections of the broker named `name` (its
/// publishing and its consuming one), as a network failure would.
pub fn close_connection(name: &str) {
    let listing = rabbitmqctl_ok(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    // The name a client gives itself is in its properties, quoted:
    // "<name> publish" and "<name> consume".
    let pids: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let (pid, properties) = line.split_once(char::is_whitespace)?;
            ["publish", "consume"]
                .iter()
                .any(|role| properties.contains(&format!("\"{name} {role}\"")))
                .then_some(pid)
        })
        .collect();
    assert!(
        !pids.is_empty(),
        "no connection named {name:?} in {listing}"
    );
    for pid in pids {
        rabbitmqctl_ok(&["close_connection", pid, "closed by a qjob test"]);
    }
}

/// Waits until `done` holds (checked every 20 ms), failing the test after
/// `limit`: the one wait on observable state the test crates share.
pub async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 25 ms until it holds, failing after `limit`.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = check();
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub mod cluster;
pub mod conformance;
pub mod console;
pub mod jobs;
pub mod outbox;
pub mod recording;
pub mod scenarios;
pub mod tools;
pub mod unique;

pub use tools::{rabbitmq_major, rabbitmqctl, rabbitmqctl_ok};

/// Defines every broker conformance scenario as a test on the broker that
/// `$env` (an async expression giving a `scenarios::Env`) makes.
#[macro_export]
macro_rules! conformance_tests {
    ($env:expr) => {
        $crate::conformance_tests!(@tests $env;
            publish_to_a_missing_queue_is_unroutable "qjob.test.conformance.missing",
            a_tracked_publish_marks_what_it_sent "qjob.test.conformance.tracked",
            each_publisher_learns_its_own_return "qjob.test.conformance.returns",
            a_full_queue_rejects_publishes "qjob.test.conformance.full",
            a_full_quorum_queue_rejects_publishes "qjob.test.conformance.quorum-full",
            redeclaring_with_other_arguments_fails "qjob.test.conformance.redeclare",
            prefetch_bounds_unacked_deliveries "qjob.test.conformance.prefetch",
            requeued_messages_come_back_redelivered "qjob.test.conformance.requeue",
            closing_a_subscription_returns_what_it_held "qjob.test.conformance.close",
            messages_arrive_as_published "qjob.test.conformance.roundtrip",
            single_active_consumer_fails_over "qjob.test.conformance.single-active",
            rejected_messages_are_dead_lettered_with_x_death "qjob.test.conformance.reject-dlx",
            rejected_messages_without_a_target_are_dropped "qjob.test.conformance.reject-drop",
            dead_letters_into_a_full_queue_are_dropped "qjob.test.conformance.dead-letter-full",
            expired_messages_move_to_the_target_in_order "qjob.test.conformance.ttl",
            a_second_expiry_counts_up_in_x_death_on_3_and_anew_on_4 "qjob.test.conformance.ttl-twice",
            a_requeued_message_keeps_its_position "qjob.test.conformance.requeue-position",
            connection_loss_returns_unsettled_deliveries "qjob.test.conformance.connection-loss",
            a_cancelled_consumer_still_settles_what_it_holds "qjob.test.conformance.cancel",
            consumers_take_turns "qjob.test.conformance.round-robin",
            max_length_counts_ready_messages_only "qjob.test.conformance.max-length-ready",
            an_unused_queue_expires "qjob.test.conformance.expires",
            get_takes_messages_one_at_a_time "qjob.test.conformance.get",
            a_classic_standby_gets_unsettled_messages_in_order "qjob.test.conformance.standby-classic",
            a_quorum_standby_gets_unsettled_messages_in_order "qjob.test.conformance.standby-quorum",
            a_prefetch_change_applies_to_the_live_subscription "qjob.test.conformance.prefetch-change",
            a_prefetch_change_applies_to_a_live_quorum_subscription "qjob.test.conformance.prefetch-change-quorum",
            a_quorum_queue_dead_letters_past_its_delivery_limit "qjob.test.conformance.delivery-limit",
            broadcasts_reach_the_matching_listeners "qjob.test.conformance.broadcast",
        );
    };
    (@tests $env:expr; $($name:ident $queue:literal,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::conformance::$name(&$env, $queue).await;
            }
        )*
    };
}

/// Defines every console scenario as a test on the broker that `$env`
/// makes, each with its own job type from [`console`].
#[macro_export]
macro_rules! console_tests {
    ($env:expr) => {
        $crate::console_tests!(@tests $env;
            heartbeats_show_each_worker_and_a_stopped_one_as_gone,
            pause_and_resume_lose_nothing_and_reject_nothing,
            a_cancelled_running_job_is_told_and_dead_lettered,
            a_cancelled_queued_job_is_dead_lettered_when_it_arrives,
            a_handler_that_ignores_a_cancel_finishes_normally,
            set_concurrency_resizes_the_handler_slots,
            browsing_1000_dead_letters_leaves_them_in_place_and_in_order,
            replay_and_discard_do_what_they_say,
            a_sharded_job_shows_its_shards_and_the_extra_ones,
            a_pause_starts_no_job_held_in_place,
            a_stop_starts_no_job_held_in_place,
        );
    };
    (@tests $env:expr; $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::console::$name(&$env).await;
            }
        )*
    };
}

/// Defines every unique-job scenario as a test on the broker that `$env`
/// makes.
#[macro_export]
macro_rules! unique_tests {
    ($env:expr) => {
        $crate::unique_tests!(@tests $env;
            a_second_enqueue_returns_the_first_job_until_it_is_done,
            a_started_job_frees_its_key,
            an_unreachable_store_is_an_error_and_nothing_is_enqueued,
            a_job_delivered_twice_runs_once_with_an_inbox,
        );
    };
    (@tests $env:expr; $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::unique::$name(&$env).await;
            }
        )*
    };
}

/// Defines every worker scenario as a test on the broker that `$env` makes,
/// each with its own job type from [`jobs`].
#[macro_export]
macro_rules! worker_tests {
    ($env:expr) => {
        $crate::worker_tests!(@tests $env;
            retries_then_dead_letters RetryJob,
            permanent_error_dead_letters_at_once PermanentJob,
            garbage_dead_letters_and_the_next_job_runs GarbageJob,
            panic_is_a_failed_attempt PanicJob,
            concurrency_is_reached_and_never_exceeded ConcurrencyJob,
            shutdown_finishes_started_handlers_and_returns_the_rest ShutdownJob,
            shutdown_timeout_abandons_stuck_handlers StuckJob,
            panicking_to_the_end_dead_letters PanicAlwaysJob,
            a_timeout_is_a_failed_attempt TimeoutJob,
            retries_wait_their_backoff_in_a_delay_queue BackoffJob,
            a_retry_in_backoff_holds_no_prefetch_slot SingleSlotJob,
            a_delayed_job_runs_after_its_delay NoopJob,
            a_retry_survives_a_worker_restart RestartJob,
            dead_letters_can_be_peeked_at_and_replayed ReplayJob,
            a_long_dead_letter_walk_holds_little_and_keeps_order LongWalkJob,
            a_quorum_dlq_survives_browsing QuorumDlqJob,
            a_quorum_dlq_declared_without_a_delivery_limit_is_kept OldQuorumDlqJob,
            a_delay_queue_of_the_other_type_is_not_in_the_way SwitchedDelayJob,
            partitioned_keys_complete_in_publish_order_across_two_workers OrderedJob,
            an_open_breaker_stops_calls_until_a_probe_succeeds BreakerJob,
            a_full_queue_is_an_error_for_the_producer CappedJob,
            a_capped_queue_retries_in_place_while_full CappedRetryJob,
            a_quorum_job_retries_in_place QuorumRetryJob,
            a_panicking_observer_stalls_nothing ObservedJob,
            a_deleted_dlq_is_declared_again_without_running_the_job_again DlqDeletedJob,
            a_graceful_stop_hands_a_partition_over_in_order HandoverJob,
            a_graceful_stop_hands_a_quorum_partition_over_in_order HandoverQuorumJob,
            a_rolling_restart_keeps_every_key_in_order RollingJob,
            a_sharded_job_runs_from_every_shard_and_retries_through_its_work_queue ShardedJob,
            a_queue_named_like_a_shard_is_not_consumed_unless_qjob_declared_it ForeignShardJob,
        );
        // One scenario, several job types: a test each.
        $crate::worker_tests!(@typed $env;
            a_large_batch_goes_out_on_several_lanes a_large_batch SpreadJob,
            a_large_batch_on_a_capped_queue_reports_each_refusal a_large_batch SpreadCappedJob,
            a_large_partitioned_batch_keeps_each_key_in_order a_large_batch SpreadPartitionedJob,
            a_large_single_active_batch_keeps_its_order a_large_batch SpreadSingleActiveJob,
            a_large_sharded_batch_fills_every_shard a_large_batch SpreadShardedJob,
            a_refused_job_stops_an_ordered_batch_after_its_chunk
                a_refusal_over_two_chunks SpreadCappedPartitionedJob,
            a_refused_job_does_not_stop_an_unordered_batch
                a_refusal_over_two_chunks SpreadCappedPlainJob,
        );
    };
    (@tests $env:expr; $($name:ident $job:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::scenarios::$name(&$env, $crate::jobs::$job).await;
            }
        )*
    };
    (@typed $env:expr; $($name:ident $scenario:ident $job:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::scenarios::$scenario::<$crate::jobs::$job>(&$env).await;
            }
        )*
    };
}
