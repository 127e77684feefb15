//! Console scenarios written once and run on both brokers: on RabbitMQ in
//! `tests/amqp_console.rs`, in memory in `tests/memory_console.rs`. The
//! RabbitMQ broker is shared with other tests, whose workers the console
//! sees too: each scenario looks at its own job type only.

use std::sync::atomic::Ordering;
use std::time::Duration;

use qjob::admin::{
    Admin, JobView, LetterFilter, QueueRole, TopologyProblem, WorkerState, WorkerView,
};
use qjob::broker::{HeaderValue, Message, QueueSpec};
use qjob::{DeadReason, Job, Worker, headers};

use crate::env::{Env, LIMIT, Running};
use crate::{Act, Task, probe, test_job};

/// The scenarios' heartbeat interval: a stopped worker shows at once, a
/// silent one after three of these.
const HEARTBEAT: Duration = Duration::from_millis(100);

test_job!(
    heartbeat,
    "qjob.test.console.heartbeat",
    prefetch = 3,
    concurrency = 2
);
test_job!(
    pause,
    "qjob.test.console.pause",
    prefetch = 5,
    concurrency = 2
);
test_job!(
    cancel_running,
    "qjob.test.console.cancel-running",
    retry = 3
);
test_job!(cancel_queued, "qjob.test.console.cancel-queued");
test_job!(cancel_ignored, "qjob.test.console.cancel-ignored");
test_job!(
    resize,
    "qjob.test.console.resize",
    prefetch = 10,
    concurrency = 1
);
test_job!(browse, "qjob.test.console.browse");
test_job!(
    sharded_view,
    "qjob.test.console.sharded",
    shards = 2,
    retry = 1,
    backoff = fixed("1h")
);
test_job!(replay, "qjob.test.console.replay", retry = 0);
test_job!(
    pause_held,
    "qjob.test.console.pause-held",
    queue_type = "quorum",
    prefetch = 20,
    concurrency = 1
);
test_job!(
    stop_held,
    "qjob.test.console.stop-held",
    queue_type = "quorum",
    prefetch = 20,
    concurrency = 1
);

/// Starts a worker for `job` that reports to the console every [`HEARTBEAT`].
fn start<J: Job>(env: &Env, job: J) -> Running {
    env.run(
        Worker::builder(env.broker())
            .register(job)
            .heartbeat_interval(HEARTBEAT)
            .build(),
    )
}

/// The workers that run `J`.
fn workers_of<J: Job>(admin: &Admin) -> Vec<WorkerView> {
    admin
        .workers()
        .into_iter()
        .filter(|worker| worker.status.jobs.iter().any(|job| job.job == J::NAME))
        .collect()
}

/// Waits until the workers that run `J` pass `check`; returns them.
async fn wait_workers<J: Job>(
    admin: &Admin,
    what: &str,
    check: impl Fn(&[WorkerView]) -> bool,
) -> Vec<WorkerView> {
    crate::eventually(what, LIMIT, || workers_of::<J>(admin), |w| check(w)).await
}

