use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: String,
}

#[job(queue = "q", partition_by = account, partitions = 4, shards = 4)]
pub async fn charge(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "r", single_active = true, shards = 2)]
pub async fn report(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "s", shards = 0)]
pub async fn send(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
