use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: String,
}

#[job(queue = "q")]
pub async fn charge(_ctx: JobContext, _job: Charge) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