/// Waits until `J`'s view across the alive workers passes `check`.
pub async fn wait_job<J: Job>(
    admin: &Admin,
    what: &str,
    check: impl Fn(&JobView) -> bool,
) -> JobView {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let view = admin
            .jobs()
            .await
            .unwrap()
            .into_iter()
            .find(|view| view.job == J::NAME);
        if let Some(view) = &view
            && check(view)
        {
            return view.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last seen {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn connect(env: &Env) -> Admin {
    Admin::connect(env.broker())
        .await
        .unwrap()
        .with_reply_window(LIMIT)
}

pub async fn heartbeats_show_each_worker_and_a_stopped_one_as_gone(env: &Env) {
    env.reset::<HeartbeatJob>().await;
    let tag = env.tag::<HeartbeatJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let first = start(env, HeartbeatJob);
    let second = start(env, HeartbeatJob);
    let workers = wait_workers::<HeartbeatJob>(&admin, "two workers", |w| {
        w.iter().filter(|w| w.alive).count() == 2
    })
    .await;
    for worker in &workers {
        let status = &worker.status;
        assert_eq!(status.state, WorkerState::Running);
        assert_eq!(status.pid, std::process::id());
        assert_eq!(status.version.split('.').count(), 3, "qjob's version");
        assert_eq!(status.interval, HEARTBEAT);
        assert!(!status.host.is_empty());
        let job = &status.jobs[0];
        assert_eq!(job.queue, HeartbeatJob::QUEUE);
        assert_eq!(job.consumed_queues, [HeartbeatJob::QUEUE]);
        assert_eq!(
            job.dead_letter_queue,
            HeartbeatJob::options().dead_letter_queue()
        );
        assert_eq!((job.prefetch, job.concurrency), (3, 2));
        assert!(!job.paused);
    }
    assert_ne!(workers[0].status.worker_id, workers[1].status.worker_id);

    let client = env.client();
    for (seq, act) in [
        (0, Act::Succeed),
        (1, Act::Succeed),
        (2, Act::FailPermanently),
    ] {
        client
            .enqueue::<HeartbeatJob>(Task::new(&tag, seq, act))
            .await
            .unwrap();
    }
    probe
        .wait("three attempts", LIMIT, |p| {
            p.attempts.load(Ordering::SeqCst) == 3
        })
        .await;
    let view = wait_job::<HeartbeatJob>(&admin, "the counts of both workers", |view| {
        view.succeeded == 2 && view.dead_lettered == 1 && view.dead_letters() == 1
    })
    .await;
    assert_eq!((view.workers, view.concurrency, view.failed), (2, 4, 1));
    assert_eq!(view.last_error.as_deref(), Some("permanently broken"));

    first.stop().await.unwrap();
    let workers = wait_workers::<HeartbeatJob>(&admin, "the stopped worker gone", |w| {
        w.len() == 2 && w.iter().filter(|w| w.alive).count() == 1
    })
    .await;
    let gone = workers.iter().find(|w| !w.alive).unwrap();
    assert_eq!(gone.status.state, WorkerState::Stopped);
    second.stop().await.unwrap();
}

pub async fn pause_and_resume_lose_nothing_and_reject_nothing(env: &Env) {
    env.reset::<PauseJob>().await;
    let tag = env.tag::<PauseJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let workers = [start(env, PauseJob), start(env, PauseJob)];
    wait_workers::<PauseJob>(&admin, "two workers", |w| {
        w.iter().filter(|w| w.alive).count() == 2
    })
    .await;
    let jobs = 40;
    env.client()
        .enqueue_all::<PauseJob>((0..jobs).map(|seq| Task::new(&tag, seq, Act::Sleep(20))))
        .await
        .unwrap();
    probe
        .wait("some jobs done", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 4
        })
        .await;

    let replies = admin.pause(PauseJob::NAME).await.unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    // Both workers cancelled their consumers and finished what ran; what
    // they held and had not started is back in the queue.
    wait_job::<PauseJob>(&admin, "the job paused on both workers", |view| {
        view.paused_on == 2
            && view.in_flight == 0
            && view.queues[0].stats.is_some_and(|s| s.consumers == 0)
    })
    .await;
    let done = probe.succeeded.load(Ordering::SeqCst);
    assert!(done < jobs, "paused before the end");
    env.wait_ready(PauseJob::QUEUE, jobs - done).await;
    assert_eq!(probe.in_flight.load(Ordering::SeqCst), 0);

    let replies = admin.resume(PauseJob::QUEUE).await.unwrap();
    assert_eq!(
        replies.iter().filter(|reply| reply.ok).count(),
        2,
        "{replies:?}"
    );
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == jobs
        })
        .await;
    for worker in workers {
        worker.stop().await.unwrap();
    }
    let mut done = probe.done.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, (0..jobs).collect::<Vec<_>>(), "each job once");
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        jobs,
        "none ran twice"
    );
    assert_eq!(env.ready(&PauseJob::options().dead_letter_queue()).await, 0);
    assert_eq!(env.ready(PauseJob::QUEUE).await, 0);
}

