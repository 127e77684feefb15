use qjob::{job, JobContext, JobError};

#[job(queue = "q", delivery_limit = 5)]
pub async fn charge(_job: String, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
