use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub account: String,
}

#[job(queue = "reports", unique(key = account))]
pub async fn report(_job: Report, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "reports.daily", unique(within = "1h", until = "done"))]
pub async fn daily(_job: Report, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
