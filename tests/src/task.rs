//! The payload of every test job and what its handler does: a [`Task`]
//! names the [`Probe`] it reports to and the [`Act`] it performs, and
//! [`test_job!`](crate::test_job) declares a job over [`run_task`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use qjob::{JobContext, JobError};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

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
    /// Waits until `count` jobs succeeded, failing the test after `limit`.
    pub async fn wait_succeeded(&self, what: &str, limit: Duration, count: u32) {
        self.wait(what, limit, |probe| {
            probe.succeeded.load(std::sync::atomic::Ordering::SeqCst) == count
        })
        .await;
    }

    /// The sequence numbers that succeeded, sorted.
    pub fn done_sorted(&self) -> Vec<u32> {
        let mut done = self.done.lock().unwrap().clone();
        done.sort_unstable();
        done
    }

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
