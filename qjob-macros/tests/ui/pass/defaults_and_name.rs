use std::time::Duration;

use qjob::{Backoff, Job, JobContext, JobError, job};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Ping;

#[derive(Debug)]
pub struct Unreachable;

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unreachable")
    }
}

impl std::error::Error for Unreachable {}

// Any error type that converts into JobError works as the handler's error.
#[job(queue = "ping", name = "Pinger")]
async fn ping(_job: Ping, _ctx: JobContext) -> Result<(), Unreachable> {
    Ok(())
}

#[job(queue = "pong", backoff = incremental(base = "1s", step = "2s"), single_active = true)]
pub(crate) async fn pong(_job: Ping, ctx: qjob::JobContext) -> Result<(), JobError> {
    let _ = ctx.attempt();
    Ok(())
}

#[job(queue = "mail", shards = 4)]
async fn mail(_job: Ping, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "exp", backoff = exponential(base = "1s", max = "1h"))]
async fn exp(_job: Ping, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {
    let options = Pinger::options();
    assert_eq!(options.prefetch(), 25);
    assert_eq!(options.concurrency(), 10);
    assert_eq!(options.retry(), 3);
    assert_eq!(options.backoff(), Backoff::Immediate);
    assert_eq!(Pinger::partition_key(&Ping), None);
    assert!(PongJob::options().single_active());
    assert_eq!(options.shards(), 1);
    assert_eq!(MailJob::options().shards(), 4);
    assert_eq!(MailJob::options().consumed_queues(), ["mail", "mail.s1", "mail.s2", "mail.s3"]);
    assert_eq!(
        PongJob::options().backoff(),
        Backoff::Incremental { base: Duration::from_secs(1), step: Duration::from_secs(2) }
    );
    assert_eq!(
        ExpJob::options().backoff(),
        Backoff::Exponential { base: Duration::from_secs(1), max: Duration::from_secs(3600), jitter: true }
    );
    // The handler stays callable as written.
    let _future = ping(Ping, JobContext::new("ping"));
}
