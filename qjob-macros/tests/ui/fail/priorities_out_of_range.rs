use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub id: u64,
}

#[job(queue = "reports", priorities = 256)]
pub async fn report(_job: Report, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
