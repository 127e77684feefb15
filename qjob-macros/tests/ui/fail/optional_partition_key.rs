use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: Option<String>,
}

#[job(queue = "q", partition_by = account, partitions = 4)]
pub async fn charge(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
