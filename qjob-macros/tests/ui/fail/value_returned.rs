use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: String,
}

#[job(queue = "q")]
pub async fn charge(job: Charge, _ctx: JobContext) -> Result<String, JobError> {
    Ok(job.account)
}

fn main() {}
