use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: String,
}

#[job(queue = "q")]
pub async fn charge<T>(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
