//! Retries, delays and dead-letter replay on the paused clock: the same
//! behaviour the RabbitMQ scenarios check in real time, here in virtual time.

use std::sync::Mutex;
use std::time::Duration;

use qjob::{JobContext, JobError, job};
use qjob_testkit::TestKit;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
}

fn step(name: &str) -> Step {
    Step { name: name.into() }
}

/// When each attempt of each step started, on tokio's clock.
static STARTS: Mutex<Vec<(String, u32, Instant)>> = Mutex::new(Vec::new());

fn started(name: &str, ctx: &JobContext) {
    STARTS
        .lock()
        .unwrap()
        .push((name.to_owned(), ctx.attempt(), Instant::now()));
}

fn starts_of(name: &str) -> Vec<(u32, Instant)> {
    STARTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, ..)| n == name)
        .map(|(_, attempt, at)| (*attempt, *at))
        .collect()
}

#[job(queue = "delays.fixed", retry = 2, backoff = fixed("1500ms"))]
async fn fixed(job: Step, ctx: JobContext) -> Result<(), JobError> {
    started(&job.name, &ctx);
    if job.name.starts_with("fail") || (job.name.starts_with("once") && ctx.attempt() == 1) {
        return Err(JobError::msg("failed"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn attempts_are_spaced_by_the_fixed_backoff() {
    let mut kit = TestKit::new().register(FixedJob);
    kit.enqueue::<FixedJob>(step("fail-spacing")).await.unwrap();
    kit.run_until_idle().await;
    let starts = starts_of("fail-spacing");
    assert_eq!(starts.len(), 3);
    for pair in starts.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(gap >= Duration::from_millis(1500), "{gap:?}");
        assert!(gap < Duration::from_secs(4), "{gap:?}");
    }
    assert_eq!(
        kit.assert_dead_lettered::<FixedJob>(|s| s.name == "fail-spacing")
            .attempts,
        3
    );
}

#[job(queue = "delays.single", prefetch = 1, concurrency = 1, retry = 1, backoff = fixed("1s"))]
async fn single(job: Step, ctx: JobContext) -> Result<(), JobError> {
    started(&job.name, &ctx);
    if job.name == "single-slow-retry" && ctx.attempt() == 1 {
        return Err(JobError::msg("try again"));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn other_jobs_flow_while_a_retry_waits_with_prefetch_one() {
    let mut kit = TestKit::new().register(SingleJob);
    kit.enqueue::<SingleJob>(step("single-slow-retry"))
        .await
        .unwrap();
    for n in 0..20 {
        kit.enqueue::<SingleJob>(step(&format!("single-{n}")))
            .await
            .unwrap();
    }
    let start = Instant::now();
    kit.run_until_idle().await;
    let succeeded = kit.succeeded::<SingleJob>();
    assert_eq!(succeeded.len(), 21);
    assert_eq!(succeeded.last(), Some(&step("single-slow-retry")));
    // The 20 others ran back to back (10 ms each) inside the retry's 1 s wait.
    let others_done = starts_of("single-19")[0].1 - start;
    assert!(others_done < Duration::from_secs(1), "{others_done:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_scheduled_before_a_restart_happens_after_it() {
    let mut kit = TestKit::new().register(FixedJob);
    kit.enqueue::<FixedJob>(step("once-restart")).await.unwrap();
    kit.start().await;
    kit.broker()
        .wait_until(|b| b.ready_count("delays.fixed.delay.1500ms") == 1)
        .await;
    kit.shutdown().await.unwrap();
    kit.run_until_idle().await;
    let attempts: Vec<u32> = starts_of("once-restart").iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2]);
    kit.assert_succeeded::<FixedJob>(|s| s.name == "once-restart");
}

#[tokio::test(start_paused = true)]
async fn enqueue_in_runs_after_the_delay() {
    let mut kit = TestKit::new().register(FixedJob);
    let enqueued = Instant::now();
    kit.client()
        .enqueue_in::<FixedJob>(step("in-3s"), Duration::from_secs(3))
        .await
        .unwrap();
    kit.run_until_idle().await;
    let waited = starts_of("in-3s")[0].1 - enqueued;
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn enqueue_at_runs_at_the_time() {
    let mut kit = TestKit::new().register(FixedJob);
    let enqueued = Instant::now();
    let at = std::time::SystemTime::now() + Duration::from_secs(90);
    kit.client()
        .enqueue_at::<FixedJob>(step("at-90s"), at)
        .await
        .unwrap();
    let past = std::time::SystemTime::now() - Duration::from_secs(5);
    kit.client()
        .enqueue_at::<FixedJob>(step("at-past"), past)
        .await
        .unwrap();
    kit.run_until_idle().await;
    assert!(starts_of("at-past")[0].1 - enqueued < Duration::from_secs(1));
    let waited = starts_of("at-90s")[0].1 - enqueued;
    assert!(
        waited >= Duration::from_secs(89) && waited <= Duration::from_secs(91),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn delays_longer_than_a_hop_wait_in_several() {
    let mut kit = TestKit::new()
        .register(FixedJob)
        .horizon(Duration::from_secs(4 * 24 * 3600));
    let enqueued = Instant::now();
    let three_days = Duration::from_secs(3 * 24 * 3600 + 5);
    kit.client()
        .enqueue_in::<FixedJob>(step("in-3-days"), three_days)
        .await
        .unwrap();
    kit.run_until_idle().await;
    // Three day-long hops and one of 5 s; the handler runs once, at the end.
    let starts = starts_of("in-3-days");
    assert_eq!(starts.len(), 1, "the handler ran once");
    let waited = starts[0].1 - enqueued;
    assert!(
        waited >= three_days && waited < three_days + Duration::from_secs(1),
        "{waited:?}"
    );
    assert!(kit.attempts::<FixedJob>().iter().all(|a| a.attempt == 1));
}

#[tokio::test(start_paused = true)]
async fn the_horizon_counts_every_hop_of_a_long_delay() {
    let mut kit = TestKit::new()
        .register(FixedJob)
        .horizon(Duration::from_secs(2 * 24 * 3600));
    kit.client()
        .enqueue_in::<FixedJob>(step("in-3-days-beyond"), Duration::from_secs(3 * 24 * 3600))
        .await
        .unwrap();
    kit.run_until_idle().await;
    assert!(starts_of("in-3-days-beyond").is_empty());
    assert_eq!(kit.enqueued::<FixedJob>(), [step("in-3-days-beyond")]);
}

#[tokio::test(start_paused = true)]
async fn dead_letters_are_replayed_and_run() {
    let mut kit = TestKit::new().register(FixedJob);
    kit.enqueue::<FixedJob>(step("fail-replay")).await.unwrap();
    kit.run_until_idle().await;
    let client = kit.client().clone();
    let dead = client.dead_letters::<FixedJob>();
    assert_eq!(dead.count().await.unwrap(), 1);
    let letter = &dead.peek(1).await.unwrap()[0];
    assert_eq!(letter.attempts, 3);
    assert!(letter.first_failed_at.unwrap() <= letter.failed_at.unwrap());
    assert_eq!(dead.replay_all().await.unwrap(), 1);
    kit.run_until_idle().await;
    // Replayed with its attempt count reset: three more attempts.
    let attempts: Vec<u32> = starts_of("fail-replay").iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 1, 2, 3]);
    assert_eq!(dead.count().await.unwrap(), 1);
}

#[job(queue = "kit.delays.leased", retry = 0)]
async fn leased(_job: Step, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

/// A delay queue is declared once per half grace, not before every delayed
/// publish; one deleted under the client in between (an operator) is
/// declared again and the delayed job still arrives.
#[tokio::test(start_paused = true)]
async fn a_delay_queue_deleted_under_its_lease_is_declared_again() {
    let mut kit = TestKit::new().register(LeasedJob);
    kit.enqueue_in::<LeasedJob>(step("first"), Duration::from_secs(1))
        .await
        .unwrap();
    let delay_queue = "kit.delays.leased.delay.1000ms";
    assert!(kit.broker().has_queue(delay_queue));
    kit.broker().delete_queue(delay_queue);
    kit.enqueue_in::<LeasedJob>(step("second"), Duration::from_secs(1))
        .await
        .expect("declared again");
    kit.run_until_idle().await;
    // The first job went with its queue; the second arrives.
    assert_eq!(kit.succeeded::<LeasedJob>(), [step("second")]);
}