/// A quorum job holds its deliveries in place (it retries in the worker),
/// up to its prefetch of 20, with one handler slot. 40 jobs of 100 ms.
async fn held_in_place<J: Job<Payload = Task>>(env: &Env, tag: &str) -> u32 {
    assert!(J::options().queue_type() == qjob::QueueType::Quorum);
    let jobs = 40;
    env.client()
        .enqueue_all::<J>((0..jobs).map(|seq| Task::new(tag, seq, Act::Sleep(100))))
        .await
        .unwrap();
    jobs
}

/// After a pause or a stop, the rest of a held-in-place job's 40 run, each
/// once, on a fresh worker.
async fn the_rest_run_once<J: Job<Payload = Task> + Clone>(
    env: &Env,
    job: J,
    tag: &str,
    jobs: u32,
) {
    let probe = probe(tag);
    let running = env.start(job);
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == jobs
        })
        .await;
    running.stop().await.unwrap();
    let mut done = probe.done.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, (0..jobs).collect::<Vec<_>>(), "each job once");
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        jobs,
        "none ran twice"
    );
}

/// A pause of a job that holds its deliveries in place (quorum, capped,
/// partitioned) starts none of them once asked: the handler running
/// finishes, the rest go back to the queue. It used to run every delivery
/// it held (22 of 40, the pause taking 2 s) before it completed.
pub async fn a_pause_starts_no_job_held_in_place(env: &Env) {
    env.reset::<PauseHeldJob>().await;
    let tag = env.tag::<PauseHeldJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, PauseHeldJob);
    wait_workers::<PauseHeldJob>(&admin, "the worker", |w| w.iter().any(|w| w.alive)).await;
    let jobs = held_in_place::<PauseHeldJob>(env, &tag).await;
    probe
        .wait("two jobs done", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 2
        })
        .await;
    let asked_at = probe.succeeded.load(Ordering::SeqCst);
    let replies = admin.pause(PauseHeldJob::NAME).await.unwrap();
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    wait_job::<PauseHeldJob>(&admin, "the job paused", |view| {
        view.paused_on == 1
            && view.in_flight == 0
            && view.queues[0].stats.is_some_and(|s| s.consumers == 0)
    })
    .await;
    let done = probe.succeeded.load(Ordering::SeqCst);
    assert!(
        done <= asked_at + 1,
        "{done} done once paused, {asked_at} when asked"
    );
    env.wait_ready(PauseHeldJob::QUEUE, jobs - done).await;
    worker.stop().await.unwrap();
    the_rest_run_once(env, PauseHeldJob, &tag, jobs).await;
}

/// A stop likewise: the handler running finishes, the held deliveries go
/// back unstarted, and none runs twice. It used to run them all within
/// the shutdown timeout (and abort and run again what did not fit).
pub async fn a_stop_starts_no_job_held_in_place(env: &Env) {
    env.reset::<StopHeldJob>().await;
    let tag = env.tag::<StopHeldJob>();
    let probe = probe(&tag);
    let worker = env.start(StopHeldJob);
    let jobs = held_in_place::<StopHeldJob>(env, &tag).await;
    probe
        .wait("two jobs done", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) >= 2
        })
        .await;
    let asked_at = probe.succeeded.load(Ordering::SeqCst);
    worker.stop().await.unwrap();
    let done = probe.succeeded.load(Ordering::SeqCst);
    assert!(
        done <= asked_at + 1,
        "{done} done once stopped, {asked_at} when asked"
    );
    env.wait_ready(StopHeldJob::QUEUE, jobs - done).await;
    the_rest_run_once(env, StopHeldJob, &tag, jobs).await;
}

