use qjob::{job, JobContext, JobError};

#[job(queue = "reports.minutely", cron = "61 * * * *")]
pub async fn minutely(_job: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "reports.weekly", cron = "0 9 * * 8")]
pub async fn weekly(_job: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "reports.often", cron = 5)]
pub async fn often(_job: (), _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
