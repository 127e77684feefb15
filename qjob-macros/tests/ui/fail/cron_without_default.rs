use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub account: String,
}

#[job(queue = "reports.nightly", cron = "0 2 * * *")]
pub async fn nightly(_job: Report, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