/// The dead letter of `J` in its queue (there must be exactly one).
async fn only_dead_letter<J: Job>(env: &Env) -> crate::Got {
    let dlq = J::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    let mut letters = env.take_all(&dlq).await;
    assert_eq!(letters.len(), 1);
    letters.remove(0)
}

fn text(got: &crate::Got, name: &str) -> String {
    got.headers
        .get(name)
        .map(HeaderValue::to_string)
        .unwrap_or_default()
}

/// A worker of `job` that a console sees, running task 0 (`act`) of it.
async fn running_one<J: Job<Payload = Task>>(
    env: &Env,
    job: J,
    act: Act,
) -> (Admin, Running, std::sync::Arc<crate::Probe>, qjob::JobId) {
    env.reset::<J>().await;
    let tag = env.tag::<J>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, job);
    wait_workers::<J>(&admin, "the worker", |w| w.len() == 1).await;
    let id = env
        .client()
        .enqueue::<J>(Task::new(&tag, 0, act))
        .await
        .unwrap();
    probe
        .wait("the job running", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    (admin, worker, probe, id)
}

pub async fn a_cancelled_running_job_is_told_and_dead_lettered(env: &Env) {
    let (admin, worker, probe, id) = running_one(env, CancelRunningJob, Act::AwaitCancel).await;
    let replies = admin.cancel(id.as_str()).await.unwrap();
    assert!(
        !replies.is_empty() && replies.iter().all(|reply| reply.ok),
        "{replies:?}"
    );
    let letter = only_dead_letter::<CancelRunningJob>(env).await;
    worker.stop().await.unwrap();
    assert_eq!(letter.id.as_deref(), Some(id.as_str()));
    assert_eq!(text(&letter, headers::REASON), "cancelled");
    let error = text(&letter, headers::ERROR);
    assert!(
        error.starts_with("cancelled by an operator while it ran"),
        "{error}"
    );
    assert!(error.contains("task 0 stopped: cancelled"), "{error}");
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 1, "not retried");
}

pub async fn a_cancelled_queued_job_is_dead_lettered_when_it_arrives(env: &Env) {
    env.reset::<CancelQueuedJob>().await;
    let tag = env.tag::<CancelQueuedJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, CancelQueuedJob);
    let ours = wait_workers::<CancelQueuedJob>(&admin, "the worker", |w| w.len() == 1).await;
    let client = env.client();
    let delay = Duration::from_millis(500);
    let cancelled = client
        .enqueue_in::<CancelQueuedJob>(Task::new(&tag, 0, Act::Succeed), delay)
        .await
        .unwrap();
    let kept = client
        .enqueue_in::<CancelQueuedJob>(Task::new(&tag, 1, Act::Succeed), delay)
        .await
        .unwrap();
    let replies = admin.cancel(cancelled.as_str()).await.unwrap();
    // The worker has it in memory before the job comes due.
    assert!(
        replies
            .iter()
            .any(|reply| reply.ok && reply.worker_id == ours[0].status.worker_id),
        "{replies:?}"
    );
    probe
        .wait("the other job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    let dlq = CancelQueuedJob::options().dead_letter_queue();
    env.wait_ready(&dlq, 1).await;
    let letter = admin
        .dead_letter(&dlq, cancelled.as_str())
        .await
        .unwrap()
        .expect("dead-lettered");
    assert_eq!(letter.reason, DeadReason::Cancelled);
    assert_eq!(letter.error, "cancelled by an operator before it ran");
    assert_eq!(
        *probe.done.lock().unwrap(),
        [1],
        "job {kept} ran, the other never"
    );
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 1);

    // Replayed after the cancel, it runs.
    assert!(admin.replay(&dlq, cancelled.as_str()).await.unwrap());
    probe
        .wait("the replayed job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 2
        })
        .await;
    worker.stop().await.unwrap();
    assert_eq!(*probe.done.lock().unwrap(), [1, 0]);
    assert_eq!(env.ready(&dlq).await, 0);
}

