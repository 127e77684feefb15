//! Durations and rates share one grammar: decimals and long unit names.

use qjob::{job, Job, JobContext, JobError};
use std::time::Duration;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Ping;

#[job(queue = "q.units", timeout = "1.5s", rate_limit = "6/min", backoff = fixed("5min"))]
pub async fn ping(_job: Ping, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {
    let options = PingJob::options();
    assert_eq!(options.timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(options.backoff(), qjob::Backoff::Fixed(Duration::from_secs(300)));
    let rate = options.rate_limit().unwrap();
    assert_eq!((rate.count, rate.per), (6, Duration::from_secs(60)));
}
