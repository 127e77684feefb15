use qjob::{job, JobContext, JobError};

#[job(queue = "a", key_rate = "5/s", class = "urgent", weight = 0, global_concurrency = 0)]
pub async fn a(_job: String, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Call {
    customer: String,
}

#[job(queue = "b", rate_by = customer, resource = "billing db")]
pub async fn b(_job: Call, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