pub async fn a_handler_that_ignores_a_cancel_finishes_normally(env: &Env) {
    let (admin, worker, probe, id) = running_one(env, CancelIgnoredJob, Act::Block).await;
    let replies = admin.cancel(id.as_str()).await.unwrap();
    assert!(replies.iter().all(|reply| reply.ok), "{replies:?}");
    probe.release();
    probe
        .wait("the job done", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    wait_job::<CancelIgnoredJob>(&admin, "the success counted", |view| view.succeeded == 1).await;
    worker.stop().await.unwrap();
    assert_eq!(
        env.ready(&CancelIgnoredJob::options().dead_letter_queue())
            .await,
        0
    );
    assert_eq!(env.ready(CancelIgnoredJob::QUEUE).await, 0);
}

pub async fn set_concurrency_resizes_the_handler_slots(env: &Env) {
    env.reset::<ResizeJob>().await;
    let tag = env.tag::<ResizeJob>();
    let probe = probe(&tag);
    let admin = connect(env).await;
    let worker = start(env, ResizeJob);
    wait_workers::<ResizeJob>(&admin, "the worker", |w| w.len() == 1).await;
    env.client()
        .enqueue_all::<ResizeJob>((0..6).map(|seq| Task::new(&tag, seq, Act::Block)))
        .await
        .unwrap();
    probe
        .wait("one handler", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;

    let replies = admin.set_concurrency(ResizeJob::NAME, 3).await.unwrap();
    assert!(replies.len() == 1 && replies[0].ok, "{replies:?}");
    probe
        .wait("three handlers", LIMIT, |p| {
            p.in_flight.load(Ordering::SeqCst) == 3
        })
        .await;
    wait_job::<ResizeJob>(&admin, "the new concurrency reported", |view| {
        view.concurrency == 3
    })
    .await;

    let refused = admin.set_concurrency(ResizeJob::NAME, 0).await.unwrap();
    assert!(refused.len() == 1 && !refused[0].ok, "{refused:?}");
    assert!(
        refused[0].message.contains("pause it instead"),
        "{refused:?}"
    );

    probe.release();
    probe
        .wait("every job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 6
        })
        .await;
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 3);
    worker.stop().await.unwrap();
}

