use qjob::{job, Job, JobContext, JobError};

#[job(queue = "reports.nightly", cron = "30 2 * * Mon-Fri")]
pub async fn nightly(_job: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Sweep {
    pub older_than_days: u32,
}

#[job(queue = "reports.sweep", cron = "*/10 * * * * *")]
pub async fn sweep(_job: Sweep, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {
    let (schedule, ()) = NightlyJob::schedule().expect("a schedule");
    assert_eq!(schedule.expression(), "30 2 * * Mon-Fri");
    assert_eq!(schedule.zone(), "UTC");
    let (_, sweep) = SweepJob::schedule().expect("a schedule");
    assert_eq!(sweep.older_than_days, 0);
}