pub async fn browsing_1000_dead_letters_leaves_them_in_place_and_in_order(env: &Env) {
    env.reset::<BrowseJob>().await;
    let dlq = BrowseJob::options().dead_letter_queue();
    let broker = env.broker();
    broker
        .declare_queue(&QueueSpec::new(dlq.clone()))
        .await
        .unwrap();
    let ids: Vec<String> = (0..1000).map(|n| format!("letter-{n:04}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let mut message = Message {
            id: Some(id.clone()),
            body: format!(r#"{{"n":{n}}}"#).into_bytes(),
            ..Message::default()
        };
        let reason = if n % 2 == 0 {
            "permanent"
        } else {
            "retries-exhausted"
        };
        message
            .headers
            .insert(headers::REASON.into(), reason.into());
        message
            .headers
            .insert(headers::ERROR.into(), format!("error {n}").into());
        message
            .headers
            .insert(headers::ATTEMPTS.into(), HeaderValue::Int(3));
        broker.publish(&dlq, message).await.unwrap();
    }
    let admin = connect(env).await;
    let mut browsed = Vec::new();
    for page in 0..4 {
        let letters = admin
            .dead_letters(&dlq, &LetterFilter::all(), page * 250, 250)
            .await
            .unwrap();
        assert_eq!(letters.len(), 250);
        browsed.extend(letters);
        // Each letter goes back as soon as the page is read.
        env.wait_ready(&dlq, 1000).await;
    }
    let browsed_ids: Vec<String> = browsed
        .iter()
        .map(|l| l.job_id.clone().unwrap().to_string())
        .collect();
    assert!(browsed_ids == ids, "pages in queue order");
    let last = &browsed[999];
    assert_eq!(last.payload, Some(serde_json::json!({ "n": 999 })));
    assert_eq!(
        (last.reason.clone(), last.error.as_str(), last.attempts),
        (DeadReason::RetriesExhausted, "error 999", 3)
    );
    assert!(
        admin
            .dead_letters(&dlq, &LetterFilter::all(), 990, 100)
            .await
            .unwrap()
            .len()
            == 10
    );
    env.wait_ready(&dlq, 1000).await;
    // Filtered: the offset counts the letters that pass.
    let odd = LetterFilter::all().reason("retries-exhausted");
    let page = admin.dead_letters(&dlq, &odd, 10, 3).await.unwrap();
    let filtered: Vec<String> = page
        .iter()
        .map(|l| l.job_id.clone().unwrap().to_string())
        .collect();
    assert_eq!(filtered, ["letter-0021", "letter-0023", "letter-0025"]);
    env.wait_ready(&dlq, 1000).await;
    let left: Vec<String> = env
        .take_all(&dlq)
        .await
        .into_iter()
        .map(|got| got.id.unwrap())
        .collect();
    assert!(left == ids, "all in place, in order");
}

pub async fn replay_and_discard_do_what_they_say(env: &Env) {
    env.reset::<ReplayJob>().await;
    let tag = env.tag::<ReplayJob>();
    let probe = probe(&tag);
    let dlq = ReplayJob::options().dead_letter_queue();
    let admin = connect(env).await;
    let worker = start(env, ReplayJob);
    let client = env.client();
    let mut ids = Vec::new();
    for seq in 0..4 {
        let act = if seq == 3 {
            Act::FailPermanently
        } else {
            Act::FailUntilReleased
        };
        ids.push(
            client
                .enqueue::<ReplayJob>(Task::new(&tag, seq, act))
                .await
                .unwrap()
                .to_string(),
        );
    }
    env.wait_ready(&dlq, 4).await;

    assert!(admin.discard(&dlq, &ids[1]).await.unwrap());
    assert!(!admin.discard(&dlq, &ids[1]).await.unwrap(), "gone already");
    let shown = admin.dead_letter(&dlq, &ids[2]).await.unwrap().unwrap();
    assert_eq!(shown.reason, DeadReason::RetriesExhausted);
    assert_eq!(shown.error, "task 2 not released");
    // The four failed at once, so their letters' order is any.
    let mut left: Vec<String> = admin
        .dead_letters(&dlq, &LetterFilter::all(), 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|letter| letter.job_id.unwrap().to_string())
        .collect();
    left.sort();
    let mut expected = [ids[0].clone(), ids[2].clone(), ids[3].clone()];
    expected.sort();
    assert_eq!(left, expected);

    probe.release();
    assert!(admin.replay(&dlq, &ids[2]).await.unwrap());
    probe
        .wait("the replayed job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 1
        })
        .await;
    assert_eq!(*probe.done.lock().unwrap(), [2]);
    let matching = LetterFilter::all()
        .reason("retries-exhausted")
        .error_contains("not released");
    assert_eq!(admin.replay_matching(&dlq, &matching).await.unwrap(), 1);
    probe
        .wait("the matching job", LIMIT, |p| {
            p.succeeded.load(Ordering::SeqCst) == 2
        })
        .await;
    assert_eq!(*probe.done.lock().unwrap(), [2, 0]);
    assert_eq!(admin.purge(&dlq).await.unwrap(), 1, "the permanent one");
    assert_eq!(env.ready(&dlq).await, 0);
    worker.stop().await.unwrap();
    assert_eq!(
        probe.attempts.load(Ordering::SeqCst),
        6,
        "4 first attempts and 2 replays"
    );
}

/// A sharded job as the console sees it: its shards, the work queue's
/// delay queue where the retries of every shard wait, and the shards past
/// its `shards` (left by a deploy with more) with what they hold. Once the
/// last worker is gone, the delay queue is an orphan.
pub async fn a_sharded_job_shows_its_shards_and_the_extra_ones(env: &Env) {
    let shards = ShardedViewJob::options().consumed_queues();
    let work = ShardedViewJob::QUEUE;
    let delay_queue = format!("{work}.delay.3600000ms");
    let extra: Vec<String> = (2..4).map(|index| format!("{work}.s{index}")).collect();
    env.reset::<ShardedViewJob>().await;
    env.delete_queues(&[&delay_queue, &extra[0], &extra[1]])
        .await;
    let tag = env.tag::<ShardedViewJob>();
    let admin = connect(env).await;
    let worker = start(env, ShardedViewJob);
    wait_workers::<ShardedViewJob>(&admin, "the worker", |w| w.len() == 1).await;
    // One failing job in each shard, as a foreign producer would send it.
    for (seq, shard) in shards.iter().enumerate() {
        let task = Task::new(&tag, seq as u32, Act::Fail);
        env.publish_raw(shard, &serde_json::to_vec(&task).unwrap())
            .await;
    }
    let view =
        wait_job::<ShardedViewJob>(&admin, "both retries waiting", |view| view.delayed() == 2)
            .await;
    assert_eq!(view.status.shards, Some(2));
    assert_eq!(view.status.consumed_queues, shards);
    let work_queues: Vec<&str> = view
        .queues
        .iter()
        .filter(|queue| queue.role == QueueRole::Work)
        .map(|queue| queue.name.as_str())
        .collect();
    assert_eq!(work_queues, shards);
    assert_eq!(view.status.delay_queues, [delay_queue.as_str()]);
    let ours = |problems: Vec<TopologyProblem>| -> Vec<TopologyProblem> {
        problems
            .into_iter()
            .filter(|problem| problem.to_string().contains(work))
            .collect()
    };
    assert_eq!(ours(admin.check_topology().await.unwrap()), []);

    // Two shards past the worker's (as a producer with more shards
    // declares them), the last one holding a job; then a queue of another
    // application named like the next shard, which is not reported.
    let broker = env.broker();
    for queue in &extra {
        broker
            .declare_queue(&QueueSpec::new(queue.clone()).with_shard_of(work))
            .await
            .unwrap();
    }
    broker.publish(&extra[1], Message::default()).await.unwrap();
    let foreign = format!("{work}.s4");
    env.delete_queues(&[&foreign]).await;
    broker
        .declare_queue(&QueueSpec::new(foreign.clone()))
        .await
        .unwrap();
    let problems = ours(admin.check_topology().await.unwrap());
    let extra_shards: Vec<(String, u32)> = problems
        .iter()
        .filter_map(|problem| match problem {
            TopologyProblem::ExtraShard {
                queue, messages, ..
            } => Some((queue.clone(), *messages)),
            _ => None,
        })
        .collect();
    assert_eq!(
        extra_shards,
        [(extra[0].clone(), 0), (extra[1].clone(), 1)],
        "{problems:?}"
    );
    env.delete_queues(&[&extra[0], &extra[1], &foreign]).await;

    worker.stop().await.unwrap();
    wait_workers::<ShardedViewJob>(&admin, "the worker gone", |w| !w[0].alive).await;
    let problems = ours(admin.check_topology().await.unwrap());
    let orphan = TopologyProblem::OrphanDelayQueue {
        queue: delay_queue.clone(),
        messages: 2,
        target: work.to_owned(),
        target_exists: true,
    };
    assert_eq!(problems, [orphan]);
    env.delete_queues(&[&delay_queue]).await;
}
